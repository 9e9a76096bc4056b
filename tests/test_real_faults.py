"""Faults produced for real: failing writes under a file-size limit, and real signals.

Write failures: the run gets ``RLIMIT_FSIZE`` (``ulimit -f``, with ``SIGXFSZ`` ignored), so the first write
that would grow a file beyond the limit fails in the kernel with ``EFBIG``, whatever writes it: Python's
own files (JSON, epoch files), safetensors' writer (``model.safetensors``) or torch's zip writer
(``training_state.pt``). The limit is set just below the size of the file kind under test, so that it is
the first write to fail. Every case must end with exit status 1, exactly one ``error:`` line saying the
disk (or the file-size limit) is full, no traceback, no temporary file left, the previous checkpoints
intact, and ``--continue_train`` afterwards must finish the run as if nothing had happened.

A training run "stopped after checkpoint-2" is made by copying a finished 4-step run and removing what
came after checkpoint-2 (what a kill at that moment leaves, see test_crash.py).

Signals: Ctrl-C while the run is still loading (blocked on a teacher download from a local server that
does not answer) ends with ``error: interrupted`` and status 130; a second SIGTERM during training stops
the run at once (the first only asks for a checkpoint after the current step).
"""
from __future__ import annotations

import errno
import http.server
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spikingbert.cli.edge import user_error_status
from spikingbert.core.files import atomic_open, atomic_write, atomic_write_text, save_torch
from spikingbert.training.checkpoint import list_checkpoints
from tests.helpers import cli_runner
from tests.helpers.kd_world import KDWorld, build_kd_world
from tests.helpers.world import max_weight_diff, read_jsonl

pytestmark = [pytest.mark.system]

STEPS = 4


@pytest.fixture(scope="module")
def kd(tmp_path_factory) -> KDWorld:
    return build_kd_world(tmp_path_factory.mktemp("faults_world"))


def _general_argv(kd: KDWorld, out: Path, *extra):
    return ["--pregenerated_data", kd.pregenerated, "--teacher_model", kd.base.teacher_general,
            "--spiking_student_model", kd.student_general, "--output_dir", out, "--do_lower_case",
            "--train_batch_size", "2", "--t_conv", "4", "--logging_steps", "1", "--seed", "3", *extra]


