"""What every figure of the project shares: the figure and its atomic PNG file, the look of each neuron layer,
reference lines on metric axes, markers on short series, integer step ticks.

No pyplot (no global state, any backend). The conventions: a series of few points is drawn with markers
(it is a handful of measurements, not a curve); a step axis has integer ticks; every axis showing a dev
metric carries the reference lines it is read against (the teacher, the majority class); a title names
the task and what is shown, never a file path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from spikingbert.core.files import atomic_open

__all__ = ["figure", "save_figure", "TYPE_NAMES", "TYPE_COLORS", "layer_style", "type_legend_handles",
           "depth_legend_handles", "integer_steps", "reference_lines", "metric_label", "series_marker",
           "MARKER_POINTS"]

#: A series of at most this many points is drawn with a marker on every point.
MARKER_POINTS = 40

#: The neuron-layer codes (docs/DESIGN.md, "Neuron layers") in words, for legends.
TYPE_NAMES = {
    "E": "E: embeddings",
    "K": "K: keys (W_K s)",
    "V": "V: values (W_V s)",
    "A": "A: attention, softmax(QK^T) V",
    "O1": "O1: attention output, LN(W_O s_A + s)",
    "I": "I: intermediate, GELU(W_I s_O1)",
    "O2": "O2: layer output, LN(W_2 s_I + s_O1)",
}
TYPE_COLORS = {"E": "#4d4d4d", "K": "#1f77b4", "V": "#ff7f0e", "A": "#2ca02c", "O1": "#d62728", "I": "#9467bd",
               "O2": "#8c564b"}
#: Line style of encoder layer k: ``DEPTH_STYLES[k % 4]`` (beyond four layers the colours lighten by depth too).
DEPTH_STYLES = ("-", "--", ":", "-.")
#: Reference lines: the teacher's and the constant predictor's own look, then the others in the order given.
NAMED_REFERENCE_STYLES = {"teacher": ("tab:purple", "--"), "majority class": ("tab:gray", ":"),
                          "constant prediction": ("tab:gray", ":")}
REFERENCE_STYLES = (("tab:cyan", "-."), ("tab:olive", (0, (5, 1))), ("tab:pink", "--"))


def figure(width: float = 7.0, height: float = 4.0, panels: int = 1):
    """A figure and its ``panels`` axes side by side (a list)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_open(path, binary=True) as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")


def layer_style(key: str, num_layers: int) -> dict[str, Any]:
    """``color`` (by neuron type) and ``linestyle`` (by encoder layer) of neuron layer ``key`` (``E``, ``k.X``)."""
    if key == "E":
        return {"color": TYPE_COLORS["E"], "linestyle": "-"}
    k, kind = key.split(".")
    depth = int(k)
    color = TYPE_COLORS[kind]
    if num_layers > len(DEPTH_STYLES):
        from matplotlib.colors import to_rgb

        fade = 0.6 * (depth // len(DEPTH_STYLES)) / max(1, (num_layers - 1) // len(DEPTH_STYLES))
        color = tuple(c + (1 - c) * fade for c in to_rgb(color))
    return {"color": color, "linestyle": DEPTH_STYLES[depth % len(DEPTH_STYLES)]}


def type_legend_handles(kinds: Sequence[str], patches: bool = False) -> list:
    """Legend entries naming each neuron type present in ``kinds`` (in `TYPE_NAMES` order)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    present = [kind for kind in TYPE_NAMES if kind in set(kinds)]
    if patches:
        return [Patch(color=TYPE_COLORS[kind], label=TYPE_NAMES[kind]) for kind in present]
    return [Line2D([], [], color=TYPE_COLORS[kind], label=TYPE_NAMES[kind]) for kind in present]


def depth_legend_handles(num_layers: int) -> list:
    """Legend entries for the line style of each encoder layer."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], color="black", linestyle=DEPTH_STYLES[k % len(DEPTH_STYLES)], label=f"encoder layer {k}")
            for k in range(num_layers)]


def integer_steps(ax: Any, axis: str = "x") -> None:
    """Integer ticks only on ``axis`` (optimizer steps, simulation steps)."""
    from matplotlib.ticker import MaxNLocator

    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def reference_lines(ax: Any, references: Optional[dict[str, float]], fmt: str = "{:.3f}") -> None:
    """Horizontal lines at the reference scores (e.g. teacher, majority class), each labelled with its value."""
    others = iter(REFERENCE_STYLES)
    for name, value in (references or {}).items():
        color, style = NAMED_REFERENCE_STYLES.get(name) or next(others, ("black", ":"))
        if value is not None:
            ax.axhline(value, color=color, linestyle=style, linewidth=1.3, label=f"{name} ({fmt.format(value)})")


def metric_label(metric: str) -> str:
    """A dev metric's name for an axis or a title."""
    return {"acc": "accuracy", "mcc": "Matthews correlation", "corr": "correlation (mean of Pearson, Spearman)",
            "f1": "F1"}.get(metric, metric)


def series_marker(points: int, marker: str = "o") -> Optional[str]:
    """The marker for a series of ``points`` points: one on every point of a short series, none on a long one."""
    return marker if points <= MARKER_POINTS else None
