"""Running the demo's stages: each in a subprocess, its output into a plain log file, its progress onto one live
console line; a stage that finished earlier (same command and settings, outputs present) is reused.

A stage is finished when its marker ``stages/<name>.json`` (written atomically after the stage
succeeded) records the same command and settings; `run_stages` reuses finished stages and re-runs
a stage and everything after it otherwise.
"""
from __future__ import annotations

import json
import math
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from spikingbert.core.errors import UserError
from spikingbert.core.files import atomic_write_json
from spikingbert.core.progress import PROGRESS_SECONDS_ENV

__all__ = ["REPO", "DemoStage", "DemoPaths", "StageRun", "StageConsole", "StageLog", "ProgressLine", "parse_progress",
           "run_stages", "reused_stages", "repo_relative", "wrap_command"]

REPO = Path(__file__).resolve().parent.parent
#: Seconds an interrupted stage gets to stop by itself (a training stage finishes its step and saves).
STAGE_STOP_TIMEOUT = 300


def repo_relative(path: Path) -> Path:
    """``path`` relative to the repository when it lies inside it (shorter commands), else absolute."""
    try:
        return path.resolve().relative_to(REPO)
    except ValueError:
        return path.resolve()


@dataclass
class DemoStage:
    """One stage: a command (arguments after ``python``, run in the repository) and the files that exist
    once it succeeded (relative paths are relative to the repository, as in the command).

    ``settings`` are extra inputs the command line does not show (e.g. the student config) that
    decide, with the command, whether a finished stage can be reused.
    """

    name: str
    title: str
    argv: List[str]
    outputs: List[Path]
    settings: Dict[str, Any] = field(default_factory=dict)

    def shell(self) -> str:
        """The command as a user types it (``python`` for this interpreter)."""
        return "python " + " ".join(shlex.quote(a) for a in self.argv)

    def key(self) -> Dict[str, Any]:
        return {"argv": self.argv, "settings": self.settings}

def wrap_command(command: str, width: int = 100) -> str:
    """``command`` broken into ``\\``-continued lines of about ``width`` characters (a flag stays with its value)."""
    words = command.split(" ")
    tokens: List[str] = []
    while words:
        word = words.pop(0)
        if word.startswith("--") and words and not words[0].startswith("--"):
            word += " " + words.pop(0)
        tokens.append(word)
    lines = [tokens[0]]
    for token in tokens[1:]:
        if len(lines[-1]) + 1 + len(token) > width:
            lines[-1] += " \\"
            lines.append("    " + token)
        else:
            lines[-1] += " " + token
    return "\n".join(lines)

_LINE = re.compile(r"progress (?P<desc>[^:]+): (?P<n>[\d.]+[kMGTP]?)/(?P<total>[\d.]+[kMGTP]?|\?) (?P<unit>\S+)"
                   r"(?: \((?P<percent>\d+)%\))?, (?P<elapsed>[\d:]+) elapsed(?:, ETA (?P<eta>[\d:]+|\?))?")


@dataclass
class ProgressLine:
    """One parsed progress line (`parse_progress`)."""

    desc: str
    n: str
    total: str
    unit: str
    percent: Optional[int]
    elapsed: str
    eta: Optional[str]

    def short(self) -> str:
        """``DESC N/TOTAL UNIT (P%), ETA E`` for a one-line display."""
        text = f"{self.desc} {self.n}/{self.total} {self.unit}"
        if self.percent is not None:
            text += f" ({self.percent}%)"
        return text + f", {self.elapsed} elapsed" + (f", ETA {self.eta}" if self.eta else "")


def parse_progress(line: str) -> Optional[ProgressLine]:
    """The progress line in ``line`` (a log line may prefix it), or None."""
    match = _LINE.search(line)
    if match is None:
        return None
    percent = match.group("percent")
    return ProgressLine(match.group("desc"), match.group("n"), match.group("total"), match.group("unit"),
                        int(percent) if percent is not None else None, match.group("elapsed"), match.group("eta"))


class DemoPaths:
    """Where each stage writes, under the demo's output directory ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.task = root / "data" / "rotten_tomatoes"
        self.corpus = root / "data" / "bbc.txt"
        self.pregenerated = root / "data" / "pregenerated"
        self.student_config, self.stages, self.logs, self.report = (
            root / name for name in ("student_config", "stages", "logs", "report"))

    def stage_dir(self, name: str) -> Path:
        """Output directory of a training stage (``teacher``, ``general``, ``ikd``, ``pred``)."""
        return self.root / name

@dataclass
class StageRun:
    """How a stage went: its wall time and CPU time (user + system, of its process and the processes it waited
    for; of the run that produced its outputs, None when that run did not record it) and whether it was reused."""

    name: str
    title: str
    command: str
    seconds: float
    reused: bool
    cpu_seconds: Optional[float] = None


def _marker(stages_dir: Path, stage: DemoStage) -> Path:
    return stages_dir / f"{stage.name}.json"


def _finished(stages_dir: Path, stage: DemoStage) -> Optional[Dict[str, Any]]:
    """The stage's marker when it records this very stage and all its outputs exist, else None."""
    path = _marker(stages_dir, stage)
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if marker.get("key") != json.loads(json.dumps(stage.key())) or not all((REPO / p).is_file() for p in stage.outputs):
        return None
    return marker


def reused_stages(stages: Sequence[DemoStage], root: Path) -> int:
    """How many stages, from the first, `run_stages` would reuse now (each finished earlier with these settings)."""
    stages_dir = DemoPaths(root).stages
    count = 0
    while count < len(stages) and _finished(stages_dir, stages[count]) is not None:
        count += 1
    return count


