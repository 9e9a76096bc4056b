"""Adaptive T's stopping rule against hand-built logit sequences and an independent loop over its definition:
the offline form (`stop_steps`, the calibration's `rule_stops`), the one inside the simulation (`StopTracker`),
and the calibration's choice of margin and minimum steps against a brute-force search."""
import itertools
import math
import random

import numpy as np
import pytest
import torch

from spikingbert.core.errors import UsageError
from spikingbert.evaluation.calibrate import MARGIN_GRID, calibrate, rule_stops
from spikingbert.models.stopping import StopRule, StopTracker, class_margins, stop_steps

#: Logit differences (class 1 minus class 0) after steps 1..8; the margin is tanh(|d| / 2): d = 2 -> 0.76,
#: d = 0.2 -> 0.10. Rule below: margin 0.4, window 2, minimum 3 steps.
HAND = [
    ([2, 2, 2, 2, 2, 2, 2, 2], 3, 1),             # confident from the start: stops at the minimum
    ([-2, -2, 2, 2, 2, 2, 2, 2], 4, 1),           # the class changes at step 3: two steps of class 1 end at 4
    ([0.2] * 8, 8, 1),                            # never confident: runs the full T
    ([0.2, 0.2, 2, 0.2, 2, 2, 2, 2], 6, 1),       # a dip at step 4 restarts the count
    ([2, 2, -2, -2, 2, -2, 2, -2], 4, 0),         # class 0 held at steps 3 and 4
    ([0.2] * 7 + [2], 8, 1),                      # confident only at the last step: T, with its prediction
]
HAND_RULE = StopRule(margin=0.4, window=2, min_steps=3)


def _hand_logits() -> torch.Tensor:
    """(N, T, 2) logits [0, d] of the `HAND` sequences."""
    d = torch.tensor([row for row, _, _ in HAND], dtype=torch.float64)
    return torch.stack([torch.zeros_like(d), d], dim=-1)


def _reference_stop(logits: list[list[float]], rule: StopRule) -> int:
    """The rule's definition as a plain loop: the first step t >= min_steps at which each of the steps
    t - window + 1 .. t had the same arg-max and a softmax margin >= the rule's (float64, math.exp)."""
    def class_and_margin(row):
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        probs = sorted((e / sum(exps) for e in exps), reverse=True)
        return row.index(top), probs[0] - probs[1]

    seen = [class_and_margin(row) for row in logits]
    for t in range(rule.min_steps, len(logits) + 1):
        if t < rule.window:
            continue
        window = seen[t - rule.window:t]
        if all(c == window[-1][0] and m >= rule.margin for c, m in window):
            return t
    return len(logits)


