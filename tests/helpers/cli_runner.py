"""Run the entry scripts as real processes, optionally under a file-size limit, and capture their output.

`run` / `start` run ``run_cli(<script>.main, argv)`` (what ``python <script>.py argv`` runs) in a
process forked from a server that has imported torch and the project once (`multiprocessing`
"forkserver"): no interpreter start-up per run, but a real process that real signals and real
resource limits act on. Its stdout and stderr go into a pipe (a pipe is not subject to
``RLIMIT_FSIZE``, so the one error line still gets out when every file write fails).
`run_python` runs ``python <script>.py`` itself, for the few checks that include the interpreter;
`call` runs any function in such a child.

``fsize``: the child's ``RLIMIT_FSIZE`` in bytes, with ``SIGXFSZ`` ignored, so that a write that
would grow any file beyond it fails for real with ``EFBIG`` (``File too large``). ``env``: variables set in the
child's environment before the script runs.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from spikingbert.cli.edge import run_cli

REPO = Path(__file__).resolve().parents[2]
GENERAL, TASK, PREPROCESS = "spiking_bert_general_distill", "spiking_bert_task_distill", "preprocess_training_data"
DOWNLOAD = "download_glue_data"

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["torch", "torch._dynamo", "spikingbert.run.stages", GENERAL, TASK, PREPROCESS,
                                 "tests.helpers.cli_runner"])


def limit_file_size(fsize: Optional[int]) -> None:
    """``RLIMIT_FSIZE`` = ``fsize`` bytes for this process, ``SIGXFSZ`` ignored (no-op for None)."""
    if fsize is None:
        return
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, hard))


def _child(script: str, argv: List[str], out, fsize: Optional[int], tempdir: Optional[str],
           env: Optional[Dict[str, str]]) -> None:
    os.environ.update(env or {})
    os.dup2(out.fileno(), 1)
    os.dup2(out.fileno(), 2)
    out.close()
    # Ctrl-C as in a terminal, also where the tests run in a background job (which inherits SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(1)
    if tempdir is not None:
        import tempfile

        tempfile.tempdir = tempdir
    limit_file_size(fsize)
    run_cli(importlib.import_module(script).main, argv)


@dataclass
class Result:
    returncode: int
    output: str           # stdout and stderr, interleaved as written

    @property
    def lines(self) -> List[str]:
        return [line for line in self.output.splitlines() if line.strip()]

    def error_line(self) -> str:
        """The one ``error:`` line; asserts there is exactly one, and no traceback."""
        assert "Traceback" not in self.output, self.output[-4000:]
        errors = [line for line in self.lines if line.startswith("error: ")]
        assert len(errors) == 1, self.output[-4000:]
        return errors[0]


class Running:
    """A started run: its ``pid``; `wait` collects the exit status and the output."""

    def __init__(self, script: str, argv: Sequence, fsize: Optional[int] = None, tempdir: Optional[Path] = None,
                 env: Optional[Dict[str, str]] = None):
        reader, writer = _CONTEXT.Pipe(duplex=False)
        self.process = _CONTEXT.Process(target=_child, args=(script, [str(a) for a in argv], writer, fsize,
                                                             None if tempdir is None else str(tempdir), env))
        self.process.start()
        writer.close()
        self.pid = self.process.pid
        self._chunks: List[bytes] = []
        self._reader = threading.Thread(target=self._read, args=(reader,), daemon=True)
        self._reader.start()

    def _read(self, reader) -> None:
        fd = reader.fileno()
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            self._chunks.append(chunk)
        reader.close()

    def output_so_far(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")

    def alive(self) -> bool:
        return self.process.is_alive()

    def wait(self, timeout: float = 240) -> Result:
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
            raise AssertionError(f"the run did not end within {timeout} s:\n{self.output_so_far()[-3000:]}")
        self._reader.join(30)
        return Result(self.process.exitcode, self.output_so_far())


def start(script: str, argv: Sequence, fsize: Optional[int] = None, tempdir: Optional[Path] = None,
          env: Optional[Dict[str, str]] = None) -> Running:
    return Running(script, argv, fsize, tempdir, env)


def run(script: str, argv: Sequence, fsize: Optional[int] = None, tempdir: Optional[Path] = None,
        expect: Optional[int] = 0, timeout: float = 240, env: Optional[Dict[str, str]] = None) -> Result:
    """Run ``script`` to its end; assert its exit status is ``expect`` (None: any)."""
    result = start(script, argv, fsize, tempdir, env).wait(timeout)
    if expect is not None:
        assert result.returncode == expect, f"{script} exited {result.returncode}:\n{result.output[-4000:]}"
    return result


def _call_child(fn, args, out, fsize: Optional[int]) -> None:
    limit_file_size(fsize)
    out.send(fn(*args))


def call(fn, *args, fsize: Optional[int] = None, timeout: float = 120):
    """``fn(*args)`` (a module-level function, picklable result) in a forked child under ``RLIMIT_FSIZE``."""
    reader, writer = _CONTEXT.Pipe(duplex=False)
    process = _CONTEXT.Process(target=_call_child, args=(fn, args, writer, fsize))
    process.start()
    writer.close()
    assert reader.poll(timeout), "the child sent nothing"
    result = reader.recv()
    process.join(timeout)
    return result


def run_python(script: str, argv: Sequence, fsize: Optional[int] = None, expect: Optional[int] = 0,
               timeout: float = 240, env: Optional[Dict[str, str]] = None) -> Result:
    """``python <script>.py argv`` in a new interpreter (``script`` may also be ``-m module``)."""
    cmd = [sys.executable, *(script.split() if script.startswith("-m ") else [str(REPO / f"{script}.py")])]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([*cmd, *map(str, argv)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          preexec_fn=(lambda: limit_file_size(fsize)) if fsize is not None else None)
    if expect is not None:
        assert proc.returncode == expect, f"{script} exited {proc.returncode}:\n{proc.stdout[-4000:]}"
    return Result(proc.returncode, proc.stdout)


def catches_signal(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler of its own for ``signum`` (``run_cli`` installed one for SIGTERM)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    line = next((row for row in status.splitlines() if row.startswith("SigCgt:")), "SigCgt: 0")
    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
