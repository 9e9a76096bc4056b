"""Adaptive T: each example stops once its prediction has settled.

The rule (`StopRule`, docs/DESIGN.md "Adaptive T") looks only at the classifier's output after every
step ``t``: the logits ``head(count_t / t)`` of the last layer's [CLS] spike count over the first ``t``
steps, i.e. the prediction a run with ``t_conv = t`` would make. Example ``b`` stops at the first step
``t`` with

* ``t >= min_steps``, and
* a margin ``p_1 - p_2`` (the two largest softmax probabilities, float64) of at least ``margin`` at each
  of the steps ``t - window + 1 .. t``, with the same predicted class at all of them;

an example that never qualifies runs the full ``T``. Its prediction is the one at its stop step. The rule
is exact and deterministic: the same logits give the same stops, chunk by chunk (`StopTracker`, inside the
simulation) or over a recorded sequence (`stop_steps`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from spikingbert.core.errors import UsageError
from spikingbert.core.settings import check_setting

__all__ = ["StopRule", "class_margins", "stop_steps", "StopTracker"]


@dataclass(frozen=True)
class StopRule:
    """When an example may stop: ``margin`` (probability margin between the two most probable classes, in
    [0, 1]), held with the same class for ``window`` consecutive steps, not before step ``min_steps``."""

    margin: float
    window: int = 1
    min_steps: int = 1

    def __post_init__(self) -> None:
        check_setting("adaptive_t", float(self.margin))
        check_setting("adaptive_window", int(self.window))
        check_setting("adaptive_min_steps", int(self.min_steps))

    def describe(self) -> str:
        return f"margin {self.margin:g}, window {self.window}, min {self.min_steps} steps"


def class_margins(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted class ``(...,)`` and margin ``p_1 - p_2`` ``(...,)`` (float64 softmax) of logits ``(..., C)``."""
    if logits.shape[-1] < 2:
        raise UsageError("adaptive T stops on the margin between the two most probable classes; a regression "
                         "student (one output) has none: evaluate it without `adaptive_t`")
    probabilities = torch.softmax(logits.to(torch.float64), dim=-1)
    top = torch.topk(probabilities, 2, dim=-1).values
    return logits.argmax(-1), top[..., 0] - top[..., 1]


def _runs(classes: Tensor, margins: Tensor, margin: float, run: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
    """Per step ``(Tc, B)``: how many consecutive steps up to it had a margin >= ``margin`` and its class, carrying
    ``run`` / ``last`` ``(B,)`` (the previous step's count and class) in; returns the counts and the new carry."""
    counts = torch.empty_like(classes)
    for j in range(classes.shape[0]):
        confident = margins[j] >= margin
        run = torch.where(confident, torch.where(classes[j] == last, run + 1, torch.ones_like(run)),
                          torch.zeros_like(run))
        last = classes[j]
        counts[j] = run
    return counts, (run, last)


def stop_steps(classes: Tensor, margins: Tensor, rule: StopRule) -> Tensor:
    """Stop step (1-based) of every example ``(N,)`` under ``rule``, from its class and margin after every step
    ``(N, T)`` (`class_margins` of the logits at steps ``1..T``)."""
    t_conv = classes.shape[1]
    start = (torch.zeros_like(classes[:, 0]), torch.full_like(classes[:, 0], -1))
    counts, _ = _runs(classes.T, margins.T, rule.margin, *start)
    steps = torch.arange(1, t_conv + 1, device=classes.device).unsqueeze(1)
    ok = (counts >= rule.window) & (steps >= rule.min_steps)
    ok[-1] = True
    return ok.to(torch.uint8).argmax(0) + 1


class StopTracker:
    """One batch's adaptive stopping inside the simulation: fed the last layer's [CLS] spikes chunk by chunk
    (`update`), it keeps each example's logits from its stop step and tells when every example has stopped."""

    def __init__(self, rule: StopRule, head: Callable[[Tensor], Tensor], t_conv: int):
        self.rule, self.head, self.t_conv = rule, head, t_conv
        self.count: Optional[Tensor] = None                 # (B, H) [CLS] spikes so far
        self.logits: Optional[Tensor] = None                # (B, C) at each example's stop step
        self.steps: Optional[Tensor] = None                 # (B,) stop step, 0 while running
        self.carry: Optional[tuple[Tensor, Tensor]] = None

    def update(self, t0: int, cls_spikes: Tensor) -> bool:
        """Spikes ``(Tc, B, H)`` of steps ``t0 + 1 .. t0 + Tc``; True once every example has stopped."""
        cumulative = torch.cumsum(cls_spikes, 0)
        if self.count is not None:
            cumulative = cumulative + self.count
        self.count = cumulative[-1]
        steps = torch.arange(t0 + 1, t0 + cls_spikes.shape[0] + 1, device=cls_spikes.device)
        logits = torch.stack([self.head(cumulative[j] / int(t)) for j, t in enumerate(steps.tolist())])
        classes, margins = class_margins(logits)
        if self.steps is None:
            batch = classes.shape[1]
            self.steps = torch.zeros(batch, dtype=torch.long, device=classes.device)
            self.logits = torch.zeros_like(logits[0])
            self.carry = (torch.zeros_like(classes[0]), torch.full_like(classes[0], -1))
        counts, self.carry = _runs(classes, margins, self.rule.margin, *self.carry)
        ok = (counts >= self.rule.window) & (steps >= self.rule.min_steps).unsqueeze(1)
        ok |= (steps == self.t_conv).unsqueeze(1)
        for j in range(ok.shape[0]):
            new = ok[j] & (self.steps == 0)
            self.steps = torch.where(new, steps[j], self.steps)
            self.logits = torch.where(new.unsqueeze(1), logits[j], self.logits)
        return bool((self.steps > 0).all())
