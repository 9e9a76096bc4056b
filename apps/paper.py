"""The paper's recipe for one GLUE task in one command: ``python -m apps.paper --task SST-2 ...``.

Stages, each one of the project's entry scripts in a subprocess (`apps.demo_stages`: one live progress
line per stage, a log per stage, finished stages reused on a re-run):

1. ``pregenerate`` (only with ``--corpus``): the general corpus into pregenerated epochs
   (``preprocess_training_data.py``);
2. ``general``: general KD of a new student (``--student_config``) from the pre-trained BERT
   (``--bert_base``) (``spiking_bert_general_distill.py``); skipped with ``--general_student``;
3. ``ikd``: task intermediate KD from the BERT fine-tuned on the task (``--teacher``);
4. ``pred``: prediction KD from the same teacher (``--pred_distill``);
5. ``eval``: the dev evaluation with the spike and energy report (``--do_eval --report``).

Every setting comes from the paper's published code (`RECIPE_TABLE`: the value and where it comes from;
README, "The paper's recipe"); a flag of the same name overrides it. Before the stages run, the recipe
measures its own time (`apps.paper_estimate`: a few optimizer steps of each training stage on the real
data and models) and prints the estimate; ``--estimate`` stops there. A training stage that was
interrupted continues from its last checkpoint on the next run. ``--summary DIR...`` prints the results
of recipe directories next to the paper's numbers (`apps.paper_summary`).
"""
from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from spikingbert.cli.edge import ArgumentParser, HelpFormatter, run_cli, setting_flag, short_metavars
from spikingbert.core.errors import UsageError

from .demo_stages import REPO, DemoPaths, DemoStage, repo_relative, reused_stages, run_stages, wrap_command

__all__ = ["PaperRecipe", "PAPER", "RECIPE_TABLE", "Inputs", "Step", "build_steps", "paper_parser", "main"]

#: The recipe's own lock in its output directory.
PAPER_LOCK = ".paper.lock"
#: The student of general KD unless ``--student_config`` says otherwise: the published 4-layer config.
DEFAULT_STUDENT = REPO / "spiking_student_model"
#: The training stages (an interrupted one continues from its last checkpoint).
TRAINING = ("general", "ikd", "pred")


@dataclass(frozen=True)
class PaperRecipe:
    """The recipe's settings (`RECIPE_TABLE` says what each is and where its value comes from); the
    ``*_max_steps`` fields cut a stage short (0: its epochs), for smoke runs only."""

    t_conv: int = 125
    vth: float = 1.0
    epochs_to_generate: int = 3
    max_seq_len: int = 128
    general_batch_size: int = 128
    general_epochs: float = 3.0
    general_lr: float = 5e-5
    max_seq_length: int = 128
    ikd_batch_size: int = 32
    ikd_epochs: float = 10.0
    ikd_lr: float = 5e-5
    pred_batch_size: int = 32
    pred_epochs: float = 3.0
    pred_lr: float = 3e-5
    eval_step: int = 100
    temperature: float = 1.0
    warmup_proportion: float = 0.1
    eval_batch_size: int = 32
    seed: int = 42
    save_steps: int = 1000
    save_total_limit: int = 2
    general_max_steps: int = 0
    ikd_max_steps: int = 0
    pred_max_steps: int = 0


#: The paper's recipe.
PAPER = PaperRecipe()

