"""The three pipeline stages (SPEC §3), driven by the parsed command-line arguments.

* `run_general_distillation`: general KD on pregenerated data (intermediate loss,
  warm-up linear schedule).
* `run_task_distillation`: task intermediate KD (constant LR, per-task defaults),
  prediction KD (``--pred_distill``, soft cross-entropy, dev evaluation, best model
  kept), or ``--do_eval`` (evaluate a saved student on dev).

Each stage builds a `spikingbert.trainer.Stage` (data, teacher, objective,
optimizer, evaluation) and hands it to the shared `Trainer`.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from models.configuration import SpikingBertConfig, SpikingConfigError
from models.init_from_teacher import init_student_from_teacher
from models.modeling_utils import find_weights
from models.spiking_bert import SpikingBertForDistillation, SpikingBertForSequenceClassification
from transformer.file_utils import ModelLoadError
from transformer.tokenization import BertTokenizer

from . import glue, preflight
from .checkpoint import atomic_write_json, check_output_dir, prepare_output_dir
from .errors import UsageError, UserError
from .losses import att_loss, layer_stride, rep_loss, soft_cross_entropy
from .runtime import Runtime, set_seed, setup_logging, setup_runtime
from .trainer import Stage, Trainer, TrainerConfig

__all__ = [
    "IntermediateDistillation",
    "PredictionDistillation",
    "TeacherOutputs",
    "LogitsOnly",
    "build_optimizer",
    "predict_logits",
    "run_general_distillation",
    "run_task_distillation",
]

logger = logging.getLogger(__name__)

#: Margin above the chance level under which a teacher's dev score triggers a warning.
CHANCE_MARGIN = 0.05
#: Evaluation batches are trimmed to a multiple of this many columns (see `predict_logits`).
EVAL_WIDTH_MULTIPLE = 16


# ------------------------------------------------------------------------------------------ objectives

class IntermediateDistillation(nn.Module):
    """Student forward + intermediate KD loss ``att_loss + rep_loss`` (general KD and task IKD).

    ``forward(batch, teacher_out)`` with ``batch = (input_ids, input_mask, segment_ids, ...)``
    (each (B, S)) and ``teacher_out = (hidden_states, attention_scores)`` of the teacher.
    """

    def __init__(self, student: nn.Module, stride: int):
        super().__init__()
        self.student = student
        self.stride = stride

    def forward(self, batch: Sequence[Tensor], teacher_out: Tuple[Sequence[Tensor], Sequence[Tensor]]
                ) -> Dict[str, Tensor]:
        input_ids, input_mask, segment_ids = batch[:3]
        out = self.student(input_ids, token_type_ids=segment_ids, attention_mask=input_mask, output_attentions=True)
        teacher_hidden, teacher_atts = teacher_out
        a = att_loss(out.attention_scores, teacher_atts, self.stride)
        r = rep_loss(out.reps, teacher_hidden, self.stride)
        return {"loss": a + r, "att_loss": a, "rep_loss": r}


class PredictionDistillation(nn.Module):
    """Student forward + prediction-layer loss.

    Soft cross-entropy to the teacher's logits at ``temperature``; for regression, MSE to
    the gold labels; with ``true_labels``, cross-entropy (MSE for regression) to the gold labels.
    ``forward(batch, teacher_logits)``, ``batch[3]`` = gold labels (B,).
    """

    def __init__(self, student: nn.Module, output_mode: str, temperature: float = 1.0, true_labels: bool = False):
        super().__init__()
        self.student = student
        self.output_mode = output_mode
        self.temperature = temperature
        self.true_labels = true_labels

    @property
    def needs_teacher(self) -> bool:
        return self.output_mode == "classification" and not self.true_labels

    def forward(self, batch: Sequence[Tensor], teacher_logits: Optional[Tensor]) -> Dict[str, Tensor]:
        input_ids, input_mask, segment_ids, labels = batch[:4]
        logits = self.student(input_ids, token_type_ids=segment_ids, attention_mask=input_mask).logits.float()
        if self.output_mode == "regression":
            loss = F.mse_loss(logits.view(-1), labels.view(-1).float())
        elif self.true_labels:
            loss = F.cross_entropy(logits, labels.view(-1))
        else:
            loss = soft_cross_entropy(logits, teacher_logits, self.temperature)
        return {"loss": loss, "cls_loss": loss.detach()}


class TeacherOutputs(nn.Module):
    """The teacher's outputs as plain tuples (what DataParallel can gather).

    ``kind="intermediate"``: ``(hidden_states, attention_scores)``; ``kind="logits"``: ``logits`` (B, K).
    """

    def __init__(self, teacher: nn.Module, kind: str):
        super().__init__()
        self.teacher = teacher
        self.kind = kind

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor):
        out = self.teacher(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        if self.kind == "logits":
            return out.logits
        return tuple(out.hidden_states), tuple(out.attention_scores)


class LogitsOnly(nn.Module):
    """``model(...).logits`` of a student or teacher, for evaluation."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask).logits


