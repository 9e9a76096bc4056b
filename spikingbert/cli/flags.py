"""Command-line flags of the two distillation scripts, grouped and documented, and their validation.

Flags that exist in the published scripts keep their names and meaning, and every published spelling parses
(``--wd`` for ``--weight_decay`` too). Where a default differs from the published one the flag's help says why
(the list, with the reasons: docs/DESIGN.md, "The published code"). Each script lists only the flags it
uses, in groups (data, model, training, checkpoints, evaluation, spiking, distributed, output), every flag
with its help text and default (`HelpFormatter`). A published flag that a script does not
use is accepted without being listed, and the runner warns that it has no effect (`ignored_flags`).

Spiking settings (``--t_conv``, ``--vth``, ``--leak``, ...) default to ``None``: the value in the
student's config.json is kept unless the flag is given. ``--do_lower_case`` defaults to what the model
directories record. In the task script, ``--max_seq_length`` and ``--num_train_epochs`` default to
``None`` too and are resolved per task (`spikingbert.run.plan`). Every numeric or enum flag takes its type,
choices and range from the settings table (`core.settings`, through `setting_flag`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from spikingbert.core.errors import UsageError
from spikingbert.core.remote import is_remote

from .edge import ArgumentParser, HelpFormatter, setting_flag, short_metavars

__all__ = ["general_parser", "task_parser", "parse_general_args", "parse_task_args", "ignored_flags", "UNUSED_FLAGS",
           "accept_unused", "optional_path",
           "add_spiking_flags", "add_device_flags", "add_task_data_flags", "add_optimizer_flags",
           "add_checkpoint_flags", "add_adaptive_flags",
           "add_output_flags", "GROUP_BY_LENGTH_HELP", "LOWER_CASE_HELP"]

GROUP_BY_LENGTH_HELP = (
    "train on batches of similar length: the epoch's shuffled examples are sorted by length within megabatches "
    "of 50 micro-batches, and the batches run in a shuffled order. Where the loss reads only the logits "
    "(--pred_distill, --train_true_labels, fine-tuning) each batch is also cut to its longest example, which "
    "leaves every example's logits as they are; task intermediate KD only groups (its att/rep losses average "
    "over the padded positions too, as published). Default: off, the published random batches")
LOWER_CASE_HELP = ("lower-case the input before WordPiece (uncased vocabularies). Default: what the student's "
                   "(else the teacher's) config.json records, else off (the published default)")

CHECKPOINT_COST_HELP = (
    "keep only the newest this many checkpoint-{step} directories (the best prediction-KD or fine-tuned model stays "
    "in --output_dir itself); 0: write none, only the model, as the published code did (nothing to --continue_train "
    "from). A checkpoint is the model (4 bytes a parameter) and its training state (Adam's two moments, 8 bytes a "
    "trained parameter, leaving out embedding rows the data never used): {example}; the log says each one's size")
STUDENT_CHECKPOINT = ("127 MB for the demo's 2-layer H 384 student (62 MB + 64 MB), about 0.2 GB + up to 0.4 GB for "
                      "a 4-layer H 768 one")

#: Flags of the published scripts that a script accepts, unlisted, and warns about (they have no effect there).
UNUSED_FLAGS = {"general": ("do_eval", "eval_batch_size"), "task": ("data_url",), "preprocess": ("data_url",)}


def accept_unused(parser: argparse.ArgumentParser, script: str) -> None:
    """The published flags ``script`` does not use (unlisted), and short metavars in the usage lines."""
    for name in UNUSED_FLAGS[script]:
        parser.add_argument(f"--{name}", default=None, nargs="?", const=True, help=argparse.SUPPRESS)
    parser.set_defaults(script=script)
    short_metavars(parser)


def _groups(parser: argparse.ArgumentParser, *names: str) -> Dict[str, argparse._ArgumentGroup]:
    return {name: parser.add_argument_group(name) for name in names}


def add_spiking_flags(group: argparse._ArgumentGroup, training: bool = True) -> None:
    """The spiking settings; each defaults to the value in the student's config.json."""
    def q(*names: str, **kwargs: Any) -> None:
        setting_flag(group, *names, default=None, **kwargs)

    q("--t_conv", help="simulation time steps T. Default: the student's config.json (spiking_student_model/ records "
                       "100, the published scripts' default)")
    q("--vth", help="firing threshold Vth. Default: the student's config.json (spiking_student_model/ records 1.0, the "
                    "published scripts' default)")
    q("--leak", help="membrane leak factor in (0, 1]: 1 = integrate-and-fire (IF), below 1 leaky integrate-and-fire "
                     "(LIF). Default: the student's config.json (spiking_student_model/ records 1.0)")
    if not training:
        return
    q("--ide_point", help="where the equivalent rate function is evaluated for the implicit gradient: ann (on its own "
                          "activations, as published) or snn (at the simulated rates). Default: the student's "
                          "config.json (ann)")
    group.add_argument("--feedback", action="store_true", default=None,
                       help="add the feedback connection from the last layer into the embeddings (a true fixed point; "
                            "backward solved by Broyden). Default: the student's config.json (off)")
    q("--train_mode", help="implicit differentiation at equilibrium (ide) or backpropagation through time with a "
                           "surrogate gradient (bptt, memory grows with T). Default: the student's config.json (ide)")


