"""Memory a run needs at least, checked against the machine before anything is allocated.

The estimate is a lower bound in float32 bytes (half for activations under ``--fp16``): the weights of the
student and the teacher, the optimizer's state of the model being trained (gradient and Adam's two moments),
and the activations of one micro-batch that must exist at the same time — for the student's training step
what autograd keeps for the backward pass (per layer at least the input of the K/V/Q projections, the
attention probabilities, the intermediate and output activations: ``(3H + nh*S + I)`` numbers per token), once
for IDE and once per time step for BPTT; for an evaluation step the current of one simulated step, ``B*S*max(I,
nh*S)`` numbers. A run whose lower bound exceeds the machine's memory (the RAM, or the limit of the container it
runs in; a GPU's memory on CUDA) cannot finish, so it is refused with the knobs that reduce it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

from spikingbert.core.errors import UsageError

__all__ = ["MemoryNeed", "bert_parameters", "machine_memory", "student_step_need", "teacher_step_need",
           "check_memory", "check_run_memory"]

FLOAT = 4
GIB = float(1 << 30)


@dataclass
class MemoryNeed:
    """Bytes a run needs at least: ``weights`` (and optimizer state) and ``activations`` (one micro-batch)."""

    weights: int = 0
    activations: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.activations


def bert_parameters(cfg) -> int:
    """Parameters of a BERT (teacher or student) with the sizes of ``cfg`` (`transformer.configuration.BertFields`)."""
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    embeddings = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
    return embeddings + layers * layer + h * h + h


def _per_token(cfg, seq_len: int) -> int:
    """Numbers autograd keeps per token and layer: K/V/Q input, attention probabilities, intermediate, output."""
    return 3 * cfg.hidden_size + cfg.num_attention_heads * seq_len + cfg.intermediate_size


def student_step_need(student, batch: int, seq_len: int, train: bool, fp16: bool = False) -> MemoryNeed:
    """A student's training (IDE or BPTT, ``student.train_mode``) or evaluation step on ``batch`` x ``seq_len``."""
    act = 2 if fp16 else FLOAT
    params = bert_parameters(student)
    step = batch * seq_len * max(student.intermediate_size, student.num_attention_heads * seq_len) * act
    if not train:
        return MemoryNeed(params * FLOAT, step)
    kept = batch * seq_len * student.num_hidden_layers * _per_token(student, seq_len) * act
    if student.train_mode == "bptt":
        kept *= student.t_conv
    return MemoryNeed(4 * params * FLOAT, max(kept, step))


def teacher_step_need(teacher, batch: int, seq_len: int, train: bool = False, fp16: bool = False) -> MemoryNeed:
    """A BERT teacher's forward (``train``: fine-tuning step, weights with gradient and Adam's moments)."""
    act = 2 if fp16 else FLOAT
    params = bert_parameters(teacher)
    if train:
        kept = batch * seq_len * teacher.num_hidden_layers * _per_token(teacher, seq_len) * act
        return MemoryNeed(4 * params * FLOAT, kept)
    return MemoryNeed(params * FLOAT, batch * seq_len * max(teacher.intermediate_size,
                                                            teacher.num_attention_heads * seq_len) * act)


def _cgroup_limit() -> Optional[int]:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def machine_memory(device) -> Tuple[int, str]:
    """``(bytes, what)`` of the memory a run on ``device`` (a `torch.device`) can use."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).total_memory, f"GPU {index}"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit()
    if limit is not None and limit < total:
        return limit, "the container's memory limit"
    return total, "RAM"


def check_memory(needs: Sequence[MemoryNeed], device, what: str, knobs: str) -> None:
    """Raise `UsageError` when the weights of ``needs`` plus the largest of their activations exceed the machine's
    memory; ``what`` says which run (e.g. ``micro-batches of 32 x 128 tokens, t_conv 100 (bptt)``), ``knobs`` which
    flags lower the need."""
    weights = sum(n.weights for n in needs)
    activations = max((n.activations for n in needs), default=0)
    available, where = machine_memory(device)
    if weights + activations <= available:
        return
    raise UsageError(
        f"{what} needs at least {_gib(weights + activations)} of memory (weights and optimizer state "
        f"{_gib(weights)}, activations {_gib(activations)}) but {where} holds {_gib(available)}: {knobs}")


def _gib(n: int) -> str:
    value = n / GIB
    return f"{value:.1f} GiB" if value < 1e4 else f"{value:.3g} GiB" if math.isfinite(value) else "inf GiB"


def check_run_memory(runtime: Any, student: Any, teacher: Any, micro_batch: int, eval_batch: int, seq_len: int,
                     length_knob: str = "--max_seq_length") -> None:
    """Refuse a stage whose micro-batch (per device), sequence length and t_conv cannot fit in memory: the student's
    training (``micro_batch`` > 0) or evaluation step, with the ``teacher``'s forward (None: no teacher)."""
    devices = max(1, runtime.n_gpu)
    train, evaluation = math.ceil(micro_batch / devices), math.ceil(eval_batch / devices)
    needs = [student_step_need(student, train, seq_len, train=True, fp16=runtime.fp16)] if train else []
    if evaluation:
        needs.append(student_step_need(student, evaluation, seq_len, train=False, fp16=runtime.fp16))
    if teacher is not None:
        needs.append(teacher_step_need(teacher, max(train, evaluation), seq_len, fp16=runtime.fp16))
    bptt = train and student.train_mode == "bptt"
    what = (f"a micro-batch of {max(train, evaluation)} x {seq_len} tokens per device at t_conv {student.t_conv}"
            f"{' (--train_mode bptt keeps every step)' if bptt else ''}")
    batch_flags = "--train_batch_size (or raise --gradient_accumulation_steps)" if train else "--eval_batch_size"
    check_memory(needs, runtime.device, what, f"lower {batch_flags}, {length_knob}{' or --t_conv' if bptt else ''}")
