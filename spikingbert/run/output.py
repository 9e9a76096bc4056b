"""Run plumbing shared by the stage runners: the session (devices, logging), the output directory of a
training run, ``args.json``, the micro-batch size, and the task's datasets."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

from torch import Tensor
from torch.utils.data import Dataset

from core.errors import UsageError, UserError
from core.files import atomic_write_json
from core.output_dir import claim_output_dir
from spikingbert.data import glue
from spikingbert.evaluation.dev import dev_splits
from spikingbert.runtime import Runtime, setup_logging, setup_runtime
from spikingbert.training.checkpoint import check_output_dir, prepare_output_dir, worth_keeping

__all__ = ["session", "OutputDir", "write_args_json", "micro_batch_size", "TaskData", "length_grouping"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def session(devices: Any) -> Iterator[Runtime]:
    """The run's `Runtime` (devices, torchrun process group) for a plan's ``devices`` (`spikingbert.run.plan.Devices`),
    with console logging; closed at the end."""
    runtime = setup_runtime(devices.no_cuda, devices.local_rank, devices.fp16)
    setup_logging(None, runtime.is_main, devices.debug)
    try:
        yield runtime
    finally:
        runtime.close()


@dataclass
class OutputDir:
    """``--output_dir`` and the flags that decide what may happen to it (see `spikingbert.checkpoint`).

    Used as a context manager around the run: `prepare` claims the directory for this run
    (`spikingbert.run_dir.claim_output_dir`: an OS lock, stale temporaries removed) until the block
    ends; when the block fails before the run wrote a checkpoint or a model, what the run created
    in the directory is removed again.
    """

    path: Path
    continue_train: bool = False
    overwrite: bool = False
    _claims: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, *exc_info) -> bool:
        return self._claims.__exit__(*exc_info)

    def check(self, runtime: Runtime) -> Optional[Path]:
        """The output-dir rules, checked (on the main process) without writing; returns the checkpoint to resume."""
        return _on_main(runtime, lambda: check_output_dir(self.path, self.continue_train, self.overwrite))

    def prepare(self, runtime: Runtime, debug: bool) -> Optional[Path]:
        """Check, create and claim the directory on the main process, share the outcome, start logging into it;
        returns the checkpoint to resume from."""
        def claim_and_prepare() -> Optional[Path]:
            check_output_dir(self.path, self.continue_train, self.overwrite)
            claim = self._claims.enter_context(claim_output_dir(self.path, "--output_dir", keep=worth_keeping))
            resume = prepare_output_dir(self.path, self.continue_train, self.overwrite)
            claim.mark()                       # files --overwrite_output_dir kept are not this run's
            return resume

        resume = _on_main(runtime, claim_and_prepare)
        setup_logging(self.path, runtime.is_main, debug)
        return resume


def _on_main(runtime: Runtime, find: Callable[[], Optional[Path]]) -> Optional[Path]:
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


def write_args_json(output_dir: Path, runtime: Runtime, flags: Mapping[str, Any], **resolved: Any) -> None:
    """``output_dir/args.json`` (main process): every command-line flag, the values resolved from them, the devices."""
    if not runtime.is_main:
        return
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items()}
    record.update(resolved)
    record.update(world_size=runtime.world_size, n_gpu=runtime.n_gpu, device=str(runtime.device))
    atomic_write_json(output_dir / "args.json", record)


def micro_batch_size(train_batch_size: int, gradient_accumulation_steps: int, world_size: int) -> int:
    """Examples per forward pass of one process: the optimizer step's batch split over accumulation and processes."""
    per_step = gradient_accumulation_steps * world_size
    if train_batch_size % per_step:
        raise UsageError(f"--train_batch_size {train_batch_size} must be a multiple of "
                         f"--gradient_accumulation_steps x processes = {per_step}")
    return train_batch_size // per_step


@dataclass
class TaskData:
    """The splits of one GLUE task as datasets (`glue.load_task_dataset`), tokenized for ``max_seq_length``."""

    task: str
    data_dir: Path
    tokenizer: Any
    max_seq_length: int
    cache_dir: Optional[Path] = None
    skip_bad_rows: bool = False

    def load(self, split: str) -> Dataset:
        dataset, _, stats = glue.load_task_dataset(self.task, self.data_dir, split, self.tokenizer, self.max_seq_length,
                                                   cache_dir=self.cache_dir, skip_bad_rows=self.skip_bad_rows)
        if stats.num_bad_rows:
            logger.warning("%s: skipped %d malformed rows", stats.path, stats.num_bad_rows)
        if len(dataset) == 0:
            raise UserError(f"{stats.path} has no examples")
        return dataset

    def dev_sets(self) -> Dict[str, Dataset]:
        """The task's dev sets by split name (`evaluation.dev_splits`)."""
        return {split: self.load(split) for split in dev_splits(self.task)}


def length_grouping(enabled: bool, train_set: Dataset, trim: bool
                    ) -> Tuple[Optional[Callable[[int], Tensor]], Optional[Callable]]:
    """`Stage.example_lengths` and `Stage.collate` for ``--group_by_length`` (both None when not ``enabled``).

    ``trim``: also cut each batch to its longest example, right only where the loss reads the
    logits alone (an intermediate loss averages over every padded position, as published).
    """
    if not enabled:
        return None, None
    lengths = glue.example_lengths(train_set)
    how = (", each trimmed to its longest example" if trim else
           " (not trimmed: the intermediate losses average over the padded positions too)")
    logger.info("--group_by_length: batches of similar length (mean %.1f real tokens of %d)%s",
                lengths.float().mean().item(), train_set[0][0].numel(), how)
    return (lambda epoch: lengths), (glue.collate_trimmed if trim else None)