def add_device_flags(group: argparse._ArgumentGroup) -> None:
    """--no_cuda, --local_rank and --fp16."""
    group.add_argument("--no_cuda", action="store_true", help="run on the CPU even when a GPU is available")
    setting_flag(group, "--local_rank", "--local-rank", default=-1,
                 help="process rank set by the legacy torch.distributed.launch; torchrun sets LOCAL_RANK instead")
    group.add_argument("--fp16", action="store_true",
                       help="mixed precision: fp16 autocast with loss scaling on GPU, bf16 on CPU")


def add_task_data_flags(group: argparse._ArgumentGroup, max_seq_length_help: str, lower_case_help: str) -> None:
    """The task's data: --data_dir, --task_name, --max_seq_length, --do_lower_case, --cache_dir, --skip_bad_rows."""
    p = group.add_argument
    p("--data_dir", type=Path, required=True, metavar="DIR", help="the task's directory (train.tsv, dev.tsv, ...)")
    p("--task_name", type=str, required=True, metavar="TASK",
      help="GLUE task (case-insensitive): CoLA, SST-2, MRPC, STS-B, QQP, MNLI, MNLI-mm, QNLI, RTE, WNLI")
    p("--max_seq_length", type=int, default=None, help=max_seq_length_help)
    p("--do_lower_case", action="store_true", default=None, help=lower_case_help)
    p("--cache_dir", type=optional_path, default=None, metavar="DIR",
      help="cache for tokenized features. Default: no cache ('' too: the published default, a model download cache "
           "the published task script never read)")
    p("--skip_bad_rows", action="store_true", help="skip malformed TSV rows (counted and logged) instead of stopping")


