"""The spike report's files: ``report.json``, ``report.md`` and four PNG plots, each written atomically.

The fields of ``report.json`` are listed in docs/DESIGN.md, "Spike and energy report".
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from transformer.file_utils import atomic_open

from .energy import PJ_PER_MAC, PJ_PER_SOP, snn_uj
from .measure import AdaptiveTStats, ReportError, SpikeStats

__all__ = ["REPORT_FILES", "write_report"]

logger = logging.getLogger(__name__)

#: Files :func:`write_report` writes into its output directory.
REPORT_FILES = {
    "json": "report.json",
    "markdown": "report.md",
    "asr_per_layer": "asr_per_layer.png",
    "asr_convergence": "asr_convergence.png",
    "metric_vs_t": "metric_vs_t.png",
    "energy": "energy.png",
}


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
        values.append(snn_uj(adaptive.sops_per_example))
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
