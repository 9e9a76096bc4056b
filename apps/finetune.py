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
from pathlib import Path
from typing import List, Optional, Sequence

from spikingbert.cli.edge import ArgumentParser, HelpFormatter, run_cli, setting_flag, short_metavars
from spikingbert.cli.flags import (
    GROUP_BY_LENGTH_HELP,
    add_checkpoint_flags,
    add_device_flags,
    add_optimizer_flags,
    add_output_flags,
    add_task_data_flags,
)
from spikingbert.core.errors import UsageError
from spikingbert.core.remote import is_remote

__all__ = ["finetune_parser", "parse_finetune_args", "main"]


def finetune_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m apps.finetune", formatter_class=HelpFormatter,
        description="Fine-tune a BERT on a GLUE-format task: the task teacher of the distillation scripts.",
        epilog="example:\n  python -m apps.finetune --task_name SST-2 --data_dir glue_data/SST-2 --do_lower_case \\\n"
               "      --bert_model all-MiniLM-L6-v2/ --output_dir runs/teacher-sst2 --max_seq_length 64")
    groups = {name: parser.add_argument_group(name)
              for name in ("data", "model", "training", "checkpoints", "evaluation", "distributed", "output")}
    add_task_data_flags(groups["data"], "tokens per example, [CLS] and [SEP] included. Default: per task (see the "
                                        "README)", "lower-case the input before WordPiece (uncased vocabularies). "
                                                   "Default: what --bert_model's config.json records, else off")
    groups["model"].add_argument(
        "--bert_model", type=str, required=True, metavar="DIR",
        help="pre-trained BERT directory (config.json, model.safetensors or pytorch_model.bin, vocab.txt), or its "
             "Hugging Face Hub name (org/name[@revision], e.g. bert-base-uncased) or URL")
    add_optimizer_flags(groups["training"], 3.0, "training epochs (may be fractional)")
    groups["training"].add_argument("--group_by_length", action="store_true", help=GROUP_BY_LENGTH_HELP)
    add_checkpoint_flags(groups["checkpoints"], 0, "write checkpoint-{step} every this many steps (0: at the end)", 1,
                         "--bert_model, task, data, max_seq_length, ...",
                         "221 MB for all-MiniLM-L6-v2 (91 MB + 130 MB), up to 1.3 GB for BERT-base")
    groups["evaluation"].add_argument("--eval_batch_size", type=int, default=64,
                                      help="examples per evaluation batch (per process)")
    setting_flag(groups["evaluation"], "--eval_step", setting="eval_step_or_epoch_ends", default=0,
                 help="also evaluate every this many steps (0: at epoch ends only)")
    add_device_flags(groups["distributed"])
    add_output_flags(groups["output"], "where the fine-tuned teacher (the best dev model), checkpoints, logs and "
                                       "training_curves.png go")
    short_metavars(parser)
    return parser


def parse_finetune_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = finetune_parser().parse_args(argv)
    from spikingbert.data import glue

    glue.canonical_task_name(args.task_name)
    if not args.data_dir.is_dir():
        raise UsageError(f"--data_dir {args.data_dir} is not a directory: pass the task's directory (train.tsv, "
                         "dev.tsv)")
    if not is_remote(args.bert_model) and not Path(args.bert_model).is_dir():
        raise UsageError(f"--bert_model {args.bert_model} is not a directory: pass the directory of a pre-trained BERT "
                         "or its Hugging Face Hub name (org/name)")
    return args


def main(argv: List[str]) -> int:
    from spikingbert.run.finetune import run_finetuning  # here: run_cli handles signals from the start

    return run_finetuning(parse_finetune_args(argv))


def cli() -> None:
    """The command line (installed as the console script ``spikingbert-finetune``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
