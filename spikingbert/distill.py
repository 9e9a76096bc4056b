"""The pipeline's stage runners, driven by the parsed command-line arguments.

* `run_general_distillation`: general KD on pregenerated data (intermediate loss,
  warm-up linear schedule).
* `run_task_distillation`: task intermediate KD (constant LR, per-task defaults) or
  prediction KD (``--pred_distill``, soft cross-entropy, dev evaluation, best model
  kept) through `run_task_training`, or ``--do_eval`` (evaluate a saved student on dev,
  optionally with the spike/energy report) through `run_task_evaluation`.

A runner reads the command line and wires the rooms below it, which take plain values:
`spikingbert.run_setup` (session, output dir, args.json, data), `spikingbert.loading`
(tokenizer, teacher, student), `spikingbert.preflight` (checks before anything is loaded),
`spikingbert.objectives` (what is minimised) and `spikingbert.evaluation`. Each training
stage builds a `spikingbert.trainer.Stage` and hands it to the shared `Trainer`.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional

from torch import nn
from torch.utils.data import DataLoader, Dataset

from models.spiking_bert import SpikingBertForDistillation, SpikingBertForSequenceClassification
from transformer.configuration import BertConfig
from transformer.file_utils import atomic_write_json

from . import glue, preflight
from .args import ignored_flags, spiking_settings, trainer_settings
from .evaluation import LogitsOnly, chance_level, dev_splits, evaluate_task, flatten, labels_of, print_table
from .loading import (
    check_compatibility,
    check_seq_length,
    describe_model,
    fit_size_override,
    load_student,
    load_teacher,
    load_tokenizer,
    lower_case_setting,
    maybe_init_from_teacher,
    student_config,
    task_tokenizer,
    teacher_config,
)
from .objectives import IntermediateDistillation, PredictionDistillation, TeacherOutputs, build_optimizer, teacher_forward
from .memory_check import check_memory, student_step_need, teacher_step_need
from .resume_settings import check_resume_settings
from .run_dir import check_output_location, claim_output_dir
from .run_setup import OutputDir, TaskData, length_grouping, micro_batch_size, resolve_task_settings, session, write_args_json
from .runtime import Runtime, set_seed
from .trainer import Stage, Trainer, TrainerConfig

__all__ = ["run_general_distillation", "run_task_distillation", "run_task_training", "run_task_evaluation"]

logger = logging.getLogger(__name__)

#: Margin above the chance level under which a teacher's dev score triggers a warning.
CHANCE_MARGIN = 0.05


def _load_models(runtime: Runtime, teacher_cls, student_cls, teacher_model: str, student_dir: Path,
                 resume: Optional[Path], stride: int, init_from_teacher: bool, overrides: Dict[str, Any],
                 **head: Any):
    """Teacher (frozen, eval) and student (from ``resume`` when resuming) on the device; the student starts from
    the teacher's layers with ``init_from_teacher``. Returns them and the number of tensors copied (or None)."""
    teacher = load_teacher(teacher_cls, teacher_model, **head)
    source = resume or student_dir
    student = load_student(student_cls, source, "--spiking_student_model", **head, **overrides,
                           **fit_size_override(source, teacher.config.hidden_size))
    copied = maybe_init_from_teacher(init_from_teacher, student, teacher, stride, student_dir, resume)
    student.to(runtime.device)
    teacher.to(runtime.device).eval().requires_grad_(False)
    return teacher, student, copied


# ------------------------------------------------------------------------------------------ general KD

