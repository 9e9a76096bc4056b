"""Checkpoints, training state and the output directory.

Layout of an output directory::

    output_dir/
        config.json, model.safetensors, vocab.txt   the final (or best) student: the next stage's input
        checkpoint-{step}/                          a complete student dir + training_state.pt
        args.json, metrics.jsonl, train.log, ...
        tensorboard/                                --report_to tensorboard: the metrics as event files

Every checkpoint directory is written into a temporary directory next to it and
renamed into place, so ``checkpoint-{step}/`` either exists complete or not at
all. ``training_state.pt`` holds only tensors, numbers, strings and containers
of them (loaded back with ``weights_only=True``). Old checkpoints are renamed
to a temporary name before they are deleted, and a killed run's temporaries are
removed when the directory is next prepared, so a run killed at any moment
leaves a directory that ``--continue_train`` resumes from its latest complete
checkpoint.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from spikingbert.core.errors import UserError
from spikingbert.core.files import save_torch
from spikingbert.core.output_dir import TMP_PREFIX
from spikingbert.core.weights import load_error_message
from spikingbert.training.state import TENSORBOARD_DIR

__all__ = [
    "TRAINING_STATE_NAME",
    "OUTPUT_ARTIFACTS",
    "worth_keeping",
    "list_checkpoints",
    "latest_checkpoint",
    "save_checkpoint",
    "checkpoint_size",
    "install_model_files",
    "load_training_state",
    "optimizer_state_to_save",
    "load_optimizer_state",
    "pack_rows",
    "unpack_rows",
]

logger = logging.getLogger(__name__)

TRAINING_STATE_NAME = "training_state.pt"
MODEL_FILES = ("config.json", "model.safetensors")
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
#: Files a run writes into its output directory (what starting over removes).
OUTPUT_ARTIFACTS = (
    "config.json", "model.safetensors", "vocab.txt", "args.json", "metrics.jsonl", "train.log",
    "eval_results.json", "teacher_results.json", "best_results.json", "README.md", TENSORBOARD_DIR,
)


def worth_keeping(new_entries) -> bool:
    """Whether a failed run's new files include a checkpoint or a model (kept to resume from or to use)."""
    return any(CHECKPOINT_RE.match(name) or name in MODEL_FILES for name in new_entries)


def list_checkpoints(output_dir: Path) -> List[Tuple[int, Path]]:
    """Complete ``checkpoint-{step}`` directories of ``output_dir`` as (step, path), oldest first."""
    found = []
    if not Path(output_dir).is_dir():
        return found
    for path in Path(output_dir).iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_dir() and not path.is_symlink() and _is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Optional[Path]:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def save_checkpoint(
    output_dir: Path,
    step: int,
    write_model: Callable[[Path], None],
    training_state: Dict[str, Any],
    save_total_limit: Optional[int] = None,
) -> Path:
    """Write ``output_dir/checkpoint-{step}/`` atomically and keep the last ``save_total_limit`` (None: all).

    Args:
        write_model: writes the complete student dir (config.json, model.safetensors, vocab.txt)
            into the directory it is given.
        training_state: plain tensors/numbers/containers (see module docstring).
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}checkpoint-{step}-", dir=output_dir))
    try:
        write_model(tmp)
        save_torch(training_state, tmp / TRAINING_STATE_NAME)
        _fsync_dir_files(tmp)
        if final.exists():
            stale = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}stale-", dir=output_dir))
            os.replace(final, stale / final.name)
            os.replace(tmp, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if save_total_limit is not None and save_total_limit > 0:
        for _, old in list_checkpoints(output_dir)[:-save_total_limit]:
            _remove_dir(old)
            logger.info("removed old checkpoint %s (save_total_limit %d)", old.name, save_total_limit)
    return final


def checkpoint_size(checkpoint_dir: Path) -> Tuple[int, int]:
    """Bytes of a checkpoint's student files and of its ``training_state.pt``."""
    files = [path for path in Path(checkpoint_dir).iterdir() if path.is_file()]
    state = sum(path.stat().st_size for path in files if path.name == TRAINING_STATE_NAME)
    return sum(path.stat().st_size for path in files) - state, state


