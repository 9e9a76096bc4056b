"""Fine-tune a BERT on a GLUE-format task: the task teacher of task distillation.

A standard `transformer.modeling.BertForSequenceClassification` fine-tune
(``classifier(dropout(pooled))``, cross-entropy; MSE for STS-B) with BertAdam
(warm-up linear schedule), run by the same training loop as the distillation
stages (`spikingbert.trainer.Trainer` with a `Stage`): checkpoints, exact resume
(``--continue_train``), dev evaluation at every epoch end (and every
``--eval_step`` steps), the best model kept in ``--output_dir``.

``--output_dir`` ends up a complete teacher directory (``config.json`` with
``num_labels``, the label names ``id2label`` / ``label2id``, ``do_lower_case`` and ``max_seq_length``;
``model.safetensors``, ``vocab.txt``; loadable by Hugging Face transformers too) that the distillation
scripts take as ``--teacher_model``, plus ``eval_results.json`` (the kept model's
dev metrics and the majority-class baseline)::

    python -m apps.finetune --task_name SST-2 --data_dir glue_data/SST-2 \
        --bert_model all-MiniLM-L6-v2/ --output_dir runs/teacher-sst2 --do_lower_case \
        --max_seq_length 64 --num_train_epochs 3 --learning_rate 5e-5
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from torch import Tensor, nn

from spikingbert import glue
from spikingbert.args import GROUP_BY_LENGTH_HELP, HelpFormatter, add_device_flags, short_metavars
from spikingbert.errors import ArgumentParser, UsageError, UserError, run_cli
from spikingbert.evaluation import LogitsOnly, chance_level, evaluate_task, labels_of, print_table
from spikingbert.loading import describe_model, load_tokenizer, lower_case_setting, teacher_config
from spikingbert.losses import gold_label_loss
from spikingbert.objectives import build_optimizer
from spikingbert.run_setup import OutputDir, TaskData, length_grouping, micro_batch_size, session, write_args_json
from spikingbert.runtime import Runtime, set_seed
from spikingbert.trainer import Stage, Trainer, TrainerConfig
from transformer.file_utils import ModelLoadError, atomic_write_json

__all__ = ["ClassificationObjective", "finetune_parser", "parse_finetune_args", "run_finetuning", "main"]

logger = logging.getLogger(__name__)

RESULTS_NAME = "eval_results.json"


class ClassificationObjective(nn.Module):
    """Forward + loss of a plain fine-tune: cross-entropy to the gold labels (MSE for regression).

    ``forward(batch, teacher_out)`` with ``batch = (input_ids, input_mask, segment_ids, label_ids, ...)``
    (each (B, S), labels (B,)); ``teacher_out`` is unused (there is no teacher).
    """

    def __init__(self, model: nn.Module, output_mode: str):
        super().__init__()
        self.model = model
        self.output_mode = output_mode

    def forward(self, batch: Sequence[Tensor], teacher_out=None) -> Dict[str, Tensor]:
        input_ids, input_mask, segment_ids, labels = batch[:4]
        logits = self.model(input_ids, token_type_ids=segment_ids, attention_mask=input_mask).logits.float()
        return {"loss": gold_label_loss(logits, labels, self.output_mode)}


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
    p = groups["evaluation"].add_argument
    p("--eval_batch_size", type=int, default=64, help="examples per evaluation batch (per process)")
    p("--eval_step", type=int, default=0, help="also evaluate every this many steps (0: at epoch ends only)")
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
    checks = [
        (args.train_batch_size >= 1, f"--train_batch_size must be >= 1 (got {args.train_batch_size})"),
        (args.eval_batch_size >= 1, f"--eval_batch_size must be >= 1 (got {args.eval_batch_size})"),
        (args.gradient_accumulation_steps >= 1,
         f"--gradient_accumulation_steps must be >= 1 (got {args.gradient_accumulation_steps})"),
        (args.learning_rate > 0, f"--learning_rate must be > 0 (got {args.learning_rate})"),
        (args.num_train_epochs > 0, f"--num_train_epochs must be > 0 (got {args.num_train_epochs})"),
        (args.max_steps >= 0, f"--max_steps must be >= 0 (got {args.max_steps})"),
        (0 <= args.warmup_proportion < 1, f"--warmup_proportion must be in [0, 1) (got {args.warmup_proportion})"),
        (args.weight_decay >= 0, f"--weight_decay must be >= 0 (got {args.weight_decay})"),
        (args.eval_step >= 0, f"--eval_step must be >= 0 (got {args.eval_step})"),
        (args.save_steps >= 0, f"--save_steps must be >= 0 (got {args.save_steps})"),
        (args.save_total_limit >= 1, f"--save_total_limit must be >= 1 (got {args.save_total_limit})"),
        (args.max_seq_length is None or args.max_seq_length >= 3,
         f"--max_seq_length must be >= 3 (got {args.max_seq_length})"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    glue.canonical_task_name(args.task_name)
    if not args.data_dir.is_dir():
        raise UsageError(f"--data_dir {args.data_dir} is not a directory: pass the task's directory (train.tsv, dev.tsv)")
    if "://" not in args.bert_model and not Path(args.bert_model).is_dir():
        raise UsageError(f"--bert_model {args.bert_model} is not a directory: pass the directory of a pre-trained BERT")
    return args


def _load_model(source: str, num_labels: int, flag: str):
    from transformer.modeling import BertForSequenceClassification

    try:
        return BertForSequenceClassification.from_pretrained(source, num_labels=num_labels)
    except ModelLoadError as err:
        raise UserError(f"{flag} {source}: {err}") from err


def run_finetuning(args: argparse.Namespace) -> int:
    """Fine-tune ``--bert_model`` on the task's train split; keep the best dev model in ``--output_dir``."""
    task = glue.canonical_task_name(args.task_name)
    processor = glue.get_processor(task)
    metric = glue.main_metric(task)
    with session(args.no_cuda, args.local_rank, args.fp16, args.debug) as runtime:
        micro_batch = micro_batch_size(args.train_batch_size, args.gradient_accumulation_steps, runtime.world_size)
        bert_config = None if args.do_lower_case is not None else teacher_config(args.bert_model, "--bert_model")
        tokenizer = load_tokenizer(args.bert_model, "--bert_model", lower_case_setting(args.do_lower_case, bert_config))
        max_seq_length = args.max_seq_length or glue.default_task_settings(task).max_seq_length
        resume = OutputDir(args.output_dir, args.continue_train, args.overwrite_output_dir).prepare(runtime, args.debug)
        set_seed(args.seed)
        model = _load_model(str(resume) if resume else args.bert_model, processor.num_labels,
                            "--output_dir checkpoint" if resume else "--bert_model")
        if model.config.max_position_embeddings < max_seq_length:
            raise UsageError(f"--max_seq_length {max_seq_length} does not fit --bert_model (max_position_embeddings "
                             f"{model.config.max_position_embeddings})")
        model.config.extra["architectures"] = [type(model).__name__]
        model.config.extra.setdefault("model_type", "bert")    # what Hugging Face's AutoModel classes read
        describe_model(model.config, tokenizer.do_lower_case, max_seq_length, glue.task_info(task, args.data_dir))
        model.to(runtime.device).train()

        data = TaskData(task, args.data_dir, tokenizer, max_seq_length, args.cache_dir, args.skip_bad_rows)
        train_set, dev_sets = data.load("train"), data.dev_sets()
        example_lengths, collate = length_grouping(args.group_by_length, train_set, trim=True)
        stage = Stage(
            student=model,
            objective=ClassificationObjective(model, processor.output_mode).to(runtime.device),
            make_optimizer=lambda total: build_optimizer(model, args.learning_rate, args.warmup_proportion,
                                                         args.weight_decay, "warmup_linear", total),
            train_dataset=lambda epoch: train_set,
            num_train_examples=lambda epoch: len(train_set),
            save_student=lambda directory: _save_teacher(model, Path(tokenizer.vocab_file), directory),
            evaluate=_evaluation(runtime, LogitsOnly(model), task, processor.output_mode, dev_sets,
                                 args.eval_batch_size),
            main_metric=metric,
            describe={"stage": "finetune", "task": task},
            example_lengths=example_lengths,
            collate=collate,
        )
        logger.info("fine-tuning %s on %s: %d training examples, max_seq_length %d", args.bert_model, task,
                    len(train_set), max_seq_length)
        write_args_json(args.output_dir, runtime, vars(args), stage="finetune", task=task,
                        max_seq_length_used=max_seq_length, resumed_from=str(resume) if resume else None)
        config = TrainerConfig(
            output_dir=args.output_dir, micro_batch_size=micro_batch, num_train_epochs=args.num_train_epochs,
            gradient_accumulation_steps=args.gradient_accumulation_steps, max_steps=args.max_steps,
            save_steps=args.save_steps, save_total_limit=args.save_total_limit, eval_steps=args.eval_step,
            seed=args.seed, resume_from=resume,
        )
        start = time.perf_counter()
        Trainer(config, runtime, stage).train()
        if runtime.is_main:
            _write_results(args.output_dir, task, metric, str(args.bert_model), dev_sets["dev"], len(train_set),
                           max_seq_length, time.perf_counter() - start)
    return 0


