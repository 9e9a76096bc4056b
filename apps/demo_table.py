"""The demo's final table, from its ``summary.json`` fields (`apps.demo.summarize`).

What the table may say follows from what the run showed: every energy ratio stands beside the accuracies of
both sides; a student within one point of the majority class (or below it) is called "has not learned", and
then no energy saving and no adaptive-T result is claimed for it; a smoke run says it is a wiring check.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

__all__ = ["ENERGY_NOTE", "SMOKE_PURPOSE", "FULL_PURPOSE", "format_summary"]

#: What the energy figures count (docs/DESIGN.md, "Energy model").
ENERGY_NOTE = ("0.9 pJ per synaptic operation vs 4.6 pJ per multiply-accumulate (45 nm, 32-bit float arithmetic "
               "only, no memory access), encoder matrix products only; embeddings, LayerNorm, softmax, GELU, the "
               "SNN's membrane updates and the classifier are not counted")
SMOKE_PURPOSE = ("smoke run (--fast / DEMO_FAST=1): a wiring check that every stage runs, on a subset with short "
                 "stages; its student is not expected to learn and its figures are not results")
FULL_PURPOSE = "full demo: the results in README.md, \"Demo\""


def _accuracy_rows(s: Dict[str, Any]) -> List[Tuple[str, str]]:
    layers, acc, majority = s["student_layers"], s["student_dev_acc"], s["majority_baseline_acc"]
    student = f"{acc:.4f}  ({100 * s['gap_to_teacher']:+.1f} pt vs the teacher)"
    if not s["student_learned"]:
        student += f"  HAS NOT LEARNED: within 1 pt of the majority class ({100 * (acc - majority):+.1f} pt)"
    return [
        ("teacher dev accuracy (MiniLM-L6, fine-tuned)", f"{s['teacher_dev_acc']:.4f}"),
        (f"student dev accuracy (SpikingBERT {layers} layers, T={s['student_t_conv']})", student),
        ("majority-class baseline (always the most frequent label)", f"{majority:.4f}"),
    ]


def _energy_rows(s: Dict[str, Any]) -> List[Tuple[str, str]]:
    """Each model's energy beside its accuracy; the ratios only for a student that learned."""
    e, layers, acc = s["energy_uj_per_example"], s["student_layers"], s["student_dev_acc"]

    def ratio(value: float, over: float) -> str:
        if not s["student_learned"]:
            return "  (no saving claimed: the student has not learned)"
        return f"  ({value / e['snn']:.2f}x the SNN student's)" if over else ""

    rows = [("spikes per example (SNN student)", f"{s['spikes_per_example']:,.0f}"),
            (f"energy per example: SNN student ({layers} layers), acc {acc:.4f}", f"{e['snn']:,.1f} µJ")]
    if e.get("ann_teacher") is not None:
        rows.append((f"energy per example: ANN teacher ({s.get('teacher_layers')} layers), "
                     f"acc {s['teacher_dev_acc']:.4f}", f"{e['ann_teacher']:,.1f} µJ{ratio(e['ann_teacher'], 1)}"))
    rows.append((f"energy per example: ANN of the student's size ({layers} layers), acc not measured",
                 f"{e['ann_student_size']:,.1f} µJ{ratio(e['ann_student_size'], 1)}"))
    return rows


def _adaptive_row(s: Dict[str, Any]) -> List[Tuple[str, str]]:
    a = s.get("adaptive_t")
    if not a:
        return []
    budget = f"budget {a['budget_pt']:g} pt -> " if a.get("budget_pt") is not None else ""
    name = (f"adaptive T ({budget}margin {a['margin']:g}, min {a['min_steps']} steps, window {a['window']})")
    if not s["student_learned"]:
        return [(name, f"{a['mean_steps']:.1f} of {a['t_conv']} steps; no result claimed: the student has not learned")]
    text = (f"{a['mean_steps']:.1f} of {a['t_conv']} steps ({100 * a['step_reduction']:.0f}% fewer), acc "
            f"{a['acc']:.4f} vs {a['acc_fixed_T']:.4f} at T={a['t_conv']} and {a['acc_fixed_T_at_mean_steps']:.4f} "
            f"at a fixed {a['mean_steps']:.1f} steps")
    cv = a.get("cross_validated")
    if cv:
        text += f"; cross-validated {cv['metric']:.4f} at {cv['mean_steps']:.1f} steps"
    return [(name, text)]


def format_summary(summary: Dict[str, Any]) -> str:
    """The final table (see the module docstring)."""
    rows = _accuracy_rows(summary) + _energy_rows(summary) + _adaptive_row(summary)
    for stage in summary["stages"]:
        reused = " (reused)" if stage["reused"] else ""
        rows.append((f"wall time: {stage['name']}", f"{stage['seconds']:.0f} s{reused}"))
    rows.append(("wall time: all stages", f"{summary['wall_seconds_all_stages']:.0f} s "
                                          f"(this run: {summary['wall_seconds_this_run']:.0f} s)"))
    width = max(len(k) for k, _ in rows)
    title = f"SpikingBERT demo: {summary['task']}, {summary['dev_examples']} dev examples"
    lines = [title, summary["purpose"], "-" * max(len(title), width + 30)]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append(f"(energy: {ENERGY_NOTE})")
    return "\n".join(lines)
