"""Dense layers on the fastest strict-float32 CPU GEMM PyTorch ships: oneDNN.

PyTorch's CPU ``F.linear`` calls MKL's SGEMM. On x86 CPUs that MKL does not dispatch to its
AVX-512 kernels (AMD EPYC, for one) that runs at about half the core's float32 peak, while oneDNN's
JIT kernels (``torch.ops.mkldnn._linear_pointwise``, the op Inductor emits for CPU linears) reach it.
Both compute in strict float32; results differ only in summation order (rounding), and oneDNN's rows
do not depend on how many rows a call has.

:class:`Linear` is an ``nn.Linear`` (same parameters, state-dict keys and init) whose forward and
input-gradient GEMMs use oneDNN for CPU float32 tensors; :func:`linear` is the functional form. Anything
else (CUDA, float64, half precision, CPU autocast, a build without oneDNN) goes to ``F.linear``.
``SPIKINGBERT_CPU_GEMM=torch`` in the environment keeps PyTorch's default everywhere.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Linear", "linear", "onednn_enabled"]


@functools.lru_cache(maxsize=None)
def onednn_enabled() -> bool:
    """Whether CPU float32 linears go through oneDNN (available, and not switched off by the environment)."""
    if os.environ.get("SPIKINGBERT_CPU_GEMM", "").lower() == "torch":
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        probe = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 3), torch.ones(4, 3), torch.zeros(4), "none", [], "")
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return bool(torch.equal(probe, torch.full((2, 4), 3.0)))


def _onednn(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``x @ weight.T + bias`` by oneDNN: ``x`` ``(..., K)``, ``weight`` ``(N, K)`` -> ``(..., N)``."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """``F.linear`` with the output and input-gradient GEMMs on oneDNN.

    The weight gradient, a sum over every row of the batch, stays on ``torch.mm``: its summation
    order then matches the default path, so a batch split over processes (DDP) and summed gives
    the same weights as one process would (a spiking network turns rounding into spike flips).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(grad, weight.t().contiguous(), None)                     # (..., K)
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            g2 = grad.reshape(-1, grad.shape[-1])                                     # (M, N)
            if ctx.needs_input_grad[1]:
                grad_w = g2.t().mm(x.reshape(-1, x.shape[-1]))                        # (N, K)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, weight, bias)``, on oneDNN for CPU float32 tensors (see the module docstring)."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and (bias is None or bias.dtype == torch.float32) and x.dim() >= 2 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu") and onednn_enabled()):
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return _OneDnnLinear.apply(x, weight, bias)
        return _onednn(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` whose GEMMs use :func:`linear` (same parameters, keys and initialisation)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