def _tracker_stops(logits: torch.Tensor, rule: StopRule, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed the tracker chunk by chunk; its head returns the given logits of each step in turn."""
    steps = iter(range(logits.shape[1]))
    tracker = StopTracker(rule, lambda rate: logits[:, next(steps)], logits.shape[1])
    spikes = torch.zeros(logits.shape[1], logits.shape[0], 1, dtype=logits.dtype)
    for t0 in range(0, logits.shape[1], chunk):
        if tracker.update(t0, spikes[t0:t0 + chunk]):
            break
    return tracker.steps, tracker.logits


def test_hand_built_sequences_stop_where_the_rule_says():
    logits = _hand_logits()
    expected = torch.tensor([stop for _, stop, _ in HAND])
    classes, margins = class_margins(logits)
    assert margins[0, 0].item() == pytest.approx(math.tanh(1.0), abs=1e-15)
    assert torch.equal(stop_steps(classes, margins, HAND_RULE), expected)
    assert [_reference_stop(row.tolist(), HAND_RULE) for row in logits] == expected.tolist()
    table = rule_stops(classes.numpy(), margins.numpy(), HAND_RULE.margin, HAND_RULE.window)
    assert table[HAND_RULE.min_steps - 1].tolist() == expected.tolist()
    for chunk in (1, 3, 8):
        steps, final = _tracker_stops(logits, HAND_RULE, chunk)
        assert torch.equal(steps, expected), chunk
        assert final.argmax(1).tolist() == [label for _, _, label in HAND]
        assert torch.equal(final, logits[torch.arange(len(HAND)), expected - 1])


def test_three_classes_use_the_two_most_probable():
    logits = torch.tensor([[[1.0, 1.0, -5.0], [3.0, 0.0, 0.0], [3.0, 0.0, 0.0]]], dtype=torch.float64)
    classes, margins = class_margins(logits)
    p = math.exp(3) / (math.exp(3) + 2)
    assert margins[0].tolist() == pytest.approx([0.0, p - (1 - p) / 2, p - (1 - p) / 2], abs=1e-15)
    assert classes[0].tolist() == [0, 0, 0]
    assert stop_steps(classes, margins, StopRule(0.5, 2, 1)).tolist() == [3]
    assert stop_steps(classes, margins, StopRule(0.5, 1, 1)).tolist() == [2]


@pytest.mark.slow
def test_random_sequences_and_rules_agree_with_the_definition():
    rng = random.Random(0)
    for trial in range(60):
        n, t_conv, c = rng.randint(1, 6), rng.randint(1, 9), rng.randint(2, 4)
        logits = torch.tensor([[[rng.choice([-2.0, -0.5, 0.0, 0.4, 1.0, 3.0]) for _ in range(c)]
                                for _ in range(t_conv)] for _ in range(n)], dtype=torch.float64)
        rule = StopRule(rng.choice([0.0, 0.1, 0.3, 0.6, 0.95]), rng.randint(1, 3), rng.randint(1, t_conv))
        expected = [_reference_stop(row.tolist(), rule) for row in logits]
        classes, margins = class_margins(logits)
        assert stop_steps(classes, margins, rule).tolist() == expected, trial
        table = rule_stops(classes.numpy(), margins.numpy(), rule.margin, rule.window)
        assert table[rule.min_steps - 1].tolist() == expected, trial
        assert _tracker_stops(logits, rule, rng.randint(1, t_conv))[0].tolist() == expected, trial


def test_rules_out_of_range_and_regression_are_refused():
    for margin, window, min_steps in ((1.5, 1, 1), (-0.1, 1, 1), (0.5, 0, 1), (0.5, 1, 0)):
        with pytest.raises(UsageError):
            StopRule(margin, window, min_steps)
    with pytest.raises(UsageError, match="regression"):
        class_margins(torch.zeros(2, 3, 1))


def _brute_force(classes, margins, labels, budget, window, index):
    """The calibration's definition as a loop over every rule of the grid, with `_reference_stop`'s logic."""
    t_conv = classes.shape[1]

    def stops(margin, min_steps):
        out = []
        for n in index:
            seen = list(zip(classes[n].tolist(), margins[n].tolist()))
            stop = t_conv
            for t in range(max(min_steps, window), t_conv + 1):
                if all(c == seen[t - 1][0] and m >= margin for c, m in seen[t - window:t]):
                    stop = t
                    break
            out.append(stop)
        return out

    fixed = np.mean([classes[n, -1] == labels[n] for n in index])
    best = None
    for margin, min_steps in itertools.product(MARGIN_GRID, range(1, t_conv + 1)):
        s = stops(margin, min_steps)
        acc = np.mean([classes[n, t - 1] == labels[n] for n, t in zip(index, s)])
        if acc >= fixed - budget / 100 - 1e-12:
            key = (np.mean(s), -acc, margin, min_steps)
            if best is None or key < best[0]:
                best = (key, margin, min_steps, acc)
    return best


@pytest.mark.slow
@pytest.mark.parametrize("budget, window", [(0.0, 1), (5.0, 1), (10.0, 2)])
def test_calibration_picks_the_rule_a_brute_force_search_picks(budget, window):
    rng = np.random.default_rng(int(budget) + window)
    n, t_conv = 24, 5
    labels = rng.integers(0, 2, n)
    # Examples drift towards their label (with noise): later steps are right more often and more confident.
    drift = np.linspace(-0.5, 2.0, t_conv)[None, :] * np.where(labels == 1, 1, -1)[:, None]
    d = drift + rng.normal(0, 1.0, (n, t_conv))
    logits = torch.from_numpy(np.stack([np.zeros_like(d), d], -1))
    classes, margins = (x.numpy() for x in class_margins(logits))
    score = lambda p, y: float(np.mean(p == y))                                   # noqa: E731
    result = calibrate(classes, margins, labels, score, budget, window)

    everyone = list(range(n))
    (mean, neg_acc, margin, min_steps), *_ = _brute_force(classes, margins, labels, budget, window, everyone)
    assert (result.rule.margin, result.rule.min_steps, result.rule.window) == (margin, min_steps, window)
    assert result.mean_steps == pytest.approx(mean) and result.metric == pytest.approx(-neg_acc)
    assert result.fixed == score(classes[:, -1], labels)
    # Cross-validation: each half is stopped by the rule chosen on the other half.
    stops = {}
    for fit, held_out in ((everyone[0::2], everyone[1::2]), (everyone[1::2], everyone[0::2])):
        _, m, k, _ = _brute_force(classes, margins, labels, budget, window, fit)
        for i in held_out:
            stops[i] = _reference_stop(logits[i].tolist(), StopRule(m, window, k))
    cv_acc = np.mean([classes[i, stops[i] - 1] == labels[i] for i in everyone])
    assert result.cross_validated["metric"] == pytest.approx(cv_acc)
    assert result.cross_validated["mean_steps"] == pytest.approx(np.mean(list(stops.values())))
