"""Integrate-and-fire neuron dynamics, independent of any network.

Tensors are time-first: ``currents`` has shape ``(T, *N)`` where ``*N`` is any
neuron shape (for SpikingBERT ``(B, S, H)``). The membrane potential is passed in
and returned explicitly; nothing is stored on a module between calls.

One step, for every neuron::

    charge:  u = u + c_t
    fire:    s_t = 1 if u >= vth else 0
    reset:   u = u - vth * s_t        (reset by subtraction)
    leak:    u = leak * u             (leak = 1.0: plain integrate-and-fire)
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
from typing import Callable, Optional

import torch
from torch import Tensor

from .event_engine import fused_if_scan

__all__ = [
    "if_scan",
    "rate",
    "if_scan_surrogate",
    "SpikeFunction",
    "SURROGATES",
    "NeuronLayers",
]


@torch.no_grad()
def if_scan(currents: Tensor, u: Tensor, vth: float, leak: float = 1.0) -> tuple[Tensor, Tensor]:
    """Run the neuron over ``T`` steps without autograd.

    Args:
        currents: ``(T, *N)`` input current of each step.
        u: ``(*N)`` membrane potential before the first step (updated in place; keep it float32 or
            wider when the currents are half precision).
        vth: firing threshold (> 0).
        leak: membrane leak factor in (0, 1].

    Returns:
        spikes ``(T, *N)`` (0/1, dtype of ``currents``) and the membrane ``(*N)`` after the last step.
        CUDA tensors go through one fused Triton kernel when Triton is installed, CPU float32 tensors
        through the compiled kernel of the event engine when it is built (same arithmetic).
    """
    if currents.is_cuda and u.dtype == torch.float32 and u.is_contiguous() and _fused_cuda_scan() is not None:
        return _fused_cuda_scan()(currents, u, vth, leak)
    if not currents.is_cuda:
        spikes = fused_if_scan(currents, u, vth, leak)
        if spikes is not None:
            return spikes, u
    spikes = torch.empty(currents.shape, dtype=currents.dtype, device=currents.device)
    for t in range(currents.shape[0]):
        s = spikes[t]
        u.add_(currents[t])                     # charge
        torch.ge(u, vth, out=s)                 # fire
        u.sub_(s, alpha=vth)                    # reset by subtraction
        if leak != 1.0:
            u.mul_(leak)                        # leak
    return spikes, u


@functools.lru_cache(maxsize=None)
def _fused_cuda_scan():
    """The Triton kernel of :mod:`modules.triton_scan`, or ``None`` where Triton is not installed
    (or ``SPIKINGBERT_NO_TRITON=1``)."""
    if os.environ.get("SPIKINGBERT_NO_TRITON") == "1" or importlib.util.find_spec("triton") is None:
        return None
    from .triton_scan import if_scan_cuda

    return if_scan_cuda


class _Rate(torch.autograd.Function):
    """``clamp(current / vth, 0, 1)`` with the gradient torch's autograd gives it, to the bit: ``grad / vth``
    where ``0 <= current / vth <= 1`` (both ends included), 0 elsewhere. Autograd's clamp backward takes four
    passes, one of them an unvectorised ``where`` (3.5 ms on ``(8, 64, 1536)`` floats on one Zen 4 core);
    hardtanh's backward, which keeps the gradient strictly between its bounds, does it in one (0.11 ms) with the
    bounds moved to the floats just outside 0 and 1. It differs only where ``current`` is NaN, and there the
    loss is NaN already."""

    @staticmethod
    def forward(ctx, current: Tensor, vth: float) -> Tensor:
        q = current / vth
        ctx.save_for_backward(q)
        ctx.vth = vth
        return torch.clamp(q, 0.0, 1.0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (q,) = ctx.saved_tensors
        info = torch.finfo(q.dtype)
        below_zero, above_one = -info.tiny * info.eps, 1.0 + info.eps     # the smallest subnormal; 1 + one ulp
        return torch.ops.aten.hardtanh_backward(grad, q, below_zero, above_one) / ctx.vth, None


def rate(current: Tensor, vth: float) -> Tensor:
    """The IF neuron's average spiking rate at equilibrium, ``clip(current / vth, 0, 1)``, differentiable."""
    return _Rate.apply(current, vth)


