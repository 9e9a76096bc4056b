"""Neuron dynamics and average spiking rates (docs/DESIGN.md, "Neuron dynamics")."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikingbert.modules.neuron import if_scan, if_scan_surrogate, rate


@settings(max_examples=200, deadline=None)
@given(c=st.floats(-3.0, 3.0, allow_nan=False), vth=st.floats(0.1, 2.0), t=st.sampled_from([1, 7, 64]))
def test_if_rate_approaches_clipped_current(c, vth, t):
    currents = torch.full((t, 1), c, dtype=torch.float64)
    spikes, _ = if_scan(currents, torch.zeros(1, dtype=torch.float64), vth)
    asr = spikes.mean().item()
    assert abs(asr - min(max(c / vth, 0.0), 1.0)) <= 1.0 / t + 1e-12


def test_if_scan_matches_hand_trace():
    # c = 0.4, vth = 1: u = .4, .8, 1.2 -> spike (0.2), .6, 1.0 -> spike (0.0)
    spikes, u = if_scan(torch.full((5, 1), 0.4, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), 1.0)
    assert spikes.flatten().tolist() == [0, 0, 1, 0, 1]
    assert abs(u.item()) < 1e-12


def test_leak_and_reset_by_subtraction():
    # leak 0.5, c = 0.8, vth 1: u=.8 -> .4 ; 1.2 spike -> .2 -> .1 ; .9 -> .45 ; 1.25 spike -> .25 -> .125
    spikes, u = if_scan(torch.full((4, 1), 0.8, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), 1.0, 0.5)
    assert spikes.flatten().tolist() == [0, 1, 0, 1]
    assert abs(u.item() - 0.125) < 1e-12


def test_surrogate_scan_same_spikes_and_has_gradient():
    g = torch.Generator().manual_seed(0)
    currents = (torch.rand(12, 4, 5, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    ref, _ = if_scan(currents.detach(), torch.zeros(4, 5, dtype=torch.float64), 1.0, 0.9)
    for name in ("sigmoid", "arctan"):
        spikes, _ = if_scan_surrogate(currents, torch.zeros(4, 5, dtype=torch.float64), 1.0, 0.9, name)
        assert torch.equal(spikes.detach(), ref)
        (grad,) = torch.autograd.grad(spikes.sum(), currents)
        assert grad.abs().sum() > 0


def _clamp_grad(current: torch.Tensor, vth: float, grad: torch.Tensor) -> torch.Tensor:
    x = current.clone().requires_grad_()
    torch.clamp(x / vth, 0.0, 1.0).backward(grad)
    return x.grad


def test_rate_value_and_gradient_are_clamps_to_the_bit():
    """``rate`` against torch's own ``clamp(current / vth, 0, 1)`` under autograd: the same values and the same
    gradient bits (signed zeros included), with currents exactly at both ends of the range and next to them."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for vth in (1.0, 0.7, 2.5):
            current = torch.randn(4096, generator=g).to(dtype) * vth
            ends = torch.tensor([0.0, -0.0, vth, -vth], dtype=dtype)
            info = torch.finfo(dtype)
            near = torch.cat([ends, torch.nextafter(ends, ends + 1), torch.nextafter(ends, ends - 1),
                              torch.tensor([info.tiny * info.eps, -info.tiny * info.eps], dtype=dtype)])
            current = torch.cat([current, near, near * vth])
            upstream = torch.randn(current.shape, generator=g).to(dtype)
            x = current.clone().requires_grad_()
            out = rate(x, vth)
            out.backward(upstream)
            ref = _clamp_grad(current, vth, upstream)
            assert torch.equal(out.detach(), torch.clamp(current / vth, 0.0, 1.0))
            assert torch.equal(torch.signbit(x.grad), torch.signbit(ref)) and torch.equal(x.grad, ref), (dtype, vth)
            assert (ref == 0).any() and (ref != 0).any()
