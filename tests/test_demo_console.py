"""The demo's console (one live line per stage, plain log files), the progress lines the stages print, and the
final table's signs and ratios."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

from apps import demo, demo_stages
from apps.demo_stages import parse_progress
from core.progress import LineProgress
from tests.helpers.students import REPO_ROOT

STAGE_CODE = """
import logging, sys
from core.progress import progress
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


def test_final_table_gap_is_student_minus_teacher_and_energy_has_both_ratios():
    summary = {"task": "Rotten Tomatoes", "dev_examples": 1275, "teacher_dev_acc": 0.8047, "student_dev_acc": 0.7733,
               "gap_to_teacher": 0.7733 - 0.8047, "majority_baseline_acc": 0.5867, "spikes_per_example": 407253.4,
               "student_layers": 2, "student_t_conv": 16, "teacher_layers": 6,
               "energy_uj_per_example": {"snn": 178.54, "ann_student_size": 436.88, "ann_teacher": 1310.65},
               "ann_student_size_over_snn": 436.88 / 178.54, "ann_teacher_over_snn": 1310.65 / 178.54,
               "adaptive_t": None, "stages": [], "wall_seconds_all_stages": 10.0, "wall_seconds_this_run": 10.0}
    table = demo.format_summary(summary)
    assert "0.7733  (-3.1 pt vs the teacher)" in table
    assert "436.9 µJ  (2.45x the SNN)" in table and "1,310.7 µJ  (7.34x the SNN)" in table
    assert "LayerNorm, softmax, GELU" in table