_README = "published README"
_DEFAULT = "published `{}` default (the README sets none)"
#: Each recipe field: (the setting its flag is checked against, what it is, where its value comes from).
RECIPE_TABLE: Dict[str, Tuple[str, str, str]] = {
    "t_conv": ("t_conv", "simulation steps T, every stage", f"{_README}, table of hyper-parameters"),
    "vth": ("vth", "firing threshold", f"{_README}, table of hyper-parameters"),
    "epochs_to_generate": ("epochs_to_generate", "epochs of pregenerated data (`--corpus`)", f"{_README}, step 1(b)"),
    "max_seq_len": ("max_seq_len", "tokens per pregenerated instance",
                    "published `preprocess_training_data.py` default"),
    "general_batch_size": ("train_batch_size", "general KD batch size", f"{_README}, step 1(c)"),
    "general_epochs": ("num_train_epochs", "general KD epochs", _DEFAULT.format("spiking_bert_general_distill.py")),
    "general_lr": ("learning_rate", "general KD peak learning rate",
                   _DEFAULT.format("spiking_bert_general_distill.py")),
    "max_seq_length": ("max_seq_length", "tokens per task example", f"{_README}, steps 2 and 3, evaluation"),
    "ikd_batch_size": ("train_batch_size", "task IKD batch size", f"{_README}, step 2"),
    "ikd_epochs": ("num_train_epochs", "task IKD epochs", f"{_README}, step 2"),
    "ikd_lr": ("learning_rate", "task IKD learning rate (constant)", _DEFAULT.format("spiking_bert_task_distill.py")),
    "pred_batch_size": ("train_batch_size", "prediction KD batch size", f"{_README}, step 3"),
    "pred_epochs": ("num_train_epochs", "prediction KD epochs", f"{_README}, step 3"),
    "pred_lr": ("learning_rate", "prediction KD peak learning rate", f"{_README}, step 3"),
    "eval_step": ("eval_step", "prediction KD: dev evaluation every N steps, the best model kept",
                  f"{_README}, step 3"),
    "temperature": ("temperature", "prediction KD soft cross-entropy temperature",
                    f"{_README}, table of hyper-parameters"),
    "warmup_proportion": ("warmup_proportion", "linear warm-up share (general KD, prediction KD)",
                          "published scripts' default"),
    "eval_batch_size": ("eval_batch_size", "evaluation batch size", f"{_README}, evaluation"),
    "seed": ("seed", "seed of every stage", "published scripts' default"),
    "save_steps": ("save_steps", "checkpoint every N steps (general KD, task IKD; prediction KD: at each evaluation)",
                   "this recipe: resume points, no effect on the result"),
    "save_total_limit": ("save_total_limit", "checkpoints kept per stage",
                         "this recipe: disk space, no effect on the result"),
}
#: Settings of the recipe that no flag changes: (setting, value, what, source).
FIXED_TABLE = (
    ("`--student_config`", "`spiking_student_model/`: 4 encoder layers, H 768, 12 heads",
     "the new student of general KD (SpikingBERT4 of the paper's Table 1)",
     "published `spiking-student-model/config.json`; README: 4 = spiking encoder layers"),
    ("`--do_lower_case`", "on", "uncased BERT teachers", f"{_README}, every step"),
    ("`--reduce_memory`", "on", "pregenerated data kept on disk", f"{_README}, steps 1(b) and 1(c)"),
)
#: The flags that cut the stages short, with their help text.
SCALE_HELP = {"general_max_steps": "general KD", "ikd_max_steps": "task IKD", "pred_max_steps": "prediction KD"}


def recipe_table_markdown(recipe: PaperRecipe = PAPER) -> str:
    """The recipe's settings as the README's table: flag, value, what it is, source."""
    rows = ["| setting | value | what | source |", "|---|---|---|---|"]
    rows += [f"| {name} | {value} | {what} | {source} |" for name, value, what, source in FIXED_TABLE]
    for name, (_, what, source) in RECIPE_TABLE.items():
        rows.append(f"| `--{name}` | {_text(getattr(recipe, name))} | {what} | {source} |")
    return "\n".join(rows)


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------ stages

@dataclass(frozen=True)
class Inputs:
    """What the user passed: the task (canonical name) and its directory, the models, the general student's
    source (exactly one of ``general_student``, ``pregenerated``, ``corpus``)."""

    task: str
    task_dir: Path
    teacher: Path
    bert_base: Optional[Path]
    student_config: Path
    general_student: Optional[Path] = None
    pregenerated: Optional[Path] = None
    corpus: Optional[Path] = None