def run_general_distillation(args: argparse.Namespace) -> int:
    """General KD: intermediate loss on pregenerated data, BertAdam with warm-up linear schedule."""
    from transformer.modeling import BertForPreTraining

    output = OutputDir(args.output_dir, args.continue_train, args.overwrite_output_dir)
    with session(args.no_cuda, args.local_rank, args.fp16, args.debug) as runtime, output:
        for flag in ignored_flags(args):
            logger.warning("%s has no effect in general distillation (there is no dev set); evaluate task "
                           "students with spiking_bert_task_distill.py --do_eval", flag)
        micro_batch = micro_batch_size(args.train_batch_size, args.gradient_accumulation_steps, runtime.world_size)
        tokenizer, data, stride, resume = _general_inputs(args, runtime, output, micro_batch)
        set_seed(args.seed)
        teacher, student, copied = _load_models(runtime, BertForPreTraining, SpikingBertForDistillation,
                                                args.teacher_model, args.spiking_student_model, resume, stride,
                                                args.init_from_teacher, spiking_settings(args))
        describe_model(student.config, tokenizer.do_lower_case, data.seq_len)
        output.prepare(runtime, args.debug)     # only now, so that a failed start leaves no output dir

        if args.num_train_epochs > data.num_data_epochs:
            logger.warning("%d epochs of pregenerated data for %g training epochs: epochs will be reused",
                           data.num_data_epochs, args.num_train_epochs)
        stage = Stage(
            student=student,
            objective=IntermediateDistillation(student, stride).to(runtime.device),
            make_optimizer=lambda total: build_optimizer(student, args.learning_rate, args.warmup_proportion,
                                                         args.weight_decay, "warmup_linear", total),
            train_dataset=data.dataset,
            num_train_examples=data.num_examples,
            save_student=lambda d: student.save_pretrained(d, vocab_file=tokenizer.vocab_file),
            teacher_forward=_teacher_intermediate(runtime, teacher),
            describe={"stage": "general"}, title="general KD",
        )
        write_args_json(args.output_dir, runtime, vars(args), stage="general", do_lower_case_used=tokenizer.do_lower_case,
                        layer_stride=stride, resumed_from=str(resume) if resume else None, init_from_teacher_tensors=copied)
        config = TrainerConfig(**trainer_settings(args), micro_batch_size=micro_batch,
                               num_train_epochs=args.num_train_epochs, eval_steps=0, resume_from=resume)
        Trainer(config, runtime, stage).train()
    return 0


def _general_inputs(args: argparse.Namespace, runtime: Runtime, output: OutputDir, micro_batch: int):
    """General KD's checks before any model is loaded or the output dir touched: vocabulary, student and teacher
    configs, the pregenerated data (its first epoch read in full), the output dir, the settings of a run to resume,
    the weights files and the memory. Returns the tokenizer, the data, the layer stride and the checkpoint to
    resume from."""
    from .pregenerated import PregeneratedEpochs

    student_cfg = student_config(args.spiking_student_model, "--spiking_student_model")
    teacher_cfg = teacher_config(args.teacher_model)
    tokenizer = load_tokenizer(args.teacher_model, "--teacher_model",
                               lower_case_setting(args.do_lower_case, student_cfg, teacher_cfg))
    data = PregeneratedEpochs(args.pregenerated_data, tokenizer, args.reduce_memory)
    if data.seq_len != args.max_seq_length:
        logger.info("the pregenerated data has sequences of %d tokens (--max_seq_length %d is not used)",
                    data.seq_len, args.max_seq_length)
    stride = check_compatibility(teacher_cfg, student_cfg, tokenizer, data.seq_len,
                                 source=f"--pregenerated_data {args.pregenerated_data}")
    resume = output.check(runtime)
    if resume is not None:
        check_resume_settings(args.output_dir, vars(args), {"stage": "general"}, resume, args.allow_changed_settings)
    preflight.check_training_inputs(args.output_dir, args.overwrite_output_dir, args.spiking_student_model,
                                    args.teacher_model, student_cfg.hidden_size, teacher_cfg.hidden_size, resume)
    _check_memory(runtime, resume or args.spiking_student_model, spiking_settings(args), teacher_cfg, micro_batch, 0,
                  data.seq_len, "the pregenerated data's sequence length (preprocess_training_data.py --max_seq_len)")
    data.check()
    return tokenizer, data, stride, resume


