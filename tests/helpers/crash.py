"""Kill-and-resume runs of the training scripts, for the crash-safety tests (test_crash.py, test_length_grouping.py).

`start_run` runs ``<script>.main`` under `run_cli` (what ``python <script>.py argv`` runs) in a process forked
from a server that has imported torch and the project once (`multiprocessing` "forkserver"): no interpreter
start-up, but a real process that real signals act on; its output goes into a log file. `kill_at` waits for
a moment of a run (a checkpoint being written, a few ms after one, a model being installed) and SIGKILLs it;
`assert_same_run` compares a resumed run with the uninterrupted one. `general_argv` / `task_argv`: the tiny
general-KD and prediction-KD runs of those tests on `tests.helpers.world.build_world`.
"""
from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import random
import time
from pathlib import Path
from typing import Callable, List

import torch

from spikingbert.cli.edge import run_cli
from spikingbert.training.checkpoint import list_checkpoints
from tests.helpers.world import World, max_weight_diff, read_jsonl

GENERAL, TASK = "spiking_bert_general_distill", "spiking_bert_task_distill"
SAVE_STEPS = 3

_CONTEXT = multiprocessing.get_context("forkserver")
# torch._dynamo: the first optimizer a process builds imports it (over a second).
_CONTEXT.set_forkserver_preload(["torch", "torch._dynamo", "spikingbert.run.stages", GENERAL, TASK,
                                 "tests.helpers.crash"])


def _run_script(script: str, argv: List[str], log: str) -> None:
    """Child process: ``python script.py argv`` without the interpreter start-up; output into ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    run_cli(importlib.import_module(script).main, argv)


def start_run(script: str, argv: List, log: Path) -> multiprocessing.Process:
    process = _CONTEXT.Process(target=_run_script, args=(script, [str(a) for a in argv], str(log)))
    process.start()
    return process


def finish_run(script: str, argv: List, log: Path) -> None:
    process = start_run(script, argv, log)
    process.join(240)
    assert process.exitcode == 0, log.read_text()[-3000:]


def wait_for(process: multiprocessing.Process, found: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120
    while not found():
        assert process.is_alive(), f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.0005)


def dir_names(directory: Path) -> List[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def kill_at(point: str, process: multiprocessing.Process, out: Path, rng: random.Random) -> str:
    """Wait for ``point`` of the run in ``out``, SIGKILL it; returns a description of the moment."""
    if point.startswith("saving"):                               # while checkpoint-k is being written
        step = int(point.split("-")[1])
        prefix, done = f".tmp-checkpoint-{step}-", f"checkpoint-{step}"
        wait_for(process, lambda: any(n.startswith(prefix) or n == done for n in dir_names(out)), point)
        seen = "while writing" if done not in dir_names(out) else "just after"
        process.kill()
        return f"{seen} checkpoint-{step}"
    if point.startswith("after"):                                # a few ms after checkpoint-k appeared
        step = int(point.split("-")[1])
        wait_for(process, lambda: f"checkpoint-{step}" in dir_names(out), point)
        delay = rng.uniform(0.0, 0.015)
        time.sleep(delay)
        process.kill()
        return f"{delay * 1000:.1f} ms after checkpoint-{step}"
    assert point == "installing"                                 # while the final/best model is put in place
    wait_for(process, lambda: any(n.startswith(".tmp-model-") for n in dir_names(out)), point)
    process.kill()
    return "while installing a model into the output dir"


def without_timing(records):
    return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]


def assert_same_run(reference: Path, resumed: Path, moment: str) -> None:
    assert max_weight_diff(reference, resumed) <= 1e-6, moment
    last = max(step for step, _ in list_checkpoints(reference))
    assert max_weight_diff(reference / f"checkpoint-{last}", resumed / f"checkpoint-{last}") <= 1e-6, moment
    assert without_timing(read_jsonl(resumed / "metrics.jsonl")) == \
        without_timing(read_jsonl(reference / "metrics.jsonl")), moment
    if (reference / "best_results.json").exists():
        assert json.loads((resumed / "best_results.json").read_text()) == \
            json.loads((reference / "best_results.json").read_text()), moment
    assert not [n for n in dir_names(resumed) if n.startswith(".tmp-")], moment


def general_argv(world: World, data: Path, out: Path, *extra) -> List:
    # ~40 instances per data epoch, batch 4, 2 epochs: ~20 steps; checkpoints every 3, the last 2 kept.
    return ["--pregenerated_data", data, "--teacher_model", world.teacher_general, "--spiking_student_model",
            world.student_config, "--output_dir", out, "--do_lower_case", "--train_batch_size", "4",
            "--num_train_epochs", "2", "--t_conv", "4", "--learning_rate", "1e-3", "--save_steps", SAVE_STEPS,
            "--save_total_limit", "2", "--seed", "3", *extra]


def task_argv(world: World, out: Path, *extra) -> List:
    # SST-2, 40 examples, batch 8 = 2 x 4 (accumulation), 2 epochs: 10 steps; dev evaluation every 2 steps.
    return ["--task_name", "SST-2", "--data_dir", world.sst2, "--teacher_model", world.teacher_sst2,
            "--spiking_student_model", world.student_config, "--output_dir", out, "--do_lower_case",
            "--pred_distill", "--train_batch_size", "8", "--gradient_accumulation_steps", "2",
            "--num_train_epochs", "2", "--max_seq_length", "24", "--t_conv", "4", "--eval_step", "2",
            "--save_steps", SAVE_STEPS, "--seed", "5", *extra]
