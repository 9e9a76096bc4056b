"""What a checkpoint records about a training run besides the weights: the progress, the running loss sums,
``metrics.jsonl`` (and its TensorBoard copy), and the fingerprint a resumed run must match.

``training_state.pt`` (see `spikingbert.training.checkpoint`) holds `STATE_VERSION`, the `TrainingProgress`, the
optimizer and loss-scaler states, every rank's RNG state, the `LossTracker` sums and the fingerprint.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from spikingbert.core.errors import UsageError, UserError, one_line
from spikingbert.core.files import atomic_write_text, read_json_lines

__all__ = ["STATE_VERSION", "TENSORBOARD_DIR", "MetricsLog", "summary_writer_class",
           "scalar_fields", "TrainingProgress", "LossTracker", "check_resumable"]

logger = logging.getLogger(__name__)

STATE_VERSION = 2       # 2: gradient norm in the loss sums, skipped_steps in the progress
#: Fingerprint fields of checkpoints written before the field existed.
_FINGERPRINT_DEFAULTS = {"group_by_length": False}
#: Where `report_to` tensorboard writes its event files, in the directory of ``metrics.jsonl``.
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, the file rewritten atomically on every append.

    ``report_to`` "tensorboard": every record also goes to TensorBoard event files in `TENSORBOARD_DIR` beside
    the file, each numeric field a scalar at the record's ``step`` (`scalar_fields`), flushed with the file. Each
    run starts a new event file that hides the earlier files' events after ``keep_until_step`` (a resumed run's
    checkpoint; all of them for a run started over), so TensorBoard shows what the file holds. `close` ends the
    event file.
    """

    def __init__(self, path: Path, keep_until_step: Optional[int] = None, enabled: bool = True,
                 report_to: str = "none"):
        self.path = Path(path)
        self.enabled = enabled
        self.records: List[Dict[str, Any]] = []
        self._scalars = None
        if enabled and keep_until_step is not None and self.path.is_file():
            self.records = [r for r in read_json_lines(self.path) if r.get("step", 0) <= keep_until_step]
            self._flush()
        if enabled and report_to == "tensorboard":
            self._scalars = summary_writer_class()(
                str(self.path.parent / TENSORBOARD_DIR),
                purge_step=0 if keep_until_step is None else keep_until_step + 1)

    def append(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        self._flush()
        if self._scalars is not None:
            for tag, value in scalar_fields(record):
                self._scalars.add_scalar(tag, value, global_step=record["step"])
            self._scalars.flush()

    def close(self) -> None:
        """Close the TensorBoard event file (if any); later appends go to ``metrics.jsonl`` only."""
        if self._scalars is not None:
            self._scalars.close()
            self._scalars = None

    def _flush(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))