@dataclass
class Step:
    """A stage as a script and its flags (in order; True: a switch, None: left out), so that the time estimate
    runs the very same command with a few flags changed (`with_flags`)."""

    name: str
    title: str
    script: str
    flags: Dict[str, Any]
    outputs: List[Path]
    settings: Dict[str, Any] = field(default_factory=dict)

    def argv(self) -> List[str]:
        """The command's arguments after ``python``: the script, then each flag given (a float as ``%g``)."""
        argv = [self.script]
        for name, value in self.flags.items():
            if value is None or value is False:
                continue
            argv.append(f"--{name}")
            if value is not True:
                argv.append(_text(value))
        return argv

    def with_flags(self, **changes: Any) -> "Step":
        """This step with ``changes`` to its flags (a value of None leaves the flag out)."""
        return dataclasses.replace(self, flags={**self.flags, **changes})

    @property
    def output_dir(self) -> Path:
        """The directory the step writes (its ``--output_dir``)."""
        return Path(self.flags["output_dir"])

    def stage(self) -> DemoStage:
        """The step as `apps.demo_stages` runs it."""
        return DemoStage(self.name, self.title, self.argv(), self.outputs, self.settings)


def task_dir_name(task: str) -> str:
    """The task's directory under a GLUE data directory, as ``download_glue_data.py`` names it."""
    from spikingbert.data import glue

    return "MNLI" if task.startswith("mnli") else glue.get_processor(task).display_name


def build_steps(r: PaperRecipe, i: Inputs, root: Path) -> List[Step]:
    """The recipe's stages for ``r`` and ``i``, writing under ``root``."""
    from spikingbert.data import glue
    from spikingbert.data.pretraining import epoch_paths

    paths, steps = DemoPaths(root), []
    pregenerated = i.pregenerated
    if i.corpus is not None:
        pregenerated = root / "pregenerated"
        steps.append(Step("pregenerate", "general corpus -> pregenerated epochs", "preprocess_training_data.py",
                          {"train_corpus": i.corpus, "bert_model": i.bert_base, "reduce_memory": True,
                           "do_lower_case": True, "epochs_to_generate": r.epochs_to_generate,
                           "max_seq_len": r.max_seq_len, "seed": r.seed, "output_dir": pregenerated},
                          [p for e in range(r.epochs_to_generate) for p in epoch_paths(pregenerated, e)],
                          settings={"corpus": _file_key(i.corpus)}))
    spiking = {"t_conv": r.t_conv, "vth": r.vth}
    keep = {"save_steps": r.save_steps, "save_total_limit": r.save_total_limit}
    general = i.general_student
    if general is None:
        general = paths.stage_dir("general")
        steps.append(Step("general", "general KD from the pre-trained BERT", "spiking_bert_general_distill.py",
                          {"pregenerated_data": pregenerated, "teacher_model": i.bert_base,
                           "spiking_student_model": i.student_config, "reduce_memory": True, "do_lower_case": True,
                           "train_batch_size": r.general_batch_size, "learning_rate": r.general_lr,
                           "num_train_epochs": r.general_epochs, "warmup_proportion": r.warmup_proportion,
                           "max_steps": r.general_max_steps or None, **keep, **spiking, "seed": r.seed,
                           "output_dir": general, "overwrite_output_dir": True},
                          _model_files(general), settings={"student_config": _config_of(i.student_config)}))
    return steps + _task_steps(r, i, paths, general, glue.get_processor(i.task).display_name, spiking, keep)


def _task_steps(r: PaperRecipe, i: Inputs, paths: DemoPaths, general: Path, task_name: str, spiking: Dict[str, Any],
                keep: Dict[str, Any]) -> List[Step]:
    """Task IKD, prediction KD and the evaluation."""
    ikd, pred, evaluation = (paths.stage_dir(name) for name in ("ikd", "pred", "eval"))
    task = {"task_name": task_name, "data_dir": i.task_dir, "do_lower_case": True,
            "max_seq_length": r.max_seq_length, "cache_dir": paths.root / "cache"}
    trained = {**spiking, "seed": r.seed, "overwrite_output_dir": True}
    return [
        Step("ikd", "task intermediate KD from the fine-tuned BERT", "spiking_bert_task_distill.py",
             {**task, "teacher_model": i.teacher, "spiking_student_model": general,
              "train_batch_size": r.ikd_batch_size, "learning_rate": r.ikd_lr, "num_train_epochs": r.ikd_epochs,
              "max_steps": r.ikd_max_steps or None,
              "eval_batch_size": r.eval_batch_size, **keep, **trained, "output_dir": ikd}, _model_files(ikd)),
        Step("pred", "prediction KD from the fine-tuned BERT", "spiking_bert_task_distill.py",
             {"pred_distill": True, **task, "teacher_model": i.teacher, "spiking_student_model": ikd,
              "train_batch_size": r.pred_batch_size, "learning_rate": r.pred_lr, "num_train_epochs": r.pred_epochs,
              "max_steps": r.pred_max_steps or None, "warmup_proportion": r.warmup_proportion,
              "eval_step": r.eval_step, "eval_batch_size": r.eval_batch_size, "temperature": r.temperature,
              "save_total_limit": r.save_total_limit, **trained, "output_dir": pred},
             _model_files(pred) + [pred / "best_results.json"]),
        Step("eval", "dev evaluation with the spike and energy report", "spiking_bert_task_distill.py",
             {"do_eval": True, **task, "spiking_student_model": pred, "teacher_model": i.teacher,
              "eval_batch_size": r.eval_batch_size, **spiking, "report": True, "output_dir": evaluation},
             [evaluation / "eval_results.json", evaluation / "report" / "report.json"]),
    ]


