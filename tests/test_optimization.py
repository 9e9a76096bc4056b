"""BertAdam against update rules written out by hand with numpy."""
import io
import math

import numpy as np
import pytest
import torch

from spikingbert.transformer.optimization import BertAdam

B1, B2, EPS, LR, MAX_NORM = 0.9, 0.999, 1e-6, 0.1, 1.0

# Gradients fed at each of the 3 steps: [w (2x2), u (3,)] form the decayed group, [b (2,)] the other.
GRADS = [
    [np.array([[3.0, -1.0], [0.5, 2.0]]), np.array([1.0, 0.0, -2.0]), np.array([0.3, -0.4])],    # group norms 4.5 / 0.5
    [np.array([[0.1, 0.2], [-0.3, 0.1]]), np.array([0.2, -0.1, 0.0]), np.array([2.0, 1.5])],     # 0.45 / 2.5
    [np.array([[-1.0, 0.5], [0.5, 0.5]]), np.array([0.0, 1.0, 1.0]), np.array([-0.1, 0.05])],    # 1.87 / 0.11
]
INIT = [np.array([[0.5, -0.3], [0.8, 0.1]]), np.array([1.0, -1.0, 0.2]), np.array([0.05, -0.02])]


def _schedule_linear(progress, warmup):
    return progress / warmup if progress < warmup else max((progress - 1.0) / (warmup - 1.0), 0.0)


def _expected_params(grads_per_step, warmup, t_total, wd=(0.01, 0.0), max_norm=MAX_NORM, scope="group"):
    """Parameters after each step, from the BertAdam formulas."""
    params = [p.copy() for p in INIT]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    groups = [([0, 1], wd[0]), ([2], wd[1])]
    history = []
    for step, grads in enumerate(grads_per_step):
        lr = LR * _schedule_linear(step / t_total, warmup)
        for members, decay in groups:
            norm = math.sqrt(sum(float((grads[i] ** 2).sum()) for i in members))
            scale = min(1.0, max_norm / (norm + 1e-6)) if max_norm > 0 else 1.0
            for i in members:
                if scope == "tensor" and max_norm > 0:
                    scale = min(1.0, max_norm / (math.sqrt(float((grads[i] ** 2).sum())) + 1e-6))
                g = grads[i] * scale
                m[i] = B1 * m[i] + (1 - B1) * g
                v[i] = B2 * v[i] + (1 - B2) * g * g
                update = m[i] / (np.sqrt(v[i]) + EPS) + decay * params[i]
                params[i] = params[i] - lr * update
        history.append([p.copy() for p in params])
    return history


def _make(warmup=0.4, t_total=3, max_grad_norm=MAX_NORM, schedule="warmup_linear", clip_scope="group"):
    params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in INIT]
    groups = [{"params": params[:2], "weight_decay": 0.01}, {"params": params[2:], "weight_decay": 0.0}]
    opt = BertAdam(groups, lr=LR, warmup=warmup, t_total=t_total, schedule=schedule, b1=B1, b2=B2, e=EPS,
                   max_grad_norm=max_grad_norm, clip_scope=clip_scope)
    return params, opt


def _feed(params, grads):
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g, dtype=torch.float64)


@pytest.mark.parametrize("scope", ["group", "tensor"])
def test_three_steps_match_hand_computation(scope):
    params, opt = _make(clip_scope=scope)
    expected = _expected_params(GRADS, warmup=0.4, t_total=3, scope=scope)
    # Scheduled rates: progress 0 -> 0 (warm-up start), 1/3 -> (1/3)/0.4, 2/3 -> (2/3 - 1)/(0.4 - 1) (decay).
    expected_lrs = [0.0, LR * (1 / 3) / 0.4, LR * (1 / 3) / 0.6]
    for step in range(3):
        assert opt.get_lr() == pytest.approx([expected_lrs[step]] * 2, abs=1e-15)
        _feed(params, GRADS[step])
        opt.step()
        for got, want in zip(params, expected[step]):
            np.testing.assert_allclose(got.detach().numpy(), want, rtol=0, atol=1e-12)
    # Step 0 ran at lr 0 and the later steps really moved the parameters.
    np.testing.assert_array_equal(expected[0][0], INIT[0])
    assert np.abs(expected[2][0] - INIT[0]).max() > 1e-3