def install_model_files(output_dir: Path, write_model: Callable[[Path], None]) -> None:
    """Write a complete student dir into ``output_dir`` itself.

    The files are written into a temporary directory inside ``output_dir`` and then
    moved into place one by one with ``os.replace``, so none is ever half written.
    """
    output_dir = Path(output_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}model-", dir=output_dir))
    try:
        write_model(tmp)
        _fsync_dir_files(tmp)
        for path in sorted(tmp.iterdir()):
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_training_state(checkpoint_dir: Path, mmap: bool = False) -> Dict[str, Any]:
    """``training_state.pt`` of a checkpoint (``weights_only``); ``mmap=True`` maps the tensors instead of
    reading them (a quick check that the file is complete and safe to load)."""
    path = Path(checkpoint_dir) / TRAINING_STATE_NAME
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        todo = "delete that checkpoint directory to resume from the one before it"
        raise UserError("the training state " + load_error_message(path, err, todo, todo)) from err


def optimizer_state_to_save(optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """The optimizer's state dict with only plain values in its param groups, and its tensors row-sparse.

    Some optimizers keep objects (e.g. a schedule) in their param groups; those are
    rebuilt from the constructor arguments and restored by `load_optimizer_state`. A state tensor
    whose rows are mostly zero (Adam's moments of the embedding rows of tokens the data never
    showed) keeps only its other rows (`pack_rows`); the zero rows are rebuilt bit for bit.
    """
    state = optimizer.state_dict()
    groups = [{k: v for k, v in group.items() if _is_plain(v)} for group in state["param_groups"]]
    packed = {key: {name: pack_rows(value) for name, value in values.items()} for key, values in state["state"].items()}
    return {"state": packed, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: Dict[str, Any]) -> None:
    """Load the state (moments, step counts) that `optimizer_state_to_save` returned into ``optimizer``, whose own
    hyper-parameters (learning rate, schedule length, warm-up, weight decay, ...) stay: a resumed run applies the
    values it was given, which equal the checkpoint's unless they were changed on purpose."""
    current = optimizer.state_dict()["param_groups"]
    if len(current) != len(saved["param_groups"]):
        raise UserError("the checkpoint's optimizer has a different number of parameter groups")
    groups = [{**sav, **{k: v for k, v in cur.items() if k != "params"}} for cur, sav in
              zip(current, saved["param_groups"])]
    state = {key: {name: unpack_rows(value) for name, value in values.items()}
             for key, values in saved["state"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def pack_rows(value: Any) -> Any:
    """A tensor of two or more dimensions whose rows are more than half zero (bit for bit: -0.0 and NaN count as
    non-zero) as ``{"packed_rows": shape, "rows": indices, "values": those rows}``; anything else as it is."""
    if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[0] < 2 or value.is_complex():
        return value
    rows = value.reshape(value.shape[0], -1)
    kept = ((rows != 0) | torch.signbit(rows)).any(1).nonzero().squeeze(1)
    if 2 * kept.numel() >= value.shape[0]:
        return value
    return {"packed_rows": list(value.shape), "rows": kept, "values": value.index_select(0, kept)}


def unpack_rows(value: Any) -> Any:
    """The tensor `pack_rows` packed (anything else as it is)."""
    if not (isinstance(value, dict) and "packed_rows" in value):
        return value
    full = value["values"].new_zeros(value["packed_rows"])
    full.index_copy_(0, value["rows"], value["values"])
    return full


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_plain(v) for k, v in value.items())
    return False


def _is_complete(path: Path) -> bool:
    return (path / TRAINING_STATE_NAME).is_file() and all((path / name).is_file() for name in MODEL_FILES)


def _remove_dir(path: Path) -> None:
    """Delete a directory without ever leaving it half deleted under its own name."""
    doomed = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}stale-", dir=path.parent))
    os.replace(path, doomed / path.name)
    shutil.rmtree(doomed, ignore_errors=True)


def _fsync_dir_files(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
