"""Measuring for the spike report: spike counts per neuron layer, the metric at every T, adaptive T.

One pass over the dev set at the student's ``t_conv`` records every chunk of spikes (`BatchRecorder`);
energy figures come from `spikingbert.evaluation.energy`. What is measured and why is in docs/DESIGN.md,
"Spike and energy report".
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from spikingbert.core.errors import DataError, UsageError
from spikingbert.core.progress import progress
from spikingbert.data import glue
from spikingbert.evaluation.dev import eval_mode
from spikingbert.evaluation.energy import (
    PJ_PER_MAC,
    PJ_PER_SOP,
    BertSize,
    FanOut,
    OperationCounter,
    ann_uj,
    layer_width,
    snn_uj,
)
from spikingbert.models.stopping import class_margins
from spikingbert.modules.event_engine import engine

__all__ = ["FORMAT_VERSION", "SpikeStats", "BatchRecorder", "default_t_values", "milestone_steps",
           "collect_spike_stats", "classification_model", "report_batches", "predictions_of", "metric_name",
           "task_metrics"]

logger = logging.getLogger(__name__)

#: ``format_version`` of report.json (2: the metric-vs-T curve at every step, per-example adaptive T).
FORMAT_VERSION = 2


def default_t_values(t_conv: int) -> list[int]:
    """Time steps of the metric-vs-T curve: every step ``1..T``."""
    return list(range(1, max(1, t_conv) + 1))


def milestone_steps(t_conv: int) -> list[int]:
    """Steps a table lists: powers of two below ``T`` and the tenths of ``T`` (``T`` included)."""
    powers = [2 ** i for i in range(max(1, t_conv).bit_length()) if 2 ** i < t_conv]
    tenths = [max(1, round(t_conv * k / 10)) for k in range(1, 11)]
    return sorted(set(powers + tenths + [t_conv]))


# ---- results ------------------------------------------------------------------------------------------
@dataclass
class SpikeStats:
    """Everything :func:`collect_spike_stats` measured. Per-example figures are means over the examples.

    Attributes:
        layers: neuron layer keys in chain order; the per-layer dicts below use them.
        widths: neurons per token of each layer.
        fan_out: fan-out of each layer (:class:`FanOut`).
        asr_real_tokens / asr_all_positions: average spiking rate of each layer over real tokens /
            over all positions (padding included).
        convergence: layer -> ``[mean |ASR_t - ASR_T| for t = 1..T]`` over real-token neurons (empty if skipped).
        running_asr: layer -> ``[ASR over steps 1..t for t = 1..T]`` over real-token neurons.
        task_name: the task's name for people (titles of the plots), e.g. ``Rotten Tomatoes``.
        spikes_per_example / sops_per_example: per layer, real tokens, summed over the ``T`` steps.
        spikes_per_step: spikes of all layers (real tokens) at each step ``t = 1..T``, per example.
        ann_sizes / ann_macs_per_example: BERT sizes (``"student"``, optionally ``"teacher"``) and their MACs.
        t_values / metrics_at_t / predictions_at_t: the metric-vs-T curve and its predictions ``(N,)``.
        metrics / predictions / labels: the model's own output at ``T``, and the gold labels ``(N,)``.
        uncounted: ``{"snn", "ann"}`` -> per-example counts of what the energy leaves out (`energy.uncounted_ops`).
        step_classes / step_margins: ``(N, T)`` the predicted class and its probability margin over the runner-up
            after every step (`models.stopping.class_margins`; None for one output): what adaptive T decides on.
    """

    task: Optional[str]
    t_conv: int
    vth: float
    leak: float
    num_examples: int
    num_batches: int
    real_tokens: int
    padded_tokens: int
    layers: list[str]
    widths: dict[str, int]
    fan_out: dict[str, FanOut]
    asr_real_tokens: dict[str, float]
    asr_all_positions: dict[str, float]
    convergence: dict[str, list[float]]
    spikes_per_example: dict[str, float]
    sops_per_example: dict[str, float]
    spikes_per_step: list[float]
    ann_sizes: dict[str, BertSize]
    ann_macs_per_example: dict[str, float]
    metric: str
    metrics: dict[str, float]
    t_values: list[int]
    metrics_at_t: dict[int, dict[str, float]]
    predictions: np.ndarray = field(repr=False)
    predictions_at_t: dict[int, np.ndarray] = field(repr=False)
    labels: np.ndarray = field(repr=False)
    seconds: float = 0.0
    running_asr: dict[str, list[float]] = field(default_factory=dict)
    task_name: Optional[str] = None
    uncounted: dict[str, dict[str, float]] = field(default_factory=dict)
    step_classes: Optional[np.ndarray] = field(default=None, repr=False)
    step_margins: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def total_spikes_per_example(self) -> float:
        return float(sum(self.spikes_per_example.values()))

    @property
    def total_sops_per_example(self) -> float:
        return float(sum(self.sops_per_example.values()))

    @property
    def energy_snn_uj(self) -> float:
        """``E_SNN`` per example in microjoules."""
        return snn_uj(self.total_sops_per_example)

    def energy_ann_uj(self, name: str = "student") -> float:
        """``E_ANN`` per example in microjoules for the BERT size ``name``."""
        return ann_uj(self.ann_macs_per_example[name])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the ``report.json`` fields; predictions are not included)."""
        snn = self.energy_snn_uj
        return {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "t_conv": self.t_conv, "vth": self.vth, "leak": self.leak,
            "num_examples": self.num_examples, "num_batches": self.num_batches,
            "real_tokens": self.real_tokens, "padded_tokens": self.padded_tokens,
            "mean_seq_length": self.real_tokens / max(1, self.num_examples),
            "layers": self.layers,
            "widths": self.widths,
            "asr": {"reported": "real_tokens", "real_tokens": self.asr_real_tokens,
                    "all_positions": self.asr_all_positions},
            "asr_convergence": {"t": list(range(1, self.t_conv + 1)) if self.convergence else [],
                                "mean_abs_diff_to_T": self.convergence},
            "asr_over_t": {"t": list(range(1, self.t_conv + 1)), "running": self.running_asr},
            "task_name": self.task_name,
            "metric": self.metric,
            "metrics_at_T": self.metrics,
            "metric_vs_t": {"t": self.t_values, "metrics": [self.metrics_at_t[t] for t in self.t_values],
                            self.metric: [self.metrics_at_t[t].get(self.metric) for t in self.t_values]},
            "spikes_per_example": {"total": self.total_spikes_per_example, "per_layer": self.spikes_per_example},
            "spikes_per_step": self.spikes_per_step,
            "sops_per_example": {"total": self.total_sops_per_example, "per_layer": self.sops_per_example,
                                 "fan_out": {k: f.describe() for k, f in self.fan_out.items()}},
            "energy": {
                "pj_per_sop": PJ_PER_SOP, "pj_per_mac": PJ_PER_MAC,
                "snn_uj_per_example": snn,
                "ann": {name: {**size.to_dict(), "macs_per_example": self.ann_macs_per_example[name],
                               "uj_per_example": self.energy_ann_uj(name),
                               "ann_over_snn": self.energy_ann_uj(name) / snn if snn > 0 else None}
                        for name, size in self.ann_sizes.items()},
                "uncounted_per_example": self.uncounted,
            },
            "seconds": round(self.seconds, 3),
        }