def test_clipping_disabled():
    big = [[g * 10 for g in grads] for grads in GRADS]
    params, opt = _make(max_grad_norm=0.0)
    expected = _expected_params(big, warmup=0.4, t_total=3, max_norm=0.0)
    clipped = _expected_params(big, warmup=0.4, t_total=3)
    for step in range(3):
        _feed(params, big[step])
        opt.step()
    for got, want in zip(params, expected[-1]):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=0, atol=1e-12)
    assert max(np.abs(a - b).max() for a, b in zip(expected[-1], clipped[-1])) > 1e-4


@pytest.mark.parametrize("schedule, warmup, t_total, formula", [
    ("warmup_constant", 0.25, 8, lambda x: x / 0.25 if x < 0.25 else 1.0),
    ("warmup_cosine", 0.25, 8, lambda x: x / 0.25 if x < 0.25 else 0.5 * (1 + math.cos(math.pi * x))),
    ("warmup_linear", 0.25, 8, lambda x: x / 0.25 if x < 0.25 else (1 - x) / 0.75),
    ("warmup_linear", -1, 8, lambda x: 1 - x),
    ("none", 0.25, 8, lambda x: 1.0),
    ("warmup_linear", 0.25, -1, lambda x: 1.0),
])
def test_schedules(schedule, warmup, t_total, formula):
    params, opt = _make(warmup=warmup, t_total=t_total, schedule=schedule)
    for step in range(10):
        progress = min(step / t_total, 1.0) if t_total > 0 else 0.0
        assert opt.get_lr() == pytest.approx([LR * formula(progress)] * 2, abs=1e-15), step
        _feed(params, [np.zeros_like(p) for p in INIT])
        opt.step()


def test_state_dict_round_trip_resumes_identically():
    params, opt = _make(warmup=0.2, t_total=6)
    for step in range(2):
        _feed(params, GRADS[step])
        opt.step()
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "params": [p.detach().clone() for p in params]}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed_params, resumed = _make(warmup=0.2, t_total=6)
    with torch.no_grad():
        for p, value in zip(resumed_params, saved["params"]):
            p.copy_(value)
    resumed.load_state_dict(saved["optimizer"])
    assert resumed.get_lr() == opt.get_lr()
    for grads in (GRADS[2], GRADS[0]):
        _feed(params, grads)
        _feed(resumed_params, grads)
        opt.step()
        resumed.step()
    for a, b in zip(params, resumed_params):
        assert torch.equal(a, b)


def test_parameters_without_gradient_are_left_alone():
    params, opt = _make(warmup=-1, t_total=-1)
    _feed(params[:2], GRADS[0][:2])
    opt.step()
    assert params[2].grad is None and torch.equal(params[2].detach(), torch.tensor(INIT[2]))
    assert not opt.state[params[2]]


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(schedule="step"), dict(warmup=1.5), dict(b1=1.0),
                                    dict(e=-1.0)])
def test_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        BertAdam([torch.zeros(1, requires_grad=True)], **{"lr": 0.1, **kwargs})


def test_tensor_and_group_clipping_differ():
    by_tensor = _expected_params(GRADS, warmup=0.4, t_total=3, scope="tensor")
    by_group = _expected_params(GRADS, warmup=0.4, t_total=3, scope="group")
    assert np.abs(by_tensor[-1][1] - by_group[-1][1]).max() > 1e-4
    assert BertAdam([torch.zeros(1, requires_grad=True)], lr=0.1).defaults["clip_scope"] == "tensor"


@pytest.mark.parametrize("eps", [1e-6, 1e-8, 1e-3, 2.0 ** -20, 1e-30, 0.0])
def test_update_bits_match_the_plain_square_root(eps):
    """The update is that of ``m / (sqrt(v) + e)`` to the last bit, for second moments from exact zeros and
    subnormals up to large values (spread around the floor BertAdam raises them to before the square root)."""
    g = torch.cat([torch.zeros(64), torch.logspace(-25, 2, 4000, dtype=torch.float64).float()])
    g = torch.cat([g, -g[::3]])
    p = torch.zeros_like(g, requires_grad=True)
    opt = BertAdam([p], lr=0.5, schedule="none", e=eps, weight_decay=0.0, max_grad_norm=0.0)
    p.grad = g.clone()
    opt.step()
    state = opt.state[p]
    m, v = state["next_m"], state["next_v"]
    assert (v == 0).any() and (v[v > 0] < torch.finfo(torch.float32).tiny).any()     # zeros and subnormals
    expected = torch.zeros_like(g).sub_((m / (torch.sqrt(v) + eps)).mul_(0.5))
    assert torch.equal(p.detach().view(torch.int32), expected.view(torch.int32))
