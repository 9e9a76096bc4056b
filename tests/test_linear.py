"""core.linear: the oneDNN float32 GEMM path equals F.linear (values and gradients), and
everything it does not cover falls back to F.linear unchanged."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikingbert.core import linear as linear_mod
from spikingbert.core.linear import Linear, linear, onednn_enabled

needs_onednn = pytest.mark.skipif(not onednn_enabled(), reason="this PyTorch build has no oneDNN linear")


def _reference(x, w, b):
    """float64 F.linear of the same numbers."""
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 33), (3, 5, 33), (2, 3, 4, 33)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward_matches_float64(shape, with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(19, 33, generator=g)
    b = torch.randn(19, generator=g) if with_bias else None
    out = linear(x, w, b)
    assert out.shape == (*shape[:-1], 19) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _reference(x, w, b), rtol=0, atol=2e-5)


@needs_onednn
def test_non_contiguous_input_and_rows_independent_of_batch():
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(64, 96, generator=g)
    x = wide[:, 32:64]                                   # a column slice: not contiguous
    w, b = torch.randn(40, 32, generator=g), torch.randn(40, generator=g)
    full = linear(x, w, b)
    torch.testing.assert_close(full.double(), _reference(x, w, b), rtol=0, atol=2e-5)
    assert torch.equal(linear(x[:8].contiguous(), w, b), full[:8])       # a row does not depend on M


@needs_onednn
def test_gradients_match_float64_autograd():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 6, 24, generator=g, requires_grad=True)
    w = torch.randn(10, 24, generator=g, requires_grad=True)
    b = torch.randn(10, generator=g, requires_grad=True)
    upstream = torch.randn(4, 6, 10, generator=g)
    (linear(x, w, b) * upstream).sum().backward()
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    (F.linear(x64, w64, b64) * upstream.double()).sum().backward()
    for ours, ref in ((x.grad, x64.grad), (w.grad, w64.grad), (b.grad, b64.grad)):
        torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-4)
    # only the inputs that need a gradient get one
    x2 = x.detach().requires_grad_()
    linear(x2, w.detach(), b.detach()).sum().backward()
    assert x2.grad is not None


@needs_onednn
def test_cpu_float32_goes_through_onednn(monkeypatch):
    calls = []
    real = linear_mod._onednn
    monkeypatch.setattr(linear_mod, "_onednn", lambda *a: calls.append(1) or real(*a))
    x, w = torch.randn(3, 8), torch.randn(5, 8)
    linear(x, w)
    assert calls == [1]
    linear(x.double(), w.double())                                  # float64: F.linear
    with torch.autocast("cpu", dtype=torch.bfloat16):               # CPU autocast: F.linear
        linear(x, w)
    assert calls == [1]


def test_fallbacks_are_exactly_f_linear(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(5, 7, generator=g), torch.randn(3, 7, generator=g), torch.randn(3, generator=g)
    assert torch.equal(linear(x.double(), w.double(), b.double()), F.linear(x.double(), w.double(), b.double()))
    monkeypatch.setenv("SPIKINGBERT_CPU_GEMM", "torch")
    onednn_enabled.cache_clear()
    try:
        assert not onednn_enabled()
        assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    finally:
        monkeypatch.delenv("SPIKINGBERT_CPU_GEMM")
        onednn_enabled.cache_clear()


def test_linear_module_is_an_nn_linear_with_the_same_keys():
    torch.manual_seed(0)
    ours = Linear(6, 4)
    torch.manual_seed(0)
    plain = nn.Linear(6, 4)
    assert isinstance(ours, nn.Linear)
    assert list(ours.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]
    assert torch.equal(ours.weight, plain.weight) and torch.equal(ours.bias, plain.bias)
    x = torch.randn(2, 6)
    torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=1e-6)