# ---- recording ----------------------------------------------------------------------------------------
class BatchRecorder:
    """``recorder(key, t0, spikes)`` for one batch: spike counts, [CLS] logits after every step, spike trains.

    ``mask`` ``(B, S)`` marks real tokens. Spikes arrive as ``(Tc, B, S, width)`` chunks starting at step
    ``t0``. Each call launches only a handful of kernels and never synchronises the device; the totals
    are formed once per batch (:meth:`counts`, :meth:`convergence_sums`).
    """

    def __init__(self, model: nn.Module, mask: Tensor, t_conv: int, t_values: Sequence[int], keep_trains: bool):
        cfg = model.config
        self.model = model
        dtype = model.classifier.weight.dtype
        self.mask = mask.to(dtype)                                                    # (B, S)
        self.real_index = mask.flatten().nonzero().squeeze(1) if keep_trains else None  # (N,) into B*S
        self.t_conv = t_conv
        self.t_values = set(t_values)
        self.cls_key = f"{cfg.num_hidden_layers - 1}.O2"
        # Spikes per (step, example), at real tokens and at all positions. Exact: at most S * width < 2**24.
        self.step_real: dict[str, Tensor] = {}         # (T, B)
        self.step_all: dict[str, Tensor] = {}          # (T, B)
        self.trains: dict[str, Tensor] = {}            # (ceil(T/8), N, width) uint8, bit t%8 of byte t//8
        self.cls_count: Optional[Tensor] = None        # (B, H)
        self.step_logits: list[Tensor] = []            # (B, C) after steps 1, 2, ...

    def __call__(self, key: str, t0: int, spikes: Tensor) -> None:
        tc, b = spikes.shape[:2]
        if key not in self.step_real:
            self.step_real[key] = spikes.new_zeros(self.t_conv, b)
            self.step_all[key] = spikes.new_zeros(self.t_conv, b)
        per_token = spikes.sum(-1)                                                    # (Tc, B, S)
        torch.sum(per_token * self.mask, -1, out=self.step_real[key][t0:t0 + tc])
        torch.sum(per_token, -1, out=self.step_all[key][t0:t0 + tc])
        if self.real_index is not None:
            self._keep_train(key, t0, spikes.flatten(1, 2).index_select(1, self.real_index))
        if key == self.cls_key:
            self._record_cls(t0, spikes[:, :, 0])

    def _keep_train(self, key: str, t0: int, spikes: Tensor) -> None:
        """Pack the chunk ``(Tc, N, width)`` of real-token spikes into the layer's bit trains."""
        if key not in self.trains:
            nbytes = (self.t_conv + 7) // 8
            self.trains[key] = torch.zeros((nbytes, *spikes.shape[1:]), dtype=torch.uint8, device=spikes.device)
        bits = self.trains[key]
        spikes = spikes.to(torch.uint8)
        for j in range(spikes.shape[0]):
            t = t0 + j
            bits[t >> 3].add_(spikes[j], alpha=1 << (t & 7))

    def _record_cls(self, t0: int, cls_spikes: Tensor) -> None:
        """Logits from the [CLS] count of the last O2 layer after each step (as `models.stopping.StopTracker`)."""
        cumulative = torch.cumsum(cls_spikes, 0)                                    # (Tc, B, H)
        if self.cls_count is not None:
            cumulative = cumulative + self.cls_count
        for j in range(cls_spikes.shape[0]):
            self.step_logits.append(self.model.head(cumulative[j] / int(t0 + j + 1)))
        self.cls_count = cumulative[-1]

    @property
    def logits_at_t(self) -> dict[int, Tensor]:
        """Logits ``(B, C)`` after each step of ``t_values`` that ran."""
        return {t: self.step_logits[t - 1] for t in sorted(self.t_values) if t <= len(self.step_logits)}

    def counts_until(self, key: str, steps: Tensor) -> Tensor:
        """Spikes of layer ``key`` per example at real tokens over its first ``steps`` ``(B,)`` steps (float64)."""
        ran = torch.arange(1, self.t_conv + 1, device=steps.device).unsqueeze(1) <= steps.unsqueeze(0)   # (T, B)
        return (self.step_real[key] * ran).sum(0, dtype=torch.float64)

    def counts(self, key: str) -> tuple[Tensor, Tensor]:
        """Spikes of layer ``key`` per example at real tokens ``(B,)`` and at all positions ``()`` (float64)."""
        return self.step_real[key].sum(0, dtype=torch.float64), self.step_all[key].sum(dtype=torch.float64)

    def spikes_per_step(self) -> Tensor:
        """Spikes of all layers at real tokens, summed over the batch, at each step ``(T,)`` (float64)."""
        return sum(steps.sum(1, dtype=torch.float64) for steps in self.step_real.values())

    def convergence_sums(self) -> dict[str, Tensor]:
        """Per layer ``(T,)``: sum over real-token neurons of ``|count_t / t - count_T / T|``.

        Computed as ``|count_t * T - count_T * t| / (t * T)`` in integers, so it is exact on every
        device (and exactly 0 at ``t = T``). The trains are unpacked a byte (8 steps) at a time:
        ``(8, N, width)`` per pass; a first pass counts each neuron's spikes ``count_T``.
        """
        result = {}
        for key, bits in self.trains.items():
            if bits.device.type == "cpu" and engine()[0] == "event":               # one compiled pass, same sums
                result[key] = torch.ops.spikingbert.train_convergence(bits, int(self.t_conv))
                continue
            shifts = torch.arange(8, dtype=torch.uint8, device=bits.device).view(8, 1, 1)
            final = sum(((byte >> shifts) & 1).sum(0, dtype=torch.int32) for byte in bits)   # (N, width)
            count = torch.zeros_like(final)
            sums = torch.zeros(self.t_conv, dtype=torch.float64, device=final.device)
            for t0 in range(0, self.t_conv, 8):
                n = min(8, self.t_conv - t0)
                cumulative = ((bits[t0 >> 3] >> shifts[:n]) & 1).cumsum(0, dtype=torch.int32) + count  # (n, N, width)
                steps = torch.arange(t0 + 1, t0 + n + 1, dtype=torch.int32, device=final.device).view(n, 1, 1)
                gaps = (cumulative * self.t_conv - final * steps).abs().sum((1, 2), dtype=torch.float64)
                sums[t0:t0 + n] = gaps / (steps.flatten().to(torch.float64) * self.t_conv)
                count = cumulative[-1]
            result[key] = sums
        return result