@pytest.fixture(scope="module")
def reference(kd, tmp_path_factory) -> Path:
    """An uninterrupted run: STEPS steps, a checkpoint after each (all kept)."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    cli_runner.run(cli_runner.GENERAL, _general_argv(kd, out, "--max_steps", STEPS, "--save_steps", "1",
                                                     "--save_total_limit", STEPS))
    return out


def _stopped_after(reference: Path, step: int, out: Path) -> Path:
    """A copy of ``reference`` as a run stopped right after checkpoint-``step`` leaves it."""
    shutil.copytree(reference, out)
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        (out / name).unlink()
    for later, path in list_checkpoints(out):
        if later > step:
            shutil.rmtree(path)
    return out


def _snapshot(directory: Path):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _temporaries(directory: Path):
    return [p for p in directory.rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(".tmp")]


def _assert_disk_full_line(result: cli_runner.Result, file_name: str) -> str:
    assert result.returncode == 1, result.output[-3000:]
    line = result.error_line()
    assert result.lines[-1] == line                                   # the run ends with it
    assert f"{file_name}" in line and "File too large: the disk (or the quota, or the file-size limit) is full" in line
    assert "cannot write " in line
    return line


def _without_timing(records):
    return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]


def _resume_finishes_like_the_reference(kd: KDWorld, reference: Path, out: Path, *extra) -> None:
    cli_runner.run(cli_runner.GENERAL, _general_argv(kd, out, "--max_steps", STEPS, "--save_steps", "1",
                                                     "--continue_train", *extra))
    assert max_weight_diff(reference, out) <= 1e-6
    logged, expected = (_without_timing(read_jsonl(d / "metrics.jsonl")) for d in (out, reference))
    assert logged == expected
    assert not _temporaries(out)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["model.safetensors", "training_state.pt"])
def test_checkpoint_write_fails_for_real_then_resume_works(kd, reference, tmp_path, kind):
    """safetensors' writer (SafetensorError) and torch's zip writer (RuntimeError "unexpected pos") each fail
    for real; the run stops with the disk-full line naming the checkpoint and the intact one before it."""
    out = _stopped_after(reference, 2, tmp_path / "out")
    kept = _snapshot(out / "checkpoint-2")
    limit = (reference / "checkpoint-1" / kind).stat().st_size - 1      # every other file is smaller
    argv = _general_argv(kd, out, "--max_steps", STEPS, "--save_steps", "1", "--continue_train")
    if kind == "training_state.pt":     # through ``python script.py`` itself once
        result = cli_runner.run_python(cli_runner.GENERAL, argv, fsize=limit, expect=None)
    else:
        result = cli_runner.run(cli_runner.GENERAL, argv, fsize=limit, expect=None)
    line = _assert_disk_full_line(result, kind)
    assert f"{out}/.tmp-checkpoint-3-" in line and "(writing checkpoint-3)" in line
    assert line.endswith(f"free some space, then resume from the intact {out / 'checkpoint-2'} with --continue_train")
    assert [step for step, _ in list_checkpoints(out)] == [1, 2]
    assert not (out / "checkpoint-3").exists() and not _temporaries(out)
    assert _snapshot(out / "checkpoint-2") == kept
    _resume_finishes_like_the_reference(kd, reference, out)


@pytest.mark.slow
def test_metrics_write_fails_for_real_then_resume_works(kd, reference, tmp_path):
    """metrics.jsonl grows by one record a step; no checkpoint is due (--save_steps 1000) before it outgrows
    the limit (a little above args.json, the largest file written before training)."""
    out = _stopped_after(reference, 1, tmp_path / "out")
    limit = (reference / "args.json").stat().st_size + 300
    result = cli_runner.run(cli_runner.GENERAL, _general_argv(kd, out, "--max_steps", 40, "--save_steps", "1000",
                                                              "--continue_train"), fsize=limit, expect=None)
    line = _assert_disk_full_line(result, "metrics.jsonl")
    assert "(writing metrics.jsonl)" in line and f"resume from the intact {out / 'checkpoint-1'}" in line
    assert [step for step, _ in list_checkpoints(out)] == [1] and not _temporaries(out)
    _resume_finishes_like_the_reference(kd, reference, out)


def test_args_json_write_fails_for_real(kd, tmp_path):
    out = tmp_path / "out"
    result = cli_runner.run(cli_runner.GENERAL, _general_argv(kd, out, "--max_steps", "2"), fsize=600, expect=None)
    line = _assert_disk_full_line(result, "args.json")
    assert line.endswith("free some space (or write elsewhere) and run the command again")
    assert not (out / "args.json").exists() and not _temporaries(out)


def test_eval_results_write_fails_for_real(kd, tmp_path):
    out = tmp_path / "eval"
    result = cli_runner.run(cli_runner.TASK, [
        "--do_eval", "--task_name", "SST-2", "--data_dir", kd.sst2, "--spiking_student_model", kd.student_cls,
        "--output_dir", out, "--do_lower_case", "--max_seq_length", "16"], fsize=100, expect=None)
    _assert_disk_full_line(result, "eval_results.json")
    assert not (out / "eval_results.json").exists() and not _temporaries(out)


def test_epoch_file_write_fails_for_real(kd, tmp_path):
    out = tmp_path / "pregenerated"
    result = cli_runner.run(cli_runner.PREPROCESS, [
        "--train_corpus", kd.base.corpus, "--output_dir", out, "--bert_model", kd.base.teacher_general,
        "--do_lower_case", "--epochs_to_generate", "2", "--max_seq_len", "24"], fsize=2000, expect=None)
    _assert_disk_full_line(result, "epoch_0.json")
    assert not out.exists()                  # created by this run: removed (no epoch, no metrics, no temporary)


def _failed_writes(directory: str):
    """(writer, error type, `user_error_status`) of writes that fail under the file-size limit: the writers
    themselves (torch.save to a path, safetensors, a Python file) and the project's write helpers."""
    tensors = {"x": torch.zeros(1 << 16)}
    big = "x" * (1 << 18)
    writes = {
        "torch.save": lambda: torch.save(tensors, f"{directory}/a.pt"),
        "safetensors": lambda: save_file(tensors, f"{directory}/b.safetensors"),
        "open": lambda: Path(f"{directory}/c.txt").write_text(big),
        "save_torch": lambda: save_torch(tensors, f"{directory}/d.pt"),
        "atomic_write": lambda: atomic_write(f"{directory}/e.safetensors", lambda t: save_file(tensors, t)),
        "atomic_write_text": lambda: atomic_write_text(f"{directory}/f.json", big),
        "atomic_open": lambda: _write_through_atomic_open(f"{directory}/g.json", big),
    }
    outcomes = []
    for name, write in writes.items():
        try:
            write()
            outcomes.append((name, None, None))
        except Exception as err:                # whatever the writer raises is what is checked
            outcomes.append((name, type(err).__name__, user_error_status(err)))
    return outcomes


def _write_through_atomic_open(path: str, text: str) -> None:
    with atomic_open(Path(path)) as f:
        f.write(text)


