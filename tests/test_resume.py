"""Exact resume, gradient accumulation and NaN handling of the training loop.

In-process tests drive `spikingbert.training.trainer.Trainer` with a tiny stand-in model (with
dropout, so RNG restoration matters); the CLI test kills a real prediction-KD run with
SIGKILL after a checkpoint appears and resumes it with --continue_train.
"""
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from spikingbert.runtime import Runtime
from spikingbert.training.sampling import ResumableSampler
from spikingbert.training.trainer import Stage, Trainer, TrainerConfig, TrainingDiverged
from spikingbert.transformer.optimization import BertAdam
from tests.helpers.stand_in import StandInObjective, regression_data
from tests.helpers.world import REPO, build_world, max_weight_diff, read_jsonl, script_env, task_args

pytestmark = [pytest.mark.slow]

CPU = Runtime(device=torch.device("cpu"))


def _run(out: Path, *, n=23, micro=2, accum=3, epochs=2.0, save_steps=2, resume_from=None, dropout=0.2,
         poison=-1, logging_steps=50, init_seed=0):
    torch.manual_seed(init_seed)
    objective = StandInObjective(dropout)
    if resume_from is not None:
        objective.load_state_dict(load_file(str(resume_from / "model.safetensors")))
    data = regression_data(n, poison)

    def save(directory: Path):
        (directory / "config.json").write_text("{}")
        save_file({k: v.contiguous() for k, v in objective.state_dict().items()}, str(directory / "model.safetensors"))

    stage = Stage(
        student=objective, objective=objective,
        make_optimizer=lambda total: BertAdam(objective.parameters(), lr=0.01, warmup=0.1, t_total=total),
        train_dataset=lambda epoch: data, num_train_examples=lambda epoch: len(data), save_student=save,
    )
    config = TrainerConfig(output_dir=out, train_batch_size=micro * accum, gradient_accumulation_steps=accum,
                           num_train_epochs=epochs, save_steps=save_steps, logging_steps=logging_steps, seed=7)
    out.mkdir(parents=True, exist_ok=True)
    summary = Trainer(config, CPU, stage, resume_from).train()
    return objective, summary


def _without_timing(records):
    return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]


@pytest.mark.parametrize("resume_step", [2, 4, 6])
def test_resume_from_any_checkpoint_equals_uninterrupted_run(tmp_path, resume_step):
    # 23 examples, micro-batch 2, accumulation 3: 12 micro-batches -> 4 steps per epoch (the last
    # group has 3 micro-batches of which one is short); step 4 is an epoch end.
    full, summary = _run(tmp_path / "full", logging_steps=1)
    assert summary.global_step == 8
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / f"checkpoint-{resume_step}", resumed_dir / f"checkpoint-{resume_step}")
    shutil.copy(tmp_path / "full" / "metrics.jsonl", resumed_dir / "metrics.jsonl")
    resumed, _ = _run(resumed_dir, resume_from=resumed_dir / f"checkpoint-{resume_step}", logging_steps=1,
                      init_seed=99)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert max_weight_diff(tmp_path / "full", resumed_dir) == 0.0
    assert _without_timing(read_jsonl(resumed_dir / "metrics.jsonl")) == \
        _without_timing(read_jsonl(tmp_path / "full" / "metrics.jsonl"))


def test_resume_without_rng_restore_would_differ(tmp_path, monkeypatch):
    """Control for the test above: with the RNG state not restored, the dropout masks and the result differ."""
    _run(tmp_path / "full")
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", resumed_dir / "checkpoint-2")
    monkeypatch.setattr("spikingbert.training.trainer.set_rng_state", lambda state: None)
    _run(resumed_dir, resume_from=resumed_dir / "checkpoint-2", init_seed=99)
    assert max_weight_diff(tmp_path / "full", resumed_dir) > 1e-5


def test_gradient_accumulation_matches_large_batch(tmp_path):
    a, _ = _run(tmp_path / "a", n=24, micro=4, accum=1, dropout=0.0)
    b, _ = _run(tmp_path / "b", n=24, micro=2, accum=2, dropout=0.0)
    c, _ = _run(tmp_path / "c", n=24, micro=4, accum=2, dropout=0.0)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=0)
        assert not torch.allclose(pa, pc, atol=1e-4)              # a different effective batch differs


def test_nan_loss_stops_with_step_parts_and_last_checkpoint(tmp_path):
    poison = 7
    order = list(ResumableSampler(23, epoch=0, seed=7))
    bad_step = order.index(poison) // 2 // 3 + 1                  # micro-batch 2, accumulation 3
    with pytest.raises(TrainingDiverged) as err:
        _run(tmp_path / "run", poison=poison, save_steps=1, logging_steps=1)
    message = str(err.value)
    assert f"optimizer step {bad_step}" in message
    assert "loss=nan" in message and "mse=nan" in message and "l1=nan" in message
    if bad_step > 1:
        assert f"checkpoint-{bad_step - 1}" in message
        assert (tmp_path / "run" / f"checkpoint-{bad_step - 1}").is_dir()
    else:
        assert "no checkpoint was written yet" in message
    assert not (tmp_path / "run" / f"checkpoint-{bad_step}").exists()   # no checkpoint with NaN weights


# ------------------------------------------------------------------------------------------ CLI

@pytest.mark.system
def test_sigkilled_run_resumed_with_continue_train_equals_uninterrupted(tmp_path):
    world = build_world(tmp_path / "world")
    extra = ["--pred_distill", "--num_train_epochs", "2", "--max_seq_length", "24", "--eval_step", "3",
             "--save_steps", "2", "--gradient_accumulation_steps", "2", "--t_conv", "4", "--seed", "11"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    script = str(REPO / "spiking_bert_task_distill.py")
    # Batch 8 = 2 x 4 micro-batches, 40 examples -> 5 steps per epoch, 10 in all.
    cmd = lambda out, *more: [sys.executable, script, *map(str, task_args(world, "SST-2", world.student_config,
                                                                          out, *extra, *more))]
    subprocess.run(cmd(full), cwd=REPO, env=script_env(), check=True, capture_output=True, timeout=240)

    proc = subprocess.Popen(cmd(killed), cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (killed / "checkpoint-4").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before checkpoint-4"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoint-10").exists(), "the run finished before it was killed"

    resumed = subprocess.run(cmd(killed, "--continue_train"), cwd=REPO, env=script_env(), capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert max_weight_diff(full / "checkpoint-10", killed / "checkpoint-10") <= 1e-6
    assert max_weight_diff(full, killed) <= 1e-6                  # the best model kept in output_dir
    assert json.loads((full / "best_results.json").read_text()) == \
        json.loads((killed / "best_results.json").read_text())
    assert _without_timing(read_jsonl(full / "metrics.jsonl")) == _without_timing(read_jsonl(killed / "metrics.jsonl"))
    assert not math.isnan(read_jsonl(killed / "metrics.jsonl")[-2]["loss"])
