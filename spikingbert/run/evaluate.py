"""``--do_eval``: the dev metrics of a trained student into ``eval_results.json``; with ``--report``,
``--adaptive_t`` or ``--adaptive_budget`` also the spike and energy report and the adaptive-T evaluation
(`spikingbert.evaluation.report`). ``--do_predict``: the task's test split(s) labelled into GLUE's submission files
(`spikingbert.run.submission`).

Tokenization follows the student's directory (``do_lower_case`` and ``max_seq_length`` in its config.json)
unless the flags say otherwise (`spikingbert.run.plan.resolve_task`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from torch import nn
from torch.utils.data import DataLoader, Dataset

from spikingbert.core.files import atomic_write_json, read_json
from spikingbert.core.output_dir import check_output_location, claim_output_dir
from spikingbert.data import glue
from spikingbert.evaluation.dev import (
    LogitsOnly,
    chance_level,
    chance_name,
    evaluate_task,
    flatten,
    labels_of,
    print_table,
)
from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification
from spikingbert.models.stopping import StopRule
from spikingbert.runtime import Runtime

from . import checks
from .memory import check_run_memory
from .model_dirs import check_seq_length
from .output import TaskData
from .plan import RunPlan
from .submission import check_test_data, predict_test_splits, write_submissions

__all__ = ["run_evaluation"]

logger = logging.getLogger(__name__)


def run_evaluation(plan: RunPlan, runtime: Runtime) -> int:
    """``--do_eval``: evaluate ``plan.student`` on the task's dev sets (``eval_results.json``, and the report);
    ``--do_predict``: label the task's test split(s) (the GLUE submission files, `submission`). Both write into the
    output directory, which is created only now (and removed again if writing fails)."""
    processor = glue.get_processor(plan.task)
    tokenizer = _check(plan, runtime)
    student = plan.student.load(SpikingBertForSequenceClassification, num_labels=processor.num_labels, **plan.spiking)
    student.to(runtime.device).eval()
    spec = plan.evaluation
    dev = _dev_results(plan, runtime, student, tokenizer) if spec.dev else None
    submissions = (predict_test_splits(runtime.wrap_frozen(LogitsOnly(student)), plan.task, plan.data_dir, tokenizer,
                                       plan.max_seq_length, runtime, spec.batch_size) if spec.test else None)
    if not runtime.is_main:
        return 0
    with claim_output_dir(plan.output.path, "--output_dir"):
        if dev is not None:
            results = dict(dev.results)
            if spec.report or spec.adaptive:
                results.update(_evaluation_report(plan, runtime, student, dev.dev_sets, dev.metrics))
            atomic_write_json(plan.output.path / "eval_results.json", results)
            print_table(f"{plan.task} dev evaluation of {plan.student.location}", flatten(results))
            logger.info("wrote %s", plan.output.path / "eval_results.json")
        if submissions is not None:
            counts = write_submissions(plan.output.path, submissions, processor.output_mode)
            print_table(f"{plan.task} test predictions of {plan.student.location} (GLUE submission files)",
                        {f"{name}: {label}": n for name, labels in counts.items() for label, n in labels.items()})
    return 0


@dataclass(frozen=True)
class _DevResults:
    """A student on the task's dev sets."""

    results: Dict[str, Any]             # eval_results.json's fields: the metrics, the settings, the time
    dev_sets: Dict[str, Dataset]        # by name (MNLI: matched and mismatched)
    metrics: Dict[str, float]           # the task's metrics alone