class SpikeFunction(torch.autograd.Function):
    """Heaviside step ``s = [v >= 0]`` with a surrogate derivative in the backward pass.

    ``surrogate`` names an entry of :data:`SURROGATES`; ``alpha`` sets its sharpness.
    """

    @staticmethod
    def forward(ctx, v: Tensor, surrogate: str, alpha: float) -> Tensor:
        ctx.save_for_backward(v)
        ctx.surrogate = surrogate
        ctx.alpha = alpha
        return (v >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (v,) = ctx.saved_tensors
        return grad_out * SURROGATES[ctx.surrogate](v, ctx.alpha), None, None


def _sigmoid_grad(v: Tensor, alpha: float) -> Tensor:
    sg = torch.sigmoid(alpha * v)
    return alpha * sg * (1.0 - sg)


def _arctan_grad(v: Tensor, alpha: float) -> Tensor:
    return (alpha / 2.0) / (1.0 + (math.pi / 2.0 * alpha * v) ** 2)


#: Surrogate derivatives ``dS/dv`` of the spike function, keyed by name.
SURROGATES = {"sigmoid": _sigmoid_grad, "arctan": _arctan_grad}


def if_scan_surrogate(
    currents: Tensor, u: Tensor, vth: float, leak: float = 1.0, surrogate: str = "sigmoid", alpha: float = 4.0
) -> tuple[Tensor, Tensor]:
    """Differentiable version of :func:`if_scan` (BPTT baseline): same dynamics, surrogate spike gradient.

    Shapes as in :func:`if_scan`; ``u`` is not modified in place.
    """
    spikes = []
    for t in range(currents.shape[0]):
        u = u + currents[t]                                    # charge
        s = SpikeFunction.apply(u - vth, surrogate, alpha)     # fire
        u = u - vth * s                                        # reset by subtraction
        if leak != 1.0:
            u = leak * u                                       # leak
        spikes.append(s)
    return torch.stack(spikes), u


class NeuronLayers:
    """The membrane potentials and spike counts of named neuron layers during one simulation.

    ``scan(key, currents)`` advances layer ``key`` over a chunk of steps (``currents`` ``(Tc, *N)``)
    from its membrane (zeros at first, float32 or wider) and returns its spikes ``(Tc, *N)``; the
    spikes are counted per neuron when ``count(key)`` and handed to ``recorder(key, t0, spikes)``,
    ``t0`` being the chunk's first step (set by the caller). ``surrogate = (name, alpha)`` makes the
    scan differentiable (:func:`if_scan_surrogate`), None runs :func:`if_scan` without autograd.
    """

    def __init__(self, vth: float, leak: float, count: Callable[[str], bool],
                 recorder: Optional[Callable[[str, int, Tensor], None]] = None,
                 surrogate: Optional[tuple[str, float]] = None):
        self.vth, self.leak, self.count, self.recorder, self.surrogate = vth, leak, count, recorder, surrogate
        self.membranes: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}
        self.t0 = 0

    def scan(self, key: str, currents: Tensor) -> Tensor:
        u = self.membranes.get(key)
        if u is None:
            u = currents.new_zeros(currents.shape[1:], dtype=torch.promote_types(currents.dtype, torch.float32))
        if self.surrogate is not None:
            spikes, u = if_scan_surrogate(currents, u, self.vth, self.leak, *self.surrogate)
        else:
            spikes, u = if_scan(currents, u, self.vth, self.leak)
        self.membranes[key] = u
        if self.count(key):
            total = spikes.sum(0)
            self.counts[key] = total if key not in self.counts else self.counts[key] + total
        if self.recorder is not None:
            self.recorder(key, self.t0, spikes)
        return spikes

    def rates(self, steps: int) -> dict[str, Tensor]:
        """Spike count / ``steps`` of every counted layer."""
        return {key: count / steps for key, count in self.counts.items()}
