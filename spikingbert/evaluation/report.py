"""Spike and energy report of a classification student: average spiking rates, their convergence, the metric
vs T from one pass, synaptic operations and the energy estimate (``--do_eval --report``, the demo).

* `spikingbert.evaluation.measure` — one pass over the dev set counting every layer's spikes
  (`collect_spike_stats`) and the adaptive-T evaluation (`adaptive_t_eval`);
* `spikingbert.evaluation.energy` — fan-outs, synaptic operations, ANN MACs and energy;
* `spikingbert.evaluation.plots` — ``report.json``, ``report.md`` and the PNG plots (`write_report`);
* `spikingbert.evaluation.curves` — a run's training curves from its ``metrics.jsonl`` (`write_training_curves`);
* `evaluation_report` (here) — what ``--do_eval --report/--adaptive_t`` runs.

What is measured, the fan-out table, the energy model and the ``report.json`` fields are described
in docs/DESIGN.md, section "Spike and energy report".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn

from spikingbert.evaluation.adaptive import adaptive_t_eval
from spikingbert.evaluation.curves import write_training_curves
from spikingbert.evaluation.measure import collect_spike_stats
from spikingbert.evaluation.plots import write_report
from spikingbert.models.stopping import StopRule

__all__ = ["evaluation_report", "write_training_curves"]


def evaluation_report(model: nn.Module, dataloader: Iterable, task: Optional[str], device: torch.device, *,
                      report_dir: Optional[Path], adaptive: Optional[StopRule] = None,
                      adaptive_budget: Optional[float] = None, adaptive_window: int = 1,
                      teacher_config: Any = None, info: Optional[dict[str, Any]] = None,
                      task_name: Optional[str] = None, references: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """``--do_eval``'s report (into ``report_dir`` when given) and adaptive-T evaluation (with the rule ``adaptive``,
    or the one chosen for ``adaptive_budget`` points at ``adaptive_window``); returns the fields they add to
    ``eval_results.json``: ``adaptive_t`` (the rule, the mean steps used, the metric with adaptive stopping, at
    the fixed T and on the fixed-T curve at the same mean steps), ``report`` (the written paths),
    ``spikes_per_example`` and ``energy_uj_per_example``. ``info`` goes into the report and ``references`` (dev scores
    such as the teacher's and the majority class's) onto its metric-vs-T plot (see `write_report`); ``task_name``
    titles the plots."""
    added: dict[str, Any] = {}
    stats = None
    if report_dir is not None:
        stats = collect_spike_stats(model, dataloader, device=device, task=task, teacher_config=teacher_config)
        stats.task_name = task_name
    result = None
    if adaptive is not None or adaptive_budget is not None:
        result = adaptive_t_eval(model, dataloader, adaptive, task, budget=adaptive_budget, window=adaptive_window,
                                 device=device, reference=stats)
        added["adaptive_t"] = result.eval_fields()
    if stats is not None:
        paths = write_report(stats, report_dir, info, adaptive=result, references=references)
        added["report"] = {"dir": str(report_dir), **{k: str(v) for k, v in paths.items()}}
        added["spikes_per_example"] = stats.total_spikes_per_example
        added["energy_uj_per_example"] = {"snn": stats.energy_snn_uj,
                                          **{f"ann_{name}": stats.energy_ann_uj(name) for name in stats.ann_sizes}}
    return added
