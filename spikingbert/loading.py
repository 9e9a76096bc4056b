"""What a stage loads — tokenizer, teacher, student — with errors that name the flag, and the checks that
teacher and student fit each other (layer map, vocabulary, sequence length, ``fit_dense`` width)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

from torch import nn

from models.configuration import SpikingBertConfig, SpikingConfigError
from models.init_from_teacher import init_student_from_teacher
from models.modeling_utils import find_weights
from transformer.configuration import BertConfig
from transformer.file_utils import ModelLoadError
from transformer.tokenization import BertTokenizer

from .errors import UsageError, UserError
from .glue import TaskInfo
from .losses import layer_stride

__all__ = [
    "flagged",
    "load_tokenizer",
    "task_tokenizer",
    "teacher_config",
    "load_teacher",
    "student_config",
    "load_student",
    "fit_size_override",
    "check_compatibility",
    "check_seq_length",
    "maybe_init_from_teacher",
    "lower_case_setting",
    "describe_model",
]

logger = logging.getLogger(__name__)


def flagged(flag: str, location, err: ModelLoadError) -> UserError:
    """``err`` (a model, config or vocabulary problem) as a `UserError` naming ``flag``, with its exit status (2 for
    a config field or a vocabulary that cannot work, 1 for a file that cannot be read or fetched)."""
    cls = UsageError if getattr(err, "exit_code", 1) == 2 else UserError
    return cls(f"{flag} {location}: {err}")


def load_tokenizer(path, flag: str, do_lower_case: bool) -> BertTokenizer:
    try:
        return BertTokenizer.from_pretrained(path, do_lower_case=do_lower_case)
    except ModelLoadError as err:
        raise flagged(flag, path, err) from err


def task_tokenizer(student_dir: Path, teacher_model: Optional[str], do_lower_case: bool) -> BertTokenizer:
    """The student's vocab.txt when it has one, else the teacher's."""
    if (student_dir / "vocab.txt").is_file():
        return load_tokenizer(student_dir, "--spiking_student_model", do_lower_case)
    if teacher_model is None:
        raise UsageError(f"--spiking_student_model {student_dir} has no vocab.txt: add the "
                         "vocabulary the student was trained with")
    return load_tokenizer(teacher_model, "--teacher_model", do_lower_case)


def teacher_config(path: str, flag: str = "--teacher_model") -> BertConfig:
    try:
        return BertConfig.from_pretrained(path)
    except ModelLoadError as err:
        raise flagged(flag, path, err) from err


def load_teacher(cls, path: str, flag: str = "--teacher_model", **kwargs) -> nn.Module:
    try:
        return cls.from_pretrained(path, **kwargs)
    except ModelLoadError as err:
        raise flagged(flag, path, err) from err


def student_config(path: Path, flag: str, **overrides) -> SpikingBertConfig:
    try:
        return SpikingBertConfig.from_pretrained(path, **overrides)
    except SpikingConfigError as err:
        raise UsageError(f"{flag} {path}: {err}") from err


def load_student(cls, path: Path, flag: str, **overrides):
    try:
        return cls.from_pretrained(path, **overrides)
    except SpikingConfigError as err:
        raise UsageError(f"{flag} {path}: {err}") from err
    except ModelLoadError as err:
        raise flagged(flag, path, err) from err


def fit_size_override(student_dir: Path, teacher_hidden: int) -> Dict[str, int]:
    """``fit_size`` for a new student; a saved student must already project to the teacher's width."""
    if find_weights(student_dir) is None:
        return {"fit_size": teacher_hidden}
    fit_size = student_config(student_dir, "--spiking_student_model").fit_size
    if fit_size != teacher_hidden:
        raise UsageError(f"--spiking_student_model {student_dir} projects to width {fit_size} (fit_size) but the "
                         f"teacher's hidden size is {teacher_hidden}: use the teacher it was distilled from")
    return {}


