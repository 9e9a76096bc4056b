"""What a task is called and what its labels mean: the GLUE defaults, or the task directory's ``task.json``.

A task directory may hold ``task.json`` next to its TSV files, e.g. the one ``python -m apps.corpora
rotten_tomatoes`` writes::

    {"display_name": "Rotten Tomatoes", "labels": {"0": "rotten", "1": "fresh"}}

``labels`` maps each label as written in the TSV files to its name; ``display_name`` titles reports and
plots. Both are optional; without the file the task's GLUE names are used (SST-2: ``negative`` /
``positive``). The stages write the names into the model directories they save (``id2label`` /
``label2id``), so a trained model says what its outputs mean.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

from spikingbert.core.errors import DataError
from spikingbert.core.files import atomic_write_json, read_json
from spikingbert.data.glue.tasks import get_processor

__all__ = ["TASK_INFO_NAME", "TaskInfo", "task_info", "write_task_info"]

TASK_INFO_NAME = "task.json"


@dataclass(frozen=True)
class TaskInfo:
    """A task's name for people and its label names in class-index order (one name for a regression task)."""

    task: str
    display_name: str
    output_mode: str
    label_names: Tuple[str, ...]
    pairs: bool = False                  # its inputs are sentence pairs

    @property
    def id2label(self) -> Dict[str, str]:
        """Class index (as a JSON key) -> label name, as Hugging Face configs write it."""
        return {str(i): name for i, name in enumerate(self.label_names)}

    @property
    def label2id(self) -> Dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}


def task_info(task: str, data_dir: Optional[Union[str, Path]] = None) -> TaskInfo:
    """The task's `TaskInfo`: its GLUE defaults, updated from ``data_dir/task.json`` when that file exists."""
    processor = get_processor(task)
    info = TaskInfo(processor.task_name, processor.display_name, processor.output_mode, tuple(processor.label_names),
                    processor.text_b_col is not None)
    path = Path(data_dir) / TASK_INFO_NAME if data_dir is not None else None
    if path is None or not path.is_file():
        return info
    try:
        values = read_json(path, "task.json")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} cannot be read ({err}); fix it or delete it (the task's GLUE names are then "
                        "used)") from err
    if not isinstance(values, dict):
        raise DataError(f"{path} must hold a JSON object; fix it or delete it")
    display_name = values.get("display_name", info.display_name)
    if not isinstance(display_name, str) or not display_name.strip():
        raise DataError(f"{path}: display_name must be a non-empty string; fix it or delete it")
    names = info.label_names
    if "labels" in values and processor.output_mode == "classification":
        names = _label_names(path, values["labels"], processor.labels)
    return TaskInfo(info.task, display_name.strip(), info.output_mode, names, info.pairs)


def _label_names(path: Path, labels: object, tsv_labels) -> Tuple[str, ...]:
    """The names of ``labels`` (TSV label -> name) in class-index order, checked against the task's labels."""
    if not isinstance(labels, dict) or set(labels) != set(tsv_labels):
        raise DataError(f"{path}: labels must map each label of the task's TSV files ({', '.join(tsv_labels)}) "
                        f"to a name, e.g. {{\"0\": \"negative\", \"1\": \"positive\"}}; fix it or delete it")
    names = tuple(labels[label] for label in tsv_labels)
    if not all(isinstance(n, str) and n.strip() for n in names) or len(set(names)) != len(names):
        raise DataError(f"{path}: label names must be distinct non-empty strings (got {list(names)}); fix it")
    return tuple(n.strip() for n in names)


def write_task_info(data_dir: Union[str, Path], display_name: str, labels: Mapping[str, str]) -> Path:
    """Write ``data_dir/task.json`` (atomically): the task's display name and its TSV label -> name map."""
    path = Path(data_dir) / TASK_INFO_NAME
    atomic_write_json(path, {"display_name": display_name, "labels": dict(labels)})
    return path
