"""Run plumbing shared by the stage runners: the session (devices, logging), the output directory of a
training run, ``args.json``, the micro-batch size, and the task's datasets."""
from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

from torch import Tensor
from torch.utils.data import Dataset

from spikingbert.core.errors import UsageError, UserError
from spikingbert.core.files import atomic_write_json
from spikingbert.core.output_dir import LOCK_NAME, check_output_location, claim_output_dir
from spikingbert.data import glue
from spikingbert.evaluation.dev import dev_splits
from spikingbert.runtime import Runtime, setup_logging, setup_runtime
from spikingbert.training.checkpoint import CHECKPOINT_RE, OUTPUT_ARTIFACTS, latest_checkpoint, worth_keeping

__all__ = ["session", "OutputDir", "write_args_json", "TaskData", "length_grouping"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def session(devices: Any) -> Iterator[Runtime]:
    """The run's `Runtime` (devices, torchrun process group) for a plan's ``devices`` (`spikingbert.run.plan.Devices`),
    with console logging; closed at the end (after a run that ended well, once every rank got there)."""
    runtime = setup_runtime(devices.no_cuda, devices.local_rank, devices.fp16)
    setup_logging(None, runtime.is_main, devices.debug)
    try:
        yield runtime
    except BaseException:
        runtime.close()
        raise
    runtime.close(wait_for_peers=True)


@dataclass
class OutputDir:
    """``--output_dir`` and the flags that decide what may happen to it.

    A non-empty directory needs ``--continue_train`` (resume from its latest complete checkpoint) or
    ``--overwrite_output_dir`` (this project's files in it are removed first). Used as a context manager
    around the run: `prepare` claims the directory for this run (`core.output_dir.claim_output_dir`: an OS
    lock, stale temporaries removed) until the block ends; when the block fails before the run wrote a
    checkpoint or a model, what the run created in the directory is removed again.
    """

    path: Path
    continue_train: bool = False
    overwrite: bool = False
    _claims: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, *exc_info) -> bool:
        return self._claims.__exit__(*exc_info)

    def _rules(self) -> Optional[Path]:
        """The rules above, checked without writing; the checkpoint ``--continue_train`` resumes from (or None)."""
        check_output_location(self.path, "--output_dir")
        if not (self.continue_train or self.overwrite) and self.path.is_dir() and any(
                p.name != LOCK_NAME for p in self.path.iterdir()):
            raise UsageError(f"--output_dir {self.path} is not empty: pass --continue_train to resume from its latest "
                             "checkpoint, --overwrite_output_dir to start over, or choose another directory")
        return latest_checkpoint(self.path) if self.continue_train else None

    def check(self, runtime: Runtime) -> Optional[Path]:
        """The rules, checked (on the main process) without writing; returns the checkpoint to resume from."""
        return _on_main(runtime, self._rules)

    def prepare(self, runtime: Runtime, debug: bool) -> Optional[Path]:
        """Check, create and claim the directory on the main process (removing a previous run's files when
        overwriting), share the outcome, start logging into it; returns the checkpoint to resume from."""
        def claim_and_prepare() -> Optional[Path]:
            resume = self._rules()
            claim = self._claims.enter_context(claim_output_dir(self.path, "--output_dir", keep=worth_keeping))
            if self.continue_train and resume is None:
                logger.warning("--continue_train: no complete checkpoint in %s, starting from the beginning", self.path)
            elif self.overwrite and not self.continue_train:
                _remove_run_files(self.path)
            claim.mark()                       # files --overwrite_output_dir kept are not this run's
            return resume

        resume = _on_main(runtime, claim_and_prepare)
        setup_logging(self.path, runtime.is_main, debug)
        return resume


def _remove_run_files(directory: Path) -> None:
    """A previous run's checkpoints and files (`OUTPUT_ARTIFACTS`) in ``directory``; other files stay."""
    doomed = [p for p in directory.iterdir() if CHECKPOINT_RE.match(p.name) or p.name in OUTPUT_ARTIFACTS]
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()                    # a file, or a link: the link goes, never what it points to
    if doomed:
        logger.info("--overwrite_output_dir: removed the previous run's files from %s", directory)


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
