"""Checks of a run's inputs made before any model is loaded or data is read at length.

A typo or a damaged file should cost seconds, not the minutes it takes to load a
teacher: the stage runners call these checks first. They read only what is cheap to
read: vocab.txt files, the headers of weight files (`core.weights.read_weights` with
``header_only``), the TSV files' rows, and the training state of the checkpoint to
resume from. Each problem raises a `UserError` naming the flag and the file and saying
what to do; nothing is written.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from spikingbert.core.errors import UsageError, UserError
from spikingbert.core.files import read_capped
from spikingbert.core.weights import find_weights, read_weights
from spikingbert.data import glue
from spikingbert.evaluation.dev import dev_splits
from spikingbert.training.checkpoint import TRAINING_STATE_NAME
from spikingbert.transformer.tokenization import VOCAB_LIMIT

from .model_dirs import ModelDir

__all__ = ["weight_shapes", "check_student_weights", "check_teacher_weights", "check_vocabularies",
           "check_fit_dense", "check_not_an_input", "check_task_data",
           "check_training_inputs", "check_eval_inputs"]

logger = logging.getLogger(__name__)

#: Files that only a training run writes: a directory holding them but no weights is an unfinished run.
RUN_OUTPUT_MARKERS = (TRAINING_STATE_NAME, "args.json", "metrics.jsonl")
Shapes = Dict[str, Tuple[int, ...]]


def weight_shapes(path: Path, flag: str) -> Shapes:
    """Tensor name -> shape of a weights file, without reading the tensors' data; a problem names ``flag``."""
    try:
        return read_weights(path, header_only=True)
    except UserError as err:
        raise err.about(flag) from err


def check_student_weights(directory: Path, flag: str = "--spiking_student_model", need_weights: bool = False
                          ) -> Optional[Shapes]:
    """The shapes of a student directory's weights, read from the file's header; None for a config-only (new)
    student, which a directory is not when ``need_weights`` or when it is the output of an unfinished run."""
    directory = Path(directory)
    weights = find_weights(directory)
    if weights is not None:
        return weight_shapes(weights, flag)
    if need_weights:
        raise UsageError(f"{flag} {directory} has no model.safetensors: --do_eval needs a trained student, "
                         "e.g. the --output_dir of a finished --pred_distill run")
    markers = [name for name in RUN_OUTPUT_MARKERS if (directory / name).is_file()]
    if markers:
        raise UsageError(f"{flag} {directory} holds the output of a training run ({markers[0]}) but no "
                         "model.safetensors: finish that run with --continue_train, or pass one of its "
                         "complete checkpoint-N directories")
    return None


def check_teacher_weights(teacher: ModelDir) -> None:
    """A BERT directory (``--teacher_model``, ``--bert_model``) must have intact weights."""
    if teacher.weights_file is None:
        raise UsageError(f"{teacher.flag} {teacher.location} has neither model.safetensors nor pytorch_model.bin: "
                         "pass the directory of a saved BERT (config.json, weights, vocab.txt)")
    weight_shapes(teacher.weights_file, teacher.flag)


def _read_vocab(path: Path) -> List[str]:
    lines = read_capped(path, VOCAB_LIMIT, "vocabulary", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def check_vocabularies(student_dir: Path, teacher_dir: Path) -> None:
    """The student's and the teacher's vocab.txt (where both have one) must list the same tokens."""
    student_vocab, teacher_vocab = Path(student_dir) / "vocab.txt", Path(teacher_dir) / "vocab.txt"
    if not (student_vocab.is_file() and teacher_vocab.is_file()):
        return
    a, b = _read_vocab(student_vocab), _read_vocab(teacher_vocab)
    if a == b:
        return
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    shown = lambda tokens: repr(tokens[first]) if first < len(tokens) else "end of file"
    raise UsageError(
        f"--spiking_student_model {student_vocab} ({len(a)} tokens) and --teacher_model {teacher_vocab} "
        f"({len(b)} tokens) differ from line {first + 1} on ({shown(a)} vs {shown(b)}): teacher and student "
        "must share one vocabulary; use the teacher the student was distilled from"
    )


def check_fit_dense(shapes: Optional[Shapes], student_hidden: int, teacher_hidden: int, source: Path) -> None:
    """A saved student (``shapes`` of its weights file ``source``) must project its rates to the teacher's hidden
    size (``fit_dense``); a new student (no shapes) gets the projection sized for the teacher."""
    if shapes is None:
        return
    shape = shapes.get("fit_dense.weight")
    if shape is None:
        if student_hidden != teacher_hidden:
            raise UsageError(f"--spiking_student_model {source} has no fit_dense weights, and its hidden "
                             f"size {student_hidden} differs from the teacher's {teacher_hidden}: intermediate "
                             "distillation needs that projection; start from a student saved by this project")
        return
    if shape[0] != teacher_hidden:
        raise UsageError(f"--spiking_student_model {source} projects to width {shape[0]} (fit_dense) but "
                         f"the teacher's hidden size is {teacher_hidden}: use the teacher it was distilled from")


def check_not_an_input(output_dir: Path, overwrite: bool, inputs: Dict[str, Optional[Path]]) -> None:
    """``--output_dir`` must not be an input directory, nor hold one when ``--overwrite_output_dir`` would
    delete it."""
    out = Path(output_dir).resolve()
    for flag, path in inputs.items():
        if path is None:
            continue
        path = Path(path).resolve()
        if path == out or (overwrite and out in path.parents):
            raise UsageError(f"--output_dir {output_dir} is (or holds) the {flag} directory {path}: the run would "
                             "overwrite its own input; choose another --output_dir")


def check_task_data(task: str, data_dir: Path, splits: Sequence[str], skip_bad_rows: bool) -> None:
    """Every row of the splits' TSV files parses (or ``skip_bad_rows``); nothing is tokenized."""
    processor = glue.get_processor(task)
    for split in splits:
        processor.read_split(data_dir, split, skip_bad_rows)


def check_training_inputs(output_dir: Path, overwrite: bool, student: ModelDir, teacher: ModelDir,
                          resume: Optional[Path]) -> None:
    """All checks of a distillation run that need no model: teacher weights, vocabularies, the student
    (or the checkpoint to resume from), and that no input is the output dir."""
    check_not_an_input(output_dir, overwrite, {student.flag: student.directory, teacher.flag: teacher.directory})
    check_teacher_weights(teacher)
    check_vocabularies(student.directory, teacher.directory)
    source = resume or student.directory
    shapes = check_student_weights(source)
    check_fit_dense(shapes, student.config.hidden_size, teacher.config.hidden_size, find_weights(source) or source)


def check_eval_inputs(student: ModelDir, task: str, data_dir: Path, skip_bad_rows: bool, dev: bool = True) -> None:
    """--do_eval / --do_predict: a trained student with intact weights, and readable dev data (``dev``)."""
    check_student_weights(student.directory, student.flag, need_weights=True)
    if dev:
        check_task_data(task, data_dir, dev_splits(task), skip_bad_rows)
