"""Adaptive T evaluated against the fixed T: how many steps it saves, what it costs in the metric, and how it
compares with simply running fewer fixed steps (the metric-vs-T curve at the same mean steps).

The rule (`models.stopping.StopRule`) is given, or chosen on the dev set for a metric budget
(`spikingbert.evaluation.calibrate`). Every figure comes from a real adaptive run: each example stops at its
own step, its prediction is the one at that step, and its spikes and synaptic operations are counted up to
that step. The same stops follow from the fixed-T pass's recorded logits; the run checks that they do.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch import nn

from spikingbert.core.errors import DataError, UsageError
from spikingbert.evaluation.calibrate import Calibration, calibrate
from spikingbert.evaluation.dev import eval_mode
from spikingbert.evaluation.energy import OperationCounter, snn_uj
from spikingbert.evaluation.measure import (
    BatchRecorder,
    SpikeStats,
    classification_model,
    collect_spike_stats,
    predictions_of,
    report_batches,
    task_metrics,
)
from spikingbert.models.stopping import StopRule, stop_steps

__all__ = ["AdaptiveTStats", "adaptive_t_eval", "curve_at"]

logger = logging.getLogger(__name__)


def curve_at(stats: SpikeStats, steps: float) -> float:
    """The fixed-T curve's main metric at ``steps`` (linear between the measured steps)."""
    values = [stats.metrics_at_t[t].get(stats.metric, float("nan")) for t in stats.t_values]
    return float(np.interp(steps, stats.t_values, values))


@dataclass
class AdaptiveTStats:
    """Result of :func:`adaptive_t_eval`.

    ``steps_per_example`` ``(N,)``: each example's stop step; ``predictions`` ``(N,)`` the adaptive run's;
    ``agreement``: the fraction of examples whose prediction equals the fixed-T one; ``curve_at_mean_steps``:
    the fixed-T curve at the mean steps (what stopping every example there gives); ``offline_agreement``: the
    fraction whose stop step the fixed-T pass's logits predict exactly (1.0 unless something is wrong).
    """

    rule: StopRule
    t_conv: int
    metric: str
    metrics: dict[str, float]
    metrics_fixed: dict[str, float]
    curve_at_mean_steps: float
    agreement: float
    offline_agreement: float
    steps_per_example: np.ndarray = field(repr=False)
    predictions: np.ndarray = field(repr=False)
    calibration: Optional[Calibration] = None
    spikes_per_example: float = 0.0
    sops_per_example: float = 0.0
    sops_per_example_fixed: float = 0.0
    seconds: float = 0.0

    @property
    def mean_steps(self) -> float:
        return float(self.steps_per_example.mean())

    @property
    def value(self) -> float:
        return self.metrics.get(self.metric, float("nan"))

    def eval_fields(self) -> dict[str, Any]:
        """The ``adaptive_t`` fields of ``eval_results.json``."""
        metric, value, fixed = self.metric, self.value, self.metrics_fixed.get(self.metric, float("nan"))
        return {
            "margin": self.rule.margin, "window": self.rule.window, "min_steps": self.rule.min_steps,
            "budget_pt": self.calibration.budget if self.calibration else None, "t_conv": self.t_conv,
            "mean_steps": self.mean_steps, "min_steps_used": int(self.steps_per_example.min()),
            "max_steps_used": int(self.steps_per_example.max()),
            "step_reduction": 1.0 - self.mean_steps / self.t_conv,
            metric: value, f"{metric}_fixed_T": fixed, f"{metric}_change": value - fixed,
            f"{metric}_fixed_T_at_mean_steps": self.curve_at_mean_steps,
            "beats_fixed_T_curve": bool(value >= self.curve_at_mean_steps),
            "cross_validated": self.calibration.cross_validated if self.calibration else None,
            "agreement_with_fixed_T": self.agreement,
            "sops_per_example": self.sops_per_example, "sops_per_example_fixed_T": self.sops_per_example_fixed,
        }

    def to_dict(self) -> dict[str, Any]:
        """The ``adaptive_t`` section of ``report.json``."""
        return {**self.eval_fields(), "metric": self.metric, "metrics": self.metrics,
                "metrics_fixed_T": self.metrics_fixed, "offline_agreement": self.offline_agreement,
                "calibration": self.calibration.to_dict() if self.calibration else None,
                "spikes_per_example": self.spikes_per_example, "snn_uj_per_example": snn_uj(self.sops_per_example),
                "seconds": round(self.seconds, 3)}