def _teacher_forward(teacher: nn.Module):
    def forward(batch: Sequence[Tensor]):
        input_ids, input_mask, segment_ids = batch[:3]
        return teacher(input_ids, segment_ids, input_mask)
    return forward


# ------------------------------------------------------------------------------------------ optimizer

def build_optimizer(model: nn.Module, args: argparse.Namespace, schedule: str, total_steps: int):
    """BertAdam with decoupled weight decay on all weights except biases and LayerNorm parameters."""
    from transformer.optimization import BertAdam

    no_decay = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.LayerNorm) or name == "bias":
                no_decay.add(id(param))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": args.weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return BertAdam(groups, lr=args.learning_rate, warmup=args.warmup_proportion, t_total=total_steps,
                    schedule=schedule, weight_decay=args.weight_decay, max_grad_norm=1.0)


# ------------------------------------------------------------------------------------------ evaluation

@torch.no_grad()
def predict_logits(model: nn.Module, dataset: Dataset, runtime: Runtime, batch_size: int) -> np.ndarray:
    """Logits (N, K) of ``model`` (a `LogitsOnly`) on ``dataset``, in dataset order.

    The examples run longest first (by the sum of their ``input_mask``), each batch cut to
    its longest example rounded up to `EVAL_WIDTH_MULTIPLE` columns (`glue.trim_batch`):
    padded keys get -10000 in the attention, so the logits are those of the full padded
    batches, with less padding to compute. The rounding keeps them bit-equal on the CPU (in
    every check so far; cut to any width, vectorised softmax/matmul kernels sum a ragged
    tail in another order, and a spiking threshold can turn that last-bit change into
    another spike).
    Under torchrun each rank predicts its `DistributedSampler` share; the shares are
    gathered and every logit is put back at its example's index (the sampler's padding
    repeats are written twice, so every example counts once).
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    indices = list(range(len(dataset)))
    if runtime.distributed:
        indices = list(DistributedSampler(dataset, num_replicas=runtime.world_size, rank=runtime.rank,
                                          shuffle=False, drop_last=False))
    lengths = glue.example_lengths(dataset).tolist()
    indices.sort(key=lambda i: -lengths[i])                      # stable: equal lengths keep their order
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        collate_fn=functools.partial(glue.collate_trimmed, multiple_of=EVAL_WIDTH_MULTIPLE),
                        generator=torch.Generator())  # keeps the global RNG untouched
    chunks: List[Tensor] = []
    for batch in loader:
        input_ids, input_mask, segment_ids = (t.to(runtime.device) for t in batch[:3])
        with runtime.autocast():
            logits = model(input_ids, segment_ids, input_mask)
        chunks.append(logits.float().cpu())
    for module, training in modes:
        module.training = training
    logits = torch.cat(chunks).numpy() if chunks else np.zeros((0, 1), dtype=np.float32)
    full: Optional[np.ndarray] = None
    for rank_indices, rank_logits in runtime.all_gather_object((indices, logits)):
        if full is None:
            full = np.zeros((len(dataset), rank_logits.shape[1]), dtype=rank_logits.dtype)
        full[rank_indices] = rank_logits
    return full


def _labels(dataset: Dataset) -> np.ndarray:
    return dataset.tensors[3].numpy()


def evaluate_task(model: nn.Module, task: str, output_mode: str, dev_sets: Dict[str, Dataset],
                  runtime: Runtime, batch_size: int) -> Dict[str, float]:
    """Metrics of ``model`` on each dev set; the mismatched MNLI set's keys get an ``mm_`` prefix."""
    metrics: Dict[str, float] = {}
    for split, dataset in dev_sets.items():
        logits = predict_logits(model, dataset, runtime, batch_size)
        preds = logits.reshape(-1) if output_mode == "regression" else logits.argmax(axis=1)
        split_metrics = glue.compute_metrics(task, preds, _labels(dataset))
        prefix = "mm_" if split == "dev_mm" else ""
        metrics.update({prefix + k: v for k, v in split_metrics.items()})
    return metrics


