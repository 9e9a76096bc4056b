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

from spikingbert.args import GROUP_BY_LENGTH_HELP, MAX_EPOCHS, HelpFormatter, add_device_flags, short_metavars
from spikingbert.errors import ArgumentParser, UsageError, run_cli

__all__ = ["finetune_parser", "parse_finetune_args", "run_finetuning", "main"]

logger = logging.getLogger(__name__)

RESULTS_NAME = "eval_results.json"


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
        (args.learning_rate <= 10, f"--learning_rate must be <= 10 (got {args.learning_rate})"),
        (args.num_train_epochs > 0, f"--num_train_epochs must be > 0 (got {args.num_train_epochs})"),
        (args.num_train_epochs <= MAX_EPOCHS, f"--num_train_epochs must be <= {MAX_EPOCHS} (got {args.num_train_epochs})"),
        (0 <= args.seed < 2 ** 32, f"--seed must be in [0, 2**32) (got {args.seed})"),
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
    from spikingbert import glue

    glue.canonical_task_name(args.task_name)
    if not args.data_dir.is_dir():
        raise UsageError(f"--data_dir {args.data_dir} is not a directory: pass the task's directory (train.tsv, dev.tsv)")
    if "://" not in args.bert_model and not Path(args.bert_model).is_dir():
        raise UsageError(f"--bert_model {args.bert_model} is not a directory: pass the directory of a pre-trained BERT")
    return args


def _load_model(source: str, num_labels: int, flag: str):
    from spikingbert.loading import load_teacher
    from transformer.modeling import BertForSequenceClassification

    return load_teacher(BertForSequenceClassification, source, flag, num_labels=num_labels)


def _finetune_inputs(args: argparse.Namespace, runtime, output, task: str, micro_batch: int):
    """The checks before any model is loaded or the output dir touched: vocabulary, --bert_model's config.json and
    weights file, the sequence length, every TSV row, the output dir and the settings of a run to resume, the memory.
    Returns the tokenizer, the sequence length and the checkpoint to resume from."""
    from spikingbert import glue, preflight
    from spikingbert.evaluation import dev_splits
    from spikingbert.loading import check_seq_length, load_tokenizer, lower_case_setting, teacher_config
    from spikingbert.memory_check import check_memory, teacher_step_need
    from spikingbert.resume_settings import check_resume_settings

    config = teacher_config(args.bert_model, "--bert_model")
    tokenizer = load_tokenizer(args.bert_model, "--bert_model", lower_case_setting(args.do_lower_case, config))
    max_seq_length = args.max_seq_length or glue.default_task_settings(task).max_seq_length
    check_seq_length(max_seq_length, config.max_position_embeddings, "--bert_model")
    preflight.check_vocabulary_size(tokenizer, config.vocab_size, args.bert_model, "--bert_model")
    local = None if "://" in args.bert_model else Path(args.bert_model)
    preflight.check_not_an_input(args.output_dir, args.overwrite_output_dir, {"--bert_model": local})
    resume = output.check(runtime)
    if resume is not None:
        check_resume_settings(args.output_dir, vars(args), {"max_seq_length_used": max_seq_length}, resume,
                              args.allow_changed_settings)
    preflight.check_teacher_dir(args.bert_model, "--bert_model")
    if resume is not None:
        preflight.check_teacher_dir(str(resume), "--output_dir checkpoint")
    preflight.check_task_data(task, args.data_dir, ["train", *dev_splits(task)], args.skip_bad_rows)
    per_device = -(-micro_batch // max(1, runtime.n_gpu))
    check_memory([teacher_step_need(config, per_device, max_seq_length, train=True, fp16=runtime.fp16),
                  teacher_step_need(config, args.eval_batch_size, max_seq_length, fp16=runtime.fp16)], runtime.device,
                 f"fine-tuning on micro-batches of {per_device} x {max_seq_length} tokens",
                 "lower --train_batch_size (or raise --gradient_accumulation_steps), --eval_batch_size or "
                 "--max_seq_length")
    return tokenizer, max_seq_length, resume


def run_finetuning(args: argparse.Namespace) -> int:
    """Fine-tune ``--bert_model`` on the task's train split; keep the best dev model in ``--output_dir``."""
    from spikingbert import glue
    from spikingbert.evaluation import LogitsOnly
    from spikingbert.loading import describe_model
    from spikingbert.objectives import ClassificationObjective, build_optimizer
    from spikingbert.run_setup import OutputDir, TaskData, length_grouping, micro_batch_size, session, write_args_json
    from spikingbert.runtime import set_seed
    from spikingbert.trainer import Stage, Trainer, TrainerConfig

    task = glue.canonical_task_name(args.task_name)
    processor = glue.get_processor(task)
    metric, info = glue.main_metric(task), glue.task_info(task, args.data_dir)
    output = OutputDir(args.output_dir, args.continue_train, args.overwrite_output_dir)
    with session(args.no_cuda, args.local_rank, args.fp16, args.debug) as runtime, output:
        micro_batch = micro_batch_size(args.train_batch_size, args.gradient_accumulation_steps, runtime.world_size)
        tokenizer, max_seq_length, resume = _finetune_inputs(args, runtime, output, task, micro_batch)
        set_seed(args.seed)
        model = _load_model(str(resume) if resume else args.bert_model, processor.num_labels,
                            "--output_dir checkpoint" if resume else "--bert_model")
        model.config.extra["architectures"] = [type(model).__name__]
        model.config.extra.setdefault("model_type", "bert")    # what Hugging Face's AutoModel classes read
        describe_model(model.config, tokenizer.do_lower_case, max_seq_length, info)
        model.to(runtime.device).train()

        data = TaskData(task, args.data_dir, tokenizer, max_seq_length, args.cache_dir, args.skip_bad_rows)
        train_set, dev_sets = data.load("train"), data.dev_sets()
        resume = output.prepare(runtime, args.debug) or resume   # only now, so that a failed start leaves nothing
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
            title=f"teacher fine-tuning, {info.display_name}",
            example_lengths=example_lengths, collate=collate,
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


def _save_teacher(model, vocab_file: Path, directory: Path) -> None:
    """A complete teacher directory: config.json, model.safetensors and the tokenizer's vocab.txt."""
    model.save_pretrained(directory)
    shutil.copyfile(vocab_file, Path(directory) / "vocab.txt")


def _evaluation(runtime, eval_model, task: str, output_mode: str, dev_sets, batch_size: int):
    from spikingbert.evaluation import evaluate_task

    def evaluate() -> Dict[str, float]:
        return evaluate_task(runtime.wrap_frozen(eval_model), task, output_mode, dev_sets, runtime, batch_size)
    return evaluate


def _write_results(output_dir: Path, task: str, metric: str, bert_model: str, dev_set, train_examples: int,
                   max_seq_length: int, seconds: float) -> None:
    """``eval_results.json``: the kept model's dev metrics (from best_results.json) and the majority baseline."""
    from spikingbert.evaluation import chance_level, labels_of, print_table
    from transformer.file_utils import atomic_write_json

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
