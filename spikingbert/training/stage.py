"""What a training run consists of: the loop's settings (`TrainerConfig`) and what a stage plugs into the loop
(`Stage`: its model, objective, data, teacher and evaluation). `spikingbert.training.trainer.Trainer` runs them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from spikingbert.core.errors import UsageError

__all__ = ["TrainerConfig", "Stage"]


@dataclass(frozen=True)
class TrainerConfig:
    """Settings of the training loop.

    Attributes:
        output_dir: where checkpoints, metrics and the final (or best) model go.
        train_batch_size: examples per optimizer step, over all processes and accumulation steps.
        gradient_accumulation_steps: micro-batches per optimizer step.
        num_train_epochs: epochs (may be fractional); ignored when ``max_steps`` > 0.
        max_steps: optimizer steps to run; 0 = derive from the epochs.
        save_steps: write ``checkpoint-{step}`` every this many steps (0 = only at the end).
        save_total_limit: keep only the newest this many checkpoints (None = all; 0 = write none: only the model,
            and no resume).
        eval_steps: evaluate every this many steps and at every epoch end (0 = never).
        logging_steps: log averaged losses every this many steps (the only host syncs of the loop).
        skip_nan_batches: skip (no update) up to this many optimizer steps with a NaN/inf loss or gradient
            norm, then stop; 0 = stop at the first (checked at the next log/eval/save without a host sync
            per step; skipping needs one).
        handle_signals: on SIGINT/SIGTERM, save a checkpoint after the current step and stop.
        report_to: where the metrics records go besides ``metrics.jsonl``: "none" or "tensorboard" (event files in
            ``output_dir/tensorboard``, see `spikingbert.training.state.MetricsLog`).
    """

    output_dir: Path
    train_batch_size: int
    num_train_epochs: float = 1.0
    gradient_accumulation_steps: int = 1
    max_steps: int = 0
    save_steps: int = 0
    save_total_limit: Optional[int] = None
    eval_steps: int = 0
    logging_steps: int = 50
    seed: int = 42
    skip_nan_batches: int = 0
    handle_signals: bool = True
    report_to: str = "none"

    def micro_batch_size(self, world_size: int) -> int:
        """Examples per forward pass of one process: the optimizer step's batch split over accumulation and
        processes."""
        per_step = self.gradient_accumulation_steps * world_size
        if self.train_batch_size % per_step:
            raise UsageError(f"`train_batch_size` {self.train_batch_size} must be a multiple of "
                             f"`gradient_accumulation_steps` x processes = {per_step}")
        return self.train_batch_size // per_step

    def batches_in_epoch(self, num_examples: int, world_size: int = 1) -> int:
        """Micro-batches one process runs in an epoch of ``num_examples`` examples (the last one may be short)."""
        return math.ceil(math.ceil(num_examples / world_size) / self.micro_batch_size(world_size))

    def steps_in_epoch(self, num_examples: int, world_size: int = 1) -> int:
        """Optimizer steps of such an epoch: its micro-batches in groups of ``gradient_accumulation_steps`` (the
        last group may be short)."""
        return math.ceil(self.batches_in_epoch(num_examples, world_size) / self.gradient_accumulation_steps)

    def total_steps(self, examples_in_epoch: Callable[[int], int], world_size: int = 1) -> int:
        """Optimizer steps of the whole run: ``max_steps``, else the epochs' worth (a fractional last epoch rounded
        up); ``examples_in_epoch(e)`` is the size of epoch ``e``'s training set."""
        if self.max_steps > 0:
            return self.max_steps
        whole = int(self.num_train_epochs)
        total = sum(self.steps_in_epoch(examples_in_epoch(e), world_size) for e in range(whole))
        fraction = self.num_train_epochs - whole
        if fraction > 0:
            total += math.ceil(fraction * self.steps_in_epoch(examples_in_epoch(whole), world_size))
        return total

    def evaluates_at(self, step: int, epoch_end: bool, final: bool) -> bool:
        """Whether a stage with an evaluation evaluates after optimizer ``step``: every ``eval_steps`` steps, at the end
        of every epoch and after the last step."""
        return (self.eval_steps > 0 and step % self.eval_steps == 0) or epoch_end or final

    def evaluations(self, examples_in_epoch: Callable[[int], int], world_size: int = 1) -> int:
        """How many dev evaluations a whole run of a stage with an evaluation makes (`evaluates_at`)."""
        total = self.total_steps(examples_in_epoch, world_size)
        epoch_ends, step, epoch = set(), 0, 0
        while step < total:
            per_epoch = self.steps_in_epoch(examples_in_epoch(epoch), world_size)
            if per_epoch == 0:
                break
            step, epoch = step + per_epoch, epoch + 1
            epoch_ends.add(step)
        return sum(self.evaluates_at(s, s in epoch_ends, s == total) for s in range(1, total + 1))


@dataclass
class Stage:
    """What one training stage plugs into the loop.

    Attributes:
        student: the model being trained (not wrapped).
        objective: module holding ``student`` whose forward ``(batch, teacher_out)`` returns a
            dict of scalar losses, ``"loss"`` (what is minimised) plus named parts.
        make_optimizer: builds the optimizer for a given number of total optimizer steps.
        train_dataset: the training set of an epoch (general KD reads one file per epoch).
        num_train_examples: size of that set, without loading it.
        save_student: writes a complete student dir into the given directory.
        teacher_forward: the teacher's outputs for a batch (on the device), or None without teacher.
        evaluate: dev metrics of the current student (called on every rank), or None.
        main_metric: the key of ``evaluate``'s dict that selects the best model (higher is better).
        describe: extra fields for the training state (e.g. the stage name), checked on resume.
        example_lengths: the real length of every example of an epoch's training set, (N,); with it the
            training batches are grouped by length (`group_by_length`), without it they are random.
        collate: the DataLoader's ``collate_fn`` for training batches (None: torch's default), e.g.
            `spikingbert.data.glue.collate_trimmed` where the loss reads the logits only.
        title: what the run is, in words, for its ``training_curves.png`` (default: the ``describe`` values).
        references: dev scores drawn as lines on the curves' dev-metric axis (e.g. the teacher's, the majority
            class's).
    """

    student: nn.Module
    objective: nn.Module
    make_optimizer: Callable[[int], torch.optim.Optimizer]
    train_dataset: Callable[[int], Dataset]
    num_train_examples: Callable[[int], int]
    save_student: Callable[[Path], None]
    teacher_forward: Optional[Callable[[Sequence[Tensor]], Any]] = None
    evaluate: Optional[Callable[[], Dict[str, float]]] = None
    main_metric: Optional[str] = None
    describe: Dict[str, Any] = field(default_factory=dict)
    example_lengths: Optional[Callable[[int], Sequence[int]]] = None
    collate: Optional[Callable[[List[Any]], Any]] = None
    title: Optional[str] = None
    references: Dict[str, float] = field(default_factory=dict)