def chance_level(metric: str, labels: np.ndarray) -> float:
    """Score of a constant predictor: the majority-class rate for accuracy, 0 for correlations."""
    if metric == "acc" and labels.size:
        return float(np.bincount(labels.astype(np.int64)).max() / labels.size)
    return 0.0


# ------------------------------------------------------------------------------------------ models

def _student_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """Spiking settings given on the command line (None = keep the config's)."""
    names = ("t_conv", "vth", "leak", "ide_point", "feedback", "train_mode")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _load_student(cls, path: Path, flag: str, **overrides):
    try:
        return cls.from_pretrained(path, **overrides)
    except SpikingConfigError as err:
        raise UsageError(f"{flag} {path}: {err}") from err


def _student_config(path: Path, flag: str) -> SpikingBertConfig:
    try:
        return SpikingBertConfig.from_pretrained(path)
    except SpikingConfigError as err:
        raise UsageError(f"{flag} {path}: {err}") from err


def _fit_size_override(student_dir: Path, teacher_hidden: int) -> Dict[str, int]:
    """``fit_size`` for a new student; a saved student must already project to the teacher's width."""
    if not find_weights(student_dir) is not None:
        return {"fit_size": teacher_hidden}
    fit_size = _student_config(student_dir, "--spiking_student_model").fit_size
    if fit_size != teacher_hidden:
        raise UsageError(f"--spiking_student_model {student_dir} projects to width {fit_size} (fit_size) but the "
                         f"teacher's hidden size is {teacher_hidden}: use the teacher it was distilled from")
    return {}


def _load_teacher(cls, path: str, **kwargs) -> nn.Module:
    try:
        return cls.from_pretrained(path, **kwargs)
    except ModelLoadError as err:
        raise UserError(f"--teacher_model {path}: {err}") from err


# ------------------------------------------------------------------------------------------ --init_from_teacher

def _maybe_init_from_teacher(args: argparse.Namespace, student: nn.Module, teacher: nn.Module, stride: int,
                             source: Path, resume: Optional[Path]) -> Optional[int]:
    """``--init_from_teacher`` for a new student (no weights, not resuming); returns the tensors copied."""
    if not getattr(args, "init_from_teacher", False):
        return None
    if resume is not None or find_weights(source) is not None:
        logger.warning("--init_from_teacher ignored: %s already holds trained weights",
                       resume if resume is not None else source)
        return None
    return len(init_student_from_teacher(student, teacher, stride))


def _load_tokenizer(path, flag: str, do_lower_case: bool) -> BertTokenizer:
    try:
        return BertTokenizer.from_pretrained(path, do_lower_case=do_lower_case)
    except ModelLoadError as err:
        raise UserError(f"{flag} {path}: {err}") from err


def _teacher_config(path: str):
    from transformer.modeling import BertConfig

    try:
        return BertConfig.from_pretrained(path)
    except ModelLoadError as err:
        raise UserError(f"--teacher_model {path}: {err}") from err


def _check_compatibility(teacher_config, student_config: SpikingBertConfig, tokenizer, max_seq_length: int) -> int:
    """Layer map, vocabulary and sequence length that teacher and student can both handle; returns k."""
    stride = layer_stride(teacher_config.num_hidden_layers, student_config.num_hidden_layers)
    if len(tokenizer.vocab) > student_config.vocab_size:
        raise UsageError(f"the vocabulary has {len(tokenizer.vocab)} tokens but the student's config.json has "
                         f"vocab_size {student_config.vocab_size}: set vocab_size to at least {len(tokenizer.vocab)}")
    if len(tokenizer.vocab) > teacher_config.vocab_size:
        raise UsageError(f"the vocabulary has {len(tokenizer.vocab)} tokens but the --teacher_model config.json has "
                         f"vocab_size {teacher_config.vocab_size}: use the vocab.txt the teacher was trained with")
    _check_seq_length(max_seq_length, student_config.max_position_embeddings, "--spiking_student_model")
    _check_seq_length(max_seq_length, teacher_config.max_position_embeddings, "--teacher_model")
    return stride


def _check_seq_length(max_seq_length: int, positions: int, flag: str) -> None:
    if max_seq_length > positions:
        raise UsageError(f"sequences of {max_seq_length} tokens do not fit the {flag} model "
                         f"(max_position_embeddings {positions}): pass --max_seq_length {positions} or less")


