"""Spike and energy report of a classification student (rates, convergence, metric vs T, SOPs, energy).

Library API (used by ``--do_eval --report`` and the demo)::

    stats = collect_spike_stats(model, dev_loader, t_values=None, device=None, max_batches=None,
                                task="sst-2", teacher_config=teacher.config)
    adaptive = adaptive_t_eval(model, dev_loader, tol=1e-3, window=8, task="sst-2", reference=stats)
    paths = write_report(stats, output_dir, {"model": "...", "teacher_acc": 0.91}, adaptive=adaptive)

``model`` is a :class:`~models.spiking_bert.SpikingBertForSequenceClassification` (a
``DataParallel``/``DistributedDataParallel`` wrapper is unwrapped); it runs in eval mode with autocast
off (spike counts are exact in float32/float64), and its training mode is restored afterwards. The loader yields
``(input_ids, input_mask, segment_ids, label_ids[, seq_lengths])`` as
:func:`spikingbert.glue.load_task_dataset` builds them; the real length of each example is taken
from ``input_mask``. Each function walks the loader once, in one process (under ``torchrun`` call
it on the main rank only).

What is measured (``T`` = the student's configured ``t_conv``; ``S_b`` = number of real tokens of
example ``b``, i.e. ``input_mask.sum()``; ``H`` hidden size; ``I`` intermediate size; ``L`` layers):

* **Average spiking rate (ASR)** of every neuron layer ``E``, ``{k}.K``, ``{k}.V``, ``{k}.A``,
  ``{k}.O1``, ``{k}.I``, ``{k}.O2``: spikes / (T x neurons). Two averages are kept: over the
  neurons of real tokens only (``asr.real_tokens``, the one plotted and tabulated) and over every
  position including padding (``asr.all_positions``).
* **ASR convergence**: for ``t = 1..T``, the mean over real-token neurons of ``|ASR_t - ASR_T|``
  where ``ASR_t`` is the neuron's spike count over the first ``t`` steps divided by ``t``. Computed
  exactly from the real-token spike trains of each batch, kept packed as bits (``ceil(T/8)`` bytes per neuron
  of one batch); ``convergence=False`` skips it.
* **Metric vs T**: for every ``t`` in ``t_values`` the logits ``head(count_t / t)`` of the last O2
  layer's [CLS] spike count over the first ``t`` steps, through the model's own head (relu or tanh
  pooler, then the classifier). The simulation is causal, so these are the predictions of separate
  runs with ``t_conv = t`` (bit-identical whenever the separate run advances the same time chunks,
  e.g. in float64 or with ``config.time_chunk`` set; in float32 with automatic chunking the GEMMs
  of different chunk sizes may round differently).
* **Synaptic operations (SOPs)** per example: over real tokens only (padding is a batching artefact:
  it never influences a real token, because the attention mask removes padded keys), each spike
  times the fan-out of its layer (:func:`fan_outs`), summed over the ``T`` steps and all layers:

  =========  =============================  ===============================================
  layer      fan-out per spike              what the spike drives
  =========  =============================  ===============================================
  E          ``3H``                          ``W_K``, ``W_V``, ``W_Q`` of encoder 0
  k.K        ``S_b``                         ``Q K^T``: one accumulate per (real) query row
  k.V        ``S_b``                         ``P V``: one accumulate per (real) query row
  k.A        ``H``                           ``W_O``
  k.O1       ``I``                           ``W_I``
  k.I        ``H``                           ``W_2``
  k.O2       ``3H`` (``0`` for k = L-1)      ``W_K``, ``W_V``, ``W_Q`` of encoder k+1
  =========  =============================  ===============================================

  Not counted: the residual additions (``s_in`` into O1's LayerNorm, ``s_O1`` into O2's),
  LayerNorm, softmax, GELU and the classifier read-out (once per example, not per step).
* **ANN MACs** per example of a BERT encoder with ``L`` layers (the same operations, multiply-
  accumulate on real values, over the ``S_b`` real tokens; embeddings, pooler and classifier
  excluded): ``L * (4 H^2 S_b + 2 H I S_b + 2 H S_b^2)`` (Q, K, V, W_O: ``4 H^2 S``; W_I and W_2:
  ``2 H I S``; ``Q K^T`` and ``P V``: ``2 H S^2``). Computed for a BERT of the student's size and,
  given ``teacher_config``, of the teacher's size.
* **Energy** (45 nm CMOS figures used by the SpikingBERT paper): ``E_SNN = SOPs x 0.9 pJ``,
  ``E_ANN = MACs x 4.6 pJ``, reported in microjoules per example.

``report.json`` fields (written by :func:`write_report`; per-example figures are means over examples):

* ``task``, ``t_conv``, ``vth``, ``leak``, ``num_examples``, ``num_batches``, ``real_tokens``,
  ``padded_tokens`` (``B x S`` summed over batches), ``mean_seq_length``; ``layers`` (chain order),
  ``widths`` (neurons per token).
* ``asr``: ``real_tokens`` / ``all_positions`` -> {layer: ASR}; ``reported`` names the one shown.
* ``asr_convergence``: ``t`` = 1..T and ``mean_abs_diff_to_T`` -> {layer: [mean |ASR_t - ASR_T|]}.
* ``metric`` (main metric name: ``acc``, ``mcc``, ``corr``; ``mse`` for one output without a task),
  ``metrics_at_T`` (all metrics of the model's own logits), ``metric_vs_t``: ``t``, ``metrics``
  (all metrics at each t) and ``<metric>`` (the main one at each t).
* ``spikes_per_example``: ``total`` and ``per_layer``; ``spikes_per_step``: all layers, per example,
  at each step ``t = 1..T``.
* ``sops_per_example``: ``total``, ``per_layer`` and ``fan_out`` (``"S"`` = per real token).
* ``energy``: ``pj_per_sop``, ``pj_per_mac``, ``snn_uj_per_example`` and ``ann`` -> {``student``,
  ``teacher``: BERT size, ``macs_per_example``, ``uj_per_example``, ``ann_over_snn``}.
* ``seconds`` (time of the pass), ``format_version``.
* ``info``: the ``extra`` dict (task, model, accuracies, teacher scores, ...); ``adaptive_t``
  (:meth:`AdaptiveTStats.to_dict`, when given); ``plots``: the PNG file names.

Non-finite numbers (e.g. a correlation of constant predictions) are written as ``null``. Spike
counts are summed in the model's dtype, exactly for float32 and float64 models (not for bf16/fp16).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from modules.blocks import NEURON_LAYERS
from transformer.file_utils import atomic_open

from . import glue
from .errors import DataError, UsageError

__all__ = [
    "PJ_PER_SOP",
    "PJ_PER_MAC",
    "REPORT_FILES",
    "AdaptiveTStats",
    "BertSize",
    "FanOut",
    "ReportError",
    "SpikeStats",
    "adaptive_t_eval",
    "collect_spike_stats",
    "default_t_values",
    "fan_outs",
    "neuron_layers",
    "write_report",
]

logger = logging.getLogger(__name__)

#: Energy of one synaptic (accumulate) operation and of one multiply-accumulate, 45 nm CMOS, picojoules.
PJ_PER_SOP = 0.9
PJ_PER_MAC = 4.6

#: Files :func:`write_report` writes into its output directory.
REPORT_FILES = {
    "json": "report.json",
    "markdown": "report.md",
    "asr_per_layer": "asr_per_layer.png",
    "asr_convergence": "asr_convergence.png",
    "metric_vs_t": "metric_vs_t.png",
    "energy": "energy.png",
}

_FORMAT_VERSION = 1


class ReportError(UsageError):
    """An argument of the report functions that cannot work (the message names it)."""


# ---- layers, fan-outs and ANN cost ------------------------------------------------------------------
def neuron_layers(config) -> list[str]:
    """Neuron layer keys in chain order: ``E``, then ``{k}.K`` … ``{k}.O2`` for each encoder ``k``."""
    return ["E"] + [f"{k}.{name}" for k in range(config.num_hidden_layers) for name in NEURON_LAYERS]


def _layer_width(config, key: str) -> int:
    return config.intermediate_size if key.endswith(".I") else config.hidden_size


@dataclass(frozen=True)
class FanOut:
    """Synaptic operations caused by one spike: ``fixed + per_token * S_b`` (``S_b`` = real tokens)."""

    fixed: int
    per_token: int = 0

    def __call__(self, seq_len: Tensor) -> Tensor:
        return self.fixed + self.per_token * seq_len

    def describe(self) -> str:
        if self.per_token:
            return "S" if self.per_token == 1 else f"{self.per_token}S"
        return str(self.fixed)


def fan_outs(config) -> dict[str, FanOut]:
    """Fan-out of every neuron layer (see the module docstring for the table)."""
    h, inner, last = config.hidden_size, config.intermediate_size, config.num_hidden_layers - 1
    per_name = {"K": FanOut(0, 1), "V": FanOut(0, 1), "A": FanOut(h), "O1": FanOut(inner), "I": FanOut(h)}
    result = {"E": FanOut(3 * h)}
    for key in neuron_layers(config)[1:]:
        k, name = key.split(".")
        result[key] = FanOut(0 if int(k) == last else 3 * h) if name == "O2" else per_name[name]
    return result


@dataclass(frozen=True)
class BertSize:
    """Size of a BERT encoder, for its multiply-accumulate count."""

    num_layers: int
    hidden_size: int
    intermediate_size: int

    @classmethod
    def of(cls, config) -> "BertSize":
        """From any config with ``num_hidden_layers``, ``hidden_size``, ``intermediate_size`` (student or teacher)."""
        return cls(int(config.num_hidden_layers), int(config.hidden_size), int(config.intermediate_size))

    def macs(self, seq_len: Tensor) -> Tensor:
        """MACs of one example of ``seq_len`` real tokens: ``L (4 H^2 S + 2 H I S + 2 H S^2)``."""
        h, inner = self.hidden_size, self.intermediate_size
        s = seq_len.to(torch.float64)
        return self.num_layers * (4 * h * h * s + 2 * h * inner * s + 2 * h * s * s)

    def to_dict(self) -> dict[str, int]:
        return {"num_layers": self.num_layers, "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size}


def default_t_values(t_conv: int) -> list[int]:
    """Time steps of the metric-vs-T curve: powers of two below ``T`` and the tenths of ``T`` (``T`` included)."""
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
        spikes_per_example / sops_per_example: per layer, real tokens, summed over the ``T`` steps.
        spikes_per_step: spikes of all layers (real tokens) at each step ``t = 1..T``, per example.
        ann_sizes / ann_macs_per_example: BERT sizes (``"student"``, optionally ``"teacher"``) and their MACs.
        t_values / metrics_at_t / predictions_at_t: the metric-vs-T curve and its predictions ``(N,)``.
        metrics / predictions / labels: the model's own output at ``T``, and the gold labels ``(N,)``.
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

    @property
    def total_spikes_per_example(self) -> float:
        return float(sum(self.spikes_per_example.values()))

    @property
    def total_sops_per_example(self) -> float:
        return float(sum(self.sops_per_example.values()))

    @property
    def energy_snn_uj(self) -> float:
        """``E_SNN`` per example in microjoules."""
        return self.total_sops_per_example * PJ_PER_SOP * 1e-6

    def energy_ann_uj(self, name: str = "student") -> float:
        """``E_ANN`` per example in microjoules for the BERT size ``name``."""
        return self.ann_macs_per_example[name] * PJ_PER_MAC * 1e-6

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the ``report.json`` fields; predictions are not included)."""
        snn = self.energy_snn_uj
        return {
            "format_version": _FORMAT_VERSION,
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
            },
            "seconds": round(self.seconds, 3),
        }


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
            "snn_uj_per_example": self.sops_per_example * PJ_PER_SOP * 1e-6,
            "seconds": round(self.seconds, 3),
        }


