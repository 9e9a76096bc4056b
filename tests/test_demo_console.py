"""The demo's console (one live line per stage, plain log files), the progress lines the stages print, and the
final table's signs and ratios."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

from spikingbert.apps import demo, demo_stages, demo_table
from spikingbert.apps.demo_stages import parse_progress
from spikingbert.core.progress import LineProgress
from tests.helpers.students import REPO_ROOT

STAGE_CODE = """
import logging, sys
from spikingbert.core.progress import progress
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
bar = progress(range(5), desc="train", unit="steps", interval=0)
for _ in bar:
    bar.set_postfix(loss=0.5)
print("stage output")
"""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.system
def test_progress_off_a_terminal_is_plain_lines_the_demo_can_read():
    proc = subprocess.run([sys.executable, "-c", STAGE_CODE], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("progress")]
    assert "\r" not in proc.stdout + proc.stderr
    parsed = [parse_progress(line) for line in lines]
    assert [(p.desc, p.n, p.total, p.unit) for p in parsed][-1] == ("train", "5", "5", "steps")
    assert parsed[-1].percent == 100 and "loss=0.5" in lines[-1]


@pytest.mark.system
def test_demo_stage_shows_one_live_line_and_logs_plain_text(tmp_path):
    stage = demo.DemoStage("train", "a stage", ["-c", STAGE_CODE], [])
    console = demo_stages.StageConsole("[1/1] train", stream=Terminal())
    demo_stages._run_stage(stage, tmp_path / "train.log", console, verbose=False)
    console.finish("done in 1 s")
    shown = console.stream.getvalue()
    # One line rewritten in place: each update starts with a carriage return and the stage's head.
    updates = shown.split("\r\033[K")
    assert all(u.startswith("[1/1] train: train ") for u in updates[1:-1]), updates
    assert "train 5/5 steps (100%)" in updates[-2] and "ETA" in updates[-2]
    assert updates[-1] == "    done in 1 s\n" and "stage output" not in shown
    log = (tmp_path / "train.log").read_text()
    assert "\r" not in log and "stage output" in log and "progress train: 5/5 steps" in log


def test_line_progress_counts_and_eta():
    bar = LineProgress(total=4, desc="eval", unit="batches", interval=1e9)
    bar.update(1)
    line = parse_progress(bar.line(bar.start + 3.0))
    assert (line.n, line.total, line.percent, line.eta) == ("1", "4", 25, "00:09")


def _summary(student_acc: float, smoke: bool = False) -> dict:
    adaptive = {"budget_pt": 0.5, "margin": 0.04, "min_steps": 4, "window": 1, "t_conv": 16, "mean_steps": 5.32,
                "step_reduction": 1 - 5.32 / 16, "acc": student_acc - 0.004, "acc_fixed_T": student_acc,
                "acc_fixed_T_at_mean_steps": 0.7568, "cross_validated": {"metric": 0.771, "mean_steps": 5.3}}
    return {"task": "Rotten Tomatoes", "dev_examples": 1275, "teacher_dev_acc": 0.8047, "student_dev_acc": student_acc,
            "gap_to_teacher": student_acc - 0.8047, "majority_baseline_acc": 0.5867, "spikes_per_example": 407253.4,
            "student_layers": 2, "student_t_conv": 16, "teacher_layers": 6,
            "student_learned": student_acc > 0.5867 + 0.01,
            "purpose": demo_table.SMOKE_PURPOSE if smoke else demo_table.FULL_PURPOSE,
            "energy_uj_per_example": {"snn": 178.54, "ann_student_size": 436.88, "ann_teacher": 1310.65},
            "adaptive_t": adaptive, "stages": [], "wall_seconds_all_stages": 10.0, "wall_seconds_this_run": 10.0}


def test_final_table_gap_is_student_minus_teacher_and_energy_ratios_stand_beside_accuracies():
    table = demo.format_summary(_summary(0.7733))
    assert "0.7733  (-3.1 pt vs the teacher)" in table and "NOT LEARNED" not in table
    rows = {line.split("  ")[0]: line for line in table.splitlines()}
    teacher = next(line for key, line in rows.items() if key.startswith("energy per example: ANN teacher"))
    assert "acc 0.8047" in teacher and f"1,310.7 µJ  ({1310.65 / 178.54:.2f}x the SNN student's)" in teacher
    same_size = next(line for key, line in rows.items() if "student's size" in key)
    assert "acc not measured" in same_size and f"({436.88 / 178.54:.2f}x the SNN student's)" in same_size
    snn = next(line for key, line in rows.items() if key.startswith("energy per example: SNN"))
    assert "acc 0.7733" in snn
    assert "5.3 of 16 steps (67% fewer), acc 0.7693 vs 0.7733 at T=16 and 0.7568 at a fixed 5.3 steps" in table
    assert "LayerNorm, softmax, GELU" in table and demo_table.FULL_PURPOSE in table


def test_final_table_says_when_the_student_has_not_learned():
    for acc in (0.5867, 0.5900, 0.5500):                             # at, within 1 pt of, and below the majority
        table = demo.format_summary(_summary(acc, smoke=True))
        assert "HAS NOT LEARNED" in table and demo_table.SMOKE_PURPOSE in table
        assert "x the SNN" not in table and "no saving claimed" in table
        assert "no result claimed" in table and "fewer" not in table


@pytest.mark.parametrize("student_acc, learned", [(0.7733, True), (0.5967, False), (0.5968, True), (0.55, False)])
def test_summary_says_whether_the_student_learned_and_what_the_run_is(tmp_path, monkeypatch, student_acc, learned):
    """summary.json's verdict against the 1-point rule (0.5867 + 0.01 = 0.5967 is not above it), and the purpose."""
    import json

    root = tmp_path / "demo"
    (root / "teacher").mkdir(parents=True)
    (root / "report").mkdir()
    (root / "teacher" / "eval_results.json").write_text(json.dumps(
        {"acc": 0.8047, "chance_acc": 0.5867, "train_examples": 100}))
    (root / "eval_results.json").write_text(json.dumps({"acc": student_acc, "t_conv": 16, "examples": 75}))
    energy = {"snn_uj_per_example": 10.0, "ann": {"student": {"uj_per_example": 20.0, "ann_over_snn": 2.0}}}
    (root / "report" / "report.json").write_text(json.dumps(
        {"energy": energy, "spikes_per_example": {"total": 5.0}, "sops_per_example": {"total": 9.0}}))
    for smoke in (False, True):
        summary = demo.summarize(demo.FULL, root, [], 1.0, smoke)
        assert summary["student_learned"] is learned and summary["smoke_run"] is smoke
        assert summary["purpose"] == (demo_table.SMOKE_PURPOSE if smoke else demo_table.FULL_PURPOSE)
    parser = demo.demo_parser()
    monkeypatch.setenv("DEMO_FAST", "1")
    assert demo.smoke_run(parser.parse_args([]))
    monkeypatch.setenv("DEMO_FAST", "0")
    assert not demo.smoke_run(parser.parse_args([])) and demo.smoke_run(parser.parse_args(["--fast"]))