def _check_memory(runtime: Runtime, student_dir: Path, overrides: Dict[str, Any], teacher_cfg: Optional[BertConfig],
                  micro_batch: int, eval_batch: int, seq_len: int, length_knob: str = "--max_seq_length") -> None:
    """Refuse a run whose micro-batch (per device), sequence length and t_conv cannot fit in memory."""
    student = student_config(student_dir, "--spiking_student_model", **overrides)
    devices = max(1, runtime.n_gpu)
    train, evaluation = math.ceil(micro_batch / devices), math.ceil(eval_batch / devices)
    needs = [student_step_need(student, train, seq_len, train=True, fp16=runtime.fp16)] if train else []
    if evaluation:
        needs.append(student_step_need(student, evaluation, seq_len, train=False, fp16=runtime.fp16))
    if teacher_cfg is not None:
        needs.append(teacher_step_need(teacher_cfg, max(train, evaluation), seq_len, fp16=runtime.fp16))
    what = (f"a micro-batch of {max(train, evaluation)} x {seq_len} tokens per device at t_conv {student.t_conv}"
            f"{' (--train_mode bptt keeps every step)' if train and student.train_mode == 'bptt' else ''}")
    batch_flags = "--train_batch_size (or raise --gradient_accumulation_steps)" if train else "--eval_batch_size"
    check_memory(needs, runtime.device, what, f"lower {batch_flags}, {length_knob}"
                 f"{' or --t_conv' if train and student.train_mode == 'bptt' else ''}")


# ------------------------------------------------------------------------------------------ task KD / eval

def run_task_distillation(args: argparse.Namespace) -> int:
    """Task IKD (default), prediction KD (``--pred_distill`` / ``--train_true_labels``) or ``--do_eval``."""
    task = glue.canonical_task_name(args.task_name)
    with session(args.no_cuda, args.local_rank, args.fp16, args.debug) as runtime:
        for flag in ignored_flags(args):
            logger.warning("%s is accepted for compatibility with the published scripts and has no effect", flag)
        if args.do_eval:
            return run_task_evaluation(args, runtime, task)
        with OutputDir(args.output_dir, args.continue_train, args.overwrite_output_dir) as output:
            return run_task_training(args, runtime, task, output)


def run_task_evaluation(args: argparse.Namespace, runtime: Runtime, task: str) -> int:
    """``--do_eval``: the student's dev metrics into ``eval_results.json`` (with ``--report`` / ``--adaptive_t``
    also the spike/energy report and the adaptive-T evaluation). Tokenization follows the student's
    directory (``do_lower_case``, ``max_seq_length`` in its config.json) unless the flags say otherwise."""
    if args.pred_distill or args.train_true_labels:
        logger.warning("--do_eval only evaluates: --pred_distill/--train_true_labels are ignored")
    processor = glue.get_processor(task)
    tokenizer, max_seq_length, teacher = _eval_inputs(args, runtime, task)
    student = load_student(SpikingBertForSequenceClassification, args.spiking_student_model, "--spiking_student_model",
                           num_labels=processor.num_labels, **spiking_settings(args))
    student.to(runtime.device).eval()
    dev_sets = TaskData(task, args.data_dir, tokenizer, max_seq_length, args.cache_dir, args.skip_bad_rows).dev_sets()
    start = time.perf_counter()
    metrics = evaluate_task(runtime.wrap_frozen(LogitsOnly(student)), task, processor.output_mode, dev_sets, runtime,
                            args.eval_batch_size)
    results = {
        "task": task, "model": str(args.spiking_student_model), **metrics,
        "t_conv": student.config.t_conv, "vth": student.config.vth, "leak": student.config.leak,
        "max_seq_length": max_seq_length, "examples": sum(len(d) for d in dev_sets.values()),
        "seconds": round(time.perf_counter() - start, 3),
    }
    if not runtime.is_main:
        return 0
    with claim_output_dir(args.output_dir, "--output_dir"):     # created only now; removed again if writing fails
        if args.report or args.adaptive_t is not None:
            results.update(_evaluation_report(args, runtime, task, student, dev_sets, metrics, teacher))
        _write_eval_results(args.output_dir, results, f"{task} dev evaluation of {args.spiking_student_model}")
    return 0