# ------------------------------------------------------------------------------------------ session

@contextlib.contextmanager
def _session(args: argparse.Namespace) -> Iterator[Runtime]:
    runtime = setup_runtime(args.no_cuda, args.local_rank, args.fp16)
    setup_logging(None, runtime.is_main, args.debug)
    try:
        yield runtime
    finally:
        runtime.close()


def _resume_point_on_main(runtime: Runtime, find: Callable[[], Optional[Path]]) -> Optional[Path]:
    """Run ``find`` (an output-dir rule) on the main process only; every process gets its result or error."""
    outcome: Tuple[Optional[str], Optional[UserError]] = (None, None)
    if runtime.is_main:
        try:
            resume = find()
            outcome = (str(resume) if resume else None, None)
        except UserError as err:
            outcome = (None, err)
    resume, error = runtime.broadcast_object(outcome)
    if error is not None:
        raise error
    return Path(resume) if resume else None


def _check_training_output(args: argparse.Namespace, runtime: Runtime) -> Optional[Path]:
    """The output-dir rules, checked (on the main process) without writing; returns the checkpoint to resume."""
    return _resume_point_on_main(
        runtime, lambda: check_output_dir(args.output_dir, args.continue_train, args.overwrite_output_dir))


def _prepare_training_output(args: argparse.Namespace, runtime: Runtime) -> Optional[Path]:
    """Check the output dir on the main process, share the outcome, start logging into it."""
    resume = _resume_point_on_main(
        runtime, lambda: prepare_output_dir(args.output_dir, args.continue_train, args.overwrite_output_dir))
    setup_logging(args.output_dir, runtime.is_main, args.debug)
    return resume


def _micro_batch_size(args: argparse.Namespace, runtime: Runtime) -> int:
    per_step = args.gradient_accumulation_steps * runtime.world_size
    if args.train_batch_size % per_step:
        raise UsageError(f"--train_batch_size {args.train_batch_size} must be a multiple of "
                         f"--gradient_accumulation_steps x processes = {per_step}")
    return args.train_batch_size // per_step


def _write_args(args: argparse.Namespace, runtime: Runtime, **resolved: Any) -> None:
    if not runtime.is_main:
        return
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    record.update(resolved)
    record.update(world_size=runtime.world_size, n_gpu=runtime.n_gpu, device=str(runtime.device))
    atomic_write_json(args.output_dir / "args.json", record)


def _trainer_config(args: argparse.Namespace, micro_batch_size: int, resume: Optional[Path],
                    num_train_epochs: float, eval_steps: int) -> TrainerConfig:
    return TrainerConfig(
        output_dir=args.output_dir,
        micro_batch_size=micro_batch_size,
        num_train_epochs=num_train_epochs,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_steps=args.max_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps,
        eval_steps=eval_steps,
        seed=args.seed,
        resume_from=resume,
        skip_nan_batches=args.skip_nan_batches,
    )


# ------------------------------------------------------------------------------------------ general KD