def _model_files(directory: Path) -> List[Path]:
    return [directory / "config.json", directory / "model.safetensors"]


def _config_of(directory: Path) -> Any:
    from spikingbert.core.files import read_json

    return read_json(directory / "config.json", "config.json")


def _file_key(path: Path) -> Dict[str, Any]:
    """What tells a changed corpus file apart: its size and modification time."""
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass
class ResumedStage(DemoStage):
    """A training stage that continues its interrupted run: ``argv`` runs it with ``--continue_train``; its marker
    records ``command`` (the stage's own command), so the next run sees the stage it would build."""

    command: List[str] = field(default_factory=list)

    def key(self) -> Dict[str, Any]:
        return {"argv": self.command, "settings": self.settings}


def recipe_stages(steps: Sequence[Step], root: Path) -> List[DemoStage]:
    """The stages to run: the first one that has to run continues its interrupted run when its output dir holds
    a checkpoint of this very command (every stage before it reused, so its inputs are those it started with)."""
    stages = [step.stage() for step in steps]
    first = reused_stages(stages, root)
    if first < len(steps) and steps[first].name in TRAINING:
        resumed = _resumed(steps[first])
        if resumed is not None:
            stages[first] = resumed
    return stages


def _resumed(step: Step) -> Optional[ResumedStage]:
    from spikingbert.core.files import read_json
    from spikingbert.training.checkpoint import latest_checkpoint

    directory = step.output_dir
    resume = step.with_flags(overwrite_output_dir=None, continue_train=True)
    try:
        recorded = read_json(directory / "args.json", "args.json").get("command_line")
    except (OSError, ValueError, AttributeError):
        return None
    if recorded not in {shlex.join(["python", *s.argv()]) for s in (step, resume)}:
        return None
    if latest_checkpoint(directory) is None:
        return None
    fresh = step.stage()
    return ResumedStage(fresh.name, fresh.title + f" (continues {latest_checkpoint(directory).name})",
                        resume.argv(), fresh.outputs, fresh.settings, command=fresh.argv)


# ------------------------------------------------------------------------------------------ CLI


def paper_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m apps.paper", description=__doc__.split("\n\n")[0],
                            formatter_class=HelpFormatter,
                            epilog="examples:\n  python -m apps.paper --task SST-2 --glue_dir glue_data --bert_base "
                                   "$BERT_BASE_DIR \\\n      --teacher $FT_BERT_DIR --corpus wiki.txt --output_dir "
                                   "runs/paper-sst2 --estimate\n  python -m apps.paper --summary runs/paper-*")
    _input_flags(parser.add_argument_group("inputs"))
    _run_flags(parser.add_argument_group("run"))
    results = parser.add_argument_group("results")
    results.add_argument("--summary", type=Path, nargs="+", default=None, metavar="DIR",
                         help="print the results table of these recipe output directories and stop. Default: run")
    results.add_argument("--summary_json", type=Path, default=None, metavar="FILE",
                         help="--summary also writes the table here as JSON. Default: print only")
    group = parser.add_argument_group("recipe (default: the paper's published settings, see README \"The paper's "
                                      "recipe\")")
    for f in dataclasses.fields(PaperRecipe):
        default = getattr(PAPER, f.name)
        if f.name in SCALE_HELP:
            text = f"stop {SCALE_HELP[f.name]} after this many optimizer steps, for smoke runs (default: 0, its epochs)"
            setting_flag(group, f"--{f.name}", setting="max_steps", default=None, help=text)
            continue
        setting, what, source = RECIPE_TABLE[f.name]
        setting_flag(group, f"--{f.name}", setting=setting, default=None,
                     help=f"{what} (default: {_text(default)}; {source})")
    short_metavars(parser)
    return parser