def test_every_kind_of_failed_write_is_the_disk_full_error(tmp_path):
    """The errors the writers raise when a write fails for real (EFBIG, in a child under the file-size
    limit), and the errno values a full disk, a quota or a failing device give (ENOSPC, EDQUOT, EIO)."""
    outcomes = cli_runner.call(_failed_writes, str(tmp_path), fsize=10_000)
    assert [kind for _, kind, _ in outcomes] == ["RuntimeError", "SafetensorError", "OSError"] + ["WriteError"] * 4
    # torch writing to a path of its own says only "unexpected pos" (the project writes through save_torch).
    assert outcomes[0][2] == ("cannot write a file: torch's writer failed without saying why (the disk, the quota or "
                              "the file-size limit may be full, or the device failed)", 1)
    for i, (name, _, (message, status)) in enumerate(outcomes[1:], start=1):
        assert status == 1 and "File too large: the disk (or the quota, or the file-size limit) is full" in message
        where = f"{tmp_path}/" if i >= 3 else "a file: "               # the project's helpers name the file
        assert message.startswith(f"cannot write {where}"), (name, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "c.txt", "d.pt"]   # the helpers left no temporary
    for code in (errno.ENOSPC, errno.EDQUOT):
        message, status = user_error_status(OSError(code, os.strerror(code), "f"))
        assert (message, status) == (f"cannot write f: {os.strerror(code)}: the disk (or the quota, or the file-size "
                                     "limit) is full; free some space (or write elsewhere) and run the command again",
                                     1)
    eio = OSError(errno.EIO, os.strerror(errno.EIO), "f")
    assert user_error_status(eio) == ("cannot access f: Input/output error", 1)


# ------------------------------------------------------------------------------------------ signals

class _Unanswered(http.server.BaseHTTPRequestHandler):
    """Holds every request until the test releases it."""

    arrived = threading.Event()
    release = threading.Event()

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        _Unanswered.arrived.set()
        _Unanswered.release.wait(60)
        self.send_response(404)
        self.end_headers()

    do_GET = do_HEAD


def test_ctrl_c_before_training_is_error_interrupted_130(kd, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unanswered)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "out"
    try:
        run = cli_runner.start(cli_runner.TASK, [
            "--task_name", "SST-2", "--data_dir", kd.sst2, "--spiking_student_model", kd.student_cls,
            "--teacher_model", f"http://127.0.0.1:{server.server_address[1]}/teacher.tar.gz", "--output_dir", out,
            "--do_lower_case", "--max_seq_length", "16", "--pred_distill"])
        assert _Unanswered.arrived.wait(120), run.output_so_far()     # blocked on the teacher: before training
        os.kill(run.pid, signal.SIGINT)
        result = run.wait(60)
    finally:
        _Unanswered.release.set()
        server.shutdown()
    assert result.returncode == 130, result.output
    assert result.error_line() == "error: interrupted" and result.lines[-1] == "error: interrupted"
    assert not out.exists()


@pytest.mark.slow
def test_second_sigterm_stops_at_once(kd, tmp_path):
    """The first SIGTERM during training only asks for a stop after the current step; a second one, sent while
    that step runs, stops the run at once: the one-line interruption (143), no "stopped:" line, no checkpoint
    saved, and (no checkpoint having been written yet) nothing of the run left behind."""
    out = tmp_path / "out"
    run = cli_runner.start(cli_runner.GENERAL, _general_argv(kd, out, "--max_steps", "100000", "--save_steps",
                                                             "100000", "--t_conv", "256", "--train_batch_size", "10"))
    metrics = out / "metrics.jsonl"

    def logged() -> int:
        return metrics.read_text().count("\n") if metrics.is_file() else 0

    def wait_until(condition, what):
        deadline = time.monotonic() + 120
        while not condition():
            assert run.alive() and time.monotonic() < deadline, f"{what}: {run.output_so_far()[-2000:]}"
            time.sleep(0.0005)

    wait_until(lambda: logged() >= 1, "training did not start")     # in the loop: the trainer's handler is set
    boundaries = []
    for _ in range(2):                                               # the time one step takes
        steps = logged()
        wait_until(lambda: logged() > steps, "no step ended")
        boundaries.append(time.monotonic())
    step = boundaries[1] - boundaries[0]
    time.sleep(step / 4)                                             # in the middle of the next step
    os.kill(run.pid, signal.SIGTERM)
    time.sleep(min(0.05, step / 10))                                 # handled at once (between two torch ops)
    os.kill(run.pid, signal.SIGTERM)
    result = run.wait(60)
    assert result.returncode == 128 + signal.SIGTERM, result.output[-2000:]
    assert result.error_line() == "error: interrupted (SIGTERM)" and "stopped:" not in result.output
    assert "training: 100000 optimizer steps" in result.output
    assert not out.exists(), f"{sorted(p.name for p in out.iterdir())} (steps of {step:.3f} s)"
