"""The figures say what a reader thinks they say: the plotted data are the measured values, step axes have integer
ticks, short series have markers, accuracy axes carry the teacher and majority-class lines, energy stands beside
accuracy (and claims no saving for a student that has not learned), titles carry no file path."""
import json

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from torch.utils.data import DataLoader, TensorDataset

from spikingbert.evaluation.adaptive import adaptive_t_eval
from spikingbert.evaluation.curves import training_curves_figure
from spikingbert.evaluation.figures import TYPE_NAMES
from spikingbert.evaluation.measure import collect_spike_stats
from spikingbert.evaluation.plots import report_figures
from spikingbert.models.spiking_bert import SpikingBertConfig, SpikingBertForSequenceClassification
from spikingbert.models.stopping import StopRule
from tests.helpers.students import tiny_config, tiny_inputs

T = 12


@pytest.fixture(scope="module")
def measured():
    """A tiny student's spike stats (with a teacher size) and an adaptive run stopping every example at step 5."""
    torch.manual_seed(3)
    model = SpikingBertForSequenceClassification(tiny_config(layers=2, t_conv=T)).double().eval()
    ids, types, mask = tiny_inputs(batch=8, seed=1)
    labels = torch.tensor([0, 1, 1, 0, 1, 1, 0, 1])
    loader = DataLoader(TensorDataset(ids, mask, types, labels, mask.sum(1)), batch_size=4)
    teacher = SpikingBertConfig(num_hidden_layers=4, hidden_size=64, num_attention_heads=2, intermediate_size=256)
    stats = collect_spike_stats(model, loader, task="sst-2", teacher_config=teacher)
    stats.task_name = "Tiny task"
    adaptive = adaptive_t_eval(model, loader, StopRule(0.0, 1, 5), "sst-2", reference=stats)
    return stats, adaptive, labels.numpy()


def _drawn(fig):
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig


def _labelled(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def _integer_ticks(ax) -> bool:
    return all(float(t).is_integer() for t in ax.get_xticks())


def test_metric_vs_t_plots_the_curve_the_references_and_adaptive_t_against_the_curve(measured):
    stats, adaptive, labels = measured
    fig = _drawn(report_figures(stats, adaptive, {"teacher": 0.9, "majority class": 0.625})["metric_vs_t"])
    ax = fig.axes[0]
    lines = _labelled(ax)
    curve = lines["student, fixed T = t (from one run)"]
    expected = [float(np.mean(stats.predictions_at_t[t] == labels)) for t in range(1, T + 1)]
    assert list(curve.get_xdata()) == list(range(1, T + 1)) and list(curve.get_ydata()) == expected
    assert curve.get_marker() == "o" and _integer_ticks(ax)
    assert lines["teacher (0.900)"].get_ydata()[0] == 0.9 and lines["majority class (0.625)"].get_ydata()[0] == 0.625
    star = next(line for line in ax.get_lines() if line.get_marker() == "*")
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (5.0, adaptive.value)
    interpolated = next(line for label, line in lines.items() if label.startswith("fixed T at 5.00 steps"))
    assert interpolated.get_ydata()[0] == expected[4]
    assert "Tiny task" in ax.get_title() and f"T = {T}" in ax.get_title() and "/" not in ax.get_title()


@pytest.mark.parametrize("learned", [True, False])
def test_energy_stands_beside_accuracy_and_claims_nothing_for_a_student_that_has_not_learned(measured, learned):
    stats, adaptive, _ = measured
    acc = stats.metrics["acc"]
    majority = acc - 0.2 if learned else acc - 0.005
    fig = _drawn(report_figures(stats, adaptive, {"teacher": 0.9, "majority class": majority})["energy"])
    ax = fig.axes[0]
    lines = _labelled(ax)
    snn = next(line for label, line in lines.items() if label.startswith("SNN student, T = 12"))
    assert (snn.get_xdata()[0], snn.get_ydata()[0]) == (stats.energy_snn_uj, acc)
    teacher = next(line for label, line in lines.items() if label.startswith("teacher (ANN, 4 layers"))
    assert (teacher.get_xdata()[0], teacher.get_ydata()[0]) == (stats.energy_ann_uj("teacher"), 0.9)
    same_size = next(line for label, line in lines.items() if label.startswith("ANN of the student's size"))
    assert same_size.get_xdata()[0] == stats.energy_ann_uj("student") and "not measured" in same_size.get_label()
    ratio = f"{stats.energy_ann_uj('teacher') / stats.energy_snn_uj:.2f}x the SNN at T"
    assert (ratio in teacher.get_label()) == learned
    assert ("has not learned" in ax.get_title()) == (not learned)
    assert lines[f"majority class ({majority:.3f})"].get_ydata()[0] == majority
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    for text in ax.texts:                                  # each point's label inside the frame, clear of its edges
        box = text.get_window_extent(renderer)
        assert frame.x0 < box.x0 and box.x1 < frame.x1 and frame.y0 < box.y0 and box.y1 < frame.y1, text.get_text()


def test_convergence_plots_every_layer_and_its_error_with_the_types_written_out(measured):
    stats, _, _ = measured
    fig = _drawn(report_figures(stats)["asr_convergence"])
    left, right = fig.axes[:2]
    assert len(left.get_lines()) == len(right.get_lines()) == len(stats.layers) == 13
    for key, running, error in zip(stats.layers, left.get_lines(), right.get_lines()):
        assert list(running.get_ydata()) == stats.running_asr[key]
        assert list(error.get_ydata()) == [max(v, 1e-12) for v in stats.convergence[key][:-1]]
    by_key = dict(zip(stats.layers, left.get_lines()))
    assert by_key["0.K"].get_color() == by_key["1.K"].get_color() != by_key["0.V"].get_color()
    assert by_key["0.K"].get_linestyle() != by_key["1.K"].get_linestyle()
    legend = [text.get_text() for text in right.get_legend().get_texts()]
    assert legend == list(TYPE_NAMES.values()) + ["encoder layer 0", "encoder layer 1"]
    assert f"T = {T}" in fig.texts[0].get_text() and right.get_yscale() == "log"
    assert _integer_ticks(left) and _integer_ticks(right)


def test_training_curves_mark_short_series_use_integer_steps_and_reference_lines(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    records = [{"step": 1, "epoch": 0, "loss": 0.9, "cls_loss": 0.9, "lr": 1e-4},   # 2 steps: fractional ticks
               {"step": 2, "epoch": 0, "loss": 0.7, "cls_loss": 0.7, "lr": 1e-4},   # unless integers are asked for
               {"step": 2, "epoch": 0, "eval": {"acc": 0.75}}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"cut short')
    fig = _drawn(training_curves_figure(metrics, "prediction KD, Tiny task",
                                        {"teacher": 0.8, "majority class": 0.6}))
    losses, dev = fig.axes
    loss = _labelled(losses)["cls_loss (2 points)"]                  # the loss equals its one part: drawn once
    assert list(loss.get_xdata()) == [1, 2] and list(loss.get_ydata()) == [0.9, 0.7] and loss.get_marker() == "o"
    lines = _labelled(dev)
    assert list(lines["acc (1 point)"].get_ydata()) == [0.75] and lines["acc (1 point)"].get_marker() == "o"
    assert lines["teacher (0.800)"].get_ydata()[0] == 0.8 and lines["majority class (0.600)"].get_ydata()[0] == 0.6
    assert _integer_ticks(losses) and _integer_ticks(dev) and dev.get_xlim() == losses.get_xlim()
    assert fig._suptitle.get_text() == "prediction KD, Tiny task"
    assert training_curves_figure(tmp_path / "metrics.jsonl", None, None) is not None
    (tmp_path / "empty.jsonl").write_text("")
    assert training_curves_figure(tmp_path / "empty.jsonl") is None