def _input_flags(g) -> None:
    g.add_argument("--task", metavar="TASK", default=None,
                   help="GLUE task: CoLA, SST-2, MRPC, STS-B, QQP, MNLI, MNLI-mm, QNLI, RTE, WNLI "
                        "(default: none; required to run)")
    g.add_argument("--glue_dir", type=Path, default=None, metavar="DIR",
                   help="GLUE data directory holding the task's directory, e.g. glue_data/ with glue_data/SST-2/ "
                        "(download_glue_data.py) (default: none; required to run)")
    g.add_argument("--teacher", type=Path, default=None, metavar="DIR",
                   help="BERT fine-tuned on the task: the teacher of task IKD and prediction KD "
                        "(default: none; required to run)")
    g.add_argument("--bert_base", type=Path, default=None, metavar="DIR",
                   help="the pre-trained BERT (bert-base-uncased): the teacher of general KD and the tokenizer of "
                        "--corpus (default: none; required unless --general_student)")
    source = g.add_mutually_exclusive_group()
    source.add_argument("--general_student", type=Path, default=None, metavar="DIR",
                        help="a general student made earlier: skips general KD. Default: general KD runs")
    source.add_argument("--pregenerated", type=Path, default=None, metavar="DIR",
                        help="pregenerated general-KD data (preprocess_training_data.py). Default: none")
    source.add_argument("--corpus", type=Path, default=None, metavar="FILE",
                        help="a raw general corpus (one sentence a line, a blank line between documents), "
                             "pregenerated first. Default: none")
    g.add_argument("--student_config", type=Path, default=DEFAULT_STUDENT, metavar="DIR",
                   help="config directory of the new student of general KD (default: spiking_student_model/, the "
                        "published 4-layer student)")


def _run_flags(g) -> None:
    g.add_argument("--output_dir", type=Path, default=None, metavar="DIR",
                   help="where every stage writes (a re-run reuses the finished stages) "
                        "(default: none; required to run)")
    timing = g.add_mutually_exclusive_group()
    timing.add_argument("--estimate", action="store_true", help="measure and print the time estimate, run nothing else")
    timing.add_argument("--no_estimate", action="store_true", help="run without measuring the time first")
    setting_flag(g, "--estimate_steps", default=2,
                 help="optimizer steps each training stage is timed for, after one warm-up step")
    setting_flag(g, "--stop_after", default=None, metavar="STAGE",
                 help="stop after this stage ({pregenerate,general,ikd,pred}); a later run goes on from there. "
                      "Default: run every stage")
    g.add_argument("--print_commands", action="store_true", help="print the stages' commands, run nothing")
    g.add_argument("--verbose", action="store_true", help="show the stages' output (always in OUTPUT_DIR/logs/)")
    g.add_argument("--debug", action="store_true", help="show tracebacks")


