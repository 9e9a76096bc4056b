"""Fine-tuning a BERT on a GLUE-format task (the task teacher of task distillation; ``python -m apps.finetune``).

A standard `transformer.modeling.BertForSequenceClassification` fine-tune (``classifier(dropout(pooled))``,
cross-entropy; MSE for STS-B) with BertAdam (warm-up linear schedule), run by the same training loop as the
distillation stages: checkpoints, exact resume, dev evaluation at every epoch end (and every ``eval_step``
steps), the best model kept in the output directory, which ends up a complete teacher directory
(``config.json`` with ``num_labels``, the label names, ``do_lower_case`` and ``max_seq_length``;
``model.safetensors``, ``vocab.txt``; loadable by Hugging Face transformers too) plus ``eval_results.json`` (the
kept model's dev metrics and the majority-class baseline).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from typing import Dict

from torch.utils.data import Dataset

from spikingbert.core.files import atomic_write_json
from spikingbert.data import glue
from spikingbert.evaluation.dev import (
    LogitsOnly,
    chance_level,
    chance_name,
    dev_splits,
    evaluate_task,
    labels_of,
    print_table,
)
from spikingbert.runtime import Runtime, set_seed
from spikingbert.training.objectives import ClassificationObjective, build_optimizer
from spikingbert.training.stage import Stage
from spikingbert.training.trainer import Trainer

from . import checks
from .memory import check_memory, teacher_step_need
from .model_card import write_model_card
from .model_dirs import check_seq_length, describe_model
from .output import OutputDir, TaskData, length_grouping, session, write_args_json
from .plan import RunPlan, resolve_finetune
from .resume import check_resume_settings

__all__ = ["run_finetuning", "RESULTS_NAME"]

logger = logging.getLogger(__name__)

RESULTS_NAME = "eval_results.json"


def run_finetuning(args: argparse.Namespace) -> int:
    """Fine-tune ``--bert_model`` on the task's train split; keep the best dev model in ``--output_dir``."""
    from spikingbert.transformer.modeling import BertForSequenceClassification

    plan = resolve_finetune(args)
    processor = glue.get_processor(plan.task)
    info = glue.task_info(plan.task, plan.data_dir)
    output = OutputDir(plan.output.path, plan.output.continue_train, plan.output.overwrite)
    with session(plan.devices) as runtime, output:
        micro_batch = plan.training.loop.micro_batch_size(runtime.world_size)
        tokenizer, resume = _check(plan, runtime, output, micro_batch)
        set_seed(plan.training.loop.seed)
        model = plan.teacher.load(BertForSequenceClassification, weights_from=resume, num_labels=processor.num_labels)
        model.config.extra.setdefault("model_type", "bert")    # what Hugging Face's AutoModel classes read
        describe_model(model.config, tokenizer.do_lower_case, plan.max_seq_length, info)
        model.to(runtime.device).train()
        data = TaskData(plan.task, plan.data_dir, tokenizer, plan.max_seq_length, plan.cache_dir, plan.skip_bad_rows)
        train_set, dev_sets = data.load("train"), data.dev_sets()
        resume = output.prepare(runtime, plan.devices.debug) or resume   # only now: a failed start leaves nothing
        example_lengths, collate = length_grouping(plan.training.group_by_length, train_set, trim=True)
        s = plan.training
        stage = Stage(
            student=model, objective=ClassificationObjective(model, processor.output_mode).to(runtime.device),
            make_optimizer=lambda total: build_optimizer(model, s.learning_rate, s.warmup_proportion, s.weight_decay,
                                                         s.lr_schedule, total),
            train_dataset=lambda epoch: train_set, num_train_examples=lambda epoch: len(train_set),
            save_student=lambda directory: model.save_pretrained(directory, vocab_file=tokenizer.vocab_file),
            evaluate=_evaluation(plan, runtime, LogitsOnly(model), processor.output_mode, dev_sets),
            main_metric=glue.main_metric(plan.task), describe={"stage": "finetune", "task": plan.task},
            title=f"teacher fine-tuning, {info.display_name}", example_lengths=example_lengths, collate=collate,
            references={chance_name(glue.main_metric(plan.task)): chance_level(glue.main_metric(plan.task),
                                                                               labels_of(dev_sets["dev"]))})
        logger.info("fine-tuning %s on %s: %d training examples, max_seq_length %d", plan.teacher.location, plan.task,
                    len(train_set), plan.max_seq_length)
        write_args_json(plan.output.path, runtime, plan.flags, stage="finetune", task=plan.task,
                        max_seq_length_used=plan.max_seq_length, resumed_from=str(resume) if resume else None)
        start = time.perf_counter()
        Trainer(s.loop, runtime, stage, resume).train()
        if runtime.is_main:
            _write_results(plan, dev_sets["dev"], len(train_set), time.perf_counter() - start)
            write_model_card(plan.output.path)
    return 0