def run_general_distillation(args: argparse.Namespace) -> int:
    """General KD: intermediate loss on pregenerated data, BertAdam with warm-up linear schedule."""
    from transformer.modeling import BertForPreTraining
    from .pregenerated import PregeneratedDataset, count_data_epochs, read_epoch_metrics
    from .pretraining_data import epoch_paths

    with _session(args) as runtime:
        if args.do_eval:
            logger.warning("--do_eval has no effect in general distillation (there is no dev set); evaluate task "
                           "students with spiking_bert_task_distill.py --do_eval")
        micro_batch_size = _micro_batch_size(args, runtime)
        tokenizer = _load_tokenizer(args.teacher_model, "--teacher_model", args.do_lower_case)
        student_config = _student_config(args.spiking_student_model, "--spiking_student_model")
        num_data_epochs = count_data_epochs(args.pregenerated_data)
        seq_len = read_epoch_metrics(epoch_paths(args.pregenerated_data, 0)[1])[1]
        if seq_len != args.max_seq_length:
            logger.info("the pregenerated data has sequences of %d tokens (--max_seq_length %d is not used)",
                        seq_len, args.max_seq_length)
        teacher_config = _teacher_config(args.teacher_model)
        stride = _check_compatibility(teacher_config, student_config, tokenizer, seq_len)
        resume = _check_training_output(args, runtime)
        preflight.check_training_inputs(args, student_config.hidden_size, teacher_config.hidden_size, resume)
        set_seed(args.seed)
        teacher = _load_teacher(BertForPreTraining, args.teacher_model)
        source = resume or args.spiking_student_model
        student = _load_student(SpikingBertForDistillation, source, "--spiking_student_model",
                                **_student_overrides(args),
                                **_fit_size_override(source, teacher.config.hidden_size))
        copied = _maybe_init_from_teacher(args, student, teacher, stride, args.spiking_student_model, resume)
        student.to(runtime.device)
        teacher.to(runtime.device).eval().requires_grad_(False)
        _prepare_training_output(args, runtime)     # only now, so that a failed start leaves no output dir

        if args.num_train_epochs > num_data_epochs:
            logger.warning("%d epochs of pregenerated data for %g training epochs: epochs will be reused",
                           num_data_epochs, args.num_train_epochs)
        cache: Dict[int, Dataset] = {}

        def dataset(epoch: int) -> Dataset:
            data_epoch = epoch % num_data_epochs
            if data_epoch not in cache:
                for old in cache.values():
                    old.close()             # frees the previous epoch's memory maps (--reduce_memory)
                cache.clear()
                cache[data_epoch] = PregeneratedDataset(args.pregenerated_data, data_epoch, tokenizer,
                                                        num_data_epochs, reduce_memory=args.reduce_memory)
            return cache[data_epoch]

        def num_examples(epoch: int) -> int:
            _, metrics_path = epoch_paths(args.pregenerated_data, epoch % num_data_epochs)
            return read_epoch_metrics(metrics_path)[0]

        vocab_file = tokenizer.vocab_file
        stage = Stage(
            student=student,
            objective=IntermediateDistillation(student, stride).to(runtime.device),
            make_optimizer=lambda total: build_optimizer(student, args, "warmup_linear", total),
            train_dataset=dataset,
            num_train_examples=num_examples,
            save_student=lambda d: student.save_pretrained(d, vocab_file=vocab_file),
            teacher_forward=_teacher_forward(runtime.wrap_frozen(TeacherOutputs(teacher, "intermediate").eval())),
            describe={"stage": "general"},
        )
        _write_args(args, runtime, stage="general", layer_stride=stride,
                    resumed_from=str(resume) if resume else None, init_from_teacher_tensors=copied)
        config = _trainer_config(args, micro_batch_size, resume, args.num_train_epochs, eval_steps=0)
        Trainer(config, runtime, stage).train()
    return 0


# ------------------------------------------------------------------------------------------ task KD / eval

def _length_grouping(args: argparse.Namespace, train_set: Dataset, trim: bool
                     ) -> Tuple[Optional[Callable[[int], Tensor]], Optional[Callable]]:
    """`Stage.example_lengths` and `Stage.collate` for ``--group_by_length`` (both None without it).

    ``trim``: also cut each batch to its longest example, right only where the loss reads the
    logits alone (an intermediate loss averages over every padded position, as published).
    """
    if not args.group_by_length:
        return None, None
    lengths = glue.example_lengths(train_set)
    how = (", each trimmed to its longest example" if trim else
           " (not trimmed: the intermediate losses average over the padded positions too)")
    logger.info("--group_by_length: batches of similar length (mean %.1f real tokens of %d)%s",
                lengths.float().mean().item(), train_set[0][0].numel(), how)
    return (lambda epoch: lengths), (glue.collate_trimmed if trim else None)


def _resolve_task_settings(args: argparse.Namespace, task: str, prediction: bool
                           ) -> Tuple[int, float, List[str]]:
    """``--max_seq_length`` and ``--num_train_epochs``, per-task defaults where the flag was not given.

    Returns the two values and one line per value saying where it came from (to be logged).
    """
    defaults = glue.default_task_settings(task)
    notes = []
    if args.max_seq_length is None:
        max_seq_length = defaults.max_seq_length
        notes.append(f"max_seq_length {max_seq_length} (default for {task})")
    else:
        max_seq_length = args.max_seq_length
        notes.append(f"max_seq_length {max_seq_length} (--max_seq_length)")
    if args.do_eval:
        return max_seq_length, 0.0, notes
    if args.num_train_epochs is not None:
        epochs = args.num_train_epochs
        notes.append(f"num_train_epochs {epochs:g} (--num_train_epochs)")
    elif prediction:
        epochs = 3.0
        notes.append(f"num_train_epochs {epochs:g} (default for prediction distillation)")
    else:
        epochs = float(defaults.num_train_epochs)
        notes.append(f"num_train_epochs {epochs:g} (default for {task} intermediate distillation)")
    return max_seq_length, epochs, notes


