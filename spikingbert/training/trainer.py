"""The training loop shared by every distillation stage.

A stage (see `spikingbert.run.stages`) supplies a `Stage`: its datasets, a teacher
forward, an objective module (student + loss) and, optionally, an evaluation.
The loop adds everything else: batching with a reproducible order, gradient
accumulation, mixed precision, DataParallel / DistributedDataParallel, progress
(`core.progress`), metrics, NaN detection, checkpoints and exact resume.

Resume is exact: the data order of epoch ``e`` is a permutation seeded with
``seed + e`` (`spikingbert.training.sampling.ResumableSampler`), a resumed run skips the
micro-batches already consumed, and the optimizer, loss scaler, loss sums and
every RNG state come back from the checkpoint (`spikingbert.training.state`).

Faults: a NaN/inf loss (or gradient norm) stops the run naming the step, the loss
parts and the last good checkpoint, or, with ``skip_nan_batches`` N, the step is
skipped (no update) up to N times. SIGINT/SIGTERM during training finish the
current optimizer step, save a checkpoint and stop (`TrainingInterrupted`); a
failed write (e.g. a full disk) stops with `OutputWriteError`, the previous
checkpoints intact.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from spikingbert.core.errors import UserError
from spikingbert.core.files import as_write_error, atomic_write_json, describe_os_error, is_disk_full
from spikingbert.core.progress import progress as progress_bar
from spikingbert.runtime import Runtime, get_rng_state, set_rng_state
from spikingbert.training.checkpoint import (
    checkpoint_size,
    install_model_files,
    load_optimizer_state,
    load_training_state,
    optimizer_state_to_save,
    save_checkpoint,
)
from spikingbert.training.sampling import ResumableSampler
from spikingbert.training.stage import Stage, TrainerConfig
from spikingbert.training.state import STATE_VERSION, LossTracker, MetricsLog, TrainingProgress, check_resumable

__all__ = ["Trainer", "TrainingDiverged", "TrainingInterrupted", "OutputWriteError"]

logger = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM stopped training after a checkpoint was saved; exit status 128 + the signal number."""

    prefix = "stopped"

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class OutputWriteError(UserError):
    """A checkpoint, metrics or model file could not be written (e.g. the disk is full)."""


