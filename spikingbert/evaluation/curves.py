"""Training curves of a run from its ``metrics.jsonl``: the loss parts and the dev metrics against the optimizer step.

Every training stage writes ``OUTPUT_DIR/training_curves.png`` when it ends (`write_training_curves`); the same
function draws it from the ``metrics.jsonl`` of any earlier run. The file's records are described in
docs/DESIGN.md, "Run directories".
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

from spikingbert.core.files import read_json_lines
from spikingbert.evaluation.figures import (
    figure,
    integer_steps,
    metric_label,
    reference_lines,
    save_figure,
    series_marker,
)

__all__ = ["TRAINING_CURVES_NAME", "read_metrics", "write_training_curves", "training_curves_figure"]

logger = logging.getLogger(__name__)

TRAINING_CURVES_NAME = "training_curves.png"
#: Record fields that are not loss parts.
_NOT_LOSSES = {"step", "epoch", "lr", "grad_norm", "steps_per_sec", "skipped_steps", "eval"}


def read_metrics(path: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """``(losses, dev)`` from a ``metrics.jsonl``: each a name -> ``[(step, value)]`` in file order.

    A line that is not a JSON object (e.g. cut short by a crash, `read_json_lines`) or has no integer step is
    skipped."""
    losses: dict[str, list[tuple[int, float]]] = {}
    dev: dict[str, list[tuple[int, float]]] = {}
    for record in read_json_lines(path):
        if not isinstance(record.get("step"), int):
            continue
        step = record["step"]
        for name, value in (record.get("eval") or {}).items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                dev.setdefault(name, []).append((step, float(value)))
        for name, value in record.items():
            if name not in _NOT_LOSSES and isinstance(value, (int, float)) and math.isfinite(value):
                losses.setdefault(name, []).append((step, float(value)))
    return losses, dev


def write_training_curves(run_dir: Path, title: Optional[str] = None, output: Optional[Path] = None,
                          references: Optional[dict[str, float]] = None) -> Optional[Path]:
    """Draw ``run_dir/metrics.jsonl`` (`training_curves_figure`) into ``output`` (default
    ``run_dir/training_curves.png``, written atomically). Returns the path, or None when the file holds no loss
    record yet."""
    run_dir = Path(run_dir)
    fig = training_curves_figure(run_dir / "metrics.jsonl", title, references)
    if fig is None:
        return None
    output = Path(output) if output is not None else run_dir / TRAINING_CURVES_NAME
    save_figure(fig, output)
    return output


def training_curves_figure(metrics_file: Path, title: Optional[str] = None,
                           references: Optional[dict[str, float]] = None) -> Any:
    """The loss and its parts (log scale when they span a factor of 20) and, when the run evaluated, every dev
    metric, against the optimizer step, both panels over the run's steps, with ``references`` (dev scores such
    as the teacher's and the majority class's) as lines on the dev axis; None without a loss record."""
    losses, dev = read_metrics(metrics_file)
    if not losses:
        return None
    fig, axes = figure(11.0 if dev else 6.5, 4.0, panels=2 if dev else 1)
    parts = [name for name in losses if name != "loss"]
    if len(parts) == 1 and losses[parts[0]] == losses.get("loss"):     # the loss has one part: draw it once
        losses = {parts[0]: losses[parts[0]]}
    _plot_series(axes[0], losses, "training loss (mean over each logging window)")
    values = [v for series in losses.values() for _, v in series]
    if min(values) > 0 and max(values) > 20 * min(values):
        axes[0].set_yscale("log")
    if dev:
        reference_lines(axes[1], references)
        _plot_series(axes[1], dev, "dev " + (metric_label(next(iter(dev))) if len(dev) == 1 else "metrics"))
    steps = [step for series in (*losses.values(), *dev.values()) for step, _ in series]
    for ax in axes:                                       # both panels over the same steps, the run's whole length
        ax.set_xlim(0, max(steps) * 1.03)
    fig.suptitle(title or "Training curves")
    return fig


def _plot_series(ax: Any, series: dict[str, list[tuple[int, float]]], ylabel: str) -> None:
    """Each series against the optimizer step; a short one with a marker on every logged point."""
    for name, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker=series_marker(len(points)), markersize=4,
                linewidth=1.6 if name == "loss" else 1.1,
                label=f"{name} ({len(points)} point{'s' if len(points) > 1 else ''})" if len(points) <= 3 else name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    integer_steps(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