def _load_split(task: str, args: argparse.Namespace, split: str, tokenizer, max_seq_length: int) -> Dataset:
    dataset, _, stats = glue.load_task_dataset(task, args.data_dir, split, tokenizer, max_seq_length,
                                               cache_dir=args.cache_dir, skip_bad_rows=args.skip_bad_rows)
    if stats.num_bad_rows:
        logger.warning("%s: skipped %d malformed rows", stats.path, stats.num_bad_rows)
    if len(dataset) == 0:
        raise UserError(f"{stats.path} has no examples")
    return dataset


def _dev_splits(task: str) -> List[str]:
    return ["dev", "dev_mm"] if task == "mnli" else ["dev"]


def _dev_sets(task: str, args, tokenizer, max_seq_length: int) -> Dict[str, Dataset]:
    return {s: _load_split(task, args, s, tokenizer, max_seq_length) for s in _dev_splits(task)}


def _task_tokenizer(args: argparse.Namespace) -> BertTokenizer:
    """The student's vocab.txt when it has one, else the teacher's."""
    if (args.spiking_student_model / "vocab.txt").is_file():
        return _load_tokenizer(args.spiking_student_model, "--spiking_student_model", args.do_lower_case)
    if args.teacher_model is None:
        raise UsageError(f"--spiking_student_model {args.spiking_student_model} has no vocab.txt: add the "
                         "vocabulary the student was trained with")
    return _load_tokenizer(args.teacher_model, "--teacher_model", args.do_lower_case)


def _print_table(title: str, rows: Dict[str, Any]) -> None:
    width = max(len(k) for k in rows)
    lines = [title, "-" * max(len(title), width + 12)]
    for key, value in rows.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    print("\n".join(lines), flush=True)


def run_task_distillation(args: argparse.Namespace) -> int:
    """Task IKD (default), prediction KD (``--pred_distill`` / ``--train_true_labels``) or ``--do_eval``."""
    task = glue.canonical_task_name(args.task_name)
    processor = glue.get_processor(task)
    with _session(args) as runtime:
        if args.data_url:
            logger.warning("--data_url is accepted for compatibility and ignored")
        if args.do_eval:
            return _run_eval(args, runtime, task, processor)
        return _run_task_training(args, runtime, task, processor)


def _run_eval(args: argparse.Namespace, runtime: Runtime, task: str, processor) -> int:
    if args.pred_distill or args.train_true_labels:
        logger.warning("--do_eval only evaluates: --pred_distill/--train_true_labels are ignored")
    max_seq_length, _, notes = _resolve_task_settings(args, task, prediction=True)
    for note in notes:
        logger.info(note)
    preflight.check_eval_inputs(args, task, _dev_splits(task))
    tokenizer = _task_tokenizer(args)
    config = _student_config(args.spiking_student_model, "--spiking_student_model")
    _check_seq_length(max_seq_length, config.max_position_embeddings, "--spiking_student_model")
    if config.extra.get("architectures") not in (None, ["SpikingBertForSequenceClassification"]):
        logger.warning("%s holds a %s: its classifier is untrained, scores will be near chance",
                       args.spiking_student_model, config.extra["architectures"][0])
    student = _load_student(SpikingBertForSequenceClassification, args.spiking_student_model,
                            "--spiking_student_model", num_labels=processor.num_labels, **_student_overrides(args))
    student.to(runtime.device).eval()
    dev_sets = _dev_sets(task, args, tokenizer, max_seq_length)
    model = runtime.wrap_frozen(LogitsOnly(student))
    start = time.perf_counter()
    metrics = evaluate_task(model, task, processor.output_mode, dev_sets, runtime, args.eval_batch_size)
    seconds = time.perf_counter() - start
    results = {
        "task": task, "model": str(args.spiking_student_model), **metrics,
        "t_conv": student.config.t_conv, "vth": student.config.vth, "leak": student.config.leak,
        "max_seq_length": max_seq_length, "examples": sum(len(d) for d in dev_sets.values()),
        "seconds": round(seconds, 3),
    }
    if runtime.is_main and (args.report or args.adaptive_t is not None):
        results.update(_spike_report(args, runtime, task, student, dev_sets["dev"], metrics))
    if runtime.is_main:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.output_dir / "eval_results.json", results)
        _print_table(f"{task} dev evaluation of {args.spiking_student_model}", _flat(results))
        logger.info("wrote %s", args.output_dir / "eval_results.json")
    return 0