def add_optimizer_flags(group: argparse._ArgumentGroup, epochs: Optional[float], epochs_help: str) -> None:
    """BertAdam and the length of training, as every training command takes them."""
    p = group.add_argument
    p("--train_batch_size", type=int, default=32,
      help="examples per optimizer step, over all GPUs/processes and accumulation steps")
    p("--learning_rate", type=float, default=5e-5, help="peak learning rate of BertAdam")
    p("--num_train_epochs", type=float, default=epochs, help=epochs_help)
    p("--max_steps", type=int, default=0, help="stop after this many optimizer steps (0: run the epochs)")
    p("--warmup_proportion", type=float, default=0.1,
      help="fraction of the steps with linear learning-rate warm-up (warm-up linear schedules only)")
    p("--weight_decay", type=float, default=0.01,
      help="decoupled weight decay (not on biases and LayerNorm). Default: 0.01, the decay the published scripts "
           "apply (their --weight_decay/--wd flag, default 1e-4, is never read)")
    p("--wd", dest="weight_decay", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # published alias
    p("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer step")
    p("--seed", type=int, default=42, help="seed of every random number generator (data order, dropout, init)")


def add_checkpoint_flags(group: argparse._ArgumentGroup, save_steps: Optional[int], save_steps_help: str,
                         save_total_limit: Optional[int], changed_examples: str,
                         checkpoint_size: str = STUDENT_CHECKPOINT) -> None:
    """--save_steps, --save_total_limit (``checkpoint_size``: what a checkpoint costs, for its help), --continue_train
    and --allow_changed_settings."""
    p = group.add_argument
    p("--save_steps", type=int, default=save_steps, help=save_steps_help)
    p("--save_total_limit", type=int, default=save_total_limit,
      help=CHECKPOINT_COST_HELP.replace("{example}", checkpoint_size))
    p("--continue_train", action="store_true",
      help="resume from the latest complete checkpoint in --output_dir (weights, optimizer, data order, RNG)")
    p("--allow_changed_settings", action="store_true",
      help=f"--continue_train even when settings that change the model or the objective ({changed_examples}) differ "
           "from the resumed run's args.json")


def add_output_flags(group: argparse._ArgumentGroup, output_help: str) -> None:
    """--output_dir, --overwrite_output_dir, --debug, --args_file and --report_to."""
    group.add_argument("--output_dir", type=Path, required=True, metavar="DIR", help=output_help)
    group.add_argument("--overwrite_output_dir", action="store_true",
                       help="remove a previous run's files from --output_dir first")
    group.add_argument("--debug", action="store_true", help="debug logging, and tracebacks instead of one-line errors")
    group.add_argument("--args_file", type=Path, default=None, metavar="FILE",
                       help="rerun with the settings of an earlier run: the flags its args.json records become the "
                            "defaults (flags given here override them; --output_dir and the resume flags are not "
                            "taken from it)")
    setting_flag(group, "--report_to", default="none", type=_report_target,
                 help="also write the metrics.jsonl records as TensorBoard scalars into OUTPUT_DIR/tensorboard/ "
                      "(main process only; needs the tensorboard package: pip install tensorboard)")


def _report_target(text: str) -> str:
    """A --report_to value, checked while parsing (before a run writes anything): tensorboard only where the
    tensorboard package imports; imported only then (it is not needed otherwise)."""
    if text == "tensorboard":
        from spikingbert.training.state import summary_writer_class

        summary_writer_class()
    return text


def _model_flags(g: argparse._ArgumentGroup, task: bool) -> None:
    g.add_argument("--teacher_model", type=str, default=None, metavar="DIR",
                   help="directory of the BERT teacher (config.json, weights, vocab.txt), or its Hugging Face Hub "
                        "name (org/name[@revision]) or URL; "
                        + ("fine-tuned on the task (not needed with --do_eval). Default: none"
                           if task else "pre-trained (required)"))
    g.add_argument("--spiking_student_model", type=Path, required=True, metavar="DIR",
                   help="student directory: a config-only directory (a new student, e.g. spiking_student_model/) "
                        "or a saved student (training continues from its weights), or its Hugging Face Hub name "
                        "(org/name[@revision])")
    g.add_argument("--init_from_teacher", action="store_true",
                   help="a new student (no weights) starts from the teacher's embeddings and every k-th teacher layer "
                        "(student layer j <- teacher layer j*k+k-1, k = teacher layers / student layers)")


def _training_flags(g: argparse._ArgumentGroup, task: bool) -> None:
    if task:
        add_optimizer_flags(g, None, "training epochs (may be fractional). Default: per task for intermediate KD (see "
                                     "the README), 3 for prediction KD (the published script: always 3, its per-task "
                                     "table is never applied)")
    else:
        add_optimizer_flags(g, 3.0, "training epochs (may be fractional)")
    p = g.add_argument
    p("--skip_nan_batches", type=int, default=0,
      help="skip (no update) up to this many optimizer steps whose loss or gradient is NaN/inf, then stop; "
           "0: stop at the first one")
    if task:
        p("--pred_distill", action="store_true",
          help="prediction-layer KD: soft cross-entropy to the teacher's logits (MSE for regression), warm-up "
               "linear schedule, dev evaluation every --eval_step steps, best model kept")
        p("--train_true_labels", action="store_true",
          help="prediction stage trained on the gold labels (cross-entropy) instead of the teacher's logits")
        p("--temperature", type=float, default=1.0, help="temperature of the prediction KD soft cross-entropy")
        p("--group_by_length", action="store_true", help=GROUP_BY_LENGTH_HELP)


def _checkpoint_flags(g: argparse._ArgumentGroup, task: bool) -> None:
    if not task:
        g.add_argument("--eval_step", type=int, default=1000,
                       help="write a checkpoint every this many steps unless --save_steps is given. Default: 1000 (the "
                            "published script: 200, for a weights-only snapshot; a checkpoint here also holds the "
                            "optimizer state, about 3x the weights)")
    add_checkpoint_flags(g, None, "write checkpoint-{step} every this many steps; 0: only at the end. Default: "
                                  "--eval_step", 1, "t_conv, vth, teacher, task, max_seq_length, temperature, ...")


def _evaluation_flags(g: argparse._ArgumentGroup) -> None:
    p = g.add_argument
    p("--do_eval", action="store_true",
      help="evaluate --spiking_student_model on the dev set instead of training (writes eval_results.json)")
    p("--do_predict", action="store_true",
      help="label the task's GLUE test split(s) with --spiking_student_model instead of training and write the "
           "submission files GLUE expects into --output_dir (SST-2.tsv, ..., MNLI: MNLI-m.tsv and MNLI-mm.tsv); "
           "with --do_eval also the dev evaluation")
    p("--eval_batch_size", type=int, default=128, help="examples per evaluation batch (per process)")
    p("--eval_step", type=int, default=1000,
      help="prediction KD: evaluate on dev every this many steps (and keep the best model); also sets "
           "--save_steps when that is not given")
    p("--report", action="store_true",
      help="--do_eval: also write the spike and energy report (report.json, report.md, PNGs) into OUTPUT_DIR/report/")
    add_adaptive_flags(g, evaluation=True)


def add_adaptive_flags(group: argparse._ArgumentGroup, evaluation: bool) -> None:
    """Adaptive T (`models.stopping`): --adaptive_t, --adaptive_min_steps, --adaptive_window and, for an evaluation,
    --adaptive_budget."""
    rule = ("each example stops at the first step t >= --adaptive_min_steps at which the two most probable "
            "classes have differed by at least MARGIN in probability, with the same class, for --adaptive_window "
            "steps; its prediction is the one at that step")
    if evaluation:
        setting_flag(group, "--adaptive_budget", default=None, metavar="PT",
                     help="--do_eval: also evaluate with adaptive T, choosing MARGIN and --adaptive_min_steps on the "
                          "dev set: the fewest mean steps whose dev metric is at most PT points below the fixed T's "
                          "(0.5 = half a percentage point of accuracy); the values chosen are reported. Default: off")
        setting_flag(group, "--adaptive_t", default=None, metavar="MARGIN",
                     help=f"--do_eval: also evaluate with adaptive T at this MARGIN in [0, 1]: {rule}. Default: off")
    else:
        setting_flag(group, "--adaptive_t", default=None, metavar="MARGIN",
                     help=f"adaptive T: {rule}. Take MARGIN and the other two from the adaptive_t of the student's "
                          "--do_eval --adaptive_budget results. Default: off (always T steps)")
    setting_flag(group, "--adaptive_min_steps", default=1,
                 help="adaptive T: no example stops before this step" + (" (--adaptive_t only; --adaptive_budget "
                                                                         "chooses it)" if evaluation else ""))
    setting_flag(group, "--adaptive_window", default=1,
                 help="adaptive T: steps the margin and the class must hold before an example stops")


def _add_script_flags(parser: argparse.ArgumentParser, g: Dict[str, argparse._ArgumentGroup],
                      script: str) -> argparse.ArgumentParser:
    """The model, training, checkpoint, (task: evaluation,) spiking, distributed and output groups."""
    task = script == "task"
    _model_flags(g["model"], task)
    _training_flags(g["training"], task)
    _checkpoint_flags(g["checkpoints"], task)
    if task:
        _evaluation_flags(g["evaluation"])
    add_spiking_flags(g["spiking"])
    add_device_flags(g["distributed"])
    add_output_flags(g["output"], "where checkpoints, args.json, metrics.jsonl, train.log, training_curves.png and the "
                                  "final student go")
    g["output"].add_argument("--logging_steps", type=int, default=10,
                             help="log the averaged losses to metrics.jsonl every this many steps")
    accept_unused(parser, script)
    return parser


def general_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python spiking_bert_general_distill.py", formatter_class=HelpFormatter,
        description="General distillation: train a spiking student from a pre-trained BERT on pregenerated data\n"
                    "(intermediate-layer KD, warm-up linear schedule).",
        epilog="example:\n  python spiking_bert_general_distill.py --pregenerated_data data/pregenerated \\\n"
               "      --teacher_model bert-base-uncased/ --spiking_student_model spiking_student_model/ \\\n"
               "      --output_dir runs/general --do_lower_case --t_conv 16")
    g = _groups(parser, "data", "model", "training", "checkpoints", "spiking", "distributed", "output")
    g["data"].add_argument("--pregenerated_data", type=Path, required=True, metavar="DIR",
                           help="directory written by preprocess_training_data.py (epoch_{i}.json files)")
    g["data"].add_argument("--max_seq_length", type=int, default=128,
                           help="accepted as published; the pregenerated data fixes the sequence length")
    g["data"].add_argument("--reduce_memory", action="store_true", help="keep the pregenerated data on disk (memmap)")
    g["data"].add_argument("--do_lower_case", action="store_true", default=None, help=LOWER_CASE_HELP)
    return _add_script_flags(parser, g, "general")


