"""Crash safety: a run killed at any moment resumes with --continue_train to the uninterrupted result.

A tiny general-KD run and a tiny prediction-KD task run are each killed with SIGKILL at
three random moments: while a checkpoint is being written, a few milliseconds after one
was written, and while the final (or best) model is being put into the output dir. Each
killed run is resumed with --continue_train and must end bit-equal (<= 1e-6, in practice
0.0) to the uninterrupted run: weights, metrics.jsonl and, for the task, best_results.json.
SIGTERM (through ``python script.py``) and SIGINT stop a run after saving a checkpoint of
the current step, and resuming from it also gives the uninterrupted result.

The runs are the scripts' ``main`` under `run_cli` in processes forked from a server that
has imported torch and the project once (`multiprocessing` "forkserver"), so each costs
no interpreter start-up; they are real processes, killed by real signals (tests/helpers/crash.py).
The kill points are drawn from a seeded RNG (``SPIKINGBERT_CRASH_SEED`` to draw others).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from spikingbert.data.pretraining import PretrainingConfig, generate_pretraining_data
from spikingbert.training.checkpoint import list_checkpoints
from spikingbert.transformer.tokenization import BertTokenizer
from tests.helpers.crash import (
    GENERAL,
    SAVE_STEPS,
    TASK,
    assert_same_run,
    dir_names,
    finish_run,
    general_argv,
    kill_at,
    start_run,
    task_argv,
    wait_for,
)
from tests.helpers.world import REPO, World, build_world, read_jsonl, script_env

pytestmark = [pytest.mark.system, pytest.mark.slow]

SEED = int(os.environ.get("SPIKINGBERT_CRASH_SEED", "20240"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("crash_world"))


@pytest.fixture(scope="module")
def pregenerated(world) -> Path:
    path = world.root / "pregenerated"
    generate_pretraining_data(world.corpus, path, BertTokenizer.from_pretrained(world.teacher_general),
                              PretrainingConfig(max_seq_len=24), epochs_to_generate=2)
    return path


def _kill_points(rng: random.Random, last_step: int) -> List[str]:
    """One checkpoint write, a moment after another checkpoint, and a model install, in random order."""
    steps = list(range(SAVE_STEPS, last_step - SAVE_STEPS + 1, SAVE_STEPS))
    points = [f"saving-{rng.choice(steps)}", f"after-{rng.choice(steps)}", "installing"]
    rng.shuffle(points)
    return points


@pytest.mark.parametrize("stage", ["general", "task"])
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(world, pregenerated, tmp_path, stage):
    script = GENERAL if stage == "general" else TASK
    argv = (lambda out, *more: general_argv(world, pregenerated, out, *more)) if stage == "general" else \
        (lambda out, *more: task_argv(world, out, *more))
    reference = tmp_path / "reference"
    finish_run(script, argv(reference), tmp_path / "reference.log")
    last_step = max(step for step, _ in list_checkpoints(reference))
    assert last_step >= 3 * SAVE_STEPS
    assert all("grad_norm" in r for r in read_jsonl(reference / "metrics.jsonl") if "loss" in r)

    rng = random.Random(f"{SEED}-{stage}")
    for i, point in enumerate(_kill_points(rng, last_step)):
        out, log = tmp_path / f"killed-{i}", tmp_path / f"killed-{i}.log"
        process = start_run(script, argv(out), log)
        moment = kill_at(point, process, out, rng)
        process.join(60)
        assert process.exitcode == -signal.SIGKILL, f"{moment}: {log.read_text()[-2000:]}"
        finish_run(script, argv(out, "--continue_train"), tmp_path / f"resumed-{i}.log")
        assert_same_run(reference, out, f"{stage} run killed {moment} (seed {SEED})")


def _stop_line(log: str) -> str:
    lines = [line for line in log.splitlines() if line.strip()]
    assert "Traceback" not in log
    assert lines[-1].startswith("stopped: "), log[-2000:]
    return lines[-1]


def _signal_checkpoint(line: str, out: Path, name: str) -> int:
    """The step of the checkpoint the stop message names; it must be the only checkpoint (no regular ones)."""
    step = int(line.split("after optimizer step ")[1].split()[0])
    assert f"{name} received: training stopped after optimizer step {step} of" in line
    assert f"saved {out / f'checkpoint-{step}'}; resume with --continue_train" in line
    assert [s for s, _ in list_checkpoints(out)] == [step]
    assert not (out / "config.json").exists() or name == "SIGINT"        # general KD installs only at the end
    return step


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_equals_uninterrupted(world, pregenerated, tmp_path):
    """Through ``python script.py``, at the end of the first epoch (when metrics.jsonl appears); no regular
    checkpoint before the end (--save_steps 1000)."""
    reference, out = tmp_path / "reference", tmp_path / "stopped"
    argv = lambda out, *more: general_argv(world, pregenerated, out, "--save_steps", "1000", *more)
    finish_run(GENERAL, argv(reference), tmp_path / "reference.log")
    proc = subprocess.Popen([sys.executable, str(REPO / f"{GENERAL}.py"), *map(str, argv(out))],
                            cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while "metrics.jsonl" not in dir_names(out):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch did"
        time.sleep(0.0005)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    step = _signal_checkpoint(_stop_line(stderr), out, "SIGTERM")
    finish_run(GENERAL, argv(out, "--continue_train"), tmp_path / "resumed.log")
    assert_same_run(reference, out, f"general run stopped by SIGTERM after step {step}")


def test_sigint_saves_a_checkpoint_and_the_resumed_run_equals_uninterrupted(world, tmp_path):
    """Ctrl-C while the first best model is being installed (step 2); --save_steps 1000."""
    reference, out, log = tmp_path / "reference", tmp_path / "stopped", tmp_path / "stopped.log"
    argv = lambda out, *more: task_argv(world, out, "--save_steps", "1000", *more)
    finish_run(TASK, argv(reference), tmp_path / "reference.log")
    process = start_run(TASK, argv(out), log)
    wait_for(process, lambda: any(n.startswith(".tmp-model-") for n in dir_names(out)), "the first best model")
    os.kill(process.pid, signal.SIGINT)
    process.join(120)
    assert process.exitcode == 128 + signal.SIGINT, log.read_text()[-2000:]
    step = _signal_checkpoint(_stop_line(log.read_text()), out, "SIGINT")
    finish_run(TASK, argv(out, "--continue_train"), tmp_path / "resumed.log")
    assert_same_run(reference, out, f"task run stopped by SIGINT after step {step}")