def parse_recipe(args) -> PaperRecipe:
    """The paper's recipe with the flags given on the command line applied."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(PaperRecipe)
                 if getattr(args, f.name) is not None}
    return dataclasses.replace(PAPER, **overrides)


def parse_inputs(args) -> Inputs:
    """The inputs, checked before anything runs (each problem one line naming its flag)."""
    from spikingbert.data import glue

    for flag in ("task", "glue_dir", "teacher", "output_dir"):
        if getattr(args, flag) is None:
            raise UsageError(f"--{flag} is required to run the recipe (see --help)")
    task = glue.canonical_task_name(args.task)
    task_dir = args.glue_dir / task_dir_name(task)
    processor = glue.get_processor(task)
    for split in ("train", "dev"):
        if not processor.split_path(task_dir, split).is_file():
            raise UsageError(f"--glue_dir {args.glue_dir}: {processor.split_path(task_dir, split)} not found; "
                             f"download the task with python download_glue_data.py --data_dir {args.glue_dir} "
                             f"--tasks {task_dir_name(task)}")
    sources = [flag for flag in ("general_student", "pregenerated", "corpus") if getattr(args, flag) is not None]
    if not sources:
        raise UsageError("pass --general_student DIR, or --pregenerated DIR or --corpus FILE for general KD")
    _require_model(args.teacher, "--teacher")
    if args.general_student is not None:
        _require_model(args.general_student, "--general_student")
    else:
        _require_model(args.bert_base, "--bert_base")
        _require_model(args.student_config, "--student_config")
    if args.corpus is not None and not args.corpus.is_file():
        raise UsageError(f"--corpus {args.corpus} is not a file")
    if args.pregenerated is not None and not (args.pregenerated / "epoch_0.json").is_file():
        raise UsageError(f"--pregenerated {args.pregenerated} has no epoch_0.json: pass the output directory of "
                         "preprocess_training_data.py (or --corpus FILE)")
    absolute = {k: repo_relative(v) if isinstance(v, Path) else v for k, v in dict(
        task_dir=task_dir, teacher=args.teacher, bert_base=args.bert_base, student_config=args.student_config,
        general_student=args.general_student, pregenerated=args.pregenerated, corpus=args.corpus).items()}
    return Inputs(task=task, **absolute)


def _require_model(path: Optional[Path], flag: str) -> None:
    if path is None:
        raise UsageError(f"{flag} DIR is required (see --help)")
    if not (path / "config.json").is_file():
        raise UsageError(f"{flag} {path} has no config.json: pass a model directory")


def main(argv: Optional[List[str]] = None) -> int:
    args = paper_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.summary is not None:
        from .paper_summary import print_summary

        print_summary(args.summary, args.summary_json)
        return 0
    recipe, inputs = parse_recipe(args), parse_inputs(args)
    root = repo_relative(args.output_dir)
    steps = build_steps(recipe, inputs, root)
    if args.stop_after is not None and args.stop_after not in [s.name for s in steps]:
        raise UsageError(f"--stop_after {args.stop_after}: this recipe has no such stage "
                         f"(its stages: {', '.join(s.name for s in steps)})")
    if args.print_commands:
        print("\n".join(f"# {s.name}: {s.title}\n{wrap_command(s.stage().shell())}" for s in steps))
        return 0
    run_recipe(recipe, inputs, steps, REPO / root, args)
    return 0


def run_recipe(recipe: PaperRecipe, inputs: Inputs, steps: List[Step], root: Path, args) -> None:
    """The estimate (unless ``--no_estimate``), then the stages (unless ``--estimate``) and the results row."""
    from spikingbert.core.files import atomic_write_json
    from spikingbert.core.output_dir import claim_output_dir

    with claim_output_dir(root, "--output_dir", keep=lambda new: True, lock_name=PAPER_LOCK):
        atomic_write_json(root / "recipe.json", {
            "task": inputs.task, "recipe": dataclasses.asdict(recipe),
            "overridden": {k: v for k, v in dataclasses.asdict(recipe).items() if getattr(PAPER, k) != v},
            "inputs": {k: str(v) if v is not None else None for k, v in dataclasses.asdict(inputs).items()},
            "stages": [s.stage().shell() for s in steps]})
        if not args.no_estimate:
            from .paper_estimate import measure_and_estimate

            measure_and_estimate(recipe, inputs, steps, root, args.estimate_steps, args.verbose)
            if args.estimate:
                return
        if args.stop_after is not None:
            steps = steps[:[s.name for s in steps].index(args.stop_after) + 1]
        run_stages(recipe_stages(steps, root), root, args.verbose)
        if args.stop_after is None:
            from .paper_summary import print_summary

            print()
            print_summary([root], root / "summary.json")
        else:
            print(f"stopped after {args.stop_after}; run the same command without --stop_after to go on", flush=True)


def cli() -> None:
    """The console script ``spikingbert-paper``."""
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
