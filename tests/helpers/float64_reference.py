"""The math of the behaviour contract written out in float64, for tests that check the code against it.

Nothing here imports the project. Weights are a dict of arrays keyed as in BERT (teacher and student
share the names), read from a saved ``model.safetensors`` by `load_weights`; inputs are integer
arrays. Every function runs on numpy float64 arrays (``xp=NUMPY``, the default: values) or on torch
float64 tensors (``xp=TORCH``: the same expressions under autograd, for gradient checks).

* `teacher_forward`: BERT — hidden states (embedding output first), pre-softmax attention scores with
  the additive mask ``(1 - mask) * -10000``, logits of the ``classifier(tanh(pooler))`` head.
* `student_simulate`: the spiking student's T-step simulation (charge, fire, reset by subtraction, leak),
  every neuron layer (E, K, V, A, O1, I, O2) fed with the spikes of the same step; returns the average
  spiking rate of every layer and the attention scores averaged over the steps.
* `student_equivalent`: the equivalent rate network, ``clip(current / vth, 0, 1)`` per neuron layer, run
  on its own rates (the ``ann`` IDE point) — its attention scores are what the attention loss reads.
* the KD losses: `rep_loss`, `att_loss` (entries <= -100 zeroed), `soft_cross_entropy` (mean over batch
  and classes, temperature tau), `cross_entropy`, `mse`.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from safetensors.numpy import load_file
from scipy.special import erf

NUMPY = SimpleNamespace(erf=erf, exp=np.exp, log=np.log, sqrt=np.sqrt, tanh=np.tanh, clip=np.clip, arange=np.arange,
                        relu=lambda x: np.maximum(x, 0.0), f64=lambda a: np.asarray(a, dtype=np.float64),
                        amax=lambda x: x.max(-1, keepdims=True))


def _torch_ops() -> SimpleNamespace:
    import torch

    return SimpleNamespace(erf=torch.erf, exp=torch.exp, log=torch.log, sqrt=torch.sqrt, tanh=torch.tanh,
                           clip=torch.clip, arange=torch.arange, relu=torch.relu,
                           f64=lambda a: torch.as_tensor(a).double(),
                           amax=lambda x: x.amax(-1, keepdim=True))


TORCH = _torch_ops()


def load_weights(model_dir: Path) -> Dict[str, np.ndarray]:
    """``model.safetensors`` of a model directory as float64 arrays."""
    return {k: v.astype(np.float64) for k, v in load_file(str(Path(model_dir) / "model.safetensors")).items()}


def layer_norm(x, weight, bias, eps: float = 1e-12, xp=NUMPY):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / xp.sqrt(var + eps) * weight + bias


def gelu(x, xp=NUMPY):
    return 0.5 * x * (1.0 + xp.erf(x / math.sqrt(2.0)))


def log_softmax(x, xp=NUMPY):
    shifted = x - xp.amax(x)
    return shifted - xp.log(xp.exp(shifted).sum(-1, keepdims=True))


def softmax(x, xp=NUMPY):
    return xp.exp(log_softmax(x, xp))


def _dense(w, name: str, x):
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def _ln(w, name: str, x, xp):
    return layer_norm(x, w[f"{name}.weight"], w[f"{name}.bias"], xp=xp)


def additive_mask(mask, xp=NUMPY):
    """(B, S) 0/1 -> (B, 1, 1, S): 0 where attended, -10000 at padding."""
    return (1.0 - xp.f64(mask)[:, None, None, :]) * -10000.0


def _heads(x, nh: int):
    b, s, h = x.shape
    return x.reshape(b, s, nh, h // nh).swapaxes(1, 2)                         # (B, nh, S, dh)


def _attention(q, k, v, mask, nh: int, xp):
    """Per head ``softmax(q k^T / sqrt(dh) + mask) v``; returns the context (B, S, H) and the scores."""
    b, s, h = q.shape
    scores = _heads(q, nh) @ _heads(k, nh).swapaxes(-1, -2) / math.sqrt(h // nh) + mask
    context = softmax(scores, xp) @ _heads(v, nh)                              # (B, nh, S, dh)
    return context.swapaxes(1, 2).reshape(b, s, h), scores


def embeddings(w, ids, types, xp=NUMPY):
    """``LayerNorm(word + position + token type)`` (B, S, H)."""
    e = "bert.embeddings"
    x = w[f"{e}.word_embeddings.weight"][ids] + w[f"{e}.position_embeddings.weight"][xp.arange(ids.shape[1])] \
        + w[f"{e}.token_type_embeddings.weight"][types]
    return _ln(w, f"{e}.LayerNorm", x, xp)


def teacher_forward(w, ids, types, mask, layers: int, heads: int, xp=NUMPY):
    """BERT in eval mode: (L+1 hidden states, L attention scores, logits or None)."""
    m = additive_mask(mask, xp)
    h = embeddings(w, ids, types, xp)
    hidden, scores = [h], []
    for k in range(layers):
        p = f"bert.encoder.layer.{k}"
        context, sc = _attention(_dense(w, f"{p}.attention.self.query", h), _dense(w, f"{p}.attention.self.key", h),
                                 _dense(w, f"{p}.attention.self.value", h), m, heads, xp)
        a = _ln(w, f"{p}.attention.output.LayerNorm", _dense(w, f"{p}.attention.output.dense", context) + h, xp)
        inner = gelu(_dense(w, f"{p}.intermediate.dense", a), xp)
        h = _ln(w, f"{p}.output.LayerNorm", _dense(w, f"{p}.output.dense", inner) + a, xp)
        hidden.append(h)
        scores.append(sc)
    logits = None
    if "classifier.weight" in w:
        logits = _dense(w, "classifier", xp.tanh(_dense(w, "bert.pooler.dense", h[:, 0])))
    return hidden, scores, logits


#: ``neuron(name, current) -> output``: a neuron layer's output (spikes of a step, or rates) for its current.
Neuron = Callable[[str, object], object]


def encoder_layer(w, k: int, heads: int, mask, s_in, neuron: Neuron, xp=NUMPY):
    """The six neuron layers of encoder ``k`` fed with ``s_in`` (the input layer's spikes or rates).

    Returns the O2 output and the attention scores ``Q K^T / sqrt(dh) + mask`` (Q = W_Q s_in + b_Q, K and
    V the outputs of layers K and V).
    """
    p = f"bert.encoder.layer.{k}"
    s_k = neuron(f"{k}.K", _dense(w, f"{p}.attention.self.key", s_in))
    s_v = neuron(f"{k}.V", _dense(w, f"{p}.attention.self.value", s_in))
    context, scores = _attention(_dense(w, f"{p}.attention.self.query", s_in), s_k, s_v, mask, heads, xp)
    s_a = neuron(f"{k}.A", context)
    s_o1 = neuron(f"{k}.O1", _ln(w, f"{p}.attention.output.LayerNorm",
                                 _dense(w, f"{p}.attention.output.dense", s_a) + s_in, xp))
    s_i = neuron(f"{k}.I", gelu(_dense(w, f"{p}.intermediate.dense", s_o1), xp))
    s_o2 = neuron(f"{k}.O2", _ln(w, f"{p}.output.LayerNorm", _dense(w, f"{p}.output.dense", s_i) + s_o1, xp))
    return s_o2, scores


def student_simulate(w, ids, types, mask, layers: int, heads: int, t_conv: int, vth: float, leak: float = 1.0,
                     xp=NUMPY, spike: Optional[Callable] = None) -> Tuple[Dict[str, object], List[object]]:
    """The simulation step by step: (average spiking rate of every layer "E", "{k}.K", ..., "{k}.O2";
    attention scores averaged over the steps). ``spike(v)`` is ``v >= 0`` as 0/1 unless given (e.g. with a
    surrogate gradient). With feedback weights (``bert.feedback.weight``) layer E also receives
    ``W_fb s_O2(L)`` of the previous step."""
    spike = spike or (lambda v: xp.f64(v >= 0))
    m = additive_mask(mask, xp)
    x = embeddings(w, ids, types, xp)
    s_last = 0.0 * x
    membrane: Dict[str, object] = {}
    counts: Dict[str, object] = {}

    def fire(name: str, current):
        u = membrane.get(name, 0.0) + current                                   # charge
        s = spike(u - vth)                                                      # fire
        membrane[name] = (u - vth * s) * leak                                   # reset by subtraction, leak
        counts[name] = counts.get(name, 0.0) + s
        return s

    score_sums = [0.0] * layers
    for _ in range(t_conv):
        s = fire("E", _feedback_current(w, x, s_last))
        for k in range(layers):
            s, scores = encoder_layer(w, k, heads, m, s, fire, xp)
            score_sums[k] = score_sums[k] + scores
        s_last = s
    return {name: count / t_conv for name, count in counts.items()}, [s / t_conv for s in score_sums]


def _feedback_current(w, x, z):
    """Layer E's current: ``x``, plus ``W_fb z`` (the last O2 layer's output fed back) with feedback weights."""
    return x + z @ w["bert.feedback.weight"].T if "bert.feedback.weight" in w else x


def student_equivalent(w, ids, types, mask, layers: int, heads: int, vth: float, xp=NUMPY,
                       neuron: Optional[Neuron] = None, z=None):
    """The equivalent rate network: (rates of E and each O2, attention scores per layer).

    ``neuron(name, current)`` defaults to ``clip(current / vth, 0, 1)`` (the ``ann`` point: the network
    runs on its own rates). ``z``: the last O2 rate fed back into E (feedback weights only)."""
    neuron = neuron or (lambda name, current: xp.clip(current / vth, 0.0, 1.0))
    m = additive_mask(mask, xp)
    x = embeddings(w, ids, types, xp)
    a = neuron("E", x if z is None else _feedback_current(w, x, z))
    rates, scores = [a], []
    for k in range(layers):
        a, sc = encoder_layer(w, k, heads, m, a, neuron, xp)
        rates.append(a)
        scores.append(sc)
    return rates, scores


def output_rates(rates: Dict[str, object], layers: int) -> list:
    """Rates of E and of each O2 layer, in order."""
    return [rates["E"]] + [rates[f"{k}.O2"] for k in range(layers)]


def fit_dense(w, rates: Sequence) -> list:
    return [_dense(w, "fit_dense", r) for r in rates]


def student_logits(w, last_rate, xp=NUMPY):
    """``classifier(relu(a_O2(L)[:, 0]))``."""
    return _dense(w, "classifier", xp.relu(last_rate[:, 0]))


# ------------------------------------------------------------------------------------------ losses

def mse(a, b) -> float:
    return float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())


def rep_loss(student_reps: Sequence[np.ndarray], teacher_hidden: Sequence[np.ndarray], stride: int) -> float:
    return sum(mse(rep, teacher_hidden[j * stride]) for j, rep in enumerate(student_reps))


def att_loss(student_scores: Sequence[np.ndarray], teacher_scores: Sequence[np.ndarray], stride: int) -> float:
    total = 0.0
    for j, s in enumerate(student_scores):
        t = teacher_scores[j * stride + stride - 1]
        total += mse(np.where(s <= -100, 0.0, s), np.where(t <= -100, 0.0, t))
    return total


def soft_cross_entropy(student_logits: np.ndarray, teacher_logits: np.ndarray, tau: float) -> float:
    return float((-softmax(teacher_logits / tau) * log_softmax(student_logits / tau)).mean())


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())
