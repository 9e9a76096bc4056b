"""The spike report's files: ``report.json``, ``report.md`` and four PNG plots, each written atomically.

``asr_per_layer.png``: the average spiking rate of every neuron layer; ``asr_convergence.png``: each layer's
running average spiking rate over the steps ``t = 1..T`` and its error against the rate at ``T`` (a colour per
neuron type, a line style per encoder layer); ``metric_vs_t.png``: the dev metric at every T with the reference
lines (teacher, majority class) and adaptive T against the curve; ``energy.png``: the energy per example of each
model against its dev accuracy. The conventions all figures share are in `spikingbert.evaluation.figures`.

The fields of ``report.json`` are listed in docs/DESIGN.md, "Spike and energy report".
"""
from __future__ import annotations

import json
import logging
import math
import textwrap
from pathlib import Path
from typing import Any, Optional

import numpy as np

from spikingbert.core.errors import UsageError
from spikingbert.core.files import atomic_open
from spikingbert.evaluation.adaptive import AdaptiveTStats
from spikingbert.evaluation.dev import chance_name
from spikingbert.evaluation.energy import PJ_PER_MAC, PJ_PER_SOP, snn_uj
from spikingbert.evaluation.figures import (
    depth_legend_handles,
    figure,
    integer_steps,
    layer_style,
    metric_label,
    reference_lines,
    save_figure,
    series_marker,
    type_legend_handles,
)
from spikingbert.evaluation.measure import SpikeStats
from spikingbert.evaluation.report_text import learned_status, report_markdown

__all__ = ["REPORT_FILES", "write_report", "report_figures"]

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

    for name, fig in report_figures(stats, adaptive, references).items():
        save_figure(fig, paths[name])
    with atomic_open(paths["json"]) as f:
        f.write(text)
    with atomic_open(paths["markdown"]) as f:
        f.write(report_markdown(stats, report["info"], adaptive, report["references"], _json_safe,
                                dict(report["plots"])))
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


def _title(stats: SpikeStats, what: str) -> str:
    return f"{stats.task_name or stats.task or 'dev set'}: {what}"