class Trainer:
    """Runs a `Stage` to completion (or resumes it), saving checkpoints along the way."""

    def __init__(self, config: TrainerConfig, runtime: Runtime, stage: Stage, resume_from: Optional[Path] = None):
        self.config = config
        self.runtime = runtime
        self.stage = stage
        self.output_dir = Path(config.output_dir)
        self.world_size = runtime.world_size
        self.micro_batch_size = config.micro_batch_size(runtime.world_size)
        self.resume_from = resume_from
        self.last_checkpoint: Optional[Path] = resume_from
        self.params = [p for p in stage.objective.parameters() if p.requires_grad]
        self._stop_signal = 0

    # ---------------------------------------------------------------- schedule

    def batches_in_epoch(self, epoch: int) -> int:
        """Micro-batches this rank sees in ``epoch``."""
        return self.config.batches_in_epoch(self.stage.num_train_examples(epoch), self.world_size)

    def total_steps(self) -> int:
        """Optimizer steps of the whole run (``max_steps`` or the epochs' worth, rounded up)."""
        return self.config.total_steps(self.stage.num_train_examples, self.world_size)

    # ---------------------------------------------------------------- main loop

    def train(self) -> TrainingProgress:
        """Train (or finish a resumed run); return where it ended."""
        cfg, rt, stage = self.config, self.runtime, self.stage
        total_steps = self.total_steps()
        if total_steps <= 0:
            raise UserError("nothing to train: the training set is empty or `num_train_epochs`/`max_steps` is 0")
        self.optimizer = stage.make_optimizer(total_steps)
        self.scaler = rt.grad_scaler()
        self.tracker = LossTracker(rt.device, check_grad_norm=self.scaler is None)
        progress = TrainingProgress()
        if self.resume_from is not None:
            progress = self._restore(total_steps)
        model = rt.wrap(stage.objective)
        model.train()
        logger.info("training: %d optimizer steps, %d examples per step (%d per micro-batch x %d accumulation x %d "
                    "processes)", total_steps, cfg.train_batch_size,
                    self.micro_batch_size, cfg.gradient_accumulation_steps, self.world_size)
        with self._writing("metrics.jsonl"):
            self.metrics = MetricsLog(self.output_dir / "metrics.jsonl", enabled=rt.is_main,
                                      keep_until_step=progress.global_step if self.resume_from else None,
                                      report_to=cfg.report_to)
        bar = progress_bar(total=total_steps, initial=progress.global_step, desc="train", unit="steps",
                           disable=not rt.is_main)
        self._last_log = (time.perf_counter(), progress.global_step)

        try:
            with self._signals_stop_training():
                while progress.global_step < total_steps:
                    self._run_epoch(model, progress, total_steps, bar)
                    if progress.global_step < total_steps:
                        progress.epoch, progress.batches_done = progress.epoch + 1, 0
        finally:
            bar.close()
            self.metrics.close()

        if rt.is_main and (stage.evaluate is None or progress.best_step is None):
            with self._writing(f"the final model into {self.output_dir}"):
                install_model_files(self.output_dir, stage.save_student)
        if rt.is_main:
            self._write_curves()
        rt.barrier()
        logger.info("training done: %d steps; final model in %s", progress.global_step, self.output_dir)
        return progress

    def _write_curves(self) -> None:
        """``training_curves.png`` from the run's metrics.jsonl; a plot that cannot be drawn is only a warning."""
        from spikingbert.evaluation.curves import write_training_curves

        title = self.stage.title or " ".join(str(v) for v in self.stage.describe.values()) or "training"
        try:
            path = write_training_curves(self.output_dir, title=title, references=self.stage.references)
        except Exception as err:                     # the model is saved: a plot must not fail the run
            logger.warning("could not draw the training curves of %s (%s)", self.output_dir, err)
            return
        if path is not None:
            logger.info("wrote %s", path)

    def _run_epoch(self, model: nn.Module, progress: TrainingProgress, total_steps: int, bar: Any) -> None:
        """The rest of ``progress.epoch`` (or up to the last step): micro-batches grouped into optimizer steps."""
        accum = self.config.gradient_accumulation_steps
        n_batches = self.batches_in_epoch(progress.epoch)
        if n_batches == 0:
            raise UserError(f"the training data of epoch {progress.epoch} is empty")
        if progress.batches_done >= n_batches:
            return
        loader = self._loader(progress.epoch, progress.batches_done)
        for batch_index, batch in enumerate(loader, start=progress.batches_done):
            group_start = batch_index - batch_index % accum
            group_size = min(accum, n_batches - group_start)      # the epoch's last group may be shorter
            is_step = batch_index + 1 == group_start + group_size
            self._forward_backward(model, batch, group_size, sync=is_step)
            if not is_step:
                continue
            self._optimizer_step(progress)
            progress.global_step += 1
            progress.batches_done = batch_index + 1
            bar.update(1)
            self._after_step(model, progress, total_steps, epoch_end=batch_index + 1 == n_batches, bar=bar)
            if progress.global_step >= total_steps:
                return
            self._stop_if_signalled(progress, total_steps)

    def _forward_backward(self, model: nn.Module, batch: Sequence[Tensor], group_size: int, sync: bool) -> None:
        """One micro-batch: teacher and student forward, loss / group_size backward (no host sync)."""
        rt, stage = self.runtime, self.stage
        batch = tuple(t.to(rt.device, non_blocking=True) for t in batch)
        # Under DDP, gradients are all-reduced only on the last micro-batch of a step.
        no_sync = model.no_sync() if (rt.distributed and not sync) else contextlib.nullcontext()
        with no_sync:
            with rt.autocast():
                teacher_out = None
                if stage.teacher_forward is not None:
                    with torch.no_grad():
                        teacher_out = stage.teacher_forward(batch)
                losses = model(batch, teacher_out)
            losses = {k: v.float().mean() for k, v in losses.items()}   # DataParallel: one value per GPU
            loss = losses["loss"] / group_size
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
        self.tracker.add(losses, group_size)

    def _optimizer_step(self, progress: TrainingProgress) -> None:
        """Update the weights (or skip a non-finite step, see `TrainerConfig.skip_nan_batches`); track the
        gradient norm (of the unscaled gradients, before BertAdam's per-tensor clipping)."""
        step = progress.global_step + 1
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.runtime.device)
        skip = False
        if self.config.skip_nan_batches > 0:
            skip = self.runtime.max_over_ranks(int(not self.tracker.step_is_finite(grad_norm))) > 0
        if skip:
            self._skip_step(progress, step, self.tracker.step_parts(grad_norm))
            if self.scaler is not None:
                self.scaler.update()
        elif self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.tracker.end_step(grad_norm, step, skipped=skip)

    def _skip_step(self, progress: TrainingProgress, step: int, parts: Dict[str, float]) -> None:
        progress.skipped_steps += 1
        limit = self.config.skip_nan_batches
        if progress.skipped_steps > limit:
            raise TrainingDiverged(f"the loss is not finite at optimizer step {step} ({_format_parts(parts)}): "
                                   f"{progress.skipped_steps} such steps, more than `skip_nan_batches` {limit}; "
                                   f"training stopped; {self._last_checkpoint_hint()}")
        logger.warning("optimizer step %d: the loss is not finite (%s): step skipped, no update (%d of at most %d)",
                       step, _format_parts(parts), progress.skipped_steps, limit)

    def _after_step(self, model: nn.Module, progress: TrainingProgress, total_steps: int, epoch_end: bool,
                    bar: Any) -> None:
        """Logging, evaluation and checkpointing due after an optimizer step."""
        cfg, step = self.config, progress.global_step
        final = step >= total_steps
        do_log = step % cfg.logging_steps == 0 or epoch_end or final
        do_eval = self.stage.evaluate is not None and cfg.evaluates_at(step, epoch_end, final)
        do_save = cfg.save_total_limit != 0 and ((cfg.save_steps > 0 and step % cfg.save_steps == 0) or final)
        if do_log or do_eval or do_save:
            self._check_finite()
        if do_log:
            self._log(progress, bar)
        if do_eval:
            self._evaluate(progress)
            model.train()
        if do_save:
            self._save(progress, total_steps)

    # ---------------------------------------------------------------- pieces

    def _loader(self, epoch: int, skip_batches: int) -> DataLoader:
        dataset, batch_size = self.stage.train_dataset(epoch), self.micro_batch_size
        lengths = self.stage.example_lengths(epoch) if self.stage.example_lengths is not None else None
        sampler = ResumableSampler(len(dataset), epoch, self.config.seed, rank=self.runtime.rank,
                                   world_size=self.world_size, skip=skip_batches * batch_size, lengths=lengths,
                                   batch_size=batch_size)
        # An own generator keeps the loader from drawing on the global RNG.
        generator = torch.Generator().manual_seed(self.config.seed + epoch)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator,
                          collate_fn=self.stage.collate, pin_memory=self.runtime.device.type == "cuda")

    def _log(self, progress: TrainingProgress, bar: Any) -> None:
        now = time.perf_counter()
        last_time, last_step = self._last_log
        record = self.tracker.flush()
        record.update(step=progress.global_step, epoch=progress.epoch, lr=_current_lr(self.optimizer),
                      steps_per_sec=(progress.global_step - last_step) / max(now - last_time, 1e-9))
        if self.config.skip_nan_batches > 0:
            record["skipped_steps"] = progress.skipped_steps
        self._last_log = (now, progress.global_step)
        with self._writing("metrics.jsonl"):
            self.metrics.append(record)
        bar.set_postfix(loss=f"{record.get('loss', math.nan):.4g}", lr=f"{record['lr']:.3g}",
                        steps_s=f"{record['steps_per_sec']:.2f}")
        logger.debug("step %d: %s", progress.global_step, record)

    def _check_finite(self) -> None:
        """Stop (on every rank) when some rank saw a NaN/inf loss since the last check."""
        reports = self.runtime.all_gather_object(self.tracker.first_bad())
        bad = next((r for r in reports if r is not None), None)
        if bad is None:
            return
        step, parts = bad
        raise TrainingDiverged(f"the loss is not finite at optimizer step {step} ({_format_parts(parts)}); "
                               f"training stopped; {self._last_checkpoint_hint()}, or skip such steps with "
                               "`skip_nan_batches` N")

    def _last_checkpoint_hint(self) -> str:
        if self.last_checkpoint:
            return (f"the last checkpoint is {self.last_checkpoint} (resume from it with `continue_train`, e.g. "
                    "with a lower `learning_rate`)")
        return "no checkpoint was written yet"

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn a failed write of ``what`` (e.g. a full disk, also in torch's or safetensors' writer) into one
        message naming the last complete checkpoint, which the atomic writes leave intact."""
        try:
            yield
        except Exception as caught:
            err = as_write_error(caught)
            if err is None:
                raise
            first = "free some space, then " if is_disk_full(err) else "fix that, then "
            if self.last_checkpoint:
                todo = f"{first}resume from the intact {self.last_checkpoint} with `continue_train`"
            else:
                todo = f"{first}start again (no checkpoint was written yet)"
            raise OutputWriteError(f"{describe_os_error(err)} (writing {what}); {todo}") from caught

    @contextlib.contextmanager
    def _signals_stop_training(self) -> Iterator[None]:
        """While training, SIGINT/SIGTERM only set a flag (see `_stop_if_signalled`); a second signal acts
        as usual (Ctrl-C twice: stop at once)."""
        if not self.config.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}

        def handler(signum, frame):
            self._stop_signal = signum
            for sig, old in previous.items():
                signal.signal(sig, old)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _stop_if_signalled(self, progress: TrainingProgress, total_steps: int) -> None:
        """After a SIGINT/SIGTERM (on any rank): save a checkpoint at this step, then stop."""
        signum = self.runtime.max_over_ranks(self._stop_signal) if self.config.handle_signals else 0
        if not signum:
            return
        step = progress.global_step
        path = self.output_dir / f"checkpoint-{step}"
        if self.config.save_total_limit == 0:
            raise TrainingInterrupted(signum, f"{signal.Signals(signum).name} received: training stopped after "
                                              f"optimizer step {step} of {total_steps}; no checkpoint was saved "
                                              "(`save_total_limit` 0), so the run cannot be resumed")
        if self.last_checkpoint != path:
            self._check_finite()
            self._save(progress, total_steps)
        raise TrainingInterrupted(signum, f"{signal.Signals(signum).name} received: training stopped after "
                                          f"optimizer step {step} of {total_steps} and saved {path}; resume "
                                          "with `continue_train`")

    def _evaluate(self, progress: TrainingProgress) -> None:
        """Evaluate; on a new best, put the student into output_dir (the first evaluation always counts)."""
        stage, rt, step = self.stage, self.runtime, progress.global_step
        metrics = stage.evaluate()
        with self._writing("metrics.jsonl"):
            self.metrics.append({"step": step, "epoch": progress.epoch, "eval": metrics})
        logger.info("step %d dev: %s", step, _format_metrics(metrics))
        value = metrics.get(stage.main_metric) if stage.main_metric else None
        if value is None:
            return
        if progress.best_step is None or _rank(value) > _rank(progress.best_metric):
            progress.best_metric, progress.best_step = float(value), step
            if rt.is_main:
                with self._writing(f"the best model into {self.output_dir}"):
                    install_model_files(self.output_dir, stage.save_student)
                    atomic_write_json(self.output_dir / "best_results.json",
                                      {"step": step, "epoch": progress.epoch, **metrics})
            logger.info("new best %s = %.4f at step %d: saved to %s", stage.main_metric, value, step, self.output_dir)
        rt.barrier()

    def _save(self, progress: TrainingProgress, total_steps: int) -> None:
        rt, step = self.runtime, progress.global_step
        rng = rt.all_gather_object(get_rng_state())
        if rt.is_main:
            state = {
                "version": STATE_VERSION,
                "progress": asdict(progress),
                "total_steps": total_steps,
                "optimizer": optimizer_state_to_save(self.optimizer),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng,
                "tracker": self.tracker.state_dict(),
                "config": self._fingerprint(),
            }
            with self._writing(f"checkpoint-{step}"):
                path = save_checkpoint(self.output_dir, step, self.stage.save_student, state,
                                       self.config.save_total_limit)
            model_bytes, state_bytes = checkpoint_size(path)
            logger.info("saved %s (%.0f MB: student %.0f MB, training state %.0f MB)", path,
                        (model_bytes + state_bytes) / 1e6, model_bytes / 1e6, state_bytes / 1e6)
        self.last_checkpoint = self.output_dir / f"checkpoint-{step}"
        rt.barrier()

    def _restore(self, total_steps: int) -> TrainingProgress:
        """Load optimizer, scaler, loss sums and RNG states from the checkpoint; return its progress."""
        rt, path = self.runtime, self.resume_from
        state = load_training_state(path)
        check_resumable(state, self._fingerprint(), self.stage.describe, path, total_steps)
        load_optimizer_state(self.optimizer, state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.tracker.load_state_dict(state["tracker"])
        rng_states = state["rng"]
        set_rng_state(rng_states[rt.rank] if rt.rank < len(rng_states) else rng_states[0])
        progress = TrainingProgress(**state["progress"])
        logger.info("resumed from %s: step %d, epoch %d, %d micro-batches of it done", path,
                    progress.global_step, progress.epoch, progress.batches_done)
        return progress

    def _fingerprint(self) -> Dict[str, Any]:
        cfg = self.config
        return {"micro_batch_size": self.micro_batch_size,
                "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
                "world_size": self.world_size, "seed": cfg.seed,
                "group_by_length": self.stage.example_lengths is not None, **self.stage.describe}


def _rank(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    get_lr = getattr(optimizer, "get_lr", None)
    if callable(get_lr):
        lrs = get_lr()
        if lrs:
            return float(lrs[0]) + 0.0  # + 0.0 turns -0.0 into 0.0
    return float(optimizer.param_groups[0]["lr"])


def _format_parts(parts: Dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in parts.items())


def _format_metrics(metrics: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