def _eval_inputs(args: argparse.Namespace, runtime: Runtime, task: str):
    """``--do_eval``'s checks before the student is loaded: the student dir, the dev data, the vocabulary, the output
    dir, the memory; returns the tokenizer, the sequence length and the teacher's config (for the report, or None)."""
    preflight.check_eval_inputs(args.spiking_student_model, task, args.data_dir, dev_splits(task), args.skip_bad_rows)
    config = student_config(args.spiking_student_model, "--spiking_student_model")
    max_seq_length = _eval_seq_length(task, args.max_seq_length, config.max_seq_length)
    tokenizer = task_tokenizer(args.spiking_student_model, args.teacher_model,
                               lower_case_setting(args.do_lower_case, config))
    check_seq_length(max_seq_length, config.max_position_embeddings, "--spiking_student_model")
    preflight.check_vocabulary_size(tokenizer, config.vocab_size, args.spiking_student_model)
    if config.extra.get("architectures") not in (None, ["SpikingBertForSequenceClassification"]):
        logger.warning("%s holds a %s: its classifier is untrained, scores will be near chance",
                       args.spiking_student_model, config.extra["architectures"][0])
    check_output_location(args.output_dir, "--output_dir")
    _check_memory(runtime, args.spiking_student_model, spiking_settings(args), None, 0, args.eval_batch_size,
                  max_seq_length)
    wants_teacher = args.teacher_model is not None and (args.report or args.adaptive_t is not None)
    return tokenizer, max_seq_length, teacher_config(args.teacher_model) if wants_teacher else None


def _eval_seq_length(task: str, flag: Optional[int], recorded: Optional[int]) -> int:
    """``--max_seq_length``, else the student's recorded one, else the task's default (logged)."""
    if flag is None and recorded is not None:
        logger.info("max_seq_length %d (recorded in the student's config.json)", recorded)
        return recorded
    max_seq_length, _, notes = resolve_task_settings(task, flag, None, evaluation=True, prediction=True)
    for note in notes:
        logger.info(note)
    return max_seq_length


def _evaluation_report(args: argparse.Namespace, runtime: Runtime, task: str, student: nn.Module,
                       dev_sets: Dict[str, Dataset], metrics: Dict[str, float],
                       teacher_cfg: Optional[BertConfig]) -> Dict[str, Any]:
    """``--report`` / ``--adaptive_t``: the report's fields of eval_results.json (see `spikingbert.report`), with the
    teacher's and the majority class's dev scores as reference lines and the task's own name."""
    from . import report

    teacher = str(args.teacher_model) if args.teacher_model is not None else None
    info = glue.task_info(task, args.data_dir)
    metric = glue.main_metric(task)
    references = {"majority class" if metric == "acc" else "constant prediction":
                  chance_level(metric, labels_of(dev_sets["dev"]))}
    teacher_score = _teacher_reference(args, runtime, task, dev_sets) if args.report else None
    if teacher_score is not None:
        references = {"teacher": teacher_score, **references}
    return report.evaluation_report(
        student, DataLoader(dev_sets["dev"], batch_size=args.eval_batch_size, shuffle=False), task, runtime.device,
        report_dir=args.output_dir / "report" if args.report else None, adaptive_tol=args.adaptive_t,
        adaptive_window=args.adaptive_window, teacher_config=teacher_cfg,
        task_name=info.display_name, references=references,
        info={"task": task, "task_name": info.display_name, "model": str(args.spiking_student_model), **metrics,
              "teacher_model": teacher, **{f"{name} {metric}": value for name, value in references.items()}})


def _teacher_reference(args: argparse.Namespace, runtime: Runtime, task: str,
                       dev_sets: Dict[str, Dataset]) -> Optional[float]:
    """The teacher's dev score: from the student's ``teacher_results.json`` (written by the stage that trained it)
    when it covers this dev set, else by evaluating ``--teacher_model``; None without either."""
    metric = glue.main_metric(task)
    recorded = args.spiking_student_model / "teacher_results.json"
    if recorded.is_file():
        values = json.loads(recorded.read_text(encoding="utf-8"))
        if values.get("task") == task and values.get("examples") == len(dev_sets["dev"]) and metric in values:
            logger.info("teacher dev %s %.4f (from %s)", metric, values[metric], recorded)
            return float(values[metric])
    if args.teacher_model is None:
        return None
    from transformer.modeling import BertForSequenceClassification

    teacher = load_teacher(BertForSequenceClassification, args.teacher_model,
                           num_labels=glue.get_processor(task).num_labels).to(runtime.device).eval()
    scores = evaluate_task(runtime.wrap_frozen(LogitsOnly(teacher)), task, glue.get_processor(task).output_mode,
                           {"dev": dev_sets["dev"]}, runtime, args.eval_batch_size)
    logger.info("teacher dev %s %.4f (--teacher_model %s)", metric, scores[metric], args.teacher_model)
    return float(scores[metric])


