"""The run plan: a command line resolved once into typed, immutable settings that every stage runner shares.

`resolve_general`, `resolve_task` and `resolve_finetune` are the only functions that read a parsed command
line. They read the model directories it names once (`spikingbert.run.model_dirs.ModelDir`: config.json,
migrated for older directories), resolve what the flags leave open (the lower-casing the directories
record, the per-task sequence length and epochs, the save interval) and return a `RunPlan`; everything
below takes the plan or plain values.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Tuple

from spikingbert.cli.flags import ignored_flags
from spikingbert.data import glue
from spikingbert.models.configuration import SpikingBertConfig
from spikingbert.training.stage import TrainerConfig
from spikingbert.transformer.configuration import BertConfig

from .model_dirs import ModelDir, read_model_dir

__all__ = ["Devices", "OutputSpec", "Schedule", "EvaluationSpec", "RunPlan", "resolve_general", "resolve_task",
           "resolve_finetune", "lower_case_setting", "task_settings"]

logger = logging.getLogger(__name__)

#: The spiking flags: student-config overrides (None: keep the config's value).
SPIKING_FLAGS = ("t_conv", "vth", "leak", "ide_point", "feedback", "train_mode")
#: Epochs of prediction distillation when --num_train_epochs is not given.
PREDICTION_EPOCHS = 3.0


@dataclass(frozen=True)
class Devices:
    """Where the run executes: ``--no_cuda``, ``--local_rank``, ``--fp16``, and ``--debug`` logging."""

    no_cuda: bool = False
    local_rank: int = -1
    fp16: bool = False
    debug: bool = False


@dataclass(frozen=True)
class OutputSpec:
    """``--output_dir`` and what may happen to it."""

    path: Path
    continue_train: bool = False
    overwrite: bool = False
    allow_changed_settings: bool = False


@dataclass(frozen=True)
class Schedule:
    """How a training stage trains: BertAdam's settings and the training loop's (`TrainerConfig`)."""

    learning_rate: float
    warmup_proportion: float
    weight_decay: float
    lr_schedule: str                      # "warmup_linear" or "none"
    loop: TrainerConfig
    group_by_length: bool = False


@dataclass(frozen=True)
class EvaluationSpec:
    """Evaluation: batch size; for ``--do_eval`` (``dev``) the report and adaptive T (`models.stopping`): a margin
    of the user's (``adaptive_t``, with ``adaptive_window`` and ``adaptive_min_steps``) or one chosen on the dev set
    for an accuracy budget in points (``adaptive_budget``); ``test``: ``--do_predict``, the test split(s) labelled
    for a GLUE submission."""

    batch_size: int
    report: bool = False
    adaptive_t: Optional[float] = None
    adaptive_budget: Optional[float] = None
    adaptive_window: int = 1
    adaptive_min_steps: int = 1
    dev: bool = True
    test: bool = False

    @property
    def adaptive(self) -> bool:
        return self.adaptive_t is not None or self.adaptive_budget is not None


@dataclass(frozen=True)
class RunPlan:
    """One stage's resolved settings (see the module docstring).

    ``stage``: ``general``, ``intermediate``, ``prediction``, ``evaluation`` or ``finetune``. ``student`` and
    ``teacher`` (fine-tuning: the BERT being fine-tuned) are the model directories the command line names.
    ``flags``: the command line as given, for ``args.json`` and the comparison on ``--continue_train``;
    ``notes``: where resolved values came from (logged by the runner).
    """

    stage: str
    output: OutputSpec
    devices: Devices
    flags: Mapping[str, Any]
    student: Optional[ModelDir] = None
    teacher: Optional[ModelDir] = None
    spiking: Mapping[str, Any] = field(default_factory=dict)
    do_lower_case: bool = False
    max_seq_length: Optional[int] = None
    task: Optional[str] = None
    data_dir: Optional[Path] = None
    train_split: str = "train"
    cache_dir: Optional[Path] = None
    skip_bad_rows: bool = False
    pregenerated: Optional[Path] = None
    reduce_memory: bool = False
    init_from_teacher: bool = False
    temperature: float = 1.0
    true_labels: bool = False
    training: Optional[Schedule] = None
    evaluation: Optional[EvaluationSpec] = None
    notes: Tuple[str, ...] = ()
    ignored: Tuple[str, ...] = ()

    @property
    def prediction(self) -> bool:
        return self.stage == "prediction"


def _flags(args: argparse.Namespace) -> Mapping[str, Any]:
    return MappingProxyType({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})


def _common(args: argparse.Namespace) -> Dict[str, Any]:
    """The plan fields every distillation command line sets the same way."""
    return dict(
        output=OutputSpec(args.output_dir, args.continue_train, args.overwrite_output_dir, args.allow_changed_settings),
        devices=Devices(args.no_cuda, args.local_rank, args.fp16, args.debug), flags=_flags(args),
        spiking=MappingProxyType({k: getattr(args, k) for k in SPIKING_FLAGS if getattr(args, k, None) is not None}),
        ignored=tuple(ignored_flags(args)))


def _schedule(args: argparse.Namespace, lr_schedule: str, epochs: float, eval_steps: int) -> Schedule:
    loop = TrainerConfig(output_dir=args.output_dir, train_batch_size=args.train_batch_size, num_train_epochs=epochs,
                         gradient_accumulation_steps=args.gradient_accumulation_steps, max_steps=args.max_steps,
                         save_steps=args.save_steps, save_total_limit=args.save_total_limit, eval_steps=eval_steps,
                         logging_steps=getattr(args, "logging_steps", 50), seed=args.seed,
                         skip_nan_batches=getattr(args, "skip_nan_batches", 0), report_to=args.report_to)
    return Schedule(args.learning_rate, args.warmup_proportion, args.weight_decay, lr_schedule, loop,
                    getattr(args, "group_by_length", False))


def lower_case_setting(flag: Optional[bool], *models: Optional[ModelDir]) -> bool:
    """``--do_lower_case`` when given, else what the first model directory that records it says, else False."""
    if flag is not None:
        return bool(flag)
    for model in models:
        recorded = model.values.get("do_lower_case") if model is not None else None
        if recorded is not None:
            logger.info("do_lower_case %s (recorded in the model directory's config.json)", bool(recorded))
            return bool(recorded)
    return False


def task_settings(task: str, max_seq_length: Optional[int], num_train_epochs: Optional[float], evaluation: bool,
                  prediction: bool) -> Tuple[int, float, List[str]]:
    """``--max_seq_length`` and ``--num_train_epochs`` with the per-task defaults where the flag was not given;
    returns the two values (0 epochs for an ``evaluation``) and one line per value saying where it came from."""
    defaults = glue.default_task_settings(task)
    if max_seq_length is None:
        max_seq_length = defaults.max_seq_length
        notes = [f"max_seq_length {max_seq_length} (default for {task})"]
    else:
        notes = [f"max_seq_length {max_seq_length} (--max_seq_length)"]
    if evaluation:
        return max_seq_length, 0.0, notes
    if num_train_epochs is not None:
        epochs = num_train_epochs
        notes.append(f"num_train_epochs {epochs:g} (--num_train_epochs)")
    elif prediction:
        epochs = PREDICTION_EPOCHS
        notes.append(f"num_train_epochs {epochs:g} (default for prediction distillation)")
    else:
        epochs = float(defaults.num_train_epochs)
        notes.append(f"num_train_epochs {epochs:g} (default for {task} intermediate distillation)")
    return max_seq_length, epochs, notes


def resolve_general(args: argparse.Namespace) -> RunPlan:
    """General KD's plan (the pregenerated data fixes the sequence length: see the runner)."""
    student = read_model_dir(args.spiking_student_model, "--spiking_student_model", SpikingBertConfig)
    teacher = read_model_dir(args.teacher_model, "--teacher_model", BertConfig)
    return RunPlan(stage="general", **_common(args), student=student, teacher=teacher,
                   do_lower_case=lower_case_setting(args.do_lower_case, student, teacher),
                   pregenerated=args.pregenerated_data, reduce_memory=args.reduce_memory,
                   init_from_teacher=args.init_from_teacher,
                   training=_schedule(args, "warmup_linear", args.num_train_epochs, 0))


