"""The distillation stages, each a recipe: resolve the command line into a plan, check the inputs, run, report.

* `run_general_distillation`: general KD on pregenerated data (intermediate loss, warm-up linear schedule).
* `run_task_distillation`: task intermediate KD (constant LR, per-task defaults) or prediction KD
  (``--pred_distill``: soft cross-entropy, dev evaluation, best model kept), or ``--do_eval``
  (`spikingbert.run.evaluate`).

Each training stage builds a `spikingbert.training.trainer.Stage` and hands it to the shared `Trainer`.
The plan (`spikingbert.run.plan`) is the only thing read from the command line; the checks
(`spikingbert.run.checks`, `check_run`) read cheap files only and come before any model is loaded or the
output directory is touched.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from torch import nn
from torch.utils.data import Dataset

from spikingbert.core.files import atomic_write_json, read_json
from spikingbert.data import glue
from spikingbert.data.pregenerated import PregeneratedEpochs
from spikingbert.evaluation.dev import (
    LogitsOnly,
    chance_level,
    chance_name,
    dev_splits,
    evaluate_task,
    labels_of,
)
from spikingbert.models.configuration import SpikingBertConfig
from spikingbert.models.spiking_bert import SpikingBertForDistillation, SpikingBertForSequenceClassification
from spikingbert.runtime import Runtime, set_seed
from spikingbert.training.checkpoint import load_training_state
from spikingbert.training.objectives import (
    IntermediateDistillation,
    PredictionDistillation,
    TeacherOutputs,
    build_optimizer,
    teacher_forward,
)
from spikingbert.training.stage import Stage
from spikingbert.training.trainer import Trainer

from . import checks
from .evaluate import run_evaluation
from .memory import check_run_memory
from .model_card import write_model_card
from .model_dirs import check_compatibility, describe_model, init_from_teacher, read_model_dir
from .output import OutputDir, TaskData, length_grouping, session, write_args_json
from .plan import RunPlan, resolve_general, resolve_task
from .resume import check_resume_settings

__all__ = ["run_general_distillation", "run_task_distillation"]

logger = logging.getLogger(__name__)

#: Margin above the chance level under which a teacher's dev score triggers a warning.
CHANCE_MARGIN = 0.05


def run_general_distillation(args: argparse.Namespace) -> int:
    """General KD: intermediate loss on pregenerated data, BertAdam with warm-up linear schedule."""
    from spikingbert.transformer.modeling import BertForPreTraining

    plan = resolve_general(args)
    output = OutputDir(plan.output.path, plan.output.continue_train, plan.output.overwrite)
    with session(plan.devices) as runtime, output:
        for flag in plan.ignored:
            logger.warning("%s has no effect in general distillation (there is no dev set); evaluate task "
                           "students with spiking_bert_task_distill.py --do_eval", flag)
        micro_batch = plan.training.loop.micro_batch_size(runtime.world_size)
        tokenizer = plan.teacher.tokenizer(plan.do_lower_case)
        with PregeneratedEpochs(plan.pregenerated, tokenizer, plan.reduce_memory) as data:
            if data.seq_len != plan.flags["max_seq_length"]:
                logger.info("the pregenerated data has sequences of %d tokens (--max_seq_length %d is not used)",
                            data.seq_len, plan.flags["max_seq_length"])
            stride = check_compatibility(plan.teacher.config, plan.student.config, tokenizer, data.seq_len,
                                         source=f"--pregenerated_data {plan.pregenerated}")
            resume = check_run(plan, runtime, output, micro_batch, data.seq_len, {"stage": "general"},
                               "the pregenerated data's sequence length (preprocess_training_data.py --max_seq_len)")
            data.check()
            set_seed(plan.training.loop.seed)
            teacher, student, copied = _load_models(plan, runtime, BertForPreTraining, SpikingBertForDistillation,
                                                    resume, stride)
            describe_model(student.config, tokenizer.do_lower_case, data.seq_len, stage="general")
            output.prepare(runtime, plan.devices.debug)     # only now, so that a failed start leaves no output dir
            if plan.training.loop.num_train_epochs > data.num_data_epochs:
                logger.warning("%d epochs of pregenerated data for %g training epochs: epochs will be reused",
                               data.num_data_epochs, plan.training.loop.num_train_epochs)
            stage = Stage(
                student=student, objective=IntermediateDistillation(student, stride).to(runtime.device),
                make_optimizer=_optimizer(plan, student), train_dataset=data.dataset,
                num_train_examples=data.num_examples,
                save_student=lambda d: student.save_pretrained(d, vocab_file=tokenizer.vocab_file),
                teacher_forward=_teacher_intermediate(runtime, teacher), describe={"stage": "general"},
                title="general KD")
            write_args_json(plan.output.path, runtime, plan.flags, stage="general",
                            do_lower_case_used=tokenizer.do_lower_case, layer_stride=stride,
                            resumed_from=str(resume) if resume else None, init_from_teacher_tensors=copied)
            Trainer(plan.training.loop, runtime, stage, resume).train()
        if runtime.is_main:
            write_model_card(plan.output.path)
    return 0


def check_run(plan: RunPlan, runtime: Runtime, output: OutputDir, micro_batch: int, seq_len: int,
              resolved: Dict[str, Any], length_knob: str = "--max_seq_length") -> Optional[Path]:
    """A training stage's checks once the plan is resolved: the output dir and the settings of a run to resume, the
    task's TSV rows, the weights files and vocabularies, the memory. Returns the checkpoint to resume from."""
    resume = output.check(runtime)
    if resume is not None:
        load_training_state(resume, mmap=True)            # the checkpoint itself first: complete and safe to load
        check_resume_settings(plan.output.path, plan.flags, resolved, resume, plan.output.allow_changed_settings)
    if plan.task is not None:
        checks.check_task_data(plan.task, plan.data_dir, [plan.train_split, *dev_splits(plan.task)],
                               plan.skip_bad_rows)
    checks.check_training_inputs(plan.output.path, plan.output.overwrite, plan.student, plan.teacher, resume)
    student = (read_model_dir(resume, plan.student.flag, SpikingBertConfig) if resume else plan.student)
    check_run_memory(runtime, student.configured(**plan.spiking), plan.teacher.config, micro_batch,
                     plan.evaluation.batch_size if plan.prediction else 0, seq_len, length_knob)
    return resume


