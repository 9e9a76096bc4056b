"""The one reader of model directories for every command: a directory named by a flag is read once into a
`ModelDir` (its local path, its ``config.json`` with the migrations of older directories applied, its
vocabulary and weights files); tokenizers and models are built from it, and problems are one line naming
the flag. Also the checks that teacher and student fit each other (layer map, vocabulary, sequence length,
``fit_dense`` width) and what a stage records in the directories it writes (`describe_model`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Sequence

from torch import nn

from spikingbert.core.errors import UsageError, UserError
from spikingbert.core.pretrained import CONFIG_NAME, VOCAB_NAME, ModelConfig, PreTrainedModel, model_directory
from spikingbert.core.weights import find_weights
from spikingbert.data import glue
from spikingbert.data.glue import TaskInfo
from spikingbert.models.configuration import SpikingBertConfig
from spikingbert.models.init_from_teacher import init_student_from_teacher
from spikingbert.models.migrations import migrate_student_config
from spikingbert.transformer.configuration import BertConfig
from spikingbert.transformer.tokenization import BertTokenizer

__all__ = ["ModelDir", "read_model_dir", "check_vocabulary_size", "layer_stride", "check_compatibility",
           "check_seq_length", "init_from_teacher", "describe_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelDir:
    """A model directory named by ``flag``, read once.

    Attributes:
        flag: the flag that named it (``--teacher_model``, ``--spiking_student_model``, ...).
        location: as given (a path, or a URL / s3:// path / archive / Hugging Face Hub name, then ``directory`` is
            its local copy).
        directory: the local directory.
        values: its config.json's fields (migrated for a student directory).
        config: ``values`` checked, as the config class of the model (no overrides).
        weights_file, vocab_file: its weights file and vocab.txt, None where it has none.
    """

    flag: str
    location: str
    directory: Path
    values: Mapping[str, Any]
    config: ModelConfig
    weights_file: Optional[Path]
    vocab_file: Optional[Path]

    def __str__(self) -> str:
        return self.location

    def configured(self, **overrides: Any) -> ModelConfig:
        """The config with ``overrides`` (None: keep the directory's value)."""
        try:
            return type(self.config).from_dict(dict(self.values), str(self.directory / CONFIG_NAME), **overrides)
        except UserError as err:
            raise err.about(f"{self.flag} {self.location}") from err

    def tokenizer(self, do_lower_case: bool) -> BertTokenizer:
        """A tokenizer of this directory's vocab.txt."""
        if self.vocab_file is None:
            raise UsageError(f"{self.flag} {self.location} has no {VOCAB_NAME}: add the vocabulary the model was "
                             "trained with")
        try:
            tokenizer = BertTokenizer(self.vocab_file, do_lower_case=do_lower_case)
        except UserError as err:
            raise err.about(f"{self.flag} {self.location}") from err
        check_vocabulary_size(tokenizer, self.config.vocab_size, self.location, self.flag)
        return tokenizer

    def load(self, cls: type, weights_from: Optional[Path] = None, **overrides: Any) -> PreTrainedModel:
        """The model ``cls`` of this directory (or of the checkpoint ``weights_from``, read now) with ``overrides``."""
        try:
            if weights_from is not None:
                return cls.from_pretrained(weights_from, config=read_model_dir(weights_from, self.flag,
                                                                               type(self.config)).configured(**overrides))
            return cls.from_pretrained(self.directory, config=self.configured(**overrides))
        except UserError as err:
            raise err.about(f"{self.flag} {weights_from or self.location}") from err


def read_model_dir(location: Any, flag: str, config_class: type) -> ModelDir:
    """Read the directory ``location`` names (downloaded first when remote): config.json (migrated and checked for a
    student), which weights and vocabulary files it has. Problems are one line naming ``flag``."""
    try:
        directory = model_directory(location)
        path = directory / CONFIG_NAME
        values = config_class.read_json(path)
        values = (migrate_student_config(values, directory, task_label_names)
                  if issubclass(config_class, SpikingBertConfig) else config_class.migrate(values, directory))
        config = config_class.from_dict(values, str(path))
    except UserError as err:
        raise err.about(f"{flag} {location}") from err
    vocab = directory / VOCAB_NAME
    return ModelDir(flag, str(location), directory, MappingProxyType(dict(values)), config, find_weights(directory),
                    vocab if vocab.is_file() else None)


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


def task_label_names(task: str, data_dir: Optional[Path]) -> Optional[Sequence[str]]:
    """The class names of a classification task (its ``task.json`` in ``data_dir``, else its GLUE names), None for an
    unknown task or a regression task (the migration of older student directories, `models.migrations`)."""
    try:
        info = glue.task_info(task, data_dir)
    except UserError:
        return None
    return info.label_names if info.output_mode == "classification" else None


def layer_stride(teacher_layers: int, student_layers: int) -> int:
    """``k = teacher_layers / student_layers``; a `UsageError` unless it is a positive integer."""
    if student_layers <= 0 or teacher_layers <= 0 or teacher_layers % student_layers != 0:
        raise UsageError(f"the teacher has {teacher_layers} layers and the student {student_layers}: the teacher's "
                         "layer count must be a whole multiple of the student's (change num_hidden_layers in the "
                         "--spiking_student_model config.json or use another --teacher_model)")
    return teacher_layers // student_layers


def check_compatibility(teacher: BertConfig, student: SpikingBertConfig, tokenizer: BertTokenizer, max_seq_length: int,
                        source: Optional[str] = None, attention: bool = True) -> int:
    """Layer map, vocabulary and sequence length that teacher and student can both handle (and, for the intermediate
    losses, ``attention``, attention maps of the same heads); returns k. ``source`` names where the sequence length
    comes from when it is not ``--max_seq_length``."""
    stride = layer_stride(teacher.num_hidden_layers, student.num_hidden_layers)
    if attention and teacher.num_attention_heads != student.num_attention_heads:
        raise UsageError(f"the teacher has {teacher.num_attention_heads} attention heads and the student "
                         f"{student.num_attention_heads}: intermediate distillation compares their attention maps head "
                         "by head; set num_attention_heads in the --spiking_student_model config.json to the "
                         "teacher's, or use another --teacher_model")
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


def init_from_teacher(student: nn.Module, teacher: nn.Module, stride: int, trained: Optional[Path]) -> Optional[int]:
    """``--init_from_teacher`` for a new student (``trained``: the weights it already has, or None); returns the
    number of tensors copied, None where it does not apply."""
    if trained is not None:
        logger.warning("--init_from_teacher ignored: %s already holds trained weights", trained)
        return None
    return len(init_student_from_teacher(student, teacher, stride))


def describe_model(config: Any, do_lower_case: bool, max_seq_length: int, info: Optional[TaskInfo] = None,
                   stage: Optional[str] = None) -> None:
    """Record in a model's config how its inputs were read (``do_lower_case``, ``max_seq_length``), with ``info`` what
    its outputs mean (``id2label`` / ``label2id``) and whether it reads sentence pairs (``text_pairs``), and the
    ``training_stage`` that wrote it (a student of the general or intermediate stage has an untrained classifier), so
    that the saved directory needs no flags to be used. A student config takes them as fields, a teacher's (Hugging
    Face format) in ``extra``."""
    values: Dict[str, Any] = {"do_lower_case": bool(do_lower_case), "max_seq_length": int(max_seq_length)}
    if info is not None:
        values.update(id2label=info.id2label, label2id=info.label2id, text_pairs=info.pairs)
    if stage is not None:
        values["training_stage"] = stage
    for name, value in values.items():
        if hasattr(config, name):
            setattr(config, name, value)
        else:
            config.extra[name] = value
