"""Student directories written by earlier versions of this project, brought up to date when they are read.

`migrate_student_config` is applied once, to a student's config.json fields as read and before they are
checked (by `SpikingBertConfig.from_json_file`, and by every command through `spikingbert.run.model_dirs`):

* ``model_type`` ``"bert"`` (written before the student had its own type) becomes ``"spiking_bert"``;
* ``do_lower_case`` and ``max_seq_length`` (recorded since the stages describe their outputs) come from the
  flags in the directory's ``args.json``;
* ``id2label`` (the label names) come from the task ``args.json`` names, through ``label_names(task, data_dir)``
  (the commands pass the task's names: its ``task.json``, else its GLUE names), where the data directory
  is found as given or relative to a folder above the model directory.

Directories written by this version record all of them; nothing is changed there.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from spikingbert.core.files import read_json
from spikingbert.core.settings import SETTINGS

__all__ = ["MODEL_TYPE", "migrate_student_config"]

logger = logging.getLogger(__name__)

#: ``model_type`` of a student's config.json: Hugging Face transformers does not know it, so it refuses a
#: student directory instead of building an ordinary BERT from the spiking weights.
MODEL_TYPE = "spiking_bert"

#: Fields of a student config.json that older directories kept only in args.json (as flags of the same name).
RECORDED_FLAGS = ("do_lower_case", "max_seq_length")


#: The class names of a task: ``label_names(task_name, data_dir or None)``, None when unknown.
LabelNames = Callable[[str, Optional[Path]], Optional[Sequence[str]]]


def migrate_student_config(values: Dict[str, Any], directory: Path,
                           label_names: Optional[LabelNames] = None) -> Dict[str, Any]:
    """``values`` (a student's config.json as read from ``directory``) with the migrations above applied (the label
    names only with ``label_names``)."""
    if not isinstance(values, dict):
        return values                           # the config check names the problem
    values = dict(values)
    if values.get("model_type") == "bert":
        values["model_type"] = MODEL_TYPE
    missing = [name for name in RECORDED_FLAGS if values.get(name) is None]
    if not missing and values.get("id2label") is not None:
        return values
    run = _run_record(directory)
    filled: List[str] = []
    for name in missing:
        if _recordable(name, run.get(name)):
            values[name] = run[name]
            filled.append(name)
    if values.get("id2label") is None and label_names is not None:
        names = _label_names(run, directory, values.get("num_labels", 2), label_names)
        if names is not None:
            values["id2label"] = {str(i): name for i, name in enumerate(names)}
            filled.append("id2label")
    if filled:
        logger.info("%s does not record %s in config.json: taken from its args.json", directory, ", ".join(filled))
    return values


def _recordable(name: str, value: Any) -> bool:
    """Whether an args.json value is a valid ``name`` (a flag's value of another type, e.g. a string, is not used)."""
    if name == "do_lower_case":
        return isinstance(value, bool)
    return value is not None and SETTINGS[name].accepts(value)


def _run_record(directory: Path) -> Dict[str, Any]:
    """The directory's ``args.json`` (what the run that wrote it was given), or an empty record."""
    try:
        record = read_json(directory / "args.json", "run record")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _label_names(run: Dict[str, Any], directory: Path, num_labels: Any, label_names: LabelNames
                 ) -> Optional[List[str]]:
    """The class names of the task the run in ``directory`` trained on, when they fit ``num_labels`` classes."""
    task = run.get("task_name")
    names = label_names(task, _find_data_dir(run.get("data_dir"), directory)) if isinstance(task, str) else None
    return list(names) if names is not None and len(names) == num_labels else None


def _find_data_dir(data_dir: Any, model_dir: Path) -> Optional[Path]:
    if not isinstance(data_dir, str):
        return None
    for base in (Path.cwd(), *model_dir.resolve().parents):
        if (base / data_dir).is_dir():
            return base / data_dir
    return None