def _check(plan: RunPlan, runtime: Runtime, output: OutputDir, micro_batch: int):
    """The checks before any model is loaded or the output dir touched: vocabulary, ``--bert_model``'s weights file,
    the sequence length, every TSV row, the output dir and the settings of a run to resume, the memory. Returns the
    tokenizer and the checkpoint to resume from."""
    bert = plan.teacher
    tokenizer = bert.tokenizer(plan.do_lower_case)
    check_seq_length(plan.max_seq_length, bert.config.max_position_embeddings, bert.flag)
    checks.check_not_an_input(plan.output.path, plan.output.overwrite, {bert.flag: bert.directory})
    resume = output.check(runtime)
    if resume is not None:
        check_resume_settings(plan.output.path, plan.flags, {"max_seq_length_used": plan.max_seq_length}, resume,
                              plan.output.allow_changed_settings)
    checks.check_teacher_weights(bert)
    if resume is not None:
        checks.weight_shapes(resume / "model.safetensors", "--output_dir checkpoint")
    checks.check_task_data(plan.task, plan.data_dir, ["train", *dev_splits(plan.task)], plan.skip_bad_rows)
    per_device = math.ceil(micro_batch / max(1, runtime.n_gpu))
    needs = [teacher_step_need(bert.config, per_device, plan.max_seq_length, train=True, fp16=runtime.fp16),
             teacher_step_need(bert.config, plan.evaluation.batch_size, plan.max_seq_length, fp16=runtime.fp16)]
    check_memory(needs, runtime.device, f"fine-tuning on micro-batches of {per_device} x {plan.max_seq_length} tokens",
                 "lower --train_batch_size (or raise --gradient_accumulation_steps), --eval_batch_size or "
                 "--max_seq_length")
    return tokenizer, resume


def _evaluation(plan: RunPlan, runtime: Runtime, eval_model: LogitsOnly, output_mode: str,
                dev_sets: Dict[str, Dataset]):
    def evaluate() -> Dict[str, float]:
        return evaluate_task(runtime.wrap_frozen(eval_model), plan.task, output_mode, dev_sets, runtime,
                             plan.evaluation.batch_size)
    return evaluate


def _write_results(plan: RunPlan, dev_set: Dataset, train_examples: int, seconds: float) -> None:
    """``eval_results.json``: the kept model's dev metrics (from best_results.json) and the majority baseline."""
    output_dir = plan.output.path
    metric = glue.main_metric(plan.task)
    best = json.loads((output_dir / "best_results.json").read_text(encoding="utf-8"))
    results = {
        "task": plan.task, "bert_model": plan.teacher.location, "best_step": best.pop("step"),
        **{k: v for k, v in best.items() if k != "epoch"},
        f"chance_{metric}": chance_level(metric, labels_of(dev_set)),
        "dev_examples": len(dev_set), "train_examples": train_examples,
        "max_seq_length": plan.max_seq_length, "seconds": round(seconds, 3),
    }
    atomic_write_json(output_dir / RESULTS_NAME, results)
    print_table(f"{plan.task} dev evaluation of the fine-tuned {output_dir}", results)