def check_compatibility(teacher: BertConfig, student: SpikingBertConfig, tokenizer, max_seq_length: int,
                        source: Optional[str] = None) -> int:
    """Layer map, vocabulary and sequence length that teacher and student can both handle; returns k.
    ``source`` names where the sequence length comes from when it is not ``--max_seq_length``."""
    stride = layer_stride(teacher.num_hidden_layers, student.num_hidden_layers)
    if len(tokenizer.vocab) > student.vocab_size:
        raise UsageError(f"the vocabulary has {len(tokenizer.vocab)} tokens but the student's config.json has "
                         f"vocab_size {student.vocab_size}: set vocab_size to at least {len(tokenizer.vocab)}")
    if len(tokenizer.vocab) > teacher.vocab_size:
        raise UsageError(f"the vocabulary has {len(tokenizer.vocab)} tokens but the --teacher_model config.json has "
                         f"vocab_size {teacher.vocab_size}: use the vocab.txt the teacher was trained with")
    check_seq_length(max_seq_length, student.max_position_embeddings, "--spiking_student_model", source)
    check_seq_length(max_seq_length, teacher.max_position_embeddings, "--teacher_model", source)
    return stride


def check_seq_length(max_seq_length: int, positions: int, flag: str, source: Optional[str] = None) -> None:
    """``max_seq_length`` fits the model's positions; ``source`` (e.g. the pregenerated data) names where the length
    comes from when it is not ``--max_seq_length``."""
    if max_seq_length <= positions:
        return
    if source is None:
        raise UsageError(f"sequences of {max_seq_length} tokens do not fit the {flag} model "
                         f"(max_position_embeddings {positions}): pass --max_seq_length {positions} or less")
    raise UsageError(f"{source} has sequences of {max_seq_length} tokens, which do not fit the {flag} model "
                     f"(max_position_embeddings {positions}): regenerate the data with preprocess_training_data.py "
                     f"--max_seq_len {positions} or less (--max_seq_length does not apply to general distillation)")


def maybe_init_from_teacher(enabled: bool, student: nn.Module, teacher: nn.Module, stride: int, source: Path,
                            resume: Optional[Path]) -> Optional[int]:
    """``--init_from_teacher`` for a new student (no weights, not resuming); returns the tensors copied."""
    if not enabled:
        return None
    if resume is not None or find_weights(source) is not None:
        logger.warning("--init_from_teacher ignored: %s already holds trained weights",
                       resume if resume is not None else source)
        return None
    return len(init_student_from_teacher(student, teacher, stride))


def _recorded(config: Any, name: str) -> Any:
    """A metadata field of a student config (an attribute) or of a teacher config (kept in ``extra``)."""
    value = getattr(config, name, None)
    return value if value is not None else getattr(config, "extra", {}).get(name)


def lower_case_setting(flag: Optional[bool], *configs: Any) -> bool:
    """``--do_lower_case`` when given, else what the first of ``configs`` that records it says, else False."""
    if flag is not None:
        return bool(flag)
    for config in configs:
        recorded = _recorded(config, "do_lower_case") if config is not None else None
        if recorded is not None:
            logger.info("do_lower_case %s (recorded in the model directory's config.json)", bool(recorded))
            return bool(recorded)
    return False


def describe_model(config: Any, do_lower_case: bool, max_seq_length: int, info: Optional[TaskInfo] = None) -> None:
    """Record in a model's config how its inputs were read (``do_lower_case``, ``max_seq_length``) and, with
    ``info``, what its outputs mean (``id2label`` / ``label2id``), so that the saved directory needs no flags to
    be used. A student config takes them as fields, a teacher's (Hugging Face format) in ``extra``."""
    values: Dict[str, Any] = {"do_lower_case": bool(do_lower_case), "max_seq_length": int(max_seq_length)}
    if info is not None:
        values.update(id2label=info.id2label, label2id=info.label2id)
    for name, value in values.items():
        if hasattr(config, name):
            setattr(config, name, value)
        else:
            config.extra[name] = value