def scalar_fields(record: Mapping[str, Any], prefix: str = "") -> Iterator[Tuple[str, float]]:
    """``(name, value)`` of every number in a metrics record but its ``step``; a nested record's fields are named
    ``outer/inner`` (the dev metrics: ``eval/acc``)."""
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from scalar_fields(value, f"{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and name != "step":
            yield name, float(value)


def summary_writer_class() -> type:
    """torch's ``SummaryWriter`` (`report_to` tensorboard); a `UsageError` saying what to install when the
    tensorboard package cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise UsageError(f"`report_to` tensorboard needs the tensorboard package ({one_line(err)}): "
                         "pip install tensorboard (or pip install 'spikingbert[tensorboard]')") from None
    return SummaryWriter


@dataclass
class TrainingProgress:
    """Where a run stands (saved in every checkpoint).

    Attributes:
        global_step: optimizer steps done.
        epoch: the current epoch.
        batches_done: micro-batches of ``epoch`` already consumed (by this rank).
        best_metric, best_step: the best evaluation so far (prediction KD).
        skipped_steps: optimizer steps skipped for a non-finite loss (``skip_nan_batches``).
    """

    global_step: int = 0
    epoch: int = 0
    batches_done: int = 0
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    skipped_steps: int = 0


class LossTracker:
    """Per-step means of the loss parts and of the gradient norm, summed on the device since the last
    log, and the first non-finite step, without host syncs.

    ``keys``: the objective's loss parts, then ``grad_norm``. With ``check_grad_norm`` off (fp16 with a
    loss scaler, whose overflow steps have infinite gradients by design) only the losses are checked.
    """

    def __init__(self, device: torch.device, check_grad_norm: bool = True):
        self.device = device
        self.check_grad_norm = check_grad_norm
        self.keys: Optional[List[str]] = None
        self.sums: Optional[Tensor] = None
        self.pending: Optional[Tensor] = None      # this step's loss parts so far (P,)
        self.bad_parts: Optional[Tensor] = None
        self.steps = 0
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, losses: Dict[str, Tensor], group_size: int) -> None:
        """Add one micro-batch's losses (``group_size`` micro-batches make the current optimizer step)."""
        if self.keys is None:
            self.keys = list(losses) + ["grad_norm"]
        values = torch.stack([losses[k].detach() for k in self.keys[:-1]]) / group_size
        self.pending = values if self.pending is None else self.pending + values

    def _step_values(self, grad_norm: Tensor) -> Tensor:
        """This step's loss parts and gradient norm (P+1,)."""
        return torch.cat([self.pending, grad_norm.detach().float().reshape(1).to(self.pending.device)])

    def _finite(self, values: Tensor) -> Tensor:
        return torch.isfinite(values if self.check_grad_norm else values[:-1]).all()

    def step_is_finite(self, grad_norm: Tensor) -> bool:
        """Whether this step's losses (and gradient norm) are finite (one host sync)."""
        return bool(self._finite(self._step_values(grad_norm)))

    def step_parts(self, grad_norm: Tensor) -> Dict[str, float]:
        return dict(zip(self.keys, self._step_values(grad_norm).tolist()))

    def end_step(self, grad_norm: Tensor, step: int, skipped: bool = False) -> None:
        """Count optimizer step ``step`` (a skipped one is left out of the means)."""
        values = self._step_values(grad_norm)
        self.pending = None
        if skipped:
            return
        if self.sums is None:
            self.sums = torch.zeros_like(values)
            self.bad_parts = torch.zeros_like(values)
        self.sums += values
        self.steps += 1
        newly_bad = ~self._finite(values) & (self.bad_step < 0)
        self.bad_step = torch.where(newly_bad, torch.full_like(self.bad_step, step), self.bad_step)
        self.bad_parts = torch.where(newly_bad, values, self.bad_parts)

    def state_dict(self) -> Dict[str, Any]:
        """The sums since the last log (so a resumed run logs the same means)."""
        sums = self.sums.cpu() if self.sums is not None else None
        return {"keys": list(self.keys or []), "sums": sums, "steps": self.steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state["sums"] is not None:
            self.keys = list(state["keys"])
            self.sums = state["sums"].to(self.device)
            self.bad_parts = torch.zeros_like(self.sums)
            self.steps = int(state["steps"])

    def first_bad(self):
        """(step, parts) of the first non-finite step seen, or None (one host sync)."""
        step = int(self.bad_step.item())
        if step < 0:
            return None
        return step, dict(zip(self.keys, self.bad_parts.tolist()))

    def flush(self) -> Dict[str, float]:
        """Mean of each loss part and of the gradient norm over the optimizer steps since the last flush
        (one host sync)."""
        if self.sums is None or self.steps == 0:
            return {}
        record = {k: v / self.steps for k, v in zip(self.keys, self.sums.tolist())}
        self.sums.zero_()
        self.steps = 0
        return record


def check_resumable(state: Dict[str, Any], fingerprint: Mapping[str, Any], stage_keys: Mapping[str, Any],
                    resume_from: Path, total_steps: int) -> None:
    """Refuse a checkpoint of another format or stage; warn about settings that differ from this run's
    ``fingerprint`` (``stage_keys``: the fields that must match) and about a changed number of total steps."""
    if state.get("version") != STATE_VERSION:
        raise UserError(f"{resume_from} was written by an incompatible version; start over "
                        "with `overwrite_output_dir`")
    saved = {**_FINGERPRINT_DEFAULTS, **state["config"]}
    for key in sorted(set(saved) | set(fingerprint)):
        if saved.get(key) != fingerprint.get(key):
            if key in stage_keys:
                raise UserError(f"cannot resume {resume_from}: it was written with {key}="
                                f"{saved.get(key)!r}, this run has {fingerprint.get(key)!r}")
            logger.warning("resuming with %s=%r (checkpoint: %r): the run will not repeat the original one",
                           key, fingerprint.get(key), saved.get(key))
    if state["total_steps"] != total_steps:
        logger.warning("resuming with %d total steps (checkpoint: %d)", total_steps, state["total_steps"])
