"""Fine-tune a BERT on a GLUE-format task: the task teacher of task distillation (`spikingbert.run.finetune`).

``--output_dir`` ends up a complete teacher directory that the distillation scripts take as
``--teacher_model``, plus ``eval_results.json`` (the kept model's dev metrics and the majority-class
baseline)::

    python -m apps.finetune --task_name SST-2 --data_dir glue_data/SST-2 \
        --bert_model all-MiniLM-L6-v2/ --output_dir runs/teacher-sst2 --do_lower_case \
        --max_seq_length 64 --num_train_epochs 3 --learning_rate 5e-5
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from core.errors import UsageError
from spikingbert.cli.edge import ArgumentParser, HelpFormatter, setting_flag, short_metavars, run_cli
from spikingbert.cli.flags import GROUP_BY_LENGTH_HELP, add_device_flags

__all__ = ["finetune_parser", "parse_finetune_args", "main"]


def finetune_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m apps.finetune", formatter_class=HelpFormatter,
        description="Fine-tune a BERT on a GLUE-format task: the task teacher of the distillation scripts.",
        epilog="example:\n  python -m apps.finetune --task_name SST-2 --data_dir glue_data/SST-2 --do_lower_case \\\n"
               "      --bert_model all-MiniLM-L6-v2/ --output_dir runs/teacher-sst2 --max_seq_length 64")
    groups = {name: parser.add_argument_group(name)
              for name in ("data", "model", "training", "checkpoints", "evaluation", "distributed", "output")}
    p = groups["data"].add_argument
    p("--task_name", type=str, required=True, metavar="TASK",
      help="GLUE task (case-insensitive): CoLA, SST-2, MRPC, STS-B, QQP, MNLI, MNLI-mm, QNLI, RTE, WNLI")
    p("--data_dir", type=Path, required=True, metavar="DIR", help="the task's directory (train.tsv, dev.tsv)")
    p("--do_lower_case", action="store_true", default=None,
      help="lower-case the input before WordPiece (uncased vocabularies). Default: what --bert_model's config.json "
           "records, else off")
    p("--max_seq_length", type=int, default=None,
      help="tokens per example, [CLS] and [SEP] included. Default: per task (see the README)")
    p("--cache_dir", type=Path, default=None, metavar="DIR", help="cache for tokenized features. Default: no cache")
    p("--skip_bad_rows", action="store_true", help="skip malformed TSV rows (counted and logged) instead of stopping")
    groups["model"].add_argument(
        "--bert_model", type=str, required=True, metavar="DIR",
        help="pre-trained BERT directory (or URL): config.json, model.safetensors or pytorch_model.bin, vocab.txt")
    p = groups["training"].add_argument
    p("--train_batch_size", type=int, default=32,
      help="examples per optimizer step, over all processes and accumulation steps")
    p("--learning_rate", type=float, default=5e-5, help="peak learning rate of BertAdam")
    p("--num_train_epochs", type=float, default=3.0, help="training epochs (may be fractional)")
    p("--max_steps", type=int, default=0, help="stop after this many optimizer steps (0: run the epochs)")
    p("--warmup_proportion", type=float, default=0.1, help="fraction of the steps with linear learning-rate warm-up")
    p("--weight_decay", type=float, default=0.01, help="decoupled weight decay (not on biases and LayerNorm)")
    p("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer step")
    p("--seed", type=int, default=42, help="seed of every random number generator (data order, dropout, head init)")
    p("--group_by_length", action="store_true", help=GROUP_BY_LENGTH_HELP)
    p = groups["checkpoints"].add_argument
    p("--save_steps", type=int, default=0, help="write checkpoint-{step} every this many steps (0: at the end)")
    p("--save_total_limit", type=int, default=1, help="keep only the newest this many checkpoints")
    p("--continue_train", action="store_true", help="resume from the latest complete checkpoint in --output_dir")
    p("--allow_changed_settings", action="store_true",
      help="--continue_train even when settings that change the model or the objective (--bert_model, task, data, "
           "max_seq_length, ...) differ from the resumed run's args.json")
    p = groups["evaluation"].add_argument
    p("--eval_batch_size", type=int, default=64, help="examples per evaluation batch (per process)")
    setting_flag(groups["evaluation"], "--eval_step", setting="eval_step_or_epoch_ends", default=0,
                 help="also evaluate every this many steps (0: at epoch ends only)")
    add_device_flags(groups["distributed"])
    p = groups["output"].add_argument
    p("--output_dir", type=Path, required=True, metavar="DIR",
      help="where the fine-tuned teacher (the best dev model), checkpoints, logs and training_curves.png go")
    p("--overwrite_output_dir", action="store_true", help="remove a previous run's files from --output_dir first")
    p("--debug", action="store_true", help="debug logging, and tracebacks instead of one-line errors")
    short_metavars(parser)
    return parser


def parse_finetune_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = finetune_parser().parse_args(argv)
    from spikingbert.data import glue

    glue.canonical_task_name(args.task_name)
    if not args.data_dir.is_dir():
        raise UsageError(f"--data_dir {args.data_dir} is not a directory: pass the task's directory (train.tsv, dev.tsv)")
    if "://" not in args.bert_model and not Path(args.bert_model).is_dir():
        raise UsageError(f"--bert_model {args.bert_model} is not a directory: pass the directory of a pre-trained BERT")
    return args


def main(argv: List[str]) -> int:
    from spikingbert.run.finetune import run_finetuning      # here: run_cli handles signals from the start

    return run_finetuning(parse_finetune_args(argv))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
