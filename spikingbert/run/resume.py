"""``--continue_train``: the settings of the run being resumed (its ``args.json``) against the new command line.

A setting that changes the model or the objective (`MODEL_SETTINGS`: the spiking simulation, the teacher,
the task and its data, the sequence length, the temperature, ...) must not change on resume, or the
resumed run silently becomes another experiment: the differences are listed and the run refused, unless
``--allow_changed_settings``. Settings a user legitimately changes on resume (the learning rate after a NaN
stop, more epochs, another batch split, ...) are logged as warnings with the old and the new value.
The spiking settings are compared with the checkpoint's own ``config.json`` (the values it was trained
with); a spiking flag left out keeps them.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from spikingbert.core.errors import UsageError
from spikingbert.core.files import read_json

__all__ = ["MODEL_SETTINGS", "SPIKING_SETTINGS", "IGNORED_SETTINGS", "check_resume_settings", "setting_changes"]

logger = logging.getLogger(__name__)

#: Spiking flags (default None: keep the student's value), compared with the checkpoint's config.json.
SPIKING_SETTINGS = ("t_conv", "vth", "leak", "ide_point", "feedback", "train_mode")
#: Flags (and resolved values) that change the model or the objective.
MODEL_SETTINGS = SPIKING_SETTINGS + (
    "teacher_model", "spiking_student_model", "bert_model", "task_name", "data_dir", "pregenerated_data",
    "aug_train", "pred_distill", "train_true_labels", "temperature", "do_lower_case", "max_seq_length_used",
    "stage",
)
#: Flags that say nothing about the run's result (where it runs, how it logs, resume itself).
IGNORED_SETTINGS = (
    "output_dir", "continue_train", "overwrite_output_dir", "allow_changed_settings", "debug", "no_cuda",
    "local_rank", "cache_dir", "data_url", "do_eval", "report", "adaptive_t", "adaptive_budget", "adaptive_window",
    "adaptive_min_steps",
    "resumed_from", "world_size", "n_gpu", "device", "teacher_dev", "layer_stride", "init_from_teacher",
    "init_from_teacher_tensors", "max_seq_length", "num_train_epochs_used", "skip_bad_rows", "reduce_memory",
    "command_line", "args_file",
)

_PATH_SETTINGS = ("teacher_model", "spiking_student_model", "bert_model", "data_dir", "pregenerated_data")


def _same(key: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    if key in _PATH_SETTINGS and isinstance(old, str) and isinstance(new, str) and "://" not in old + new:
        if os.path.exists(old) and os.path.exists(new):
            return os.path.samefile(old, new)
        return os.path.normpath(old) == os.path.normpath(new)
    if key == "task_name" and isinstance(old, str) and isinstance(new, str):
        return old.strip().lower() == new.strip().lower()
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        return float(old) == float(new)
    return False


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value) if not isinstance(value, str) else value


def _checkpoint_config(checkpoint: Optional[Path]) -> Dict[str, Any]:
    if checkpoint is None:
        return {}
    try:
        config = read_json(Path(checkpoint) / "config.json", "config.json")
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def setting_changes(saved: Mapping[str, Any], new: Mapping[str, Any], checkpoint: Optional[Path] = None
                    ) -> Tuple[List[Tuple[str, Any, Any]], List[Tuple[str, Any, Any]]]:
    """``(model changes, other changes)``: each ``(name, old value, new value)`` between the saved ``args.json``
    and this run's flags and resolved values (see the module docstring)."""
    trained_with = _checkpoint_config(checkpoint)
    model, other = [], []
    for key in sorted(set(saved) | set(new)):
        if key in IGNORED_SETTINGS or key not in new:
            continue
        old, value = saved.get(key), new[key]
        if key in SPIKING_SETTINGS:
            if value is None:
                continue                               # the checkpoint's value is kept
            old = trained_with.get(key, old)
            if key == "feedback" and old is None:
                old = False
        if not _same(key, old, value):
            (model if key in MODEL_SETTINGS else other).append((key, old, value))
    return model, other


def check_resume_settings(output_dir: Path, flags: Mapping[str, Any], resolved: Mapping[str, Any],
                          checkpoint: Optional[Path], allow_changes: bool) -> None:
    """Compare ``output_dir/args.json`` with this run's settings before resuming ``checkpoint`` (see the module
    docstring); raise `UsageError` for a changed model setting unless ``allow_changes``."""
    path = Path(output_dir) / "args.json"
    try:
        saved = read_json(path, "run record")
        problem = None if isinstance(saved, dict) else f"a JSON {type(saved).__name__}, not the record of a run"
    except (OSError, ValueError) as err:
        problem = getattr(err, "strerror", None) or str(err)
    if problem is not None:
        if not allow_changes:
            raise UsageError(f"--continue_train: {path} is missing or unreadable ({problem}), so the settings of the "
                             f"run in {output_dir} cannot be compared with this one's; restore it, or pass "
                             "--allow_changed_settings to resume anyway")
        logger.warning("--allow_changed_settings: %s is missing or unreadable (%s); resuming without comparing the "
                       "settings", path, problem)
        return
    new = {k: (str(v) if isinstance(v, Path) else v) for k, v in {**flags, **resolved}.items()}
    model, other = setting_changes(saved, new, checkpoint)
    listed = ", ".join(f"{key} {_show(old)} (now {_show(value)})" for key, old, value in model)
    if model and not allow_changes:
        raise UsageError(f"--continue_train: the run in {output_dir} was made with other settings that change the "
                         f"model or the objective: {listed}; resume with the same settings, or pass "
                         "--allow_changed_settings to resume anyway")
    if model:
        logger.warning("--allow_changed_settings: resuming with changed model settings: %s", listed)
    for key, old, value in other:
        logger.warning("--continue_train: %s changed from %s to %s; the new value applies from the resumed step on",
                       key, _show(old), _show(value))