# ---- recording -------------------------------------------------------------------------------------------
class _BatchRecorder:
    """``recorder(key, t0, spikes)`` for one batch: spike counts, [CLS] logits at chosen steps, spike trains.

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
        self.logits_at_t: dict[int, Tensor] = {}

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
        """Logits from the [CLS] count of the last O2 layer after each step in ``t_values``."""
        cumulative = torch.cumsum(cls_spikes, 0)                                    # (Tc, B, H)
        if self.cls_count is not None:
            cumulative = cumulative + self.cls_count
        for j in range(cls_spikes.shape[0]):
            t = t0 + j + 1
            if t in self.t_values:
                self.logits_at_t[t] = self.model.head(cumulative[j] / t)
        self.cls_count = cumulative[-1]

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


# ---- helpers ------------------------------------------------------------------------------------------------
def _classification_model(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)          # DataParallel / DistributedDataParallel
    if not (hasattr(model, "classifier") and hasattr(model, "bert")):
        raise ReportError(f"the spike report needs a classification student (SpikingBertForSequenceClassification), "
                          f"got {type(model).__name__}; load the student with its classifier head")
    return model


def _batches(dataloader: Iterable, max_batches: Optional[int], desc: str):
    if max_batches is not None and max_batches < 1:
        raise ReportError(f"max_batches must be >= 1 or None (got {max_batches})")
    for i, batch in enumerate(tqdm(dataloader, desc=desc, unit="batch", leave=False)):
        if max_batches is not None and i >= max_batches:
            break
        if len(batch) < 4:
            raise DataError(f"{desc}: each batch must be (input_ids, input_mask, segment_ids, label_ids[, seq_lengths]) "
                            f"as spikingbert.glue.load_task_dataset builds it; got {len(batch)} tensors")
        yield batch


def _predictions(logits: Tensor) -> np.ndarray:
    """Class ids ``(B,)``, or the score ``(B,)`` of a one-output (regression) head."""
    logits = logits.detach().cpu()
    return (logits[:, 0] if logits.shape[1] == 1 else logits.argmax(dim=1)).numpy()


def _metric_name(task: Optional[str], regression: bool) -> str:
    if task is not None:
        return glue.main_metric(task)
    return "mse" if regression else "acc"


def _metrics(task: Optional[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
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
        raise ReportError(f"t_values must be a non-empty list of steps in 1..t_conv={t_conv} (got {list(t_values)}); "
                          f"the curve can only look at steps the simulation runs")
    return values


class _Modes:
    """Put a module in eval mode and restore every submodule's training flag afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.saved: list[tuple[nn.Module, bool]] = []

    def __enter__(self):
        self.saved = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc):
        for module, training in self.saved:
            module.training = training