def report_figures(stats: SpikeStats, adaptive: Optional[AdaptiveTStats] = None,
                   references: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """The report's four figures (matplotlib ``Figure`` objects), keyed as `REPORT_FILES`."""
    references = dict(references or {})
    return {"asr_per_layer": _plot_asr(stats), "asr_convergence": _plot_running_asr(stats),
            "metric_vs_t": _plot_metric_vs_t(stats, adaptive, references),
            "energy": _plot_energy(stats, adaptive, references)}


def _plot_asr(stats: SpikeStats):
    fig, (ax,) = figure(max(6.0, 0.3 * len(stats.layers) + 4), 4.0)
    values = [stats.asr_real_tokens[k] for k in stats.layers]
    kinds = [k.split(".")[-1] for k in stats.layers]
    ax.bar(range(len(values)), values,
           color=[layer_style(k, len(stats.layers) // 6)["color"] for k in stats.layers])
    ax.set_xticks(range(len(values)), stats.layers, rotation=90, fontsize=8)
    ax.set_xlabel("neuron layer (E: embeddings; k.X: layer X of encoder k)")
    ax.set_ylabel("average spiking rate (real tokens)")
    ax.legend(handles=type_legend_handles(kinds, patches=True), title="neuron type", fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(_title(stats, f"average spiking rate per neuron layer, T = {stats.t_conv}"))
    return fig


def _plot_running_asr(stats: SpikeStats):
    """Running ASR (left) and its mean error against the ASR at T (right), per layer."""
    fig, axes = figure(13.0, 4.6, panels=2)
    encoders = (len(stats.layers) - 1) // 6
    t = np.arange(1, stats.t_conv + 1)
    marker = series_marker(stats.t_conv, ".")
    for key in stats.layers:
        style = layer_style(key, encoders)
        if stats.running_asr:
            axes[0].plot(t, stats.running_asr[key], marker=marker, linewidth=1.3, **style)
        if stats.convergence and stats.t_conv > 1:
            axes[1].plot(t[:-1], np.maximum(stats.convergence[key][:-1], 1e-12), marker=marker, linewidth=1.3,
                         **style)
    axes[0].set_ylabel("average spiking rate over steps 1..t")
    axes[0].set_title("running average spiking rate (real tokens)", fontsize=10)
    axes[1].set_ylabel("mean |ASR_t - ASR_T| per neuron")
    axes[1].set_title("its error against the rate at T (log scale)", fontsize=10)
    if stats.convergence and stats.t_conv > 1:
        axes[1].set_yscale("log")
    for ax, measured in zip(axes, (stats.running_asr, stats.convergence)):
        if not measured:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("time step t")
        integer_steps(ax)
        ax.grid(alpha=0.3)
    kinds = [k.split(".")[-1] for k in stats.layers]
    axes[1].legend(handles=type_legend_handles(kinds) + depth_legend_handles(encoders), fontsize=8,
                   loc="upper left", bbox_to_anchor=(1.01, 1.0), title="colour: neuron type; line: encoder layer")
    fig.suptitle(_title(stats, f"convergence of the spiking rates over T = {stats.t_conv} steps"))
    return fig


def _plot_metric_vs_t(stats: SpikeStats, adaptive: Optional[AdaptiveTStats], references: dict[str, float]):
    fig, (ax,) = figure(7.5, 4.5)
    values = [_finite_or_nan(stats.metrics_at_t[t].get(stats.metric)) for t in stats.t_values]
    reference_lines(ax, references)
    ax.plot(stats.t_values, values, marker=series_marker(len(values)), markersize=4, color="tab:blue",
            label="student, fixed T = t (from one run)")
    if adaptive is not None:
        mean, value = adaptive.mean_steps, _finite_or_nan(adaptive.value)
        ax.plot([mean], [adaptive.curve_at_mean_steps], marker="o", markersize=8, markerfacecolor="white",
                color="tab:blue", linestyle="none",
                label=f"fixed T at {mean:.2f} steps (interpolated): {adaptive.curve_at_mean_steps:.4f}")
        ax.plot([mean], [value], marker="*", markersize=14, color="tab:red", linestyle="none",
                label=f"adaptive T, mean {mean:.2f} steps: {value:.4f}\n({adaptive.rule.describe()})")
        if adaptive.calibration is not None:
            cv = adaptive.calibration.cross_validated
            ax.plot([cv["mean_steps"]], [cv["metric"]], marker="X", markersize=8, color="tab:orange",
                    linestyle="none", label=f"adaptive T, cross-validated: {cv['metric']:.4f} at "
                                            f"{cv['mean_steps']:.2f} steps")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    integer_steps(ax)
    ax.set_xlabel("simulation steps")
    ax.set_ylabel(f"dev {metric_label(stats.metric)}")
    status = learned_status(stats, references)
    title = _title(stats, f"dev {metric_label(stats.metric)} vs simulation steps (trained at T = {stats.t_conv})")
    ax.set_title(title + ("\n" + textwrap.fill(f"NOTE: {status}", 90) if status else ""), fontsize=10 if status
                 else None)
    return fig


def _energy_points(stats: SpikeStats, adaptive: Optional[AdaptiveTStats], references: dict[str, float]) -> list:
    """(label, µJ per example, dev metric or None, colour, marker) of every model the figure shows."""
    metric = stats.metrics.get(stats.metric, float("nan"))
    points = [(f"SNN student, T = {stats.t_conv}", stats.energy_snn_uj, metric, "tab:green", "o")]
    if adaptive is not None:
        points.append((f"SNN student, adaptive T ({adaptive.mean_steps:.1f} steps)", snn_uj(adaptive.sops_per_example),
                       adaptive.value, "tab:olive", "*"))
    for name, size in stats.ann_sizes.items():
        score = references.get("teacher") if name == "teacher" else None
        what = "teacher (ANN, " if name == "teacher" else "ANN of the student's size ("
        points.append((f"{what}{size.num_layers} layers, H {size.hidden_size})", stats.energy_ann_uj(name), score,
                       "tab:purple" if name == "teacher" else "tab:brown", "s"))
    return points


def _plot_energy(stats: SpikeStats, adaptive: Optional[AdaptiveTStats], references: dict[str, float]):
    """Energy per example (x, log) against the dev metric (y) of every model; an ANN whose accuracy was not
    measured is a vertical line at its energy."""
    fig, (ax,) = figure(8.5, 4.8)
    chance = chance_name(stats.metric)
    reference_lines(ax, {chance: references[chance]} if chance in references else {})
    snn, status = stats.energy_snn_uj, learned_status(stats, references)
    for label, energy, score, color, marker in _energy_points(stats, adaptive, references):
        shown = snn > 0 and status is None and not label.startswith("SNN student, T")
        ratio = f", {energy / snn:.2f}x the SNN at T" if shown else ""
        if score is None:
            ax.axvline(energy, color=color, linestyle=":", label=f"{label}: {energy:,.1f} µJ{ratio}, "
                                                                 f"{stats.metric} not measured")
            continue
        ax.plot([energy], [score], marker=marker, markersize=13 if marker == "*" else 8, color=color,
                linestyle="none", label=f"{label}: {energy:,.1f} µJ{ratio}, {stats.metric} {score:.4f}")
        ax.annotate(f"{energy:,.0f} µJ, {score:.3f}", (energy, score), textcoords="offset points", xytext=(8, 5),
                    fontsize=8, color=color)
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    ax.set_xlim(low, high * 1.5)                                     # room for the labels of the rightmost point
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.12 * (high - low))                     # and of the topmost one
    ax.set_xlabel("estimated energy per example (µJ, log scale)")
    ax.set_ylabel(f"dev {metric_label(stats.metric)}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.16))
    title = _title(stats, f"energy per example vs dev {metric_label(stats.metric)} ({PJ_PER_SOP} pJ per SOP, "
                          f"{PJ_PER_MAC} pJ per MAC)")
    ax.set_title(title + ("\n" + textwrap.fill(f"NOTE: {status}", 100) if status else ""), fontsize=10)
    return fig


def _finite_or_nan(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)