def _load_models(plan: RunPlan, runtime: Runtime, teacher_cls: type, student_cls: type, resume: Optional[Path],
                 stride: int, **head: Any) -> Tuple[nn.Module, nn.Module, Optional[int]]:
    """Teacher (frozen, eval) and student (from ``resume`` when resuming) on the device; a new student starts from
    the teacher's layers with ``--init_from_teacher``. Returns them and the number of tensors copied (or None)."""
    teacher = plan.teacher.load(teacher_cls, **head)
    trained = resume or plan.student.weights_file
    fit = {} if trained is not None else {"fit_size": teacher.config.hidden_size}
    student = plan.student.load(student_cls, weights_from=resume, **head, **plan.spiking, **fit)
    copied = init_from_teacher(student, teacher, stride, trained) if plan.init_from_teacher else None
    student.to(runtime.device)
    teacher.to(runtime.device).eval().requires_grad_(False)
    return teacher, student, copied


def _optimizer(plan: RunPlan, model: nn.Module):
    """`Stage.make_optimizer`: BertAdam over ``model`` with the plan's schedule, for a number of total steps."""
    s = plan.training
    return lambda total: build_optimizer(model, s.learning_rate, s.warmup_proportion, s.weight_decay, s.lr_schedule,
                                         total)


def _teacher_intermediate(runtime: Runtime, teacher: nn.Module):
    """`Stage.teacher_forward` giving the teacher's hidden states and attention scores."""
    return teacher_forward(runtime.wrap_frozen(TeacherOutputs(teacher, "intermediate").eval()))


# ------------------------------------------------------------------------------------------ task KD / eval

def run_task_distillation(args: argparse.Namespace) -> int:
    """Task IKD (default), prediction KD (``--pred_distill`` / ``--train_true_labels``), or ``--do_eval`` /
    ``--do_predict``."""
    plan = resolve_task(args)
    with session(plan.devices) as runtime:
        for flag in plan.ignored:
            logger.warning("%s is accepted for compatibility with the published scripts and has no effect", flag)
        if plan.stage == "evaluation":
            if args.pred_distill or args.train_true_labels:
                logger.warning("--do_eval/--do_predict only evaluate: --pred_distill/--train_true_labels are ignored")
            return run_evaluation(plan, runtime)
        with OutputDir(plan.output.path, plan.output.continue_train, plan.output.overwrite) as output:
            return run_task_training(plan, runtime, output)


