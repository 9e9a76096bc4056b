"""``--report_to tensorboard``: every metrics.jsonl record also as TensorBoard scalars in OUTPUT_DIR/tensorboard/
(docs/DESIGN.md, "Metrics"), a resumed run's events after its checkpoint replaced, and without the tensorboard
package one usage error before anything is written. The event files are read back with TensorBoard's own reader."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from spikingbert.training.state import MetricsLog
from tests.helpers.world import REPO, World, build_world, script_env, task_args

Scalars = Dict[str, List[Tuple[int, float]]]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("world"))


def _numbers(record: dict, prefix: str = "") -> Dict[str, float]:
    """Every number of a metrics.jsonl record but its step, nested ones as ``outer/inner``."""
    found = {}
    for key, value in record.items():
        if isinstance(value, dict):
            found.update(_numbers(value, f"{prefix}{key}/"))
        elif type(value) in (int, float) and f"{prefix}{key}" != "step":
            found[f"{prefix}{key}"] = float(value)
    return found


def _expected(metrics: Path) -> Scalars:
    """name -> [(step, value)] from metrics.jsonl, read here line by line."""
    expected: Scalars = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        for name, value in _numbers(record).items():
            expected.setdefault(name, []).append((record["step"], value))
    return expected


def _events(logdir: Path) -> Scalars:
    """name -> [(step, value)] as TensorBoard shows them (a restarted run's purged events, and the names left
    without any, left out)."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    reader = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.SCALARS: 0})
    reader.Reload()
    found = {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}
    return {tag: points for tag, points in found.items() if points}


def _assert_same(events: Scalars, expected: Scalars) -> None:
    assert expected and set(events) == set(expected)
    for name, points in expected.items():
        assert [step for step, _ in events[name]] == [step for step, _ in points], name
        for (_, got), (_, want) in zip(events[name], points):
            assert got == pytest.approx(want, rel=1e-6, abs=1e-30) or (math.isnan(got) and math.isnan(want)), name


def _run(argv: List, env: Dict[str, str], expect_rc: int = 0, command=("spiking_bert_task_distill.py",)
         ) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *command, *map(str, argv)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == expect_rc, proc.stderr[-4000:]
    return proc


def _without_tensorboard(tmp_path: Path) -> Dict[str, str]:
    """The scripts' environment with a ``tensorboard`` module first on the path that fails to import."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "tensorboard.py").write_text("raise ImportError('No module named tensorboard (hidden by the test)')\n")
    env = script_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
    return env


def test_metrics_log_writes_scalars_and_a_resume_replaces_the_steps_after_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    metrics = tmp_path / "metrics.jsonl"
    log = MetricsLog(metrics, report_to="tensorboard")
    for step in range(1, 6):
        log.append({"step": step, "epoch": 0, "loss": 1 / step, "lr": 1e-5 * step,
                    **({"eval": {"acc": step / 10, "f1": 0.25}} if step % 2 == 0 else {})})
    log.close()
    _assert_same(_events(tmp_path / "tensorboard"), _expected(metrics))
    # Resumed from a checkpoint at step 2: the old file's steps 3..5 are hidden, the new run's take their place.
    log = MetricsLog(metrics, keep_until_step=2, report_to="tensorboard")
    for step in (3, 4):
        log.append({"step": step, "epoch": 1, "loss": 10 / step, "skipped": True})
    log.close()
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    expected = _expected(metrics)
    assert expected["loss"] == [(1, 1.0), (2, 0.5), (3, 10 / 3), (4, 2.5)] and "skipped" not in expected
    _assert_same(_events(tmp_path / "tensorboard"), expected)
    # Started over in the same directory (--continue_train without a checkpoint): the earlier events are hidden.
    log = MetricsLog(metrics, report_to="tensorboard")
    log.append({"step": 1, "loss": 7.0})
    log.close()
    _assert_same(_events(tmp_path / "tensorboard"), {"loss": [(1, 7.0)]})


@pytest.mark.system
@pytest.mark.slow
def test_report_to_tensorboard_writes_every_logged_number_at_its_step(world, tmp_path):
    """Prediction KD (losses, learning rate, speed and the nested dev metrics), then a resume from its first
    checkpoint: TensorBoard shows exactly what metrics.jsonl holds."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "pred"
    argv = task_args(world, "SST-2", world.student_config, out, "--pred_distill", "--max_steps", "4", "--eval_step",
                     "2", "--save_total_limit", "2", "--logging_steps", "1", "--max_seq_length", "24", "--t_conv",
                     "4", "--report_to", "tensorboard")
    _run(argv, script_env())
    expected = _expected(out / "metrics.jsonl")
    assert {"loss", "lr", "steps_per_sec", "epoch", "grad_norm", "eval/acc"} <= expected.keys()
    assert [step for step, _ in expected["eval/acc"]] == [2, 4] and len(expected["loss"]) == 4
    _assert_same(_events(out / "tensorboard"), expected)

    shutil.rmtree(out / "checkpoint-4")
    assert "resumed from" in _run([*argv, "--continue_train"], script_env()).stderr
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2
    _assert_same(_events(out / "tensorboard"), _expected(out / "metrics.jsonl"))


@pytest.mark.system
@pytest.mark.slow
def test_without_the_flag_no_event_files_and_no_tensorboard_import(world, tmp_path):
    """The run succeeds with an unimportable tensorboard: the package is not imported when the flag is off."""
    out = tmp_path / "pred"
    _run(task_args(world, "SST-2", world.student_config, out, "--pred_distill", "--max_steps", "1",
                   "--max_seq_length", "24", "--t_conv", "4"), _without_tensorboard(tmp_path))
    assert (out / "metrics.jsonl").is_file()
    assert not (out / "tensorboard").exists() and not list(out.rglob("events.out.tfevents.*"))


@pytest.mark.system
@pytest.mark.parametrize("command", ["task", "general", "finetune"])
def test_without_tensorboard_the_flag_is_one_usage_error_before_anything_is_written(world, tmp_path, command):
    """Checked while parsing: a previous run's files that --overwrite_output_dir would remove stay as they are."""
    out = tmp_path / "out"
    out.mkdir()
    previous = {"metrics.jsonl": '{"loss": 1.0, "step": 1}\n', "args.json": "{}\n", "train.log": "earlier run\n"}
    for name, text in previous.items():
        (out / name).write_text(text)
    argv = {
        "task": (["spiking_bert_task_distill.py"],
                 task_args(world, "SST-2", world.student_config, out, "--pred_distill", "--max_steps", "1")),
        "general": (["spiking_bert_general_distill.py"],
                    ["--pregenerated_data", world.root, "--teacher_model", world.teacher_general,
                     "--spiking_student_model", world.student_config, "--output_dir", out, "--max_steps", "1"]),
        "finetune": (["-m", "apps.finetune"],
                     ["--task_name", "SST-2", "--data_dir", world.sst2, "--bert_model", world.teacher_sst2,
                      "--output_dir", out, "--max_steps", "1"]),
    }[command]
    proc = _run([*argv[1], "--overwrite_output_dir", "--report_to", "tensorboard"], _without_tensorboard(tmp_path),
                expect_rc=2, command=argv[0])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --report_to tensorboard "), proc.stderr[-4000:]
    assert "pip install tensorboard" in lines[0] and proc.stdout == ""
    assert {p.name: p.read_text() for p in out.iterdir()} == previous