def _write_eval_results(output_dir: Path, results: Dict[str, Any], title: str) -> None:
    """``output_dir/eval_results.json`` and the printed table."""
    atomic_write_json(output_dir / "eval_results.json", results)
    print_table(title, flatten(results))
    logger.info("wrote %s", output_dir / "eval_results.json")


def run_task_training(args: argparse.Namespace, runtime: Runtime, task: str, output: OutputDir) -> int:
    """Task IKD, or prediction KD with ``--pred_distill`` / ``--train_true_labels`` (gold labels)."""
    from transformer.modeling import BertForSequenceClassification

    processor = glue.get_processor(task)
    prediction = args.pred_distill or args.train_true_labels
    micro_batch = micro_batch_size(args.train_batch_size, args.gradient_accumulation_steps, runtime.world_size)
    tokenizer, max_seq_length, epochs, notes, stride, resume = _task_inputs(args, runtime, task, output, micro_batch)
    train_split = "aug" if args.aug_train else "train"
    set_seed(args.seed)
    teacher, student, copied = _load_models(runtime, BertForSequenceClassification, SpikingBertForSequenceClassification,
                                            args.teacher_model, args.spiking_student_model, resume, stride,
                                            args.init_from_teacher, spiking_settings(args), num_labels=processor.num_labels)
    info = glue.task_info(task, args.data_dir)
    describe_model(student.config, tokenizer.do_lower_case, max_seq_length, info)
    data = TaskData(task, args.data_dir, tokenizer, max_seq_length, args.cache_dir, args.skip_bad_rows)
    train_set, dev_sets = data.load(train_split), data.dev_sets()
    output.prepare(runtime, args.debug)         # only now, so that a failed start leaves no output dir
    for note in notes:
        logger.info(note)
    teacher_results = _teacher_dev_score(runtime, task, processor.output_mode, teacher, dev_sets, args.eval_batch_size,
                                         args.output_dir, args.continue_train, args.teacher_model)
    objective, frozen, evaluate = (
        _prediction_parts(runtime, task, processor.output_mode, student, teacher, dev_sets, args.temperature,
                          args.train_true_labels, args.eval_batch_size) if prediction
        else (IntermediateDistillation(student, stride), _teacher_intermediate(runtime, teacher), None))
    stage_name = "prediction" if prediction else "intermediate"
    logger.info("task %s, %s distillation (target: %s), %d training examples (%s)", task, stage_name,
                "teacher" if frozen is not None else "gold labels", len(train_set), train_split)
    example_lengths, collate = length_grouping(args.group_by_length, train_set, trim=prediction)
    stage = Stage(
        student=student, objective=objective.to(runtime.device),
        make_optimizer=lambda total: build_optimizer(student, args.learning_rate, args.warmup_proportion,
                                                     args.weight_decay, "warmup_linear" if prediction else "none", total),
        train_dataset=lambda epoch: train_set, num_train_examples=lambda epoch: len(train_set),
        save_student=lambda d: student.save_pretrained(d, vocab_file=tokenizer.vocab_file),
        teacher_forward=frozen, evaluate=evaluate, main_metric=glue.main_metric(task) if prediction else None,
        describe={"stage": stage_name, "task": task}, example_lengths=example_lengths, collate=collate,
        title=f"{stage_name} KD, {info.display_name}",
    )
    write_args_json(args.output_dir, runtime, vars(args), stage=stage_name, task=task, do_lower_case_used=tokenizer.do_lower_case,
                    max_seq_length_used=max_seq_length, num_train_epochs_used=epochs, layer_stride=stride, teacher_dev=teacher_results,
                    resumed_from=str(resume) if resume else None, init_from_teacher_tensors=copied)
    config = TrainerConfig(**trainer_settings(args), micro_batch_size=micro_batch, num_train_epochs=epochs,
                           eval_steps=args.eval_step if prediction else 0, resume_from=resume)
    summary = Trainer(config, runtime, stage).train()
    if prediction and summary.best_step is not None:
        logger.info("best dev %s %.4f at step %d (teacher: %.4f); best student in %s", stage.main_metric,
                    summary.best_metric, summary.best_step, teacher_results.get(stage.main_metric, math.nan),
                    args.output_dir)
    return 0