def run_task_training(plan: RunPlan, runtime: Runtime, output: OutputDir) -> int:
    """Task IKD, or prediction KD (soft cross-entropy to the teacher, or the gold labels with ``true_labels``)."""
    from spikingbert.transformer.modeling import BertForSequenceClassification

    processor = glue.get_processor(plan.task)
    micro_batch = plan.training.loop.micro_batch_size(runtime.world_size)
    tokenizer = (plan.student if plan.student.vocab_file is not None else plan.teacher).tokenizer(plan.do_lower_case)
    stride = check_compatibility(plan.teacher.config, plan.student.config, tokenizer, plan.max_seq_length)
    resume = check_run(plan, runtime, output, micro_batch, plan.max_seq_length,
                       {"max_seq_length_used": plan.max_seq_length})
    set_seed(plan.training.loop.seed)
    teacher, student, copied = _load_models(plan, runtime, BertForSequenceClassification,
                                            SpikingBertForSequenceClassification, resume, stride,
                                            num_labels=processor.num_labels)
    info = glue.task_info(plan.task, plan.data_dir)
    describe_model(student.config, tokenizer.do_lower_case, plan.max_seq_length, info, stage=plan.stage)
    data = TaskData(plan.task, plan.data_dir, tokenizer, plan.max_seq_length, plan.cache_dir, plan.skip_bad_rows)
    train_set, dev_sets = data.load(plan.train_split), data.dev_sets()
    output.prepare(runtime, plan.devices.debug)         # only now, so that a failed start leaves no output dir
    for note in plan.notes:
        logger.info(note)
    teacher_results = _teacher_dev_score(plan, runtime, processor.output_mode, teacher, dev_sets)
    stage = _task_stage(plan, runtime, processor.output_mode, student, teacher, stride, train_set, dev_sets,
                        tokenizer.vocab_file, info)
    metric = glue.main_metric(plan.task)
    stage.references = {name: teacher_results[key] for name, key in
                        (("teacher", metric), (chance_name(metric), f"chance_{metric}")) if key in teacher_results}
    write_args_json(plan.output.path, runtime, plan.flags, stage=plan.stage, task=plan.task,
                    do_lower_case_used=tokenizer.do_lower_case, max_seq_length_used=plan.max_seq_length,
                    num_train_epochs_used=plan.training.loop.num_train_epochs, layer_stride=stride,
                    teacher_dev=teacher_results, resumed_from=str(resume) if resume else None,
                    init_from_teacher_tensors=copied)
    summary = Trainer(plan.training.loop, runtime, stage, resume).train()
    if runtime.is_main:
        write_model_card(plan.output.path)
    if plan.prediction and summary.best_step is not None:
        logger.info("best dev %s %.4f at step %d (teacher: %.4f); best student in %s", stage.main_metric,
                    summary.best_metric, summary.best_step, teacher_results.get(stage.main_metric, math.nan),
                    plan.output.path)
    return 0


def _task_stage(plan: RunPlan, runtime: Runtime, output_mode: str, student: nn.Module, teacher: nn.Module,
                stride: int, train_set: Dataset, dev_sets: Dict[str, Dataset], vocab_file: Path,
                info: glue.TaskInfo) -> Stage:
    """The `Stage` of task IKD (att/rep losses to the teacher) or prediction KD (logits, dev evaluation)."""
    if plan.prediction:
        objective = PredictionDistillation(student, output_mode, plan.temperature, plan.true_labels)
        frozen = (teacher_forward(runtime.wrap_frozen(TeacherOutputs(teacher, "logits").eval()))
                  if objective.needs_teacher else None)
        eval_model = LogitsOnly(student)

        def evaluate() -> Dict[str, float]:
            return evaluate_task(runtime.wrap_frozen(eval_model), plan.task, output_mode, dev_sets, runtime,
                                 plan.evaluation.batch_size)
    else:
        objective, evaluate = IntermediateDistillation(student, stride), None
        frozen = _teacher_intermediate(runtime, teacher)
    logger.info("task %s, %s distillation (target: %s), %d training examples (%s)", plan.task, plan.stage,
                "teacher" if frozen is not None else "gold labels", len(train_set), plan.train_split)
    example_lengths, collate = length_grouping(plan.training.group_by_length, train_set, trim=plan.prediction)
    return Stage(
        student=student, objective=objective.to(runtime.device), make_optimizer=_optimizer(plan, student),
        train_dataset=lambda epoch: train_set, num_train_examples=lambda epoch: len(train_set),
        save_student=lambda d: student.save_pretrained(d, vocab_file=vocab_file),
        teacher_forward=frozen, evaluate=evaluate, main_metric=glue.main_metric(plan.task) if plan.prediction else None,
        describe={"stage": plan.stage, "task": plan.task}, example_lengths=example_lengths, collate=collate,
        title=f"{plan.stage} KD, {info.display_name}")


def _teacher_dev_score(plan: RunPlan, runtime: Runtime, output_mode: str, teacher: nn.Module,
                       dev_sets: Dict[str, Dataset]) -> Dict[str, Any]:
    """The teacher's dev metrics, computed once per output dir (teacher_results.json, read back on resume) and
    logged."""
    path = plan.output.path / "teacher_results.json"
    if plan.output.continue_train and path.is_file():
        results = read_json(path, "results file")
        logger.info("teacher dev (from %s): %s", path.name, results)
        return results
    metrics = evaluate_task(runtime.wrap_frozen(LogitsOnly(teacher)), plan.task, output_mode, dev_sets, runtime,
                            plan.evaluation.batch_size)
    metric = glue.main_metric(plan.task)
    chance = chance_level(metric, labels_of(dev_sets["dev"]))
    results = {"task": plan.task, "teacher": plan.teacher.location, **metrics, "chance_" + metric: chance,
               "examples": len(dev_sets["dev"])}
    logger.info("teacher dev: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    if metrics[metric] <= chance + CHANCE_MARGIN:
        logger.warning("the teacher's dev %s %.4f is near chance (%.4f): check --teacher_model (is it fine-tuned "
                       "on %s? does its classifier head match?) before distilling", metric, metrics[metric],
                       chance, plan.task)
    if runtime.is_main:
        atomic_write_json(path, results)
    return results