def _save_teacher(model: nn.Module, vocab_file: Path, directory: Path) -> None:
    """A complete teacher directory: config.json, model.safetensors and the tokenizer's vocab.txt."""
    model.save_pretrained(directory)
    shutil.copyfile(vocab_file, Path(directory) / "vocab.txt")


def _evaluation(runtime: Runtime, eval_model: nn.Module, task: str, output_mode: str, dev_sets, batch_size: int):
    def evaluate() -> Dict[str, float]:
        return evaluate_task(runtime.wrap_frozen(eval_model), task, output_mode, dev_sets, runtime, batch_size)
    return evaluate


def _write_results(output_dir: Path, task: str, metric: str, bert_model: str, dev_set, train_examples: int,
                   max_seq_length: int, seconds: float) -> None:
    """``eval_results.json``: the kept model's dev metrics (from best_results.json) and the majority baseline."""
    best = json.loads((output_dir / "best_results.json").read_text(encoding="utf-8"))
    results = {
        "task": task, "bert_model": bert_model, "best_step": best.pop("step"),
        **{k: v for k, v in best.items() if k != "epoch"},
        f"chance_{metric}": chance_level(metric, labels_of(dev_set)),
        "dev_examples": len(dev_set), "train_examples": train_examples,
        "max_seq_length": max_seq_length, "seconds": round(seconds, 3),
    }
    atomic_write_json(output_dir / RESULTS_NAME, results)
    print_table(f"{task} dev evaluation of the fine-tuned {output_dir}", results)


def main(argv: List[str]) -> int:
    return run_finetuning(parse_finetune_args(argv))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