# ---- helpers ---------------------------------------------------------------------------------------------
def classification_model(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)          # DataParallel / DistributedDataParallel
    if not (hasattr(model, "classifier") and hasattr(model, "bert")):
        raise UsageError(f"the spike report needs a classification student (SpikingBertForSequenceClassification), "
                          f"got {type(model).__name__}; load the student with its classifier head")
    return model


def report_batches(dataloader: Iterable, max_batches: Optional[int], desc: str):
    if max_batches is not None and max_batches < 1:
        raise UsageError(f"max_batches must be >= 1 or None (got {max_batches})")
    for i, batch in enumerate(progress(dataloader, desc=desc, unit="batches", leave=False)):
        if max_batches is not None and i >= max_batches:
            break
        if len(batch) < 4:
            raise DataError(f"{desc}: each batch must be (input_ids, input_mask, segment_ids, label_ids"
                            "[, seq_lengths]) "
                            f"as spikingbert.data.glue.load_task_dataset builds it; got {len(batch)} tensors")
        yield batch


def predictions_of(logits: Tensor) -> np.ndarray:
    """Class ids ``(B,)``, or the score ``(B,)`` of a one-output (regression) head."""
    logits = logits.detach().cpu()
    return (logits[:, 0] if logits.shape[1] == 1 else logits.argmax(dim=1)).numpy()


