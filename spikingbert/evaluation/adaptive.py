"""Adaptive stopping evaluated against the fixed T: how many steps it saves and what it costs in the metric."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch import nn

from core.errors import DataError, UsageError
from spikingbert.evaluation.dev import eval_mode
from spikingbert.evaluation.energy import OperationCounter, snn_uj
from spikingbert.evaluation.measure import (
    BatchRecorder,
    SpikeStats,
    classification_model,
    metric_name,
    predictions_of,
    report_batches,
    task_metrics,
)

__all__ = ["AdaptiveTStats", "adaptive_t_eval"]

logger = logging.getLogger(__name__)


@dataclass
class AdaptiveTStats:
    """Result of :func:`adaptive_t_eval`: steps the adaptive stop used and its metrics against fixed ``T``.

    ``steps_per_example`` ``(N,)`` is the step count of each example's batch (the stop is per batch);
    ``predictions`` ``(N,)`` the adaptive run's; ``agreement`` is the fraction of examples whose
    prediction equals the fixed-``T`` one.
    """

    tol: float
    window: int
    t_conv: int
    metric: str
    metrics: dict[str, float]
    metrics_fixed: dict[str, float]
    agreement: float
    steps_per_example: np.ndarray = field(repr=False)
    predictions: np.ndarray = field(repr=False)
    spikes_per_example: float = 0.0
    sops_per_example: float = 0.0
    sops_per_example_fixed: Optional[float] = None
    seconds: float = 0.0

    @property
    def mean_steps(self) -> float:
        return float(self.steps_per_example.mean()) if self.steps_per_example.size else 0.0

    def eval_fields(self) -> dict[str, Any]:
        """The ``adaptive_t`` fields of ``eval_results.json``."""
        metric, value, fixed = self.metric, self.metrics.get(self.metric), self.metrics_fixed.get(self.metric)
        return {
            "tol": self.tol, "window": self.window, "t_conv": self.t_conv,
            "mean_steps": self.mean_steps, "min_steps": int(self.steps_per_example.min()),
            "max_steps": int(self.steps_per_example.max()),
            "step_reduction": 1.0 - self.mean_steps / self.t_conv,
            metric: value, f"{metric}_fixed_T": fixed, f"{metric}_change": value - fixed,
            "agreement_with_fixed_T": self.agreement,
            "sops_per_example": self.sops_per_example,
        }

    def to_dict(self) -> dict[str, Any]:
        steps = self.steps_per_example
        return {
            "tol": self.tol, "window": self.window, "t_conv": self.t_conv,
            "mean_steps": self.mean_steps,
            "min_steps": int(steps.min()) if steps.size else 0,
            "max_steps": int(steps.max()) if steps.size else 0,
            "metric": self.metric, "metrics": self.metrics, "metrics_fixed_T": self.metrics_fixed,
            "agreement_with_fixed_T": self.agreement,
            "spikes_per_example": self.spikes_per_example,
            "sops_per_example": self.sops_per_example,
            "sops_per_example_fixed_T": self.sops_per_example_fixed,
            "snn_uj_per_example": snn_uj(self.sops_per_example),
            "seconds": round(self.seconds, 3),
        }




@torch.no_grad()
def adaptive_t_eval(
    model: nn.Module,
    dataloader: Iterable,
    tol: float,
    window: int,
    task: Optional[str] = None,
    *,
    device: Optional[torch.device | str] = None,
    max_batches: Optional[int] = None,
    reference: Optional[SpikeStats] = None,
) -> AdaptiveTStats:
    """Evaluate with adaptive stopping (``adaptive_tol=tol``, ``adaptive_window=window``) against fixed ``T``.

    The fixed-``T`` predictions come from ``reference`` (a :func:`collect_spike_stats` result over the
    same loader, in the same order) or, without one, from a fixed-``T`` run of each batch.
    """
    model = classification_model(model)
    if not (tol >= 0 and math.isfinite(tol)):
        raise UsageError(f"the adaptive tolerance must be a finite number >= 0 (got {tol})")
    if int(window) < 1:
        raise UsageError(f"the adaptive window must be >= 1 step (got {window})")
    t_conv = int(model.config.t_conv)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ops = OperationCounter(model.config, {}, device)
    preds, fixed, labels, steps = [], [], [], []
    start = time.perf_counter()
    with eval_mode(model), torch.autocast(device.type, enabled=False):
        for batch in report_batches(dataloader, max_batches, "adaptive T"):
            input_ids, input_mask, segment_ids = (x.to(device) for x in batch[:3])
            recorder = BatchRecorder(model, input_mask, t_conv, (), keep_trains=False)
            out = model(input_ids, segment_ids, input_mask, adaptive_tol=float(tol), adaptive_window=int(window),
                        recorder=recorder)
            ops.add({key: recorder.counts(key)[0] for key in ops.layers}, input_mask.sum(1).to(torch.float64))
            preds.append(predictions_of(out.logits))
            if reference is None:
                fixed.append(predictions_of(model(input_ids, segment_ids, input_mask).logits))
            labels.append(batch[3].cpu().numpy())
            steps.append(np.full(input_ids.shape[0], out.steps, dtype=np.int64))
    if not preds:
        raise DataError("adaptive T: the evaluation data loader yielded no batches; check the dev set")
    preds_np, labels_np = np.concatenate(preds), np.concatenate(labels)
    fixed_np = reference.predictions if reference is not None else np.concatenate(fixed)
    if len(fixed_np) != len(preds_np):
        raise UsageError(f"the reference spike stats cover {len(fixed_np)} examples but the loader gave "
                          f"{len(preds_np)}; pass the same loader and max_batches to both")
    examples = len(preds_np)
    result = AdaptiveTStats(
        tol=float(tol), window=int(window), t_conv=t_conv, metric=metric_name(task, preds_np.dtype.kind == "f"),
        metrics=task_metrics(task, preds_np, labels_np), metrics_fixed=task_metrics(task, fixed_np, labels_np),
        agreement=float(np.mean(preds_np == fixed_np)), steps_per_example=np.concatenate(steps), predictions=preds_np,
        spikes_per_example=float(sum(ops.spikes.values())) / examples,
        sops_per_example=float(sum(ops.sops.values())) / examples,
        sops_per_example_fixed=reference.total_sops_per_example if reference is not None else None,
        seconds=time.perf_counter() - start,
    )
    logger.info("adaptive T (tol %g, window %d): %.1f of %d steps on average, %s %.4f (fixed T: %.4f)",
                tol, window, result.mean_steps, t_conv, result.metric,
                result.metrics.get(result.metric, float("nan")), result.metrics_fixed.get(result.metric, float("nan")))
    return result