class StageConsole:
    """The running stage's one live console line: its head (``[6/8] pred: ...``) and the stage's latest progress
    (``train 37/120 steps (31%), 0:41 elapsed, ETA 1:32``), rewritten in place on a terminal; elsewhere (a file,
    a pipe) a plain line at most every `PLAIN_SECONDS`."""

    PLAIN_SECONDS = 60.0

    def __init__(self, head: str, stream=None):
        self.head = head
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty()
        self.last = -math.inf if self.tty else time.monotonic()
        self.shown = False

    def show(self, text: str) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write(f"\r\033[K{self.head}: {text}")
            self.shown = True
        elif now - self.last >= self.PLAIN_SECONDS:
            self.stream.write(f"    {text}\n")
            self.last = now
        self.stream.flush()

    def finish(self, text: str) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
        self.stream.write(f"    {text}\n")
        self.stream.flush()


class StageLog:
    """The stage's log file: every line of its output, but progress lines only every `PROGRESS_SECONDS` per bar
    (and each bar's last one), so the file is plain text without a line per update."""

    PROGRESS_SECONDS = 30.0

    def __init__(self, file):
        self.file = file
        self.last: Dict[str, float] = {}

    def write(self, raw: bytes, line: Optional[ProgressLine]) -> None:
        if line is not None:
            now = time.monotonic()
            final = line.n == line.total
            if not final and now - self.last.get(line.desc, -math.inf) < self.PROGRESS_SECONDS:
                return
            self.last[line.desc] = now
        self.file.write(raw)
        self.file.flush()                            # `tail -f` the log while the stage runs


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_stage(stage: DemoStage, log_path: Path, console: StageConsole, verbose: bool) -> tuple[float, float]:
    """Run the stage's command (cwd: the repository), its output into ``log_path`` and its progress onto
    ``console``; returns the wall time and the CPU time of the stage's process."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {PROGRESS_SECONDS_ENV: "2", **os.environ, "PYTHONUNBUFFERED": "1"}
    start, cpu_start = time.perf_counter(), _children_cpu_seconds()
    with open(log_path, "wb") as log_file:
        log_file.write(f"$ {stage.shell()}\n".encode())
        log = StageLog(log_file)
        proc = subprocess.Popen([sys.executable, *stage.argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)   # signals come from the demo
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = parse_progress(raw.decode("utf-8", errors="replace"))
                log.write(raw, line)
                if line is not None:
                    console.show(line.short())
                if verbose:
                    sys.stderr.buffer.write(raw)
                    sys.stderr.flush()
            code = proc.wait()
        except BaseException as err:
            _stop_stage(proc, err)
            raise
    seconds, cpu_seconds = time.perf_counter() - start, _children_cpu_seconds() - cpu_start
    if code != 0:
        console.finish(f"failed after {seconds:.0f} s")
        tail = log_path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").splitlines()[-15:]
        sys.stderr.write("\n".join(tail) + "\n")
        raise UserError(f"demo stage {stage.name!r} failed (exit status {code}); its full output is in {log_path}; "
                        f"fix the cause and run the demo again (finished stages are reused)")
    missing = [str(p) for p in stage.outputs if not (REPO / p).is_file()]
    if missing:
        raise UserError(f"demo stage {stage.name!r} finished but did not write {', '.join(missing)}; see {log_path}")
    return seconds, cpu_seconds


def _stop_stage(proc: subprocess.Popen, err: BaseException) -> None:
    """The demo was interrupted (Ctrl-C, SIGTERM) or failed while a stage runs: pass the signal on and let the stage
    stop as it does on its own (a training stage saves a checkpoint first); a second signal kills it at once."""
    signum = getattr(err, "signum", signal.SIGINT) if isinstance(err, KeyboardInterrupt) else None
    try:
        if signum is not None and proc.poll() is None:
            proc.send_signal(signum)
            proc.wait(STAGE_STOP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def run_stages(stages: Sequence[DemoStage], root: Path, verbose: bool = False) -> List[StageRun]:
    """Run the stages in order, reusing finished ones until the first that has to run."""
    paths = DemoPaths(root)
    runs: List[StageRun] = []
    rerun = False
    for i, stage in enumerate(stages, 1):
        marker = None if rerun else _finished(paths.stages, stage)
        head = f"[{i}/{len(stages)}] {stage.name}: {stage.title}"
        if marker is not None:
            print(f"{head} -- finished earlier ({marker['seconds']:.0f} s), reused", flush=True)
            runs.append(StageRun(stage.name, stage.title, stage.shell(), marker["seconds"], True,
                                 marker.get("cpu_seconds")))
            continue
        rerun = True
        _marker(paths.stages, stage).unlink(missing_ok=True)
        log_path = paths.logs / f"{stage.name}.log"
        print(f"{head}\n    $ {stage.shell()}\n    (log: {log_path})", flush=True)
        console = StageConsole(f"[{i}/{len(stages)}] {stage.name}")
        seconds, cpu_seconds = _run_stage(stage, log_path, console, verbose)
        paths.stages.mkdir(parents=True, exist_ok=True)
        atomic_write_json(_marker(paths.stages, stage), {"key": stage.key(), "command": stage.shell(),
                                                         "seconds": round(seconds, 2),
                                                         "cpu_seconds": round(cpu_seconds, 2), "finished": time.time()})
        console.finish(f"done in {seconds:.0f} s")
        runs.append(StageRun(stage.name, stage.title, stage.shell(), seconds, False, cpu_seconds))
    return runs
