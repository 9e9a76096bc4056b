"""Training gradients against networks written from the raw weights (tests/helpers/float64_reference.py, torch float64).

The student's parameter gradients for a loss that reads every output the distillation losses read
(``fit_dense`` of the rates of E and each O2, the attention scores, the logits) are compared with
autograd through an independent network built from the student's state dict alone:

* ``ide_point="ann"`` (default): values are the simulated rates; gradients are those of the equivalent
  rate network ``clip(current / vth, 0, 1)`` per neuron layer, run from the embeddings on its own rates
  (its attention scores are the ones the loss reads).
* ``ide_point="snn"``: each neuron layer's ``clip(current / vth)`` is evaluated on the simulated rates of
  its inputs (value = the simulated rate, gradient chained through the local Jacobians).
* ``train_mode="bptt"``: the T-step simulation itself, unrolled, with the spike's derivative replaced by
  the sigmoid surrogate ``alpha * sig(alpha v) * (1 - sig(alpha v))``, ``v = u - vth``.
* ``feedback``: the rate network with the last O2 rate ``z`` fed back into E, ``f(z)``; the gradient of the
  fixed point at the simulated rate ``z*``, with ``g = J_f(z*)^T g + dL/dz`` solved exactly (a dense
  Jacobian and ``torch.linalg.solve``) instead of the model's Broyden iterations.

The simulated values themselves come from the same float64 step loop (no model code), so the
reference is independent end to end. Threshold 0.95: see tests/helpers/kd_world.py (VTH).
"""
from __future__ import annotations

import pytest
import torch

from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification
from tests.helpers import float64_reference as ref
from tests.helpers.students import tiny_config, tiny_inputs

VTH, LEAK, T, ALPHA = 0.95, 0.9, 6, 4.0
LAYERS, HEADS = 2, 2
WORDS, PAD = "bert.embeddings.word_embeddings.weight", 0


def _model(**kw) -> SpikingBertForSequenceClassification:
    torch.manual_seed(0)
    config = tiny_config(layers=LAYERS, heads=HEADS, fit_size=24, t_conv=T, vth=VTH, leak=LEAK, num_labels=3, **kw)
    return SpikingBertForSequenceClassification(config).double().eval()


def _probe(seed: int = 0):
    """loss(reps, scores, logits): fixed random weights on every output."""
    g = torch.Generator().manual_seed(seed)
    b, s = tiny_inputs()[0].shape
    w_reps = [torch.randn(b, s, 24, generator=g, dtype=torch.float64) for _ in range(LAYERS + 1)]
    w_att = [torch.randn(b, HEADS, s, s, generator=g, dtype=torch.float64) for _ in range(LAYERS)]
    w_log = torch.randn(b, 3, generator=g, dtype=torch.float64)

    def loss(reps, scores, logits):
        return (sum((r * w).sum() for r, w in zip(reps, w_reps)) + sum((a * w).sum() for a, w in zip(scores, w_att))
                + (logits * w_log).sum())
    return loss


def _model_grads(model, loss, **kw):
    ids, types, mask = tiny_inputs()
    out = model(ids, types, mask, **kw)
    loss(out.reps, out.attention_scores, out.logits).backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _leaves(model):
    return {k: v.detach().clone().requires_grad_() for k, v in model.state_dict().items()}


def _reference_grads(weights, loss, rates, scores):
    total = loss(ref.fit_dense(weights, rates), scores, ref.student_logits(weights, rates[-1], xp=ref.TORCH))
    grads = dict(zip(weights, torch.autograd.grad(total, list(weights.values()), allow_unused=True)))
    grads[WORDS][PAD] = 0.0           # as in BERT, the [PAD] embedding (padding_idx) is not trained
    return {k: g for k, g in grads.items() if g is not None}


def _simulated(weights):
    with torch.no_grad():
        return ref.student_simulate(weights, *tiny_inputs(), LAYERS, HEADS, T, VTH, LEAK, xp=ref.TORCH)[0]


def _assert_same(ours, reference, rtol=1e-9):
    assert ours.keys() == reference.keys()
    for name, grad in reference.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(ours[name], grad, rtol=rtol, atol=1e-12, msg=name)


def test_ann_point_gradients_are_those_of_the_rate_network_from_the_raw_weights():
    model, loss = _model(), _probe()
    out, ours = _model_grads(model, loss)
    weights = _leaves(model)
    sim = _simulated(weights)
    values = ref.output_rates(sim, LAYERS)
    for got, want in zip(out.rates, values):
        assert torch.equal(got.detach(), want)                    # the values are the simulation's
    ann_rates, ann_scores = ref.student_equivalent(weights, *tiny_inputs(), LAYERS, HEADS, VTH, xp=ref.TORCH)
    rates = [v + (a - a.detach()) for v, a in zip(values, ann_rates)]   # value: simulated; gradient: rate network
    reference = _reference_grads(weights, loss, rates, ann_scores)
    assert len(reference) == len(list(model.parameters()))           # every parameter gets a gradient
    _assert_same(ours, reference)


