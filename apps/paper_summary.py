"""The results of paper-recipe directories as one table (``python -m apps.paper --summary DIR...``).

One row per directory (its ``recipe.json``, ``eval/eval_results.json`` and ``eval/report/report.json``): the
task, the student's dev metric next to the paper's number for that task (`PAPER_DEV`), the majority-class
(constant-prediction) score, spikes and energy per dev example; a student within one point of the majority
class (or below it) is said not to have learned (`spikingbert.evaluation.dev.has_learned`, as the demo's table).
The table is printed (and written as JSON with ``--summary_json``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from spikingbert.core.errors import UsageError
from spikingbert.core.files import atomic_write_json, read_json

from .demo_table import ENERGY_NOTE

__all__ = ["PAPER_DEV", "PAPER_SOURCE", "summary_row", "format_summary", "print_summary"]

#: Dev scores of SpikingBERT4 per task in the paper's Table 1 (arXiv 2308.10873, section "Results"), in
#: percent, the task's main metric (accuracy; MNLI: matched). None: not transcribed (shown as unknown, never
#: guessed): MRPC and STS-B, which the table reports as metric pairs (accuracy/F1, Pearson/Spearman).
PAPER_DEV: Dict[str, Optional[float]] = {
    "qqp": 86.82, "mnli": 78.10, "sst-2": 88.19, "qnli": 85.20, "rte": 66.06, "mrpc": None, "sts-b": None,
}
PAPER_SOURCE = "SpikingBERT4, Table 1 of arXiv 2308.10873"


def summary_row(directory: Path) -> Dict[str, Any]:
    """The row of one recipe directory (``finished`` False while its evaluation has not run)."""
    try:
        task = read_json(directory / "recipe.json", "recipe record")["task"]
    except (OSError, ValueError, TypeError, KeyError):
        raise UsageError(f"--summary {directory}: no recipe.json there (or not one python -m apps.paper wrote); "
                         "pass output directories of python -m apps.paper") from None
    row: Dict[str, Any] = {"dir": str(directory), "task": task, "paper": PAPER_DEV.get(task),
                           "paper_source": PAPER_SOURCE if task in PAPER_DEV else "not in the paper's Table 1",
                           "finished": False}
    results_path, report_path = directory / "eval" / "eval_results.json", directory / "eval" / "report" / "report.json"
    if not (results_path.is_file() and report_path.is_file()):
        return row
    from spikingbert.data import glue
    from spikingbert.evaluation.dev import has_learned

    results, report = read_json(results_path, "eval results"), read_json(report_path, "report")
    metric = glue.main_metric(task)
    baseline_name, baseline = next(((k, v) for k, v in report.get("references", {}).items() if k != "teacher"),
                                   (None, None))
    energy = results.get("energy_uj_per_example", {})
    row.update(finished=True, metric=metric, value=results[metric], t_conv=results.get("t_conv"),
               dev_examples=results.get("examples"), baseline_name=baseline_name, baseline=baseline,
               teacher=report.get("references", {}).get("teacher"),
               at_baseline=baseline is not None and not has_learned(results[metric], baseline),
               spikes_per_example=results.get("spikes_per_example"), energy_uj_per_example=energy)
    if task == "mnli" and f"mm_{metric}" in results:
        row["mm_value"] = results[f"mm_{metric}"]
    return row


def format_summary(rows: Sequence[Dict[str, Any]]) -> str:
    """The table: task, dev metric (and the paper's), the majority class, spikes and energy per example."""
    head = ("task", "dev metric", "paper", "teacher", "majority class", "spikes/example", "energy/example (SNN)",
            "ANN of its size")
    table = [head]
    notes = []
    for row in rows:
        if not row["finished"]:
            table.append((row["task"], "not finished", _paper(row)) + ("",) * 5)
            notes.append(f"{row['dir']}: the recipe has not finished; run it again to go on")
            continue
        value = f"{row['metric']} {100 * row['value']:.2f}" + (f" (mm {100 * row['mm_value']:.2f})"
                                                                  if "mm_value" in row else "")
        energy = row["energy_uj_per_example"]
        snn, ann = energy.get("snn"), energy.get("ann_student")
        table.append((row["task"], value, _paper(row), _percent(row.get("teacher")), _percent(row["baseline"]),
                      f"{row['spikes_per_example']:,.0f}", f"{snn:,.1f} uJ" if snn is not None else "-",
                      f"{ann:,.1f} uJ ({ann / snn:.2f}x)" if ann and snn else "-"))
        if row["at_baseline"]:
            notes.append(f"{row['task']} ({row['dir']}): the student has not learned: within 1 pt of the majority "
                         f"class or below it ({row['baseline_name']} {100 * row['baseline']:.2f})")
    widths = [max(len(r[c]) for r in table) for c in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"(dev metrics in percent, T as trained; paper: {PAPER_SOURCE}, unknown where not transcribed; "
                 f"energy: {ENERGY_NOTE})")
    return "\n".join(lines + notes)


def _paper(row: Dict[str, Any]) -> str:
    if row["task"] not in PAPER_DEV:
        return "not in paper"
    return "unknown" if row["paper"] is None else f"{row['paper']:.2f}"


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def print_summary(directories: Sequence[Path], json_path: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Print the table of ``directories`` (and write it to ``json_path`` when given); returns the rows."""
    rows = [summary_row(Path(d)) for d in directories]
    print(format_summary(rows), flush=True)
    if json_path is not None:
        atomic_write_json(json_path, {"rows": rows, "paper_source": PAPER_SOURCE, "energy": ENERGY_NOTE})
        print(f"(written to {json_path})", flush=True)
    return rows
