"""Implicit differentiation (docs/DESIGN.md, "Training by implicit differentiation"): the feedback fixed point's
implicit backward against the unrolled iteration, the solver wiring, and the replace op. The gradients of the ann
and snn IDE points and of BPTT are checked against networks written from the raw weights in
test_gradients_independent.py."""
import pytest
import torch

from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification
from spikingbert.modules.implicit import implicit_reattach, replace
from spikingbert.modules.solvers import SOLVERS
from tests.helpers.students import tiny_config, tiny_inputs


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _model(**kw):
    torch.manual_seed(0)
    return SpikingBertForSequenceClassification(tiny_config(layers=2, fit_size=24, **kw)).double().eval()


@pytest.mark.slow
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_implicit_gradient_matches_unrolled_fixed_point(solver):
    torch.manual_seed(0)
    cfg = tiny_config(layers=1, hidden=16, heads=2, inter=32, feedback=True, initializer_range=0.3)
    model = SpikingBertForSequenceClassification(cfg).double().eval()
    with torch.no_grad():
        model.bert.feedback.weight.mul_(0.05)
    ids, types, mask_ = tiny_inputs()
    mask = (1.0 - mask_[:, None, None, :].double()) * -10000.0
    w = torch.randn(3, 9, 16, dtype=torch.float64)

    def loss_of(rates):
        return sum((r * w).sum() * (j + 1) for j, r in enumerate(rates))

    x = model.bert.embeddings(ids, types)
    f = lambda z: model.bert.equivalent(x, mask, cfg.vth, z_feedback=z)[0][-1]
    z = torch.zeros_like(x)
    for _ in range(80):                                   # unrolled with autograd
        z = f(z)
    loss_of(model.bert.equivalent(x, mask, cfg.vth, z_feedback=z)[0]).backward()
    unrolled = _grads(model)
    model.zero_grad()

    x = model.bert.embeddings(ids, types)
    info = []
    z_re = implicit_reattach(f, z.detach(), solver, max_iter=200, tol=1e-12, info_sink=info)
    loss_of(model.bert.equivalent(x, mask, cfg.vth, z_feedback=z_re)[0]).backward()
    implicit = _grads(model)
    assert len(info) == 1 and info[0].rel_residual < 1e-8
    for name, ref in unrolled.items():
        rel = (implicit[name] - ref).norm() / (ref.norm() + 1e-30)
        assert rel <= 1e-4, (name, float(rel))


def test_feedback_training_step_reports_solver():
    torch.manual_seed(0)
    model = SpikingBertForSequenceClassification(tiny_config(layers=1, feedback=True, solver_tol=1e-6)).double().train()
    with torch.no_grad():
        model.bert.feedback.weight.mul_(0.1)
    out = model(*tiny_inputs())
    out.logits.sum().backward()
    assert len(out.solver_info) == 1 and out.solver_info[0].nstep >= 1
    assert model.bert.feedback.weight.grad.abs().sum() > 0


def test_no_feedback_runs_no_solver(monkeypatch):
    calls = []
    monkeypatch.setitem(SOLVERS, "broyden", lambda *a, **k: calls.append(1))
    model = _model()
    model(*tiny_inputs()).logits.sum().backward()
    assert calls == []


def test_replace_forward_value_backward_surrogate():
    value = torch.tensor([0.25, 0.5], dtype=torch.float64)
    s = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    out = replace(value, s * 3)
    assert torch.equal(out, value)
    (out * torch.tensor([1.0, 10.0], dtype=torch.float64)).sum().backward()
    assert s.grad.tolist() == [3.0, 30.0]
