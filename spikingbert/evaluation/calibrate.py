"""Choosing adaptive T's margin and minimum steps on the dev set for a metric budget (``--adaptive_budget``).

Every rule of the grid (`MARGIN_GRID` x minimum steps ``1..T``, at the given window) is applied to the
recorded class and margin of every dev example after every step (`SpikeStats.step_classes` /
``step_margins``, one fixed-T pass); the rule chosen is the one with the fewest mean steps whose dev metric
is at most ``budget`` points below the fixed T's (ties: the higher metric, then the smaller margin and
minimum). The rule that never stops early is in the grid, so a rule is always found. The choice is made
on the set it is then reported on; `Calibration.cross_validated` says how it does on examples it was not
chosen on (two folds: chosen on the even-numbered examples, applied to the odd ones, and the other way round).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from spikingbert.models.stopping import StopRule

__all__ = ["MARGIN_GRID", "Calibration", "run_lengths", "rule_stops", "calibrate"]

#: Margins the calibration tries: 0, 0.005, ..., 1.
MARGIN_GRID = tuple(k / 200 for k in range(201))


@dataclass(frozen=True)
class Calibration:
    """The rule `calibrate` chose for ``budget`` points and what it gave on the dev set: ``fixed`` (the metric at
    T), ``metric`` and ``mean_steps`` with the rule; ``cross_validated``: the metric and mean steps when each
    example's rule was chosen on the other half of the examples."""

    budget: float
    rule: StopRule
    fixed: float
    metric: float
    mean_steps: float
    cross_validated: dict[str, float]
    candidates: int

    def to_dict(self) -> dict[str, Any]:
        return {"budget_pt": self.budget, "margin": self.rule.margin, "min_steps": self.rule.min_steps,
                "window": self.rule.window, "chosen_on": "dev set", "candidates": self.candidates,
                "metric_fixed_T": self.fixed, "metric": self.metric, "mean_steps": self.mean_steps,
                "cross_validated": self.cross_validated}


def run_lengths(classes: np.ndarray, margins: np.ndarray, margin: float) -> np.ndarray:
    """``(N, T)``: consecutive steps up to each step with a margin >= ``margin`` and that step's class (the
    quantity `models.stopping.StopRule` compares with its window), from the classes and margins ``(N, T)``."""
    runs = np.zeros(classes.shape, dtype=np.int64)
    run = np.zeros(classes.shape[0], dtype=np.int64)
    for t in range(classes.shape[1]):
        same = classes[:, t] == classes[:, t - 1] if t else np.zeros(classes.shape[0], dtype=bool)
        run = np.where(margins[:, t] >= margin, np.where(same & (run > 0), run + 1, 1), 0)
        runs[:, t] = run
    return runs


def rule_stops(classes: np.ndarray, margins: np.ndarray, margin: float, window: int) -> np.ndarray:
    """``(T, N)``: row ``m - 1`` holds every example's stop step (1-based) under the rule (``margin``, ``window``,
    minimum ``m`` steps), for every minimum ``m = 1..T``."""
    n, t_conv = classes.shape
    ok = run_lengths(classes, margins, margin) >= window
    following = np.empty((n, t_conv), dtype=np.int64)         # first step >= t that qualifies (T if none)
    following[:, -1] = t_conv
    for t in range(t_conv - 2, -1, -1):
        following[:, t] = np.where(ok[:, t], t + 1, following[:, t + 1])
    return following.T


def calibrate(classes: np.ndarray, margins: np.ndarray, labels: np.ndarray, score: Callable[[np.ndarray,
              np.ndarray], float], budget: float, window: int) -> Calibration:
    """The rule for ``budget`` points (see the module docstring). ``score(predictions, labels)`` is the dev metric
    (higher is better); ``classes`` / ``margins`` ``(N, T)`` as `SpikeStats` records them."""
    everyone = np.arange(classes.shape[0])
    rule, metric, mean_steps, candidates = _choose(classes, margins, labels, score, budget, window, everyone)
    folds = (everyone[0::2], everyone[1::2])
    stops = np.empty(len(everyone), dtype=np.int64)
    for fit, held_out in (folds, folds[::-1]):
        if len(fit) == 0 or len(held_out) == 0:
            stops[held_out] = classes.shape[1]
            continue
        chosen = _choose(classes, margins, labels, score, budget, window, fit)[0]
        stops[held_out] = rule_stops(classes[held_out], margins[held_out], chosen.margin, window)[chosen.min_steps - 1]
    predictions = classes[everyone, stops - 1]
    return Calibration(budget=budget, rule=rule, fixed=score(classes[:, -1], labels), metric=metric,
                       mean_steps=mean_steps, candidates=candidates,
                       cross_validated={"metric": score(predictions, labels), "mean_steps": float(stops.mean())})


def _choose(classes: np.ndarray, margins: np.ndarray, labels: np.ndarray, score: Callable, budget: float,
            window: int, index: np.ndarray) -> tuple[StopRule, float, float, int]:
    """(rule, its metric, its mean steps, rules tried) on the examples ``index``."""
    classes, margins, labels = classes[index], margins[index], labels[index]
    bound = score(classes[:, -1], labels) - budget / 100.0

    @functools.lru_cache(maxsize=8)
    def stops_for(margin: float) -> np.ndarray:
        return rule_stops(classes, margins, margin, window)

    order = sorted((float(mean), margin, m + 1) for margin in MARGIN_GRID
                   for m, mean in enumerate(stops_for.__wrapped__(margin).mean(1)))
    best: Optional[tuple[float, float, float, int]] = None
    for mean, margin, min_steps in order:
        if best is not None and mean > best[0]:
            break
        value = score(classes[np.arange(len(labels)), stops_for(margin)[min_steps - 1] - 1], labels)
        if value >= bound - 1e-12 and (best is None or value > best[1]):
            best = (mean, value, margin, min_steps)
    assert best is not None                                  # the rule that never stops early meets any budget
    mean, value, margin, min_steps = best
    return StopRule(margin, window, min_steps), value, mean, len(order)

