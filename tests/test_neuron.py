"""Neuron dynamics and average spiking rates (docs/DESIGN.md, "Neuron dynamics")."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikingbert.modules.neuron import if_scan, if_scan_surrogate


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