def task_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python spiking_bert_task_distill.py", formatter_class=HelpFormatter,
        description="Task distillation of a spiking student on a GLUE task: intermediate-layer KD (default),\n"
                    "prediction-layer KD (--pred_distill), or evaluation of a trained student (--do_eval).",
        epilog="examples:\n"
               "  python spiking_bert_task_distill.py --task_name SST-2 --data_dir glue_data/SST-2 --do_lower_case \\\n"
               "      --teacher_model bert-sst2/ --spiking_student_model runs/general --output_dir runs/sst2-ikd\n"
               "  python spiking_bert_task_distill.py --pred_distill --task_name SST-2 --data_dir glue_data/SST-2 \\\n"
               "      --teacher_model bert-sst2/ --spiking_student_model runs/sst2-ikd --output_dir runs/sst2-pred\n"
               "  python spiking_bert_task_distill.py --do_eval --task_name SST-2 --data_dir glue_data/SST-2 \\\n"
               "      --spiking_student_model runs/sst2-pred --output_dir runs/sst2-eval --report")
    g = _groups(parser, "data", "model", "training", "checkpoints", "evaluation", "spiking", "distributed", "output")
    add_task_data_flags(g["data"], "tokens per example, [CLS] and [SEP] included. Default: per task (see the "
                                   "README; the published script: always 128, its per-task table is never applied); "
                                   "--do_eval: the student's recorded one", LOWER_CASE_HELP)
    g["data"].add_argument("--aug_train", action="store_true",
                           help="train on train_aug.tsv (augmented data) instead of train.tsv")
    return _add_script_flags(parser, g, "task")