@torch.no_grad()
def adaptive_t_eval(
    model: nn.Module,
    dataloader: Iterable,
    rule: Optional[StopRule] = None,
    task: Optional[str] = None,
    *,
    budget: Optional[float] = None,
    window: int = 1,
    device: Optional[torch.device | str] = None,
    max_batches: Optional[int] = None,
    reference: Optional[SpikeStats] = None,
) -> AdaptiveTStats:
    """Evaluate with adaptive T against the fixed ``T``: with ``rule``, or with the rule chosen on this data for
    ``budget`` points at ``window`` (`spikingbert.evaluation.calibrate`).

    ``reference`` is a :func:`collect_spike_stats` result over the same loader, in the same order (the report's
    pass); without one, a fixed-T pass is made first.
    """
    model = classification_model(model)
    if (rule is None) == (budget is None):
        raise UsageError("adaptive T needs either a rule (`adaptive_t`) or a budget (`adaptive_budget`), not both")
    start = time.perf_counter()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if reference is None:
        reference = collect_spike_stats(model, dataloader, device=device, max_batches=max_batches, task=task,
                                        convergence=False)
    if reference.step_classes is None:
        raise UsageError("adaptive T stops on the margin between the two most probable classes; a regression "
                         "student (one output) has none: evaluate it without `adaptive_t`")
    labels = reference.labels
    calibration = None
    if budget is not None:
        calibration = calibrate(reference.step_classes, reference.step_margins, labels,
                                lambda p, y: task_metrics(task, p, y)[reference.metric], budget, window)
        rule = calibration.rule
        logger.info("adaptive T for a budget of %g points: chose %s (%d rules tried)", budget, rule.describe(),
                    calibration.candidates)
    run = _adaptive_run(model, dataloader, rule, device, max_batches)
    if len(run["predictions"]) != len(labels):
        raise UsageError(f"the reference spike stats cover {len(labels)} examples but the loader gave "
                         f"{len(run['predictions'])}; pass the same loader and max_batches to both")
    return _stats(reference, rule, task, calibration, run, time.perf_counter() - start)


def _adaptive_run(model: nn.Module, dataloader: Iterable, rule: StopRule, device: torch.device,
                  max_batches: Optional[int]) -> dict[str, Any]:
    """One pass with adaptive stopping: predictions, stop steps, spikes and SOPs up to each example's stop."""
    t_conv = int(model.config.t_conv)
    ops = OperationCounter(model.config, {}, device)
    preds, steps = [], []
    with eval_mode(model), torch.autocast(device.type, enabled=False):
        for batch in report_batches(dataloader, max_batches, "adaptive T"):
            input_ids, input_mask, segment_ids = (x.to(device) for x in batch[:3])
            recorder = BatchRecorder(model, input_mask, t_conv, (), keep_trains=False)
            out = model(input_ids, segment_ids, input_mask, adaptive=rule, recorder=recorder)
            ops.add({key: recorder.counts_until(key, out.example_steps) for key in ops.layers},
                    input_mask.sum(1).to(torch.float64))
            preds.append(predictions_of(out.logits))
            steps.append(out.example_steps.cpu().numpy())
    if not preds:
        raise DataError("adaptive T: the evaluation data loader yielded no batches; check the dev set")
    examples = sum(len(p) for p in preds)
    return {"predictions": np.concatenate(preds), "steps": np.concatenate(steps),
            "spikes": float(sum(ops.spikes.values())) / examples, "sops": float(sum(ops.sops.values())) / examples}


def _stats(reference: SpikeStats, rule: StopRule, task: Optional[str], calibration: Optional[Calibration],
           run: dict[str, Any], seconds: float) -> AdaptiveTStats:
    labels, preds, steps = reference.labels, run["predictions"], run["steps"]
    expected = stop_steps(torch.from_numpy(reference.step_classes), torch.from_numpy(reference.step_margins),
                          rule).numpy()
    offline = float(np.mean(expected == steps))
    if offline < 1.0:
        logger.warning("adaptive T: %.2f%% of the examples stopped at another step than the fixed-T pass's logits "
                       "say they should (different floating-point rounding between the two runs?)",
                       100 * (1 - offline))
    result = AdaptiveTStats(
        rule=rule, t_conv=reference.t_conv, metric=reference.metric, metrics=task_metrics(task, preds, labels),
        metrics_fixed=reference.metrics, curve_at_mean_steps=curve_at(reference, float(steps.mean())),
        agreement=float(np.mean(preds == reference.predictions)), offline_agreement=offline,
        steps_per_example=steps, predictions=preds, calibration=calibration, spikes_per_example=run["spikes"],
        sops_per_example=run["sops"], sops_per_example_fixed=reference.total_sops_per_example, seconds=seconds)
    logger.info("adaptive T (%s): %.2f of %d steps on average, %s %.4f (fixed T: %.4f; fixed %.2f steps: %.4f)",
                rule.describe(), result.mean_steps, result.t_conv, result.metric, result.value,
                result.metrics_fixed.get(result.metric, float("nan")), result.mean_steps, result.curve_at_mean_steps)
    return result