def _spike_report(args: argparse.Namespace, runtime: Runtime, task: str, student: nn.Module, dev_set: Dataset,
                  metrics: Dict[str, float]) -> Dict[str, Any]:
    """``--report`` (spike/energy report into ``output_dir/report/``) and ``--adaptive_t`` of ``--do_eval``.

    Returns the fields added to eval_results.json: ``report`` (the written paths) and ``adaptive_t``
    (mean steps used, the metric with adaptive stopping and at the fixed T, their difference).
    """
    from . import report

    loader = DataLoader(dev_set, batch_size=args.eval_batch_size, shuffle=False)
    teacher_config = _teacher_config(args.teacher_model) if args.teacher_model is not None else None
    added: Dict[str, Any] = {}
    stats = None
    if args.report:
        stats = report.collect_spike_stats(student, loader, device=runtime.device, task=task,
                                           teacher_config=teacher_config)
    adaptive = None
    if args.adaptive_t is not None:
        adaptive = report.adaptive_t_eval(student, loader, args.adaptive_t, args.adaptive_window, task,
                                          device=runtime.device, reference=stats)
        metric, t_conv = adaptive.metric, adaptive.t_conv
        value, fixed = adaptive.metrics.get(metric), adaptive.metrics_fixed.get(metric)
        added["adaptive_t"] = {
            "tol": adaptive.tol, "window": adaptive.window, "t_conv": t_conv,
            "mean_steps": adaptive.mean_steps, "min_steps": int(adaptive.steps_per_example.min()),
            "max_steps": int(adaptive.steps_per_example.max()),
            "step_reduction": 1.0 - adaptive.mean_steps / t_conv,
            metric: value, f"{metric}_fixed_T": fixed, f"{metric}_change": value - fixed,
            "agreement_with_fixed_T": adaptive.agreement,
            "sops_per_example": adaptive.sops_per_example,
        }
    if stats is not None:
        extra = {"task": task, "model": str(args.spiking_student_model), **metrics,
                 "teacher_model": str(args.teacher_model) if args.teacher_model is not None else None}
        paths = report.write_report(stats, args.output_dir / "report", extra, adaptive=adaptive)
        added["report"] = {"dir": str(args.output_dir / "report"), **{k: str(v) for k, v in paths.items()}}
        added["spikes_per_example"] = stats.total_spikes_per_example
        added["energy_uj_per_example"] = {"snn": stats.energy_snn_uj,
                                          **{f"ann_{name}": stats.energy_ann_uj(name) for name in stats.ann_sizes}}
    return added


