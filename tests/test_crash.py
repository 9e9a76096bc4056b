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
no interpreter start-up; they are real processes, killed by real signals. The kill points
are drawn from a seeded RNG (``SPIKINGBERT_CRASH_SEED`` to draw others).
"""
from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List

import pytest
import torch

from spikingbert.training.checkpoint import list_checkpoints
from spikingbert.cli.edge import run_cli
from spikingbert.data.pretraining import PretrainingConfig, generate_pretraining_data
from tests.test_pipeline import REPO, World, build_world, max_weight_diff, read_jsonl, script_env
from transformer.tokenization import BertTokenizer

SEED = int(os.environ.get("SPIKINGBERT_CRASH_SEED", "20240"))
GENERAL, TASK = "spiking_bert_general_distill", "spiking_bert_task_distill"
SAVE_STEPS = 3

_CONTEXT = multiprocessing.get_context("forkserver")
# torch._dynamo: the first optimizer a process builds imports it (over a second).
_CONTEXT.set_forkserver_preload(["torch", "torch._dynamo", "spikingbert.run.stages", GENERAL, TASK, "tests.test_crash"])


def _run_script(script: str, argv: List[str], log: str) -> None:
    """Child process: ``python script.py argv`` without the interpreter start-up; output into ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    run_cli(importlib.import_module(script).main, argv)


def _start(script: str, argv: List, log: Path) -> multiprocessing.Process:
    process = _CONTEXT.Process(target=_run_script, args=(script, [str(a) for a in argv], str(log)))
    process.start()
    return process


def _finish(script: str, argv: List, log: Path) -> None:
    process = _start(script, argv, log)
    process.join(240)
    assert process.exitcode == 0, log.read_text()[-3000:]


def _wait_for(process: multiprocessing.Process, found: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120
    while not found():
        assert process.is_alive(), f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.0005)


def _names(directory: Path) -> List[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _kill_at(point: str, process: multiprocessing.Process, out: Path, rng: random.Random) -> str:
    """Wait for ``point`` of the run in ``out``, SIGKILL it; returns a description of the moment."""
    if point.startswith("saving"):                               # while checkpoint-k is being written
        step = int(point.split("-")[1])
        prefix, done = f".tmp-checkpoint-{step}-", f"checkpoint-{step}"
        _wait_for(process, lambda: any(n.startswith(prefix) or n == done for n in _names(out)), point)
        seen = "while writing" if done not in _names(out) else "just after"
        process.kill()
        return f"{seen} checkpoint-{step}"
    if point.startswith("after"):                                # a few ms after checkpoint-k appeared
        step = int(point.split("-")[1])
        _wait_for(process, lambda: f"checkpoint-{step}" in _names(out), point)
        delay = rng.uniform(0.0, 0.015)
        time.sleep(delay)
        process.kill()
        return f"{delay * 1000:.1f} ms after checkpoint-{step}"
    assert point == "installing"                                 # while the final/best model is put in place
    _wait_for(process, lambda: any(n.startswith(".tmp-model-") for n in _names(out)), point)
    process.kill()
    return "while installing a model into the output dir"


def _without_timing(records):
    return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]


def _assert_same_run(reference: Path, resumed: Path, moment: str) -> None:
    assert max_weight_diff(reference, resumed) <= 1e-6, moment
    last = max(step for step, _ in list_checkpoints(reference))
    assert max_weight_diff(reference / f"checkpoint-{last}", resumed / f"checkpoint-{last}") <= 1e-6, moment
    assert _without_timing(read_jsonl(resumed / "metrics.jsonl")) == \
        _without_timing(read_jsonl(reference / "metrics.jsonl")), moment
    if (reference / "best_results.json").exists():
        assert json.loads((resumed / "best_results.json").read_text()) == \
            json.loads((reference / "best_results.json").read_text()), moment
    assert not [n for n in _names(resumed) if n.startswith(".tmp-")], moment


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("crash_world"))


@pytest.fixture(scope="module")
def pregenerated(world) -> Path:
    path = world.root / "pregenerated"
    generate_pretraining_data(world.corpus, path, BertTokenizer.from_pretrained(world.teacher_general),
                              PretrainingConfig(max_seq_len=24), epochs_to_generate=2)
    return path


