"""``report.md``: the spike report's figures as tables, beside its plots, and what each number is worth.

Energy ratios stand beside the accuracies of the two sides; a student within a point of the constant
predictor (`spikingbert.evaluation.dev.has_learned`) is called what it is, and no saving is claimed for it.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Optional

from spikingbert.evaluation.adaptive import AdaptiveTStats
from spikingbert.evaluation.dev import chance_name, has_learned
from spikingbert.evaluation.energy import PJ_PER_MAC, PJ_PER_SOP
from spikingbert.evaluation.measure import SpikeStats, milestone_steps

__all__ = ["report_markdown", "learned_status", "fmt"]


def fmt(value: Any) -> str:
    """A number for a table: 4 significant digits, ``n/a`` for a missing or non-finite one."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def learned_status(stats: SpikeStats, references: dict[str, float]) -> Optional[str]:
    """None when the student is clearly above the constant predictor (or none is known), else a sentence saying
    that it has not learned."""
    chance = references.get(chance_name(stats.metric))
    value = stats.metrics.get(stats.metric, float("nan"))
    if chance is None or has_learned(value, chance):
        return None
    return (f"the student has not learned the task: its dev {stats.metric} {value:.4f} is within 1 point of the "
            f"{chance_name(stats.metric)}'s {chance:.4f} (or below it), so no energy saving is claimed for it")


def report_markdown(stats: SpikeStats, info: dict[str, Any], adaptive: Optional[AdaptiveTStats],
                    references: dict[str, float], json_safe: Callable[[Any], Any], files: dict[str, str]) -> str:
    """The text of ``report.md`` (``files``: the plot file names by kind)."""
    status = learned_status(stats, references)
    lines = ["# Spike and energy report", ""] + ([f"**Note: {status}.**", ""] if status else [])
    lines += _summary_rows(stats, references, status is None)
    if info:
        lines += ["## Run", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {fmt(v) if not isinstance(v, (dict, list)) else json.dumps(json_safe(v))} |"
                  for k, v in info.items()] + [""]
    lines += ["## Average spiking rate per layer", "", f"![ASR per layer]({files['asr_per_layer']})", "",
              "ASR over real tokens (padding excluded) and over all positions; spikes and SOPs per example over "
              "real tokens; fan-out = synaptic operations per spike (S = real sequence length).", "",
              "| layer | width | ASR (real tokens) | ASR (all positions) | spikes / example | fan-out "
              "| SOPs / example |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {k} | {stats.widths[k]} | {fmt(stats.asr_real_tokens[k])} | {fmt(stats.asr_all_positions[k])} | "
              f"{fmt(stats.spikes_per_example[k])} | {stats.fan_out[k].describe()} | {fmt(stats.sops_per_example[k])} |"
              for k in stats.layers] + [""]
    lines += ["## ASR convergence", "", f"![ASR convergence]({files['asr_convergence']})", "",
              "Left: running average spiking rate of each layer (spikes over steps 1..t / (t x neurons), real "
              "tokens). Right: the mean over its neurons of |ASR_t - ASR_T|, the error of stopping at t.", ""]
    steps = [t for t in milestone_steps(stats.t_conv) if t in stats.metrics_at_t]
    lines += [f"## {stats.metric} vs simulation steps", "", f"![metric vs T]({files['metric_vs_t']})", "",
              "Predictions at t from the [CLS] spike count of the last layer after t steps (the same as a run with "
              "t_conv = t); report.json has every step.", "", f"| t | {stats.metric} |", "|---|---|"]
    lines += [f"| {t} | {fmt(stats.metrics_at_t[t].get(stats.metric))} |" for t in steps] + [""]
    lines += ["## Energy", "", f"![energy]({files['energy']})", "",
              f"E_SNN = SOPs x {PJ_PER_SOP} pJ; E_ANN = MACs x {PJ_PER_MAC} pJ with MACs = L (4 H^2 S + 2 H I S + "
              "2 H S^2) per example (encoder matrix products only). Not counted on either side: the embeddings, "
              "LayerNorm, softmax, GELU, the residual additions and the classifier, nor the SNN's membrane "
              "updates (docs/DESIGN.md, \"Energy model\"). What that leaves out, per example:", ""]
    lines += _uncounted_rows(stats)
    if adaptive is not None:
        lines += _adaptive_rows(adaptive)
    return "\n".join(lines)


