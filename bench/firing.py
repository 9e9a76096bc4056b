"""Weights that fire like a trained student, for timing the event-driven engine.

The event engine's cost follows the spikes, so its benchmarks need realistic firing. The demo's
trained student (``runs/demo/pred``) is the real thing; without it, :func:`shape_firing` sets a
student's weights by a deterministic recipe so that each neuron layer fires near a target average
spiking rate (:data:`DEMO_RATES`, the demo student's rates on real tokens).

The recipe: every neuron layer's current is made roughly normal across units with unit spread
(LayerNorm weight 1 for E, O1 and O2; weights of standard deviation ``1 / sqrt(active inputs)`` for
K, V and I), and its mean (the LayerNorm bias or the linear bias) is the shift ``beta`` at which an
integrate-and-fire neuron with threshold 1 (rate ``clip(c, 0, 1)``) fires at the target rate on
average over a standard normal spread: ``E[clip(f(z + beta), 0, 1)] = rate`` (``f`` = GELU for I).
Layer A averages V's spikes through the attention (small query weights: near-uniform attention),
so it fires about like V.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import erf

#: Average spiking rates of the demo's trained student (real tokens), its two layers averaged.
DEMO_RATES = {"E": 0.20, "K": 0.35, "V": 0.12, "O1": 0.15, "I": 0.06, "O2": 0.17}
#: A densely firing student (every product above the engine's crossover: the dense path's cost).
DENSE_RATES = {"E": 0.6, "K": 0.6, "V": 0.6, "O1": 0.6, "I": 0.5, "O2": 0.6}

_Z = np.linspace(-8.0, 8.0, 4001)
_W = np.exp(-0.5 * _Z**2)
_W /= _W.sum()


def _gelu(c: np.ndarray) -> np.ndarray:
    return 0.5 * c * (1.0 + erf(c / math.sqrt(2.0)))


def shift_for(rate: float, gelu: bool = False) -> float:
    """``beta`` with ``E[clip(f(z + beta), 0, 1)] = rate`` for ``z ~ N(0, 1)`` (bisection)."""
    lo, hi = -6.0, 6.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        c = _Z + mid
        r = float((np.clip(_gelu(c) if gelu else c, 0.0, 1.0) * _W).sum())
        lo, hi = (mid, hi) if r < rate else (lo, mid)
    return 0.5 * (lo + hi)


@torch.no_grad()
def shape_firing(student: torch.nn.Module, inputs: tuple, rates: dict[str, float] = DEMO_RATES, seed: int = 0,
                 rounds: int = 4) -> dict[str, float]:
    """Set the weights of a SpikingBERT student (``student.bert`` or the model itself) in place so that
    its neuron layers fire near ``rates`` (keys ``E``, ``K``, ``V``, ``O1``, ``I``, ``O2``) on ``inputs``
    (``input_ids``, ``token_type_ids``, ``attention_mask``). The normal model sets the first shifts; then
    ``rounds`` simulations correct each shift by the model's shift difference between the target and
    the measured rate (real distributions are not normal). Returns the measured rates of every layer.
    """
    g = torch.Generator().manual_seed(seed)
    bert = getattr(student, "bert", student)
    h = bert.config.hidden_size

    def normal_(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std)

    shifts = {}                                       # layer key -> the bias tensor that sets its mean current

    def shift_(key: str, bias: torch.Tensor, kind: str) -> None:
        bias.fill_(shift_for(rates[kind], gelu=kind == "I"))
        shifts[key] = (bias, kind)

    bert.embeddings.LayerNorm.weight.fill_(1.0)
    shift_("E", bert.embeddings.LayerNorm.bias, "E")
    rate_in = rates["E"]
    for k, layer in enumerate(bert.encoder.layer):
        att = layer.attention.self
        for lin, kind in ((att.key, "K"), (att.value, "V")):
            normal_(lin.weight, 1.0 / math.sqrt(rate_in * h))
            shift_(f"{k}.{kind}", lin.bias, kind)
        normal_(att.query.weight, 0.02)
        att.query.bias.zero_()
        normal_(layer.attention.output.dense.weight, 1.0 / math.sqrt(h))
        layer.attention.output.LayerNorm.weight.fill_(1.0)
        shift_(f"{k}.O1", layer.attention.output.LayerNorm.bias, "O1")
        normal_(layer.intermediate.dense.weight, 1.0 / math.sqrt(rates["O1"] * h))
        shift_(f"{k}.I", layer.intermediate.dense.bias, "I")
        normal_(layer.output.dense.weight, 1.0 / math.sqrt(layer.output.dense.in_features))
        layer.output.LayerNorm.weight.fill_(1.0)
        shift_(f"{k}.O2", layer.output.LayerNorm.bias, "O2")
        rate_in = rates["O2"]
    was_training = student.training
    student.eval()
    for step in range(rounds + 1):
        measured = {key: float(r.mean()) for key, r in student(*inputs, output_layer_rates=True).layer_rates.items()}
        if step == rounds:
            break
        for key, (bias, kind) in shifts.items():
            gelu = kind == "I"
            bias.add_(shift_for(rates[kind], gelu) - shift_for(min(max(measured[key], 1e-3), 0.999), gelu))
    student.train(was_training)
    return measured