def _task_inputs(args: argparse.Namespace, runtime: Runtime, task: str, output: OutputDir, micro_batch: int):
    """Task training's checks before any model is loaded or the output dir touched: vocabulary, configs, sequence
    length, the output dir and the settings of a run to resume, every TSV row, the weights files and the memory.
    Returns the tokenizer, the sequence length, the epochs (and notes on both), the layer stride and the checkpoint
    to resume from."""
    prediction = args.pred_distill or args.train_true_labels
    student_cfg = student_config(args.spiking_student_model, "--spiking_student_model")
    teacher_cfg = teacher_config(args.teacher_model)
    tokenizer = task_tokenizer(args.spiking_student_model, args.teacher_model,
                               lower_case_setting(args.do_lower_case, student_cfg, teacher_cfg))
    max_seq_length, epochs, notes = resolve_task_settings(task, args.max_seq_length, args.num_train_epochs,
                                                          evaluation=False, prediction=prediction)
    stride = check_compatibility(teacher_cfg, student_cfg, tokenizer, max_seq_length)
    resume = output.check(runtime)
    if resume is not None:
        check_resume_settings(args.output_dir, vars(args), {"max_seq_length_used": max_seq_length}, resume,
                              args.allow_changed_settings)
    preflight.check_task_data(task, args.data_dir, ["aug" if args.aug_train else "train", *dev_splits(task)],
                              args.skip_bad_rows)
    preflight.check_training_inputs(args.output_dir, args.overwrite_output_dir, args.spiking_student_model,
                                    args.teacher_model, student_cfg.hidden_size, teacher_cfg.hidden_size, resume)
    _check_memory(runtime, resume or args.spiking_student_model, spiking_settings(args), teacher_cfg, micro_batch,
                  args.eval_batch_size if prediction else 0, max_seq_length)
    return tokenizer, max_seq_length, epochs, notes, stride, resume


def _teacher_intermediate(runtime: Runtime, teacher: nn.Module):
    """`Stage.teacher_forward` giving the teacher's hidden states and attention scores."""
    return teacher_forward(runtime.wrap_frozen(TeacherOutputs(teacher, "intermediate").eval()))


def _prediction_parts(runtime: Runtime, task: str, output_mode: str, student: nn.Module, teacher: nn.Module,
                      dev_sets: Dict[str, Dataset], temperature: float, true_labels: bool, eval_batch_size: int):
    """Prediction KD's objective, teacher forward (None when the loss needs only the gold labels) and dev evaluation."""
    objective = PredictionDistillation(student, output_mode, temperature, true_labels)
    frozen = (teacher_forward(runtime.wrap_frozen(TeacherOutputs(teacher, "logits").eval()))
              if objective.needs_teacher else None)
    eval_model = LogitsOnly(student)

    def evaluate() -> Dict[str, float]:
        return evaluate_task(runtime.wrap_frozen(eval_model), task, output_mode, dev_sets, runtime, eval_batch_size)

    return objective, frozen, evaluate


def _teacher_dev_score(runtime: Runtime, task: str, output_mode: str, teacher: nn.Module, dev_sets: Dict[str, Dataset],
                       batch_size: int, output_dir: Path, reuse: bool, teacher_model: str) -> Dict[str, Any]:
    """The teacher's dev metrics, computed once per output dir (teacher_results.json, read back when ``reuse``)
    and logged."""
    path = output_dir / "teacher_results.json"
    if reuse and path.is_file():
        results = json.loads(path.read_text(encoding="utf-8"))
        logger.info("teacher dev (from %s): %s", path.name, results)
        return results
    metrics = evaluate_task(runtime.wrap_frozen(LogitsOnly(teacher)), task, output_mode, dev_sets, runtime, batch_size)
    metric = glue.main_metric(task)
    chance = chance_level(metric, labels_of(dev_sets["dev"]))
    results = {"task": task, "teacher": str(teacher_model), **metrics, "chance_" + metric: chance,
               "examples": len(dev_sets["dev"])}
    logger.info("teacher dev: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    if metrics[metric] <= chance + CHANCE_MARGIN:
        logger.warning("the teacher's dev %s %.4f is near chance (%.4f): check --teacher_model (is it fine-tuned "
                       "on %s? does its classifier head match?) before distilling", metric, metrics[metric],
                       chance, task)
    if runtime.is_main:
        atomic_write_json(path, results)
    return results
