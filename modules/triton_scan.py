"""Fused integrate-and-fire scan for CUDA tensors (Triton): one kernel per chunk of steps.

Each program keeps the membrane of ``BLOCK`` neurons in registers and walks
through the ``T`` steps, reading each current once and writing each spike once
(the eager loop launches three kernels per step). The arithmetic is the same as
:func:`modules.neuron.if_scan`, so the spikes are identical.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _if_scan_kernel(c_ptr, u_ptr, s_ptr, T, N, stride_t, vth, leak,
                    APPLY_LEAK: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < N
    u = tl.load(u_ptr + offs, mask=live, other=0.0)
    for t in range(T):
        c = tl.load(c_ptr + t * stride_t + offs, mask=live, other=0.0)
        u = u + c.to(u.dtype)                                  # charge
        fired = (u >= vth).to(u.dtype)                         # fire
        u = u - fired * vth                                    # reset by subtraction
        if APPLY_LEAK:
            u = u * leak                                       # leak
        tl.store(s_ptr + t * N + offs, fired.to(s_ptr.dtype.element_ty), mask=live)
    tl.store(u_ptr + offs, u, mask=live)


def if_scan_cuda(currents: Tensor, u: Tensor, vth: float, leak: float) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`modules.neuron.if_scan` for CUDA tensors (``u`` contiguous, updated in place)."""
    steps = currents.shape[0]
    if not currents[0].is_contiguous():
        currents = currents.contiguous()
    n = u.numel()
    spikes = torch.empty(currents.shape, dtype=currents.dtype, device=currents.device)
    block = 1024
    _if_scan_kernel[(triton.cdiv(n, block),)](
        currents, u, spikes, steps, n, currents.stride(0), float(vth), float(leak),
        APPLY_LEAK=leak != 1.0, BLOCK=block)
    return spikes, u