# ---- public API ---------------------------------------------------------------------------------------------
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
        model: a ``SpikingBertForSequenceClassification`` (wrappers with ``.module`` are unwrapped).
        dataloader: batches ``(input_ids, input_mask, segment_ids, label_ids[, seq_lengths])``, ``(B, S)`` each.
        t_values: steps of the metric-vs-T curve, each in ``1..t_conv`` (default :func:`default_t_values`).
        device: where to run (default: the model's device).
        max_batches: stop after this many batches.
        task: GLUE task name for ``glue.compute_metrics`` (None: accuracy, or MSE for one output).
        teacher_config: a config with ``num_hidden_layers``, ``hidden_size``, ``intermediate_size`` to add
            the ANN energy of a BERT of the teacher's size.
        convergence: measure the ASR convergence (keeps each batch's spike trains as bits).
    """
    model = _classification_model(model)
    cfg = model.config
    t_conv = int(cfg.t_conv)
    t_values = _check_t_values(t_values, t_conv)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    layers = neuron_layers(cfg)
    widths = {key: _layer_width(cfg, key) for key in layers}
    fans = fan_outs(cfg)
    sizes = {"student": BertSize.of(cfg)}
    if teacher_config is not None:
        sizes["teacher"] = BertSize.of(teacher_config)

    def zeros() -> dict[str, Tensor]:
        return {key: torch.zeros((), dtype=torch.float64, device=device) for key in layers}

    spikes_real, spikes_all, sops = zeros(), zeros(), zeros()
    conv_sums = {key: torch.zeros(t_conv, dtype=torch.float64, device=device) for key in layers}
    per_step = torch.zeros(t_conv, dtype=torch.float64, device=device)
    macs = {name: torch.zeros((), dtype=torch.float64, device=device) for name in sizes}
    preds, labels, preds_at_t = [], [], {t: [] for t in t_values}
    examples = batches = real_tokens = padded_tokens = 0
    start = time.perf_counter()
    with _Modes(model), torch.autocast(device.type, enabled=False):
        for batch in _batches(dataloader, max_batches, "spike report"):
            input_ids, input_mask, segment_ids = (x.to(device) for x in batch[:3])
            recorder = _BatchRecorder(model, input_mask, t_conv, t_values, keep_trains=convergence)
            out = model(input_ids, segment_ids, input_mask, recorder=recorder)
            seq_len = input_mask.sum(1).to(torch.float64)                            # (B,)
            for key in layers:
                counts, counts_all = recorder.counts(key)
                spikes_real[key] += counts.sum()
                spikes_all[key] += counts_all
                sops[key] += (counts * fans[key](seq_len)).sum()
            if convergence:
                for key, sums in recorder.convergence_sums().items():
                    conv_sums[key] += sums
            per_step += recorder.spikes_per_step()
            for name, size in sizes.items():
                macs[name] += size.macs(seq_len).sum()
            preds.append(_predictions(out.logits))
            for t in t_values:
                preds_at_t[t].append(_predictions(recorder.logits_at_t[t]))
            labels.append(batch[3].cpu().numpy())
            examples += input_ids.shape[0]
            batches += 1
            real_tokens += int(input_mask.sum())
            padded_tokens += input_mask.numel()
    if examples == 0:
        raise DataError("spike report: the evaluation data loader yielded no batches; check the dev set")

    labels_np = np.concatenate(labels)
    preds_np = np.concatenate(preds)
    preds_at_t_np = {t: np.concatenate(p) for t, p in preds_at_t.items()}
    regression = preds_np.dtype.kind == "f"
    stats = SpikeStats(
        task=task, t_conv=t_conv, vth=float(cfg.vth), leak=float(cfg.leak),
        num_examples=examples, num_batches=batches, real_tokens=real_tokens, padded_tokens=padded_tokens,
        layers=layers, widths=widths, fan_out=fans,
        asr_real_tokens={k: float(spikes_real[k]) / (t_conv * real_tokens * widths[k]) for k in layers},
        asr_all_positions={k: float(spikes_all[k]) / (t_conv * padded_tokens * widths[k]) for k in layers},
        convergence=({k: (conv_sums[k] / (real_tokens * widths[k])).tolist() for k in layers} if convergence else {}),
        spikes_per_example={k: float(spikes_real[k]) / examples for k in layers},
        sops_per_example={k: float(sops[k]) / examples for k in layers},
        spikes_per_step=(per_step / examples).tolist(),
        ann_sizes=sizes,
        ann_macs_per_example={name: float(m) / examples for name, m in macs.items()},
        metric=_metric_name(task, regression),
        metrics=_metrics(task, preds_np, labels_np),
        t_values=t_values,
        metrics_at_t={t: _metrics(task, p, labels_np) for t, p in preds_at_t_np.items()},
        predictions=preds_np, predictions_at_t=preds_at_t_np, labels=labels_np,
        seconds=time.perf_counter() - start,
    )
    logger.info("spike report: %d examples, T=%d, %s=%.4f, %.3g spikes and %.3g SOPs per example, "
                "E_SNN %.3g uJ vs E_ANN %.3g uJ (student size)", examples, t_conv, stats.metric,
                stats.metrics.get(stats.metric, float("nan")), stats.total_spikes_per_example,
                stats.total_sops_per_example, stats.energy_snn_uj, stats.energy_ann_uj())
    return stats


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
    model = _classification_model(model)
    if not (tol >= 0 and math.isfinite(tol)):
        raise ReportError(f"the adaptive tolerance must be a finite number >= 0 (got {tol})")
    if int(window) < 1:
        raise ReportError(f"the adaptive window must be >= 1 step (got {window})")
    cfg = model.config
    t_conv = int(cfg.t_conv)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    layers = neuron_layers(cfg)
    fans = fan_outs(cfg)
    spikes = torch.zeros((), dtype=torch.float64, device=device)
    sops = torch.zeros((), dtype=torch.float64, device=device)
    preds, fixed, labels, steps = [], [], [], []
    start = time.perf_counter()
    with _Modes(model), torch.autocast(device.type, enabled=False):
        for batch in _batches(dataloader, max_batches, "adaptive T"):
            input_ids, input_mask, segment_ids = (x.to(device) for x in batch[:3])
            recorder = _BatchRecorder(model, input_mask, t_conv, (), keep_trains=False)
            out = model(input_ids, segment_ids, input_mask, adaptive_tol=float(tol), adaptive_window=int(window),
                        recorder=recorder)
            seq_len = input_mask.sum(1).to(torch.float64)
            for key in layers:
                counts = recorder.counts(key)[0]
                spikes += counts.sum()
                sops += (counts * fans[key](seq_len)).sum()
            preds.append(_predictions(out.logits))
            if reference is None:
                fixed.append(_predictions(model(input_ids, segment_ids, input_mask).logits))
            labels.append(batch[3].cpu().numpy())
            steps.append(np.full(input_ids.shape[0], out.steps, dtype=np.int64))
    if not preds:
        raise DataError("adaptive T: the evaluation data loader yielded no batches; check the dev set")
    preds_np, labels_np = np.concatenate(preds), np.concatenate(labels)
    fixed_np = reference.predictions if reference is not None else np.concatenate(fixed)
    if len(fixed_np) != len(preds_np):
        raise ReportError(f"the reference spike stats cover {len(fixed_np)} examples but the loader gave "
                          f"{len(preds_np)}; pass the same loader and max_batches to both")
    examples = len(preds_np)
    regression = preds_np.dtype.kind == "f"
    result = AdaptiveTStats(
        tol=float(tol), window=int(window), t_conv=t_conv, metric=_metric_name(task, regression),
        metrics=_metrics(task, preds_np, labels_np), metrics_fixed=_metrics(task, fixed_np, labels_np),
        agreement=float(np.mean(preds_np == fixed_np)), steps_per_example=np.concatenate(steps), predictions=preds_np,
        spikes_per_example=float(spikes) / examples, sops_per_example=float(sops) / examples,
        sops_per_example_fixed=reference.total_sops_per_example if reference is not None else None,
        seconds=time.perf_counter() - start,
    )
    logger.info("adaptive T (tol %g, window %d): %.1f of %d steps on average, %s %.4f (fixed T: %.4f)",
                tol, window, result.mean_steps, t_conv, result.metric,
                result.metrics.get(result.metric, float("nan")), result.metrics_fixed.get(result.metric, float("nan")))
    return result


def write_report(
    stats: SpikeStats,
    output_dir: str | Path,
    extra: Optional[dict[str, Any]] = None,
    *,
    adaptive: Optional[AdaptiveTStats] = None,
) -> dict[str, Path]:
    """Write ``report.json``, four PNG plots and ``report.md`` into ``output_dir`` (each file atomically).

    ``extra`` (JSON-serialisable: task, model, accuracies, teacher scores, ...) goes under ``info``.
    Returns the written paths keyed as :data:`REPORT_FILES`.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ReportError(f"report directory {output_dir} exists and is not a directory; choose another output dir")
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: output_dir / filename for name, filename in REPORT_FILES.items()}
    report = stats.to_dict()
    report["info"] = dict(extra or {})
    if adaptive is not None:
        report["adaptive_t"] = adaptive.to_dict()
    report["plots"] = {name: filename for name, filename in REPORT_FILES.items() if filename.endswith(".png")}
    try:
        text = json.dumps(_json_safe(report), indent=2, sort_keys=True, allow_nan=False) + "\n"
    except TypeError as err:
        raise ReportError(f"the extra report info must be JSON-serialisable ({err})") from None

    _plot_asr(stats, paths["asr_per_layer"])
    _plot_convergence(stats, paths["asr_convergence"])
    _plot_metric_vs_t(stats, adaptive, paths["metric_vs_t"])
    _plot_energy(stats, adaptive, paths["energy"])
    with atomic_open(paths["json"]) as f:
        f.write(text)
    with atomic_open(paths["markdown"]) as f:
        f.write(_markdown(stats, report["info"], adaptive))
    logger.info("wrote the spike report to %s", paths["markdown"])
    return paths


# ---- files ------------------------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    """Non-finite floats -> None; numpy scalars -> Python numbers (recursively)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _save_figure(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_open(path, binary=True) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def _layer_type(key: str) -> str:
    return key.split(".")[-1]


_TYPE_COLORS = {"E": "tab:gray", "K": "tab:blue", "V": "tab:orange", "A": "tab:green",
                "O1": "tab:red", "I": "tab:purple", "O2": "tab:brown"}


def _plot_asr(stats: SpikeStats, path: Path) -> None:
    fig, ax = _figure(max(6.0, 0.3 * len(stats.layers) + 2), 4.0)
    values = [stats.asr_real_tokens[k] for k in stats.layers]
    ax.bar(range(len(values)), values, color=[_TYPE_COLORS[_layer_type(k)] for k in stats.layers])
    ax.set_xticks(range(len(values)), stats.layers, rotation=90, fontsize=8)
    ax.set_ylabel("average spiking rate (real tokens)")
    ax.set_title(f"Average spiking rate per neuron layer (T={stats.t_conv})")
    _save_figure(fig, path)


def _plot_convergence(stats: SpikeStats, path: Path) -> None:
    fig, ax = _figure()
    if stats.convergence:
        t = np.arange(1, stats.t_conv + 1)
        depth = max(1, len(stats.layers) - 1)
        labelled = set()
        for i, key in enumerate(stats.layers):
            kind = _layer_type(key)
            values = np.asarray(stats.convergence[key], dtype=np.float64)
            values = np.where(values > 0, values, np.nan)          # |ASR_T - ASR_T| = 0 has no log
            ax.plot(t, values, color=_TYPE_COLORS[kind], alpha=0.35 + 0.65 * i / depth, linewidth=1.0,
                    label=None if kind in labelled else kind)
            labelled.add(kind)
        ax.set_yscale("log")
        ax.legend(title="neuron layer", fontsize=8, ncol=2)
    else:
        ax.text(0.5, 0.5, "convergence not measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("time step t")
    ax.set_ylabel("mean |ASR_t - ASR_T|")
    ax.set_title("ASR convergence (deeper layers darker)")
    _save_figure(fig, path)


def _plot_metric_vs_t(stats: SpikeStats, adaptive: Optional[AdaptiveTStats], path: Path) -> None:
    fig, ax = _figure()
    values = [_finite_or_nan(stats.metrics_at_t[t].get(stats.metric)) for t in stats.t_values]
    ax.plot(stats.t_values, values, marker="o", label="fixed T = t (from one run)")
    ax.axhline(_finite_or_nan(stats.metrics.get(stats.metric)), color="tab:gray", linestyle="--",
               label=f"trained T = {stats.t_conv}")
    if adaptive is not None:
        ax.scatter([adaptive.mean_steps], [_finite_or_nan(adaptive.metrics.get(adaptive.metric))], color="tab:red",
                   marker="*", s=120, zorder=3, label=f"adaptive (tol {adaptive.tol:g}, mean steps)")
    ax.legend()
    ax.set_xlabel("simulation steps T")
    ax.set_ylabel(stats.metric)
    ax.set_title(f"{stats.task or 'dev'}: {stats.metric} vs simulation steps")
    _save_figure(fig, path)


def _plot_energy(stats: SpikeStats, adaptive: Optional[AdaptiveTStats], path: Path) -> None:
    fig, ax = _figure(6.0, 4.0)
    names = [f"SNN (T={stats.t_conv})"]
    values = [stats.energy_snn_uj]
    if adaptive is not None:
        names.append(f"SNN adaptive ({adaptive.mean_steps:.0f} steps)")
        values.append(adaptive.sops_per_example * PJ_PER_SOP * 1e-6)
    for name in stats.ann_sizes:
        names.append(f"ANN ({name} size)")
        values.append(stats.energy_ann_uj(name))
    bars = ax.bar(range(len(values)), values, color=["tab:green"] * (len(values) - len(stats.ann_sizes))
                  + ["tab:gray"] * len(stats.ann_sizes))
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=8)
    ax.set_xticks(range(len(values)), names, fontsize=8)
    ax.set_ylabel("energy per example (uJ)")
    ax.set_title(f"Energy: {PJ_PER_SOP} pJ/SOP vs {PJ_PER_MAC} pJ/MAC")
    _save_figure(fig, path)


def _finite_or_nan(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def _markdown(stats: SpikeStats, info: dict[str, Any], adaptive: Optional[AdaptiveTStats]) -> str:
    snn = stats.energy_snn_uj
    rows = [("task", stats.task or "-"), ("examples", stats.num_examples),
            ("simulation steps T", stats.t_conv), ("mean sequence length", stats.real_tokens / stats.num_examples),
            (f"{stats.metric} at T", stats.metrics.get(stats.metric, float("nan"))),
            ("spikes per example", stats.total_spikes_per_example),
            ("SOPs per example", stats.total_sops_per_example),
            ("E_SNN per example (uJ)", snn)]
    for name in stats.ann_sizes:
        ann = stats.energy_ann_uj(name)
        rows.append((f"E_ANN per example, {name}-size BERT (uJ)", ann))
        rows.append((f"E_ANN / E_SNN ({name} size)", ann / snn if snn > 0 else float("nan")))
    lines = ["# Spike and energy report", ""]
    lines += ["| quantity | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows] + [""]
    if info:
        lines += ["## Run", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v) if not isinstance(v, (dict, list)) else json.dumps(_json_safe(v))} |"
                  for k, v in info.items()] + [""]
    lines += ["## Average spiking rate per layer", "",
              f"![ASR per layer]({REPORT_FILES['asr_per_layer']})", "",
              "ASR over real tokens (padding excluded) and over all positions; spikes and SOPs per example over "
              "real tokens; fan-out = synaptic operations per spike (S = real sequence length).", "",
              "| layer | width | ASR (real tokens) | ASR (all positions) | spikes / example | fan-out | SOPs / example |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {k} | {stats.widths[k]} | {_fmt(stats.asr_real_tokens[k])} | {_fmt(stats.asr_all_positions[k])} | "
              f"{_fmt(stats.spikes_per_example[k])} | {stats.fan_out[k].describe()} | {_fmt(stats.sops_per_example[k])} |"
              for k in stats.layers] + [""]
    lines += ["## ASR convergence", "", f"![ASR convergence]({REPORT_FILES['asr_convergence']})", "",
              "Mean over real-token neurons of |ASR_t - ASR_T| for t = 1..T.", ""]
    lines += [f"## {stats.metric} vs simulation steps", "", f"![metric vs T]({REPORT_FILES['metric_vs_t']})", "",
              "Predictions at t from the [CLS] spike count of the last layer after t steps (the same as a run with "
              "t_conv = t).", "", f"| t | {stats.metric} |", "|---|---|"]
    lines += [f"| {t} | {_fmt(stats.metrics_at_t[t].get(stats.metric, float('nan')))} |" for t in stats.t_values] + [""]
    lines += ["## Energy", "", f"![energy]({REPORT_FILES['energy']})", "",
              f"E_SNN = SOPs x {PJ_PER_SOP} pJ; E_ANN = MACs x {PJ_PER_MAC} pJ with "
              "MACs = L (4 H^2 S + 2 H I S + 2 H S^2) per example (encoder only).", ""]
    if adaptive is not None:
        a = adaptive.to_dict()
        lines += ["## Adaptive T", "", "| quantity | value |", "|---|---|",
                  f"| tolerance / window | {adaptive.tol:g} / {adaptive.window} |",
                  f"| mean (min, max) steps | {_fmt(a['mean_steps'])} ({a['min_steps']}, {a['max_steps']}) of {adaptive.t_conv} |",
                  f"| {adaptive.metric} adaptive / fixed T | {_fmt(adaptive.metrics.get(adaptive.metric, float('nan')))} / "
                  f"{_fmt(adaptive.metrics_fixed.get(adaptive.metric, float('nan')))} |",
                  f"| agreement with fixed T | {_fmt(adaptive.agreement)} |",
                  f"| SOPs per example | {_fmt(adaptive.sops_per_example)} |", ""]
    return "\n".join(lines)


def evaluation_report(model: nn.Module, dataloader: Iterable, task: Optional[str], device: torch.device, *,
                      report_dir: Optional[Path], adaptive_tol: Optional[float], adaptive_window: int,
                      teacher_config: Any = None, info: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """``--do_eval``'s report (into ``report_dir`` when given) and adaptive-T evaluation (when ``adaptive_tol``
    is given); returns the fields they add to ``eval_results.json``: ``adaptive_t`` (mean steps used, the
    metric with adaptive stopping and at the fixed T, their difference), ``report`` (the written paths),
    ``spikes_per_example`` and ``energy_uj_per_example``. ``info`` goes into the report (see `write_report`)."""
    added: dict[str, Any] = {}
    stats = None
    if report_dir is not None:
        stats = collect_spike_stats(model, dataloader, device=device, task=task, teacher_config=teacher_config)
    adaptive = None
    if adaptive_tol is not None:
        adaptive = adaptive_t_eval(model, dataloader, adaptive_tol, adaptive_window, task, device=device,
                                   reference=stats)
        added["adaptive_t"] = adaptive.eval_fields()
    if stats is not None:
        paths = write_report(stats, report_dir, info, adaptive=adaptive)
        added["report"] = {"dir": str(report_dir), **{k: str(v) for k, v in paths.items()}}
        added["spikes_per_example"] = stats.total_spikes_per_example
        added["energy_uj_per_example"] = {"snn": stats.energy_snn_uj,
                                          **{f"ann_{name}": stats.energy_ann_uj(name) for name in stats.ann_sizes}}
    return added