def test_snn_point_gradients_chain_local_jacobians_at_the_simulated_rates():
    model, loss = _model(ide_point="snn"), _probe(1)
    _, ours = _model_grads(model, loss)
    weights = _leaves(model)
    sim = _simulated(weights)

    def at_simulated_rate(name, current):
        a = torch.clip(current / VTH, 0.0, 1.0)
        return sim[name] + (a - a.detach())

    rates, scores = ref.student_equivalent(weights, *tiny_inputs(), LAYERS, HEADS, VTH, xp=ref.TORCH,
                                           neuron=at_simulated_rate)
    _assert_same(ours, _reference_grads(weights, loss, rates, scores))
    ann_model = _model()
    _, ann = _model_grads(ann_model, loss)
    assert not torch.allclose(ann["bert.encoder.layer.0.intermediate.dense.weight"],
                              ours["bert.encoder.layer.0.intermediate.dense.weight"])


def surrogate_spike(v: torch.Tensor) -> torch.Tensor:
    """Heaviside step forward; derivative of ``sigmoid(ALPHA * v)`` backward."""
    sg = torch.sigmoid(ALPHA * v)
    return (v >= 0).double() + (sg - sg.detach())


@pytest.mark.parametrize("schedule", ["fast", "step"])
def test_bptt_gradients_equal_autograd_through_an_independent_step_loop(schedule):
    model, loss = _model(train_mode="bptt", surrogate="sigmoid", surrogate_alpha=ALPHA, schedule=schedule), _probe(2)
    out, ours = _model_grads(model, loss, output_attentions=True)
    weights = _leaves(model)
    sim, scores = ref.student_simulate(weights, *tiny_inputs(), LAYERS, HEADS, T, VTH, LEAK, xp=ref.TORCH,
                                       spike=surrogate_spike)
    rates = ref.output_rates(sim, LAYERS)
    for got, want in zip(out.rates, rates):
        assert torch.equal(got.detach(), want.detach())
    reference = _reference_grads(weights, loss, rates, scores)
    assert WORDS in reference                                          # BPTT reaches the embeddings
    _assert_same(ours, reference)


@pytest.mark.slow
def test_feedback_gradients_solve_the_linear_fixed_point_exactly():
    model, loss = _model(feedback=True, solver="broyden", solver_tol=1e-11, solver_max_iter=200), _probe(3)
    with torch.no_grad():
        model.bert.feedback.weight.mul_(0.05)                         # a contraction: the fixed point exists
    out, ours = _model_grads(model, loss)
    assert out.solver_info and out.solver_info[0].rel_residual < 1e-9
    weights = _leaves(model)
    sim = _simulated(weights)                                         # with W_fb s_O2 of the previous step
    values = ref.output_rates(sim, LAYERS)
    for got, want in zip(out.rates, values):
        assert torch.equal(got.detach(), want)
    inputs = tiny_inputs()

    def f(z):
        return ref.student_equivalent(weights, *inputs, LAYERS, HEADS, VTH, xp=ref.TORCH, z=z)[0][-1]

    z_star = values[-1]
    z = f(z_star).detach().requires_grad_()          # the model re-attaches f(z*) (one evaluation of f)
    ann_rates, scores = ref.student_equivalent(weights, *inputs, LAYERS, HEADS, VTH, xp=ref.TORCH, z=z)
    rates = [v + (a - a.detach()) for v, a in zip(values, ann_rates)]
    total = loss(ref.fit_dense(weights, rates), scores, ref.student_logits(weights, rates[-1], xp=ref.TORCH))
    names = list(weights)
    *direct, dl_dz = torch.autograd.grad(total, [*weights.values(), z], allow_unused=True)
    n = z_star.numel()
    jacobian = torch.autograd.functional.jacobian(lambda v: f(v.view_as(z_star)).reshape(-1), z_star.reshape(-1),
                                                  vectorize=True)                         # (n, n)
    g = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - jacobian.T, dl_dz.reshape(-1))
    through_z = torch.autograd.grad((f(z_star) * g.view_as(z_star)).sum(), list(weights.values()), allow_unused=True)
    reference = {}
    for name, a, b in zip(names, direct, through_z):
        if a is not None or b is not None:
            reference[name] = (0 if a is None else a) + (0 if b is None else b)
    reference[WORDS][PAD] = 0.0
    assert "bert.feedback.weight" in reference
    _assert_same(ours, reference, rtol=1e-6)
