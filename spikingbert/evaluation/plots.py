"""The spike report's files: ``report.json``, ``report.md`` and four PNG plots, each written atomically.

``asr_per_layer.png``: the average spiking rate of every neuron layer; ``asr_convergence.png``: each layer's
running average spiking rate over the steps ``t = 1..T`` (a colour per layer); ``metric_vs_t.png``: the dev
metric at every T with the reference lines (teacher, majority class); ``energy.png``: the energy estimates
with their ratios to the SNN's.

The fields of ``report.json`` are listed in docs/DESIGN.md, "Spike and energy report".
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from core.errors import UsageError
from core.files import atomic_open
from spikingbert.evaluation.adaptive import AdaptiveTStats
from spikingbert.evaluation.energy import PJ_PER_MAC, PJ_PER_SOP, snn_uj
from spikingbert.evaluation.measure import SpikeStats

__all__ = ["REPORT_FILES", "write_report", "figure", "save_figure", "layer_colors"]

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
    references: Optional[dict[str, float]] = None,
) -> dict[str, Path]:
    """Write ``report.json``, four PNG plots and ``report.md`` into ``output_dir`` (each file atomically).

    ``extra`` (JSON-serialisable: task, model, accuracies, teacher scores, ...) goes under ``info``.
    ``references``: dev scores drawn as horizontal lines on the metric-vs-T plot (e.g. ``{"teacher": 0.80,
    "majority class": 0.59}``), also written under ``references``.
    Returns the written paths keyed as :data:`REPORT_FILES`.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"report directory {output_dir} exists and is not a directory; choose another output dir")
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: output_dir / filename for name, filename in REPORT_FILES.items()}
    report = stats.to_dict()
    report["info"] = dict(extra or {})
    report["references"] = dict(references or {})
    if adaptive is not None:
        report["adaptive_t"] = adaptive.to_dict()
    report["plots"] = {name: filename for name, filename in REPORT_FILES.items() if filename.endswith(".png")}
    try:
        text = json.dumps(_json_safe(report), indent=2, sort_keys=True, allow_nan=False) + "\n"
    except TypeError as err:
        raise UsageError(f"the extra report info must be JSON-serialisable ({err})") from None

    _plot_asr(stats, paths["asr_per_layer"])
    _plot_running_asr(stats, paths["asr_convergence"])
    _plot_metric_vs_t(stats, adaptive, dict(references or {}), paths["metric_vs_t"])
    _plot_energy(stats, adaptive, paths["energy"])
    with atomic_open(paths["json"]) as f:
        f.write(text)
    with atomic_open(paths["markdown"]) as f:
        f.write(_markdown(stats, report["info"], adaptive, report["references"]))
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


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG, atomically (no pyplot: no global state, any backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_open(path, binary=True) as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")


def figure(width: float = 7.0, height: float = 4.0, panels: int = 1):
    """A figure and its ``panels`` axes side by side (a list)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def _layer_type(key: str) -> str:
    return key.split(".")[-1]


_TYPE_COLORS = {"E": "tab:gray", "K": "tab:blue", "V": "tab:orange", "A": "tab:green",
                "O1": "tab:red", "I": "tab:purple", "O2": "tab:brown"}


def layer_colors(layers: list[str]) -> dict[str, Any]:
    """One distinguishable colour per neuron layer: tab20 for up to 20 layers, else evenly spaced on turbo."""
    from matplotlib import colormaps

    if len(layers) <= 20:
        cmap = colormaps["tab20"]
        return {key: cmap(i) for i, key in enumerate(layers)}
    cmap = colormaps["turbo"]
    return {key: cmap(i / (len(layers) - 1)) for i, key in enumerate(layers)}


def _plot_asr(stats: SpikeStats, path: Path) -> None:
    from matplotlib.patches import Patch

    fig, (ax,) = figure(max(6.0, 0.3 * len(stats.layers) + 2), 4.0)
    values = [stats.asr_real_tokens[k] for k in stats.layers]
    kinds = [_layer_type(k) for k in stats.layers]
    ax.bar(range(len(values)), values, color=[_TYPE_COLORS[kind] for kind in kinds])
    ax.set_xticks(range(len(values)), stats.layers, rotation=90, fontsize=8)
    ax.set_xlabel("neuron layer (E: embeddings; k.X: layer X of encoder k)")
    ax.set_ylabel("average spiking rate (real tokens)")
    ax.legend(handles=[Patch(color=_TYPE_COLORS[k], label=k) for k in _TYPE_COLORS if k in kinds],
              title="neuron type", fontsize=8, ncol=2)
    name = stats.task_name or stats.task or "dev"
    ax.set_title(f"{name}: average spiking rate per neuron layer (T = {stats.t_conv})")
    save_figure(fig, path)


def _plot_running_asr(stats: SpikeStats, path: Path) -> None:
    fig, (ax,) = figure(8.5, 4.5)
    if stats.running_asr:
        t = np.arange(1, stats.t_conv + 1)
        colors = layer_colors(stats.layers)
        for key in stats.layers:
            ax.plot(t, stats.running_asr[key], color=colors[key], linewidth=1.4, label=key)
        ax.legend(title="neuron layer", fontsize=8, ncol=1 + len(stats.layers) // 14, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
        ax.set_xlim(1, stats.t_conv)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("time step t")
    ax.set_ylabel("average spiking rate over steps 1..t")
    ax.grid(alpha=0.3)
    ax.set_title(f"{stats.task_name or stats.task or 'dev'}: running average spiking rate per layer")
    save_figure(fig, path)


def _plot_metric_vs_t(stats: SpikeStats, adaptive: Optional[AdaptiveTStats], references: dict[str, float],
                      path: Path) -> None:
    fig, (ax,) = figure()
    values = [_finite_or_nan(stats.metrics_at_t[t].get(stats.metric)) for t in stats.t_values]
    ax.plot(stats.t_values, values, marker="o", color="tab:blue", label="student, T = t (from one run)")
    styles = [("tab:green", "--"), ("tab:gray", ":"), ("tab:purple", "-.")]
    for (name, value), (color, style) in zip(references.items(), styles):
        ax.axhline(value, color=color, linestyle=style, label=f"{name} ({value:.3f})")
    if adaptive is not None:
        ax.scatter([adaptive.mean_steps], [_finite_or_nan(adaptive.metrics.get(adaptive.metric))], color="tab:red",
                   marker="*", s=140, zorder=3,
                   label=f"adaptive T (tol {adaptive.tol:g}): mean {adaptive.mean_steps:.1f} steps")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_xlabel("simulation steps T")
    ax.set_ylabel(f"dev {stats.metric}")
    name = stats.task_name or stats.task or "dev"
    ax.set_title(f"{name}: dev {stats.metric} vs simulation steps (trained at T = {stats.t_conv})")
    save_figure(fig, path)


def _plot_energy(stats: SpikeStats, adaptive: Optional[AdaptiveTStats], path: Path) -> None:
    snn = stats.energy_snn_uj
    bars = [(f"SNN student, T = {stats.t_conv}", snn, "tab:green")]
    if adaptive is not None:
        bars.append((f"SNN student, adaptive T ({adaptive.mean_steps:.1f} steps)", snn_uj(adaptive.sops_per_example),
                     "tab:olive"))
    for name in stats.ann_sizes:
        size = stats.ann_sizes[name]
        bars.append((f"ANN, {name}'s size ({size.num_layers} layers)", stats.energy_ann_uj(name), "tab:gray"))
    fig, (ax,) = figure(8.0, 1.2 + 0.6 * len(bars))
    y = np.arange(len(bars))[::-1]
    ax.barh(y, [v for _, v, _ in bars], color=[c for _, _, c in bars])
    ax.set_yticks(y, [name for name, _, _ in bars])
    top = max(v for _, v, _ in bars)
    decimals = max(1, 3 - len(f"{top:.0f}")) if top > 0 else 1      # one format for every bar
    for yi, (name, value, _) in zip(y, bars):
        text = f"{value:,.{decimals}f} µJ"
        if not name.startswith("SNN student, T =") and snn > 0:
            text += f"  ({value / snn:.2f}x the SNN at T = {stats.t_conv})"
        ax.text(value + 0.01 * top, yi, text, va="center", fontsize=9)
    ax.set_xlim(0, top * 1.6)
    ax.set_xlabel("estimated energy per example (µJ)")
    ax.set_title(f"{stats.task_name or stats.task or 'dev'}: energy per example "
                 f"({PJ_PER_SOP} pJ per synaptic op, {PJ_PER_MAC} pJ per MAC)")
    save_figure(fig, path)


def _finite_or_nan(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def _markdown(stats: SpikeStats, info: dict[str, Any], adaptive: Optional[AdaptiveTStats],
              references: dict[str, float]) -> str:
    snn = stats.energy_snn_uj
    rows = [("task", stats.task_name or stats.task or "-"), ("examples", stats.num_examples),
            ("simulation steps T", stats.t_conv), ("mean sequence length", stats.real_tokens / stats.num_examples),
            (f"{stats.metric} at T", stats.metrics.get(stats.metric, float("nan"))),
            *((f"{stats.metric}, {name}", value) for name, value in references.items()),
            ("spikes per example", stats.total_spikes_per_example),
            ("SOPs per example", stats.total_sops_per_example),
            ("E_SNN per example (µJ)", snn)]
    for name in stats.ann_sizes:
        ann = stats.energy_ann_uj(name)
        rows.append((f"E_ANN per example, {name}-size BERT (µJ)", ann))
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
              "| layer | width | ASR (real tokens) | ASR (all positions) | spikes / example | fan-out "
              "| SOPs / example |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {k} | {stats.widths[k]} | {_fmt(stats.asr_real_tokens[k])} | {_fmt(stats.asr_all_positions[k])} | "
              f"{_fmt(stats.spikes_per_example[k])} | {stats.fan_out[k].describe()} | "
              f"{_fmt(stats.sops_per_example[k])} |"
              for k in stats.layers] + [""]
    lines += ["## ASR convergence", "", f"![ASR convergence]({REPORT_FILES['asr_convergence']})", "",
              "Running average spiking rate of each layer (spikes over steps 1..t / (t x neurons), real tokens) "
              "for t = 1..T; report.json also has the mean |ASR_t - ASR_T| per neuron (`asr_convergence`).", ""]
    lines += [f"## {stats.metric} vs simulation steps", "", f"![metric vs T]({REPORT_FILES['metric_vs_t']})", "",
              "Predictions at t from the [CLS] spike count of the last layer after t steps (the same as a run with "
              "t_conv = t).", "", f"| t | {stats.metric} |", "|---|---|"]
    lines += [f"| {t} | {_fmt(stats.metrics_at_t[t].get(stats.metric, float('nan')))} |" for t in stats.t_values] + [""]
    lines += ["## Energy", "", f"![energy]({REPORT_FILES['energy']})", "",
              f"E_SNN = SOPs x {PJ_PER_SOP} pJ; E_ANN = MACs x {PJ_PER_MAC} pJ with "
              "MACs = L (4 H^2 S + 2 H I S + 2 H S^2) per example (encoder only).", "",
              "Not counted on either side: the embeddings, LayerNorm, softmax, GELU, the residual additions and "
              "the classifier; the SNN's membrane updates are not charged either (see docs/DESIGN.md, "
              "\"Energy model\").", ""]
    if adaptive is not None:
        a = adaptive.to_dict()
        lines += ["## Adaptive T", "", "| quantity | value |", "|---|---|",
                  f"| tolerance / window | {adaptive.tol:g} / {adaptive.window} |",
                  f"| mean (min, max) steps | {_fmt(a['mean_steps'])} ({a['min_steps']}, {a['max_steps']}) "
                  f"of {adaptive.t_conv} |",
                  f"| {adaptive.metric} adaptive / fixed T | "
                  f"{_fmt(adaptive.metrics.get(adaptive.metric, float('nan')))} / "
                  f"{_fmt(adaptive.metrics_fixed.get(adaptive.metric, float('nan')))} |",
                  f"| agreement with fixed T | {_fmt(adaptive.agreement)} |",
                  f"| SOPs per example | {_fmt(adaptive.sops_per_example)} |", ""]
    return "\n".join(lines)