def metric_name(task: Optional[str], regression: bool) -> str:
    if task is not None:
        return glue.main_metric(task)
    return "mse" if regression else "acc"


def task_metrics(task: Optional[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``glue.compute_metrics`` for a task; without one, accuracy (classification) or MSE (one output)."""
    if task is not None:
        return glue.compute_metrics(task, preds, labels)
    if preds.dtype.kind == "f":
        return {"mse": float(np.mean((preds - labels.astype(np.float64)) ** 2))}
    return {"acc": float(np.mean(preds == labels))}


def _check_t_values(t_values: Optional[Sequence[int]], t_conv: int) -> list[int]:
    if t_values is None:
        return default_t_values(t_conv)
    values = sorted({int(t) for t in t_values})
    bad = [t for t in values if not 1 <= t <= t_conv]
    if not values or bad:
        raise UsageError(f"t_values must be a non-empty list of steps in 1..t_conv={t_conv} (got {list(t_values)}); "
                          f"the curve can only look at steps the simulation runs")
    return values



@torch.no_grad()
def collect_spike_stats(
    model: nn.Module,
    dataloader: Iterable,
    t_values: Optional[Sequence[int]] = None,
    device: Optional[torch.device | str] = None,
    max_batches: Optional[int] = None,
    *,
    task: Optional[str] = None,
    teacher_config: Any = None,
    convergence: bool = True,
) -> SpikeStats:
    """Measure spikes, SOPs, energy and the metric-vs-T curve in one pass at the model's configured ``t_conv``.

    Args:
        model: a ``SpikingBertForSequenceClassification`` (wrappers with ``.module`` are unwrapped); it runs
            in eval mode with autocast off, its training flags are restored afterwards.
        dataloader: batches ``(input_ids, input_mask, segment_ids, label_ids[, seq_lengths])``, ``(B, S)`` each,
            as `spikingbert.data.glue.load_task_dataset` builds them (real lengths from ``input_mask``).
        t_values: steps of the metric-vs-T curve, each in ``1..t_conv`` (default :func:`default_t_values`).
        device: where to run (default: the model's device).
        max_batches: stop after this many batches.
        task: GLUE task name for ``glue.compute_metrics`` (None: accuracy, or MSE for one output).
        teacher_config: a config with ``num_hidden_layers``, ``hidden_size``, ``intermediate_size`` to add
            the ANN energy of a BERT of the teacher's size.
        convergence: measure the ASR convergence (keeps each batch's spike trains as bits).
    """
    model = classification_model(model)
    t_conv = int(model.config.t_conv)
    t_values = _check_t_values(t_values, t_conv)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    sizes = {"student": BertSize.of(model.config)}
    if teacher_config is not None:
        sizes["teacher"] = BertSize.of(teacher_config)
    totals = _ReportTotals(model, t_values, sizes, device, convergence)
    start = time.perf_counter()
    with eval_mode(model), torch.autocast(device.type, enabled=False):
        for batch in report_batches(dataloader, max_batches, "spike report"):
            totals.add(batch)
    if totals.examples == 0:
        raise DataError("spike report: the evaluation data loader yielded no batches; check the dev set")
    stats = totals.stats(task, time.perf_counter() - start)
    logger.info("spike report: %d examples, T=%d, %s=%.4f, %.3g spikes and %.3g SOPs per example, "
                "E_SNN %.3g uJ vs E_ANN %.3g uJ (student size)", stats.num_examples, t_conv, stats.metric,
                stats.metrics.get(stats.metric, float("nan")), stats.total_spikes_per_example,
                stats.total_sops_per_example, stats.energy_snn_uj, stats.energy_ann_uj())
    return stats


class _ReportTotals:
    """What `collect_spike_stats` sums over the batches (float64 on the device), and the predictions."""

    def __init__(self, model: nn.Module, t_values: list[int], sizes: dict[str, BertSize], device: torch.device,
                 convergence: bool):
        cfg = model.config
        self.model, self.t_values, self.convergence = model, t_values, convergence
        self.t_conv = int(cfg.t_conv)
        self.ops = OperationCounter(cfg, sizes, device)
        self.layers = self.ops.layers
        self.widths = {key: layer_width(cfg, key) for key in self.layers}
        self.spikes_all = {key: torch.zeros((), dtype=torch.float64, device=device) for key in self.layers}
        self.conv_sums = {key: torch.zeros(self.t_conv, dtype=torch.float64, device=device) for key in self.layers}
        self.per_step = torch.zeros(self.t_conv, dtype=torch.float64, device=device)
        self.layer_steps = {key: torch.zeros(self.t_conv, dtype=torch.float64, device=device) for key in self.layers}
        self.device = device
        self.preds, self.labels, self.preds_at_t = [], [], {t: [] for t in t_values}
        self.classes, self.margins = [], []
        self.examples = self.batches = self.real_tokens = self.padded_tokens = 0

    def add(self, batch: Sequence[Tensor]) -> None:
        """Run the model on one batch with a recorder and add what it saw."""
        input_ids, input_mask, segment_ids = (x.to(self.device) for x in batch[:3])
        recorder = BatchRecorder(self.model, input_mask, self.t_conv, self.t_values, keep_trains=self.convergence)
        out = self.model(input_ids, segment_ids, input_mask, recorder=recorder)
        counts = {}
        for key in self.layers:
            counts[key], counts_all = recorder.counts(key)
            self.spikes_all[key] += counts_all
        self.ops.add(counts, input_mask.sum(1).to(torch.float64))
        if self.convergence:
            for key, sums in recorder.convergence_sums().items():
                self.conv_sums[key] += sums
        self.per_step += recorder.spikes_per_step()
        for key in self.layers:
            self.layer_steps[key] += recorder.step_real[key].sum(1, dtype=torch.float64)
        self.preds.append(predictions_of(out.logits))
        for t, logits in recorder.logits_at_t.items():
            self.preds_at_t[t].append(predictions_of(logits))
        if out.logits.shape[1] > 1:
            classes, margins = class_margins(torch.stack(recorder.step_logits, 1))              # (B, T)
            self.classes.append(classes.cpu().numpy())
            self.margins.append(margins.cpu().numpy())
        self.labels.append(batch[3].cpu().numpy())
        self.examples += input_ids.shape[0]
        self.batches += 1
        self.real_tokens += int(input_mask.sum())
        self.padded_tokens += input_mask.numel()

    def stats(self, task: Optional[str], seconds: float) -> SpikeStats:
        cfg, layers, widths, examples, t_conv = self.model.config, self.layers, self.widths, self.examples, self.t_conv
        labels_np, preds_np = np.concatenate(self.labels), np.concatenate(self.preds)
        preds_at_t_np = {t: np.concatenate(p) for t, p in self.preds_at_t.items()}
        spikes = self.ops.spikes
        steps = torch.arange(1, t_conv + 1, dtype=torch.float64, device=self.device)
        return SpikeStats(
            task=task, t_conv=t_conv, vth=float(cfg.vth), leak=float(cfg.leak),
            num_examples=examples, num_batches=self.batches, real_tokens=self.real_tokens,
            padded_tokens=self.padded_tokens, layers=layers, widths=widths, fan_out=self.ops.fans,
            asr_real_tokens={k: float(spikes[k]) / (t_conv * self.real_tokens * widths[k]) for k in layers},
            asr_all_positions={k: float(self.spikes_all[k]) / (t_conv * self.padded_tokens * widths[k])
                               for k in layers},
            convergence=({k: (self.conv_sums[k] / (self.real_tokens * widths[k])).tolist() for k in layers}
                         if self.convergence else {}),
            spikes_per_example=self.ops.per_example(spikes, examples),
            sops_per_example=self.ops.per_example(self.ops.sops, examples),
            spikes_per_step=(self.per_step / examples).tolist(),
            running_asr={k: (self.layer_steps[k].cumsum(0) / (steps * self.real_tokens * widths[k])).tolist()
                         for k in layers},
            ann_sizes=self.ops.sizes,
            ann_macs_per_example=self.ops.per_example(self.ops.macs, examples),
            metric=metric_name(task, preds_np.dtype.kind == "f"),
            metrics=task_metrics(task, preds_np, labels_np),
            t_values=self.t_values,
            metrics_at_t={t: task_metrics(task, p, labels_np) for t, p in preds_at_t_np.items()},
            predictions=preds_np, predictions_at_t=preds_at_t_np, labels=labels_np,
            seconds=seconds,
            uncounted={side: self.ops.per_example(ops, examples) for side, ops in self.ops.uncounted.items()},
            step_classes=np.concatenate(self.classes) if self.classes else None,
            step_margins=np.concatenate(self.margins) if self.margins else None,
        )