def optional_path(text: str) -> Optional[Path]:
    """A directory flag's value; the empty string (a published default) means none."""
    return Path(text) if text else None


def ignored_flags(args: argparse.Namespace) -> List[str]:
    """Published flags that this script accepts without using them, as far as the command line gave them."""
    return [f"--{name}" for name in UNUSED_FLAGS[args.script] if getattr(args, name, None) is not None]


def parse_general_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = general_parser().parse_args(argv)
    if args.teacher_model is None:
        raise UsageError("--teacher_model is required for general distillation")
    _check_common(args)
    _require_dir(args.pregenerated_data, "--pregenerated_data", "run preprocess_training_data.py first")
    return args


def parse_task_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = task_parser().parse_args(argv)
    if args.teacher_model is None and not (args.do_eval or args.do_predict):
        raise UsageError("--teacher_model is required for distillation (only --do_eval and --do_predict run without "
                         "a teacher)")
    _check_common(args)
    adaptive = args.adaptive_t is not None or args.adaptive_budget is not None
    if (args.report or adaptive) and not args.do_eval:
        raise UsageError("--report, --adaptive_t and --adaptive_budget only work with --do_eval")
    if args.adaptive_t is not None and args.adaptive_budget is not None:
        raise UsageError("give either --adaptive_t MARGIN (a margin of your choice) or --adaptive_budget PT (the "
                         "margin chosen on the dev set), not both")
    _require_dir(args.data_dir, "--data_dir", "download the task with download_glue_data.py")
    return args


def _check_common(args: argparse.Namespace) -> None:
    """What the flags' ranges (checked by the parser) do not say: the batch split, the model directories."""
    if args.train_batch_size % args.gradient_accumulation_steps:
        raise UsageError(f"--train_batch_size {args.train_batch_size} must be a multiple of "
                         f"--gradient_accumulation_steps {args.gradient_accumulation_steps}")
    if args.save_steps is None:
        args.save_steps = args.eval_step
    if not is_remote(args.spiking_student_model) and not (args.spiking_student_model / "config.json").is_file():
        raise UsageError(f"--spiking_student_model {args.spiking_student_model} has no config.json: "
                         "pass a student config directory (e.g. spiking_student_model/) or a saved student")
    if args.teacher_model is not None and not is_remote(args.teacher_model):
        _require_dir(Path(args.teacher_model), "--teacher_model", "pass the directory of a saved BERT")
        if not (Path(args.teacher_model) / "config.json").is_file():
            raise UsageError(f"--teacher_model {args.teacher_model} has no config.json: pass the directory of a "
                             "saved BERT (config.json, model.safetensors or pytorch_model.bin, vocab.txt)")


def _require_dir(path: Path, flag: str, hint: str) -> None:
    if not Path(path).is_dir():
        raise UsageError(f"{flag} {path} is not a directory: {hint}")
