"""Implicit differentiation (SPEC §2): gradients checked against independent computations."""
import pytest
import torch

from models.spiking_bert import SpikingBertForSequenceClassification
from modules.implicit import implicit_reattach, replace
from modules.solvers import SOLVERS
from tests.student_utils import tiny_config, tiny_inputs


def _probe(model, seed=0):
    """A loss touching reps, attention scores and logits, with fixed random weights."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    ids, types, mask = tiny_inputs()
    b, s = ids.shape
    w_reps = [torch.randn(b, s, cfg.fit_size, generator=g, dtype=torch.float64) for _ in range(cfg.num_hidden_layers + 1)]
    w_att = [torch.randn(b, cfg.num_attention_heads, s, s, generator=g, dtype=torch.float64) for _ in range(cfg.num_hidden_layers)]
    w_log = torch.randn(b, cfg.num_labels, generator=g, dtype=torch.float64)

    def head_loss(rates, scores):
        reps = [model.fit_dense(r) for r in rates]
        logits = model.classifier(torch.relu(rates[-1][:, 0]))
        return (sum((r * w).sum() for r, w in zip(reps, w_reps)) + sum((a * w).sum() for a, w in zip(scores, w_att))
                + (logits * w_log).sum())

    return (ids, types, mask), head_loss


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _model(**kw):
    torch.manual_seed(0)
    return SpikingBertForSequenceClassification(tiny_config(layers=2, fit_size=24, **kw)).double().eval()


def test_ann_point_gradients_are_those_of_the_equivalent_network():
    model = _model()
    inputs, head_loss = _probe(model)
    out = model(*inputs)
    head_loss(out.rates, out.attention_scores).backward()
    ours = _grads(model)
    model.zero_grad()

    with torch.no_grad():
        sim = model(*inputs)
    x = model.bert.embeddings(inputs[0], inputs[1])
    mask = (1.0 - inputs[2][:, None, None, :].double()) * -10000.0
    ann_rates, ann_scores = model.bert.equivalent(x, mask, model.config.vth)
    leaves = [r.clone().requires_grad_() for r in sim.rates]          # the loss sees the simulated values
    loss = head_loss(leaves, ann_scores)
    grad_rates = torch.autograd.grad(loss, leaves, retain_graph=True)
    torch.autograd.backward([loss] + ann_rates, [None] + list(grad_rates))
    ref = _grads(model)
    assert ours.keys() == ref.keys() and len(ours) == len(list(model.parameters()))
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-10, atol=1e-12, msg=name)
    assert all(torch.equal(a, b) for a, b in zip(out.rates, sim.rates))   # values are the SNN's


def test_snn_point_gradients_chain_local_jacobians_at_simulated_rates():
    model = _model(ide_point="snn")
    cfg = model.config
    inputs, head_loss = _probe(model, seed=1)
    out = model(*inputs)
    head_loss(out.rates, out.attention_scores).backward()
    ours = _grads(model)
    model.zero_grad()

    with torch.no_grad():
        r = model(*inputs, output_layer_rates=True).layer_rates           # simulated rates of every layer
    clip = lambda c: torch.clamp(c / cfg.vth, 0, 1)
    mask = (1.0 - inputs[2][:, None, None, :].double()) * -10000.0
    keys_out = ["E"] + [f"{k}.O2" for k in range(cfg.num_hidden_layers)]
    score_leaves = [None] * cfg.num_hidden_layers
    # gradient of the loss w.r.t. the rates and scores, evaluated at the simulated values
    rate_leaves = [r[k].clone().requires_grad_() for k in keys_out]
    for k, layer in enumerate(model.bert.encoder.layer):
        a_in = r["E"] if k == 0 else r[f"{k - 1}.O2"]
        q = layer.attention.self.key_value_query(a_in)[2]
        score_leaves[k] = layer.attention.self.attend(q, r[f"{k}.K"], r[f"{k}.V"], mask)[1].detach().requires_grad_()
    loss = head_loss(rate_leaves, score_leaves)
    g_all = torch.autograd.grad(loss, rate_leaves + score_leaves, retain_graph=True)
    loss.backward(inputs=list(model.fit_dense.parameters()) + list(model.classifier.parameters()))
    g = dict(zip(keys_out, g_all[: len(keys_out)]))
    g_scores = g_all[len(keys_out):]

    def push(key, value_fn, inputs_keys, extra=()):
        """Backpropagate g[key] (and extra (output, grad) pairs) through one neuron layer's local function."""
        leaves = [r[i].clone().requires_grad_() for i in inputs_keys]
        outs = value_fn(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        pairs = [(outs[0], g.get(key, torch.zeros_like(outs[0])))] + [(outs[i], e) for i, e in extra]
        torch.autograd.backward([o for o, _ in pairs], [e for _, e in pairs], inputs=leaves + list(model.parameters()))
        for i, leaf in zip(inputs_keys, leaves):
            g[i] = g.get(i, 0) + leaf.grad

    for k in reversed(range(cfg.num_hidden_layers)):
        layer, p, src = model.bert.encoder.layer[k], f"{k}.", ("E" if k == 0 else f"{k - 1}.O2")
        push(p + "O2", lambda i, o1: clip(layer.output(i, o1)), [p + "I", p + "O1"])
        push(p + "I", lambda o1: clip(layer.intermediate(o1)), [p + "O1"])
        push(p + "O1", lambda a, s: clip(layer.attention.output(a, s)), [p + "A", src])

        def att(s, kk, vv):
            c, sc = layer.attention.self.attend(layer.attention.self.key_value_query(s)[2], kk, vv, mask)
            return clip(c), sc
        push(p + "A", att, [src, p + "K", p + "V"], extra=[(1, g_scores[k])])
        push(p + "V", lambda s: clip(layer.attention.self.key_value_query(s)[1]), [src])
        push(p + "K", lambda s: clip(layer.attention.self.key_value_query(s)[0]), [src])
    e = clip(model.bert.embeddings(inputs[0], inputs[1]))
    e.backward(g["E"])
    ref = _grads(model)
    assert ours.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-9, atol=1e-12, msg=name)


def test_snn_and_ann_points_differ():
    ann, snn = _model(), _model(ide_point="snn")
    grads = []
    for model in (ann, snn):
        inputs, head_loss = _probe(model)
        out = model(*inputs)
        head_loss(out.rates, out.attention_scores).backward()
        grads.append(model.bert.encoder.layer[0].intermediate.dense.weight.grad)
    assert not torch.allclose(grads[0], grads[1])


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


def test_bptt_same_values_and_gradients_flow():
    model = _model(train_mode="bptt")
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = model(*inputs)
    out = model(*inputs, output_attentions=True)
    assert all(torch.equal(a, b) for a, b in zip(out.rates, ref.rates))
    (out.logits.sum() + sum(r.sum() for r in out.reps)).backward()
    grad = model.bert.encoder.layer[0].attention.self.key.weight.grad
    assert grad is not None and grad.abs().sum() > 0