def _dev_results(plan: RunPlan, runtime: Runtime, student: nn.Module, tokenizer) -> _DevResults:
    """``student`` evaluated on the task's dev sets."""
    dev_sets = TaskData(plan.task, plan.data_dir, tokenizer, plan.max_seq_length, plan.cache_dir,
                        plan.skip_bad_rows).dev_sets()
    start = time.perf_counter()
    output_mode = glue.get_processor(plan.task).output_mode
    metrics = evaluate_task(runtime.wrap_frozen(LogitsOnly(student)), plan.task, output_mode, dev_sets, runtime,
                            plan.evaluation.batch_size)
    results = {
        "task": plan.task, "model": plan.student.location, **metrics,
        "t_conv": student.config.t_conv, "vth": student.config.vth, "leak": student.config.leak,
        "max_seq_length": plan.max_seq_length, "examples": sum(len(d) for d in dev_sets.values()),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return _DevResults(results, dev_sets, metrics)


def _check(plan: RunPlan, runtime: Runtime):
    """``--do_eval``'s checks before the student is loaded: its weights, the dev data, the vocabulary, the sequence
    length, the output dir, the memory; returns the tokenizer."""
    checks.check_eval_inputs(plan.student, plan.task, plan.data_dir, plan.skip_bad_rows, plan.evaluation.dev)
    if plan.evaluation.test:
        check_test_data(plan.task, plan.data_dir)
    for note in plan.notes:
        logger.info(note)
    config = plan.student.config
    tokenizer = (plan.student if plan.student.vocab_file is not None or plan.teacher is None
                 else plan.teacher).tokenizer(plan.do_lower_case)
    check_seq_length(plan.max_seq_length, config.max_position_embeddings, plan.student.flag)
    if config.extra.get("architectures") not in (None, ["SpikingBertForSequenceClassification"]):
        logger.warning("%s holds a %s: its classifier is untrained, scores will be near chance",
                       plan.student.location, config.extra["architectures"][0])
    check_output_location(plan.output.path, "--output_dir")
    check_run_memory(runtime, plan.student.configured(**plan.spiking), None, 0, plan.evaluation.batch_size,
                     plan.max_seq_length)
    return tokenizer


def _evaluation_report(plan: RunPlan, runtime: Runtime, student: nn.Module, dev_sets: Dict[str, Dataset],
                       metrics: Dict[str, float]) -> Dict[str, Any]:
    """``--report`` / ``--adaptive_t``: the report's fields of eval_results.json, with the teacher's and the majority
    class's dev scores as reference lines and the task's own name."""
    from spikingbert.evaluation import report

    spec = plan.evaluation
    teacher = plan.flags.get("teacher_model")
    info = glue.task_info(plan.task, plan.data_dir)
    metric = glue.main_metric(plan.task)
    references = {chance_name(metric): chance_level(metric, labels_of(dev_sets["dev"]))}
    teacher_score = _teacher_reference(plan, runtime, dev_sets) if spec.report else None
    if teacher_score is not None:
        references = {"teacher": teacher_score, **references}
    return report.evaluation_report(
        student, DataLoader(dev_sets["dev"], batch_size=spec.batch_size, shuffle=False), plan.task, runtime.device,
        report_dir=plan.output.path / "report" if spec.report else None,
        adaptive=StopRule(spec.adaptive_t, spec.adaptive_window, spec.adaptive_min_steps)
        if spec.adaptive_t is not None else None,
        adaptive_budget=spec.adaptive_budget, adaptive_window=spec.adaptive_window,
        teacher_config=plan.teacher.config if plan.teacher else None,
        task_name=info.display_name, references=references,
        info={"task": plan.task, "task_name": info.display_name, "model": plan.student.location, **metrics,
              "teacher_model": teacher, **{f"{name} {metric}": value for name, value in references.items()}})


def _teacher_reference(plan: RunPlan, runtime: Runtime, dev_sets: Dict[str, Dataset]) -> Optional[float]:
    """The teacher's dev score: from the student's ``teacher_results.json`` (written by the stage that trained it)
    when it covers this dev set, else by evaluating ``--teacher_model``; None without either."""
    metric = glue.main_metric(plan.task)
    recorded = Path(plan.student.directory) / "teacher_results.json"
    if recorded.is_file():
        values = read_json(recorded, "results file")
        if values.get("task") == plan.task and values.get("examples") == len(dev_sets["dev"]) and metric in values:
            logger.info("teacher dev %s %.4f (from %s)", metric, values[metric], recorded)
            return float(values[metric])
    if plan.teacher is None:
        return None
    from spikingbert.transformer.modeling import BertForSequenceClassification

    processor = glue.get_processor(plan.task)
    teacher = plan.teacher.load(BertForSequenceClassification, num_labels=processor.num_labels).to(runtime.device)
    scores = evaluate_task(runtime.wrap_frozen(LogitsOnly(teacher)), plan.task, processor.output_mode,
                           {"dev": dev_sets["dev"]}, runtime, plan.evaluation.batch_size)
    logger.info("teacher dev %s %.4f (--teacher_model %s)", metric, scores[metric], plan.teacher.location)
    return float(scores[metric])