def resolve_task(args: argparse.Namespace) -> RunPlan:
    """Task KD's plan: intermediate (default), prediction (``--pred_distill`` / ``--train_true_labels``) or, with
    ``--do_eval`` / ``--do_predict``, the evaluation of a trained student (its recorded sequence length unless the
    flag is given)."""
    task = glue.canonical_task_name(args.task_name)
    student = read_model_dir(args.spiking_student_model, "--spiking_student_model", SpikingBertConfig)
    data = dict(task=task, data_dir=args.data_dir, cache_dir=args.cache_dir, skip_bad_rows=args.skip_bad_rows)
    if args.do_eval or args.do_predict:
        recorded = student.config.max_seq_length if args.max_seq_length is None else None
        length, _, notes = ((recorded, 0.0, [f"max_seq_length {recorded} (recorded in the student's config.json)"])
                            if recorded is not None else task_settings(task, args.max_seq_length, None, True, True))
        return RunPlan(stage="evaluation", **_common(args), **data, student=student,
                       teacher=read_model_dir(args.teacher_model, "--teacher_model", BertConfig)
                       if args.teacher_model is not None else None,
                       do_lower_case=lower_case_setting(args.do_lower_case, student),
                       max_seq_length=length, notes=tuple(notes),
                       evaluation=EvaluationSpec(args.eval_batch_size, args.report, args.adaptive_t,
                                                 args.adaptive_budget, args.adaptive_window,
                                                 args.adaptive_min_steps, dev=args.do_eval, test=args.do_predict))
    prediction = args.pred_distill or args.train_true_labels
    teacher = read_model_dir(args.teacher_model, "--teacher_model", BertConfig)
    length, epochs, notes = task_settings(task, args.max_seq_length, args.num_train_epochs, False, prediction)
    return RunPlan(stage="prediction" if prediction else "intermediate", **_common(args), **data, student=student,
                   teacher=teacher, do_lower_case=lower_case_setting(args.do_lower_case, student, teacher),
                   max_seq_length=length, notes=tuple(notes), train_split="aug" if args.aug_train else "train",
                   init_from_teacher=args.init_from_teacher, temperature=args.temperature,
                   true_labels=args.train_true_labels,
                   training=_schedule(args, "warmup_linear" if prediction else "none", epochs,
                                      args.eval_step if prediction else 0),
                   evaluation=EvaluationSpec(args.eval_batch_size))


def resolve_finetune(args: argparse.Namespace) -> RunPlan:
    """The teacher fine-tuning's plan (``apps.finetune``): ``--bert_model`` is the model being trained."""
    task = glue.canonical_task_name(args.task_name)
    bert = read_model_dir(args.bert_model, "--bert_model", BertConfig)
    length = args.max_seq_length or glue.default_task_settings(task).max_seq_length
    return RunPlan(stage="finetune", output=OutputSpec(args.output_dir, args.continue_train, args.overwrite_output_dir,
                                                       args.allow_changed_settings),
                   devices=Devices(args.no_cuda, args.local_rank, args.fp16, args.debug), flags=_flags(args),
                   teacher=bert, do_lower_case=lower_case_setting(args.do_lower_case, bert), max_seq_length=length,
                   task=task, data_dir=args.data_dir, cache_dir=args.cache_dir, skip_bad_rows=args.skip_bad_rows,
                   training=_schedule(args, "warmup_linear", args.num_train_epochs, args.eval_step),
                   evaluation=EvaluationSpec(args.eval_batch_size))