def _general_argv(world: World, data: Path, out: Path, *extra) -> List:
    # ~40 instances per data epoch, batch 4, 2 epochs: ~20 steps; checkpoints every 3, the last 2 kept.
    return ["--pregenerated_data", data, "--teacher_model", world.teacher_general, "--spiking_student_model",
            world.student_config, "--output_dir", out, "--do_lower_case", "--train_batch_size", "4",
            "--num_train_epochs", "2", "--t_conv", "4", "--learning_rate", "1e-3", "--save_steps", SAVE_STEPS,
            "--save_total_limit", "2", "--seed", "3", *extra]


def _task_argv(world: World, out: Path, *extra) -> List:
    # SST-2, 40 examples, batch 8 = 2 x 4 (accumulation), 2 epochs: 10 steps; dev evaluation every 2 steps.
    return ["--task_name", "SST-2", "--data_dir", world.sst2, "--teacher_model", world.teacher_sst2,
            "--spiking_student_model", world.student_config, "--output_dir", out, "--do_lower_case",
            "--pred_distill", "--train_batch_size", "8", "--gradient_accumulation_steps", "2",
            "--num_train_epochs", "2", "--max_seq_length", "24", "--t_conv", "4", "--eval_step", "2",
            "--save_steps", SAVE_STEPS, "--seed", "5", *extra]


def _kill_points(rng: random.Random, last_step: int) -> List[str]:
    """One checkpoint write, a moment after another checkpoint, and a model install, in random order."""
    steps = list(range(SAVE_STEPS, last_step - SAVE_STEPS + 1, SAVE_STEPS))
    points = [f"saving-{rng.choice(steps)}", f"after-{rng.choice(steps)}", "installing"]
    rng.shuffle(points)
    return points


@pytest.mark.parametrize("stage", ["general", "task"])
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(world, pregenerated, tmp_path, stage):
    script = GENERAL if stage == "general" else TASK
    argv = (lambda out, *more: _general_argv(world, pregenerated, out, *more)) if stage == "general" else \
        (lambda out, *more: _task_argv(world, out, *more))
    reference = tmp_path / "reference"
    _finish(script, argv(reference), tmp_path / "reference.log")
    last_step = max(step for step, _ in list_checkpoints(reference))
    assert last_step >= 3 * SAVE_STEPS
    assert all("grad_norm" in r for r in read_jsonl(reference / "metrics.jsonl") if "loss" in r)

    rng = random.Random(f"{SEED}-{stage}")
    for i, point in enumerate(_kill_points(rng, last_step)):
        out, log = tmp_path / f"killed-{i}", tmp_path / f"killed-{i}.log"
        process = _start(script, argv(out), log)
        moment = _kill_at(point, process, out, rng)
        process.join(60)
        assert process.exitcode == -signal.SIGKILL, f"{moment}: {log.read_text()[-2000:]}"
        _finish(script, argv(out, "--continue_train"), tmp_path / f"resumed-{i}.log")
        _assert_same_run(reference, out, f"{stage} run killed {moment} (seed {SEED})")


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
    argv = lambda out, *more: _general_argv(world, pregenerated, out, "--save_steps", "1000", *more)
    _finish(GENERAL, argv(reference), tmp_path / "reference.log")
    proc = subprocess.Popen([sys.executable, str(REPO / f"{GENERAL}.py"), *map(str, argv(out))],
                            cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while "metrics.jsonl" not in _names(out):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch did"
        time.sleep(0.0005)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    step = _signal_checkpoint(_stop_line(stderr), out, "SIGTERM")
    _finish(GENERAL, argv(out, "--continue_train"), tmp_path / "resumed.log")
    _assert_same_run(reference, out, f"general run stopped by SIGTERM after step {step}")


def test_sigint_saves_a_checkpoint_and_the_resumed_run_equals_uninterrupted(world, tmp_path):
    """Ctrl-C while the first best model is being installed (step 2); --save_steps 1000."""
    reference, out, log = tmp_path / "reference", tmp_path / "stopped", tmp_path / "stopped.log"
    argv = lambda out, *more: _task_argv(world, out, "--save_steps", "1000", *more)
    _finish(TASK, argv(reference), tmp_path / "reference.log")
    process = _start(TASK, argv(out), log)
    _wait_for(process, lambda: any(n.startswith(".tmp-model-") for n in _names(out)), "the first best model")
    os.kill(process.pid, signal.SIGINT)
    process.join(120)
    assert process.exitcode == 128 + signal.SIGINT, log.read_text()[-2000:]
    step = _signal_checkpoint(_stop_line(log.read_text()), out, "SIGINT")
    _finish(TASK, argv(out, "--continue_train"), tmp_path / "resumed.log")
    _assert_same_run(reference, out, f"task run stopped by SIGINT after step {step}")
