"""Checks of a run's inputs made before any model is loaded or data is read at length.

A typo or a damaged file should cost seconds, not the minutes it takes to load a
teacher: the stages in `spikingbert.distill` call these checks first. They read
only what is cheap to read: config.json files, vocab.txt files, the headers of
weight files (safetensors headers; the pickle index of a ``.bin``, with its tensors
memory-mapped, never read), the TSV files' rows, and the training state of the
checkpoint to resume from. Each problem raises a `UserError` naming the flag and
the file and saying what to do; nothing is written.
"""
from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from models.modeling_utils import find_weights
from transformer.file_utils import load_error_message

from . import glue
from .checkpoint import TRAINING_STATE_NAME, load_training_state
from .errors import UsageError, UserError

__all__ = [
    "WeightsFileError",
    "StudentFiles",
    "weight_shapes",
    "check_student_dir",
    "check_teacher_dir",
    "check_vocabularies",
    "check_vocabulary_size",
    "check_fit_dense",
    "check_not_an_input",
    "check_task_data",
    "check_training_inputs",
    "check_eval_inputs",
]

logger = logging.getLogger(__name__)

#: Files that only a training run writes: a directory holding them but no weights is an unfinished run.
RUN_OUTPUT_MARKERS = (TRAINING_STATE_NAME, "args.json", "metrics.jsonl")


class WeightsFileError(UserError):
    """A weights file is truncated, damaged, not a flat dict of tensors, or needs unsafe unpickling."""


@dataclass
class StudentFiles:
    """What the checks found in a student directory.

    Attributes:
        directory: the directory checked.
        weights: its weights file, or None for a config-only (new) student.
        shapes: tensor name -> shape of the weights file (empty without one).
    """

    directory: Path
    weights: Optional[Path]
    shapes: Dict[str, Tuple[int, ...]]


def weight_shapes(path: Path, flag: str) -> Dict[str, Tuple[int, ...]]:
    """Tensor name -> shape of a weights file, without reading the tensors' data.

    safetensors: the header is parsed and checked against the file size (a truncated file
    fails). ``.bin``: loaded with ``weights_only=True`` (the pickle is never allowed to
    build anything but tensors and containers) and, for the zip format, ``mmap=True``.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # refused pickles; safetensors, zip and OS errors of a truncated or damaged file
        raise WeightsFileError(f"{flag}: " + load_error_message(path, err, "it is truncated or damaged; replace it "
                                                                "with an intact copy (or use the checkpoint before "
                                                                "it)")) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(f"{flag}: {path} does not hold a flat dict of tensors; save the model's state_dict()")
    return {key: tuple(value.shape) for key, value in state.items()}


def check_student_dir(directory: Path, flag: str = "--spiking_student_model",
                      need_weights: bool = False) -> StudentFiles:
    """Check a student directory's weights file (if any) without loading it.

    A directory without weights is a new student, unless ``need_weights`` or it is the
    output of a training run (it then lacks what the run had not written yet).
    """
    directory = Path(directory)
    weights = find_weights(directory)
    if weights is None:
        if need_weights:
            raise UsageError(f"{flag} {directory} has no model.safetensors: --do_eval needs a trained student, "
                             "e.g. the --output_dir of a finished --pred_distill run")
        markers = [name for name in RUN_OUTPUT_MARKERS if (directory / name).is_file()]
        if markers:
            raise UsageError(f"{flag} {directory} holds the output of a training run ({markers[0]}) but no "
                             "model.safetensors: finish that run with --continue_train, or pass one of its "
                             "complete checkpoint-N directories")
        return StudentFiles(directory, None, {})
    return StudentFiles(directory, weights, weight_shapes(weights, flag))


def check_teacher_dir(location: str, flag: str = "--teacher_model") -> Path:
    """The local directory of a BERT (``--teacher_model``; downloaded first for a URL), with its weights file
    checked."""
    from transformer.file_utils import ModelLoadError, cached_path

    try:
        directory = cached_path(location)
    except ModelLoadError as err:
        raise UserError(f"{flag} {location}: {err}") from err
    if not directory.is_dir():
        raise UsageError(f"{flag} {location} is not a directory: pass the directory of a saved BERT "
                         "(config.json, model.safetensors or pytorch_model.bin, vocab.txt)")
    weights = find_weights(directory)
    if weights is None:
        raise UsageError(f"{flag} {location} has neither model.safetensors nor pytorch_model.bin: pass the "
                         "directory of a saved BERT (config.json, weights, vocab.txt)")
    weight_shapes(weights, flag)
    return directory


def _read_vocab(path: Path) -> List[str]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
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


def check_vocabulary_size(tokenizer, vocab_size: int, model_dir: Path, flag: str = "--spiking_student_model") -> None:
    """The vocabulary must fit the model's ``vocab_size`` (ids beyond it have no embedding); a smaller one is
    reported, as a vocab.txt that lost lines shifts the id of every token after the gap."""
    tokens = len(tokenizer.vocab)
    if tokens > vocab_size:
        raise UsageError(f"{flag} {model_dir}: {tokenizer.vocab_file} has {tokens} tokens but config.json has "
                         f"vocab_size {vocab_size}: use the vocab.txt the model was trained with")
    if tokens < vocab_size:
        logger.warning("%s has %d tokens, config.json's vocab_size is %d: if lines are missing from vocab.txt, the ids "
                       "of all tokens after them are shifted", tokenizer.vocab_file, tokens, vocab_size)


def check_fit_dense(student: StudentFiles, student_hidden: int, teacher_hidden: int) -> None:
    """A saved student must project its rates to the teacher's hidden size (``fit_dense``)."""
    if student.weights is None:
        return                         # a new student gets fit_dense sized for the teacher
    shape = student.shapes.get("fit_dense.weight")
    if shape is None:
        if student_hidden != teacher_hidden:
            raise UsageError(f"--spiking_student_model {student.weights} has no fit_dense weights, and its hidden "
                             f"size {student_hidden} differs from the teacher's {teacher_hidden}: intermediate "
                             "distillation needs that projection; start from a student saved by this project")
        return
    if shape[0] != teacher_hidden:
        raise UsageError(f"--spiking_student_model {student.weights} projects to width {shape[0]} (fit_dense) but "
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


def _local_teacher(location: Optional[str]) -> Optional[Path]:
    if location is None or "://" in location:
        return None
    return Path(location)


def check_training_inputs(output_dir: Path, overwrite: bool, student_dir: Path, teacher_model: str,
                          student_hidden: int, teacher_hidden: int, resume: Optional[Path]) -> None:
    """All checks of a distillation run that need no model: teacher weights, vocabularies, the student
    (or the checkpoint to resume from), its training state, and that no input is the output dir."""
    check_not_an_input(output_dir, overwrite, {"--spiking_student_model": student_dir,
                                               "--teacher_model": _local_teacher(teacher_model)})
    teacher_dir = check_teacher_dir(teacher_model)
    check_vocabularies(student_dir, teacher_dir)
    student = check_student_dir(resume or student_dir)
    check_fit_dense(student, student_hidden, teacher_hidden)
    if resume is not None:
        load_training_state(resume, mmap=True)


def check_eval_inputs(student_dir: Path, task: str, data_dir: Path, splits: Sequence[str], skip_bad_rows: bool) -> None:
    """--do_eval: a trained student with intact weights, and readable dev data."""
    check_student_dir(student_dir, need_weights=True)
    check_task_data(task, data_dir, splits, skip_bad_rows)
