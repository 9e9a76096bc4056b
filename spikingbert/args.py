"""Command-line arguments of the two distillation scripts, and their validation.

Flags that exist in the published scripts keep their names and meaning. Spiking
settings (``--t_conv``, ``--vth``, ``--leak``, ...) default to ``None``: the value in
the student's config.json is kept unless the flag is given. In the task script,
``--max_seq_length`` and ``--num_train_epochs`` default to ``None`` too and are
resolved per task by `spikingbert.run_setup.resolve_task_settings`.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .errors import ArgumentParser, UsageError

__all__ = ["general_parser", "task_parser", "parse_general_args", "parse_task_args", "spiking_settings",
           "trainer_settings", "GROUP_BY_LENGTH_HELP"]

#: Upper bounds of flags whose larger values only overflow or never end.
MAX_EPOCHS, MAX_T_CONV = 10_000, 1_000_000

GROUP_BY_LENGTH_HELP = (
    "train on batches of similar length: the epoch's shuffled examples are sorted by length within megabatches "
    "of 50 micro-batches, and the batches run in a shuffled order. Where the loss reads only the logits "
    "(--pred_distill, --train_true_labels, fine-tuning) each batch is also cut to its longest example, which "
    "leaves every example's logits as they are; task intermediate KD only groups (its att/rep losses average "
    "over the padded positions too, as published). Default off: the published random batches")


def _common(parser: argparse.ArgumentParser, default_eval_step: int, default_batch: int) -> None:
    """Flags shared by both scripts."""
    p = parser.add_argument
    p("--teacher_model", type=str, default=None,
      help="directory (or URL) of the BERT teacher: config.json, weights, vocab.txt")
    p("--spiking_student_model", type=Path, required=True,
      help="student directory: a config-only dir (new student) or a saved student (continue from its weights)")
    p("--output_dir", type=Path, required=True, help="where checkpoints, logs and the final student are written")
    p("--do_lower_case", action="store_true", help="lower-case the input (uncased vocabularies)")
    p("--train_batch_size", type=int, default=default_batch,
      help="examples per optimizer step, over all GPUs/processes and accumulation steps")
    p("--eval_batch_size", type=int, default=32, help="examples per evaluation batch (per process)")
    p("--learning_rate", type=float, default=5e-5)
    p("--weight_decay", type=float, default=0.01, help="decoupled weight decay (not on biases and LayerNorm)")
    p("--warmup_proportion", type=float, default=0.1,
      help="fraction of the steps with linear learning-rate warm-up (warm-up linear schedules only)")
    p("--no_cuda", action="store_true", help="run on the CPU even when a GPU is available")
    p("--local_rank", "--local-rank", type=int, default=-1, help="set by the legacy launcher; torchrun uses LOCAL_RANK")
    p("--seed", type=int, default=42)
    p("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer step")
    p("--fp16", action="store_true", help="mixed precision: fp16 + loss scaling on GPU, bf16 on CPU")
    p("--continue_train", action="store_true",
      help="resume from the latest complete checkpoint in --output_dir")
    p("--overwrite_output_dir", action="store_true", help="remove a previous run's files from --output_dir")
    p("--allow_changed_settings", action="store_true",
      help="--continue_train even when settings that change the model or the objective (t_conv, vth, teacher, "
           "task, max_seq_length, temperature, ...) differ from the resumed run's args.json")
    p("--eval_step", type=int, default=default_eval_step,
      help="evaluate (prediction KD) every this many steps; also the default --save_steps")
    p("--save_steps", type=int, default=None, help="write checkpoint-{step} every this many steps (default: --eval_step)")
    p("--save_total_limit", type=int, default=None, help="keep only the newest this many checkpoints")
    p("--logging_steps", type=int, default=10, help="log the averaged losses to metrics.jsonl every this many steps")
    p("--max_steps", type=int, default=0, help="stop after this many optimizer steps (0: run the epochs)")
    p("--skip_nan_batches", type=int, default=0,
      help="skip (no update) up to this many optimizer steps whose loss or gradient is NaN/inf, then stop; "
           "0: stop at the first one")
    p("--do_eval", action="store_true", help="evaluate --spiking_student_model instead of training")
    p("--debug", action="store_true", help="debug logging, and tracebacks instead of one-line errors")
    spiking = parser.add_argument_group("spiking student (default: the value in the student's config.json)")
    q = spiking.add_argument
    q("--t_conv", type=int, default=None, help="simulation time steps T")
    q("--vth", type=float, default=None, help="firing threshold")
    q("--leak", type=float, default=None, help="membrane leak factor in (0, 1]; 1 = integrate-and-fire")
    q("--ide_point", choices=("ann", "snn"), default=None,
      help="where the equivalent rate function is evaluated for the implicit gradient")
    q("--feedback", action="store_true", default=None, help="add the feedback connection (true fixed point)")
    q("--train_mode", choices=("ide", "bptt"), default=None,
      help="implicit differentiation (ide) or backpropagation through time (bptt)")


def _demo_flags(parser: argparse.ArgumentParser, evaluation: bool) -> None:
    """``--init_from_teacher`` (both scripts) and the ``--do_eval`` report flags (task script)."""
    p = parser.add_argument
    p("--init_from_teacher", action="store_true",
      help="a new student (no weights) starts from the teacher's embeddings and every k-th teacher layer "
           "(student layer j <- teacher layer j*k+k-1, k = teacher layers / student layers)")
    if evaluation:
        p("--report", action="store_true",
          help="--do_eval: also write the spike and energy report (report.json, report.md, PNGs) into "
               "OUTPUT_DIR/report/")
        p("--adaptive_t", type=float, default=None, metavar="TOL",
          help="--do_eval: also evaluate with adaptive stopping (stop once the last layer's [CLS] rate moves "
               "by less than TOL over --adaptive_window steps, mean absolute change over the batch) and "
               "compare with the fixed T")
        p("--adaptive_window", type=int, default=8, help="steps between adaptive-stopping checks (--adaptive_t)")


def _validate_report_flags(args: argparse.Namespace) -> None:
    if args.adaptive_t is not None and not (math.isfinite(args.adaptive_t) and args.adaptive_t >= 0):
        raise UsageError(f"--adaptive_t must be a number >= 0 (got {args.adaptive_t})")
    if args.adaptive_window < 1:
        raise UsageError(f"--adaptive_window must be >= 1 (got {args.adaptive_window})")
    if (args.report or args.adaptive_t is not None) and not args.do_eval:
        raise UsageError("--report and --adaptive_t only work with --do_eval")


def general_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        description="General distillation: train a spiking student from a pre-trained BERT on pregenerated data.")
    parser.add_argument("--pregenerated_data", type=Path, required=True,
                        help="directory written by preprocess_training_data.py (epoch_{i}.json files)")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--reduce_memory", action="store_true", help="keep the pregenerated data on disk (memmap)")
    parser.add_argument("--num_train_epochs", type=float, default=3.0)
    _common(parser, default_eval_step=1000, default_batch=32)
    _demo_flags(parser, evaluation=False)
    return parser


def task_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        description="Task distillation (intermediate KD, --pred_distill prediction KD) and --do_eval evaluation "
                    "of a spiking student on a GLUE task.")
    p = parser.add_argument
    p("--data_dir", type=Path, required=True, help="the task's GLUE directory (train.tsv, dev.tsv, ...)")
    p("--task_name", type=str, required=True, help="GLUE task: CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI")
    p("--cache_dir", type=Path, default=None, help="cache for tokenized features")
    p("--max_seq_length", type=int, default=None, help="default: per task (see the README's per-task defaults)")
    p("--num_train_epochs", type=float, default=None,
      help="default: per task for intermediate KD, 3 for prediction KD")
    p("--aug_train", action="store_true", help="train on train_aug.tsv (augmented data)")
    p("--pred_distill", action="store_true", help="prediction-layer distillation (soft cross-entropy)")
    p("--train_true_labels", action="store_true", help="prediction stage trained on the gold labels")
    p("--temperature", type=float, default=1.0, help="soft cross-entropy temperature")
    p("--data_url", type=str, default=None, help="accepted for compatibility with the published scripts; unused")
    p("--skip_bad_rows", action="store_true", help="skip malformed TSV rows instead of stopping")
    p("--group_by_length", action="store_true", help=GROUP_BY_LENGTH_HELP)
    _common(parser, default_eval_step=50, default_batch=32)
    _demo_flags(parser, evaluation=True)
    return parser


def parse_general_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = general_parser().parse_args(argv)
    if args.teacher_model is None and not args.do_eval:
        raise UsageError("--teacher_model is required for general distillation")
    _validate_common(args)
    _require_dir(args.pregenerated_data, "--pregenerated_data", "run preprocess_training_data.py first")
    return args


def parse_task_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = task_parser().parse_args(argv)
    if args.teacher_model is None and not args.do_eval:
        raise UsageError("--teacher_model is required for distillation (only --do_eval runs without a teacher)")
    if not 0 < args.temperature <= 1e4:
        raise UsageError(f"--temperature must be > 0 and <= 10000 (got {args.temperature})")
    _validate_common(args)
    _validate_report_flags(args)
    _require_dir(args.data_dir, "--data_dir", "download the task with download_glue_data.py")
    return args


def _validate_common(args: argparse.Namespace) -> None:
    checks: List[tuple] = [
        (args.train_batch_size >= 1, f"--train_batch_size must be >= 1 (got {args.train_batch_size})"),
        (args.eval_batch_size >= 1, f"--eval_batch_size must be >= 1 (got {args.eval_batch_size})"),
        (args.gradient_accumulation_steps >= 1,
         f"--gradient_accumulation_steps must be >= 1 (got {args.gradient_accumulation_steps})"),
        (args.train_batch_size % args.gradient_accumulation_steps == 0,
         f"--train_batch_size {args.train_batch_size} must be a multiple of --gradient_accumulation_steps "
         f"{args.gradient_accumulation_steps}"),
        (args.learning_rate > 0, f"--learning_rate must be > 0 (got {args.learning_rate})"),
        (args.learning_rate <= 10, f"--learning_rate must be <= 10 (got {args.learning_rate})"),
        (args.weight_decay >= 0, f"--weight_decay must be >= 0 (got {args.weight_decay})"),
        (0 <= args.warmup_proportion < 1, f"--warmup_proportion must be in [0, 1) (got {args.warmup_proportion})"),
        (args.eval_step >= 1, f"--eval_step must be >= 1 (got {args.eval_step})"),
        (args.save_steps is None or args.save_steps >= 0, f"--save_steps must be >= 0 (got {args.save_steps})"),
        (args.save_total_limit is None or args.save_total_limit >= 1,
         f"--save_total_limit must be >= 1 (got {args.save_total_limit})"),
        (args.max_steps >= 0, f"--max_steps must be >= 0 (got {args.max_steps})"),
        (args.logging_steps >= 1, f"--logging_steps must be >= 1 (got {args.logging_steps})"),
        (args.skip_nan_batches >= 0, f"--skip_nan_batches must be >= 0 (got {args.skip_nan_batches})"),
        (args.num_train_epochs is None or args.num_train_epochs > 0,
         f"--num_train_epochs must be > 0 (got {args.num_train_epochs})"),
        (args.num_train_epochs is None or args.num_train_epochs <= MAX_EPOCHS,
         f"--num_train_epochs must be <= {MAX_EPOCHS} (got {args.num_train_epochs})"),
        (0 <= args.seed < 2 ** 32, f"--seed must be in [0, 2**32) (got {args.seed})"),
        (args.max_seq_length is None or args.max_seq_length >= 3,
         f"--max_seq_length must be >= 3 (got {args.max_seq_length})"),
        (args.t_conv is None or args.t_conv >= 1, f"--t_conv must be >= 1 (got {args.t_conv})"),
        (args.t_conv is None or args.t_conv <= MAX_T_CONV, f"--t_conv must be <= {MAX_T_CONV} (got {args.t_conv})"),
        (args.vth is None or args.vth > 0, f"--vth must be > 0 (got {args.vth})"),
        (args.vth is None or args.vth <= 1e6, f"--vth must be <= 1e6 (got {args.vth})"),
        (args.leak is None or 0 < args.leak <= 1, f"--leak must be in (0, 1] (got {args.leak})"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    if args.save_steps is None:
        args.save_steps = args.eval_step
    if not (args.spiking_student_model / "config.json").is_file():
        raise UsageError(f"--spiking_student_model {args.spiking_student_model} has no config.json: "
                         "pass a student config directory (e.g. spiking_student_model/) or a saved student")
    if args.teacher_model is not None and "://" not in args.teacher_model:
        _require_dir(Path(args.teacher_model), "--teacher_model", "pass the directory of a saved BERT")
        if not (Path(args.teacher_model) / "config.json").is_file():
            raise UsageError(f"--teacher_model {args.teacher_model} has no config.json: pass the directory of a "
                             "saved BERT (config.json, model.safetensors or pytorch_model.bin, vocab.txt)")


def spiking_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The spiking settings given on the command line, as student-config overrides (the rest keep the config's)."""
    names = ("t_conv", "vth", "leak", "ide_point", "feedback", "train_mode")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def trainer_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The `spikingbert.trainer.TrainerConfig` fields the distillation flags set (same names)."""
    names = ("output_dir", "gradient_accumulation_steps", "max_steps", "save_steps", "save_total_limit",
             "logging_steps", "seed", "skip_nan_batches")
    return {name: getattr(args, name) for name in names}


def _require_dir(path: Path, flag: str, hint: str) -> None:
    if not Path(path).is_dir():
        raise UsageError(f"{flag} {path} is not a directory: {hint}")