def _summary_rows(stats: SpikeStats, references: dict[str, float], learned: bool) -> list[str]:
    snn, metric = stats.energy_snn_uj, stats.metric
    value = stats.metrics.get(metric, float("nan"))
    rows = [("task", stats.task_name or stats.task or "-"), ("examples", stats.num_examples),
            ("simulation steps T", stats.t_conv), ("mean sequence length", stats.real_tokens / stats.num_examples),
            (f"{metric} at T", value), *((f"{metric}, {name}", v) for name, v in references.items()),
            ("spikes per example", stats.total_spikes_per_example),
            ("SOPs per example", stats.total_sops_per_example),
            (f"E_SNN per example (µJ), at {metric} {value:.4f}", snn)]
    for name in stats.ann_sizes:
        ann = stats.energy_ann_uj(name)
        score = references.get("teacher") if name == "teacher" else None
        rows.append((f"E_ANN per example, {name}-size BERT (µJ), at {metric} "
                     f"{'not measured' if score is None else f'{score:.4f}'}", ann))
        rows.append((f"E_ANN / E_SNN ({name} size)", ann / snn if snn > 0 and learned else
                     "not claimed: the student has not learned" if not learned else float("nan")))
    return ["| quantity | value |", "|---|---|"] + [f"| {k} | {fmt(v)} |" for k, v in rows] + [""]


def _uncounted_rows(stats: SpikeStats) -> list[str]:
    """The operations neither energy figure charges, SNN against the same-size ANN, with their share."""
    if not stats.uncounted:
        return []
    snn, ann = stats.uncounted["snn"], stats.uncounted["ann"]
    names = {"membrane_updates": "membrane updates (one per neuron and step)",
             "layernorm_elements": "LayerNorm elements", "softmax_elements": "softmax elements",
             "gelu_elements": "GELU elements"}
    rows = [f"| {text} | {snn[key]:,.0f} | {ann[key]:,.0f} |" for key, text in names.items()]
    counted = (stats.total_sops_per_example, stats.ann_macs_per_example["student"])
    extra = [sum(side.values()) for side in (snn, ann)]
    uj = [(snn["membrane_updates"] * PJ_PER_SOP + (extra[0] - snn["membrane_updates"]) * PJ_PER_MAC) * 1e-6,
          extra[1] * PJ_PER_MAC * 1e-6]
    energies = (stats.energy_snn_uj, stats.energy_ann_uj("student"))
    share = [f"{100 * e / c:.1f}%" if c > 0 else "n/a" for e, c in zip(extra, counted)]
    cost = [f"{u:,.1f} µJ ({100 * u / e:.1f}%)" if e > 0 else "n/a" for u, e in zip(uj, energies)]
    return (["| left out, per example | SNN (every one of the T steps) | ANN of the student's size (once) |",
             "|---|---|---|"] + rows +
            [f"| all of them, against the counted SOPs / MACs | {share[0]} | {share[1]} |",
             f"| their energy if charged ({PJ_PER_SOP} pJ a membrane update, {PJ_PER_MAC} pJ any other element), "
             f"against the estimate | {cost[0]} | {cost[1]} |", ""])


def _adaptive_rows(adaptive: AdaptiveTStats) -> list[str]:
    a, metric = adaptive.eval_fields(), adaptive.metric
    rows = [("rule", adaptive.rule.describe()),
            ("mean (min, max) steps", f"{fmt(a['mean_steps'])} ({a['min_steps_used']}, {a['max_steps_used']}) of "
                                      f"{adaptive.t_conv}"),
            (f"{metric}: adaptive / fixed T / fixed at the same mean steps",
             f"{fmt(a[metric])} / {fmt(a[f'{metric}_fixed_T'])} / {fmt(a[f'{metric}_fixed_T_at_mean_steps'])}"),
            ("agreement with fixed T", fmt(adaptive.agreement)),
            ("SOPs per example (fixed T)",
             f"{fmt(adaptive.sops_per_example)} ({fmt(adaptive.sops_per_example_fixed)})")]
    if adaptive.calibration is not None:
        c = adaptive.calibration
        rows.insert(0, ("chosen for a budget of", f"{c.budget:g} points below the fixed T's {metric}, on the dev set "
                                                  f"({c.candidates} rules tried)"))
        rows.append(("cross-validated (rule chosen on the other half)",
                     f"{metric} {fmt(c.cross_validated['metric'])} at {fmt(c.cross_validated['mean_steps'])} steps"))
    return (["## Adaptive T", "", "Each example stops at its own step (docs/DESIGN.md, \"Adaptive T\").", "",
             "| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""])