def _flat(record: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested dicts as ``outer.inner`` keys (for the printed table)."""
    flat: Dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _teacher_dev_score(args, runtime: Runtime, task: str, output_mode: str, teacher: nn.Module,
                       dev_sets: Dict[str, Dataset]) -> Dict[str, Any]:
    """The teacher's dev metrics, computed once per output dir (teacher_results.json) and logged."""
    path = args.output_dir / "teacher_results.json"
    if args.continue_train and path.is_file():
        results = json.loads(path.read_text(encoding="utf-8"))
        logger.info("teacher dev (from %s): %s", path.name, results)
        return results
    model = runtime.wrap_frozen(LogitsOnly(teacher))
    metrics = evaluate_task(model, task, output_mode, dev_sets, runtime, args.eval_batch_size)
    metric = glue.main_metric(task)
    chance = chance_level(metric, _labels(dev_sets["dev"]))
    results = {"task": task, "teacher": str(args.teacher_model), **metrics, "chance_" + metric: chance,
               "examples": len(dev_sets["dev"])}
    logger.info("teacher dev: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    if metrics[metric] <= chance + CHANCE_MARGIN:
        logger.warning("the teacher's dev %s %.4f is near chance (%.4f): check --teacher_model (is it fine-tuned "
                       "on %s? does its classifier head match?) before distilling", metric, metrics[metric],
                       chance, task)
    if runtime.is_main:
        atomic_write_json(path, results)
    return results


def _run_task_training(args: argparse.Namespace, runtime: Runtime, task: str, processor) -> int:
    from transformer.modeling import BertForSequenceClassification

    prediction = args.pred_distill or args.train_true_labels
    output_mode, num_labels = processor.output_mode, processor.num_labels
    micro_batch_size = _micro_batch_size(args, runtime)
    tokenizer = _task_tokenizer(args)
    student_config = _student_config(args.spiking_student_model, "--spiking_student_model")
    max_seq_length, epochs, notes = _resolve_task_settings(args, task, prediction)
    teacher_config = _teacher_config(args.teacher_model)
    stride = _check_compatibility(teacher_config, student_config, tokenizer, max_seq_length)
    resume = _check_training_output(args, runtime)
    train_split = "aug" if args.aug_train else "train"
    preflight.check_task_data(task, args.data_dir, [train_split, *_dev_splits(task)], args.skip_bad_rows)
    preflight.check_training_inputs(args, student_config.hidden_size, teacher_config.hidden_size, resume)
    set_seed(args.seed)
    teacher = _load_teacher(BertForSequenceClassification, args.teacher_model, num_labels=num_labels)
    source = resume or args.spiking_student_model
    student = _load_student(SpikingBertForSequenceClassification, source, "--spiking_student_model",
                            num_labels=num_labels, **_student_overrides(args),
                            **_fit_size_override(source, teacher.config.hidden_size))
    copied = _maybe_init_from_teacher(args, student, teacher, stride, args.spiking_student_model, resume)
    student.to(runtime.device)
    teacher.to(runtime.device).eval().requires_grad_(False)

    train_set = _load_split(task, args, train_split, tokenizer, max_seq_length)
    dev_sets = _dev_sets(task, args, tokenizer, max_seq_length)
    _prepare_training_output(args, runtime)         # only now, so that a failed start leaves no output dir
    for note in notes:
        logger.info(note)
    teacher_results = _teacher_dev_score(args, runtime, task, output_mode, teacher, dev_sets)

    if prediction:
        objective = PredictionDistillation(student, output_mode, args.temperature, args.train_true_labels)
        teacher_forward = (_teacher_forward(runtime.wrap_frozen(TeacherOutputs(teacher, "logits").eval()))
                           if objective.needs_teacher else None)
        schedule, stage_name = "warmup_linear", "prediction"
        eval_model = LogitsOnly(student)

        def evaluate() -> Dict[str, float]:
            return evaluate_task(runtime.wrap_frozen(eval_model), task, output_mode, dev_sets, runtime,
                                 args.eval_batch_size)
        main_metric = glue.main_metric(task)
    else:
        objective = IntermediateDistillation(student, stride)
        teacher_forward = _teacher_forward(runtime.wrap_frozen(TeacherOutputs(teacher, "intermediate").eval()))
        schedule, stage_name, evaluate, main_metric = "none", "intermediate", None, None
    target = "gold labels" if prediction and not objective.needs_teacher else "teacher"
    logger.info("task %s, %s distillation (target: %s), %d training examples (%s)", task, stage_name, target,
                len(train_set), train_split)
    example_lengths, collate = _length_grouping(args, train_set, trim=prediction)

    vocab_file = tokenizer.vocab_file
    stage = Stage(
        student=student,
        objective=objective.to(runtime.device),
        make_optimizer=lambda total: build_optimizer(student, args, schedule, total),
        train_dataset=lambda epoch: train_set,
        num_train_examples=lambda epoch: len(train_set),
        save_student=lambda d: student.save_pretrained(d, vocab_file=vocab_file),
        teacher_forward=teacher_forward,
        evaluate=evaluate,
        main_metric=main_metric,
        describe={"stage": stage_name, "task": task},
        example_lengths=example_lengths,
        collate=collate,
    )
    _write_args(args, runtime, stage=stage_name, task=task, max_seq_length_used=max_seq_length,
                num_train_epochs_used=epochs, layer_stride=stride, teacher_dev=teacher_results,
                resumed_from=str(resume) if resume else None, init_from_teacher_tensors=copied)
    config = _trainer_config(args, micro_batch_size, resume, epochs, eval_steps=args.eval_step if prediction else 0)
    summary = Trainer(config, runtime, stage).train()
    if prediction and summary.best_step is not None:
        logger.info("best dev %s %.4f at step %d (teacher: %.4f); best student in %s", main_metric,
                    summary.best_metric, summary.best_step, teacher_results.get(main_metric, math.nan),
                    args.output_dir)
    return 0
