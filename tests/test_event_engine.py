"""Event-driven engine: the compiled spike-input linear and neuron scan against independent references,
the density switch, and both engines on a sparsely firing student and on the published checkpoint."""
import logging
import os

import numpy as np
import pytest
import torch

from bench.firing import shape_firing
from spikingbert.core.linear import linear
from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification
from spikingbert.modules import event_engine, event_ops
from spikingbert.modules.neuron import if_scan
from tests.helpers.students import tiny_config, tiny_inputs

WHY_NOT_BUILT = event_ops.load()
if WHY_NOT_BUILT is not None and (event_ops.kernels_expected() or os.environ.get("CI")):
    raise RuntimeError(f"this x86-64 CPU with AVX2 runs the event engine's kernels, but: {WHY_NOT_BUILT}")
pytestmark = pytest.mark.skipif(WHY_NOT_BUILT is not None, reason=f"event engine not available: {WHY_NOT_BUILT}")

BEST_ISA = int(torch.ops.spikingbert.event_isa()) if WHY_NOT_BUILT is None else 0
ISAS = [isa for isa in (1, 2) if isa <= BEST_ISA]


@pytest.fixture
def use_engine(monkeypatch):
    """``use_engine("dense" | "auto", max_density=None)`` switches the engine of this process for the test
    through ``SPIKINGBERT_ENGINE`` (``max_density=1.0``: every product event-driven, whatever its density)."""
    def switch(name: str, max_density=None) -> None:
        monkeypatch.setenv(event_engine.ENGINE_ENV, name)
        if max_density is None:
            monkeypatch.delenv(event_engine.MAX_DENSITY_ENV, raising=False)
        else:
            monkeypatch.setenv(event_engine.MAX_DENSITY_ENV, str(max_density))
        event_engine._env_choice.cache_clear()
        event_engine._density_override.cache_clear()
    yield switch
    monkeypatch.delenv(event_engine.ENGINE_ENV, raising=False)
    monkeypatch.delenv(event_engine.MAX_DENSITY_ENV, raising=False)
    event_engine._env_choice.cache_clear()
    event_engine._density_override.cache_clear()


def sequential_reference(x: np.ndarray, w: np.ndarray, b) -> np.ndarray:
    """float32 sum of the weight columns of each row's active inputs, in input order, then the bias."""
    out = np.zeros((x.shape[0], w.shape[0]), np.float32)
    for r in range(x.shape[0]):
        active = np.flatnonzero(x[r])
        acc = np.zeros(w.shape[0], np.float32)
        for k in active:
            acc = acc + w[:, k]
        out[r] = acc if b is None else acc + b
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,k,n,density,bias", [
    (37, 50, 70, 0.2, True),      # K not a multiple of the vector width, N of the tile width
    (64, 384, 96, 0.06, True),
    (5, 16, 33, 0.9, False),
    (3, 40, 8, 0.0, True),        # no spike at all: the bias
    (1100, 40, 1000, 0.3, True),  # an output of 4.4 MB: written by streaming stores, the last tile partly not
    (1024, 24, 1024, 0.5, False),
])
def test_spike_linear_is_the_ordered_sum_of_active_weight_rows(isa, m, k, n, density, bias):
    g = torch.Generator().manual_seed(m * k + n)
    x = (torch.rand(m, k, generator=g) < density).float()
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    packed = torch.ops.spikingbert.pack_weight(w)
    out = torch.ops.spikingbert.spike_linear(x, packed, b, n, 1.0, isa)
    ref = sequential_reference(x.numpy(), w.numpy(), None if b is None else b.numpy())
    np.testing.assert_array_equal(out.numpy(), ref)                      # bit for bit
    exact = x.double() @ w.double().T + (0 if b is None else b.double())
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=1e-4)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("steps,positions,k,n,persist", [
    (5, 13, 50, 70, True),       # a position's inputs fire again at the next step: 6 positions x 5 steps a block
    (42, 3, 40, 130, True),      # one position's 42 steps in a block (more rows than a block of time steps)
    (3, 40, 384, 64, True),
    (5, 13, 50, 70, False),      # neighbouring positions share their inputs: blocks of consecutive rows
    (4, 1, 24, 33, True),
])
def test_spike_linear_groups_a_positions_steps_without_changing_a_bit(isa, steps, positions, k, n, persist):
    g = torch.Generator().manual_seed(steps * positions + k)
    if persist:         # (steps, positions, K): a pattern per position, a few inputs flipped at each step
        base = torch.rand(1, positions, k, generator=g) < 0.3
        x = base ^ (torch.rand(steps, positions, k, generator=g) < 0.05)
    else:               # a pattern per step, a few inputs flipped at each position
        base = torch.rand(steps, 1, k, generator=g) < 0.3
        x = base ^ (torch.rand(steps, positions, k, generator=g) < 0.05)
    x = x.float().reshape(steps * positions, k)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    packed = torch.ops.spikingbert.pack_weight(w)
    out = torch.ops.spikingbert.spike_linear(x, packed, b, n, 1.0, isa, steps)
    np.testing.assert_array_equal(out.numpy(), sequential_reference(x.numpy(), w.numpy(), b.numpy()))
    with pytest.raises(RuntimeError, match="whole number of steps"):
        torch.ops.spikingbert.spike_linear(x[1:], packed, b, n, 1.0, isa, steps)


def attention_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, heads: int) -> np.ndarray:
    """float64 ``softmax(q k^T / sqrt(dh) + mask) v`` per head: q, k, v (N, S, H), mask (B, S) (row n % B for
    sequence n)."""
    n, s, h = q.shape
    dh = h // heads
    out = np.zeros((n, s, h))
    for i in range(n):
        for j in range(heads):
            cols = slice(j * dh, (j + 1) * dh)
            scores = q[i, :, cols] @ k[i, :, cols].T / np.sqrt(dh) + mask[i % mask.shape[0]][None, :]
            p = np.exp(scores - scores.max(1, keepdims=True))
            out[i, :, cols] = (p / p.sum(1, keepdims=True)) @ v[i, :, cols]
    return out


@pytest.mark.skipif(BEST_ISA < 2, reason="spike_attention needs AVX-512")
@pytest.mark.parametrize("n,b,s,h,heads", [
    (6, 2, 7, 16, 2),       # S below one vector, dh 8
    (4, 4, 64, 96, 3),      # dh 32, as the demo's heads
    (2, 1, 130, 48, 2),     # S over several vector blocks, dh 24 (not a multiple of 16)
    (2, 2, 20, 200, 4),     # dh 50: a head's bits across two 64-bit words
    (1, 1, 17, 128, 2),     # dh 64
])
def test_spike_attention_equals_the_float64_attention(n, b, s, h, heads):
    g = torch.Generator().manual_seed(n * s + h)
    fused = torch.randn(n, s, 3 * h, generator=g) * 2
    q = fused[..., 2 * h:]                                                  # strided, as the fused product's chunk
    k = (torch.rand(n, s, h, generator=g) < 0.35).float()
    v = (torch.rand(n, s, h, generator=g) < 0.12).float()
    keep = torch.ones(b, s)
    keep[1:, s // 2:] = 0
    mask = (1.0 - keep) * -10000.0
    out = torch.ops.spikingbert.spike_attention(q, k, v, mask, heads)
    ref = attention_reference(q.double().numpy(), k.double().numpy(), v.double().numpy(), mask.double().numpy(),
                              heads)
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=0, atol=2e-6)


@pytest.mark.skipif(BEST_ISA < 2, reason="spike_attention needs AVX-512")
def test_spike_attention_of_silent_keys_is_the_mean_of_the_unmasked_values():
    """No key fired: every score is the mask, so each query takes the plain mean of the values at the real
    positions (a hand count: the number of real positions at which each value dimension fired, over their number)."""
    v = torch.zeros(1, 5, 4)
    v[0, 0, 0] = v[0, 1, 0] = v[0, 3, 1] = v[0, 4, 2] = 1.0               # position 4 is padding
    mask = torch.tensor([[0.0, 0.0, 0.0, 0.0, -10000.0]])
    out = torch.ops.spikingbert.spike_attention(torch.randn(1, 5, 4), torch.zeros(1, 5, 4), v, mask, 2)
    expected = torch.tensor([2 / 4, 1 / 4, 0.0, 0.0]).expand(5, 4)
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-7)


def test_attention_wrapper_declines_autograd_and_the_dense_engine(use_engine):
    q = torch.randn(2, 3, 8, requires_grad=True)
    k = v = (torch.rand(2, 3, 8) < 0.5).float()
    mask = torch.zeros(2, 1, 1, 3)
    use_engine("auto")
    assert event_engine.spike_attention(q, k, v, mask, 2) is None                       # gradients wanted
    with torch.no_grad():
        assert (event_engine.spike_attention(q, k, v, mask, 2) is not None) == (BEST_ISA == 2)
        assert event_engine.spike_attention(torch.randn(2, 3, 130), (torch.rand(2, 3, 130) < 0.5).float(),
                                            (torch.rand(2, 3, 130) < 0.5).float(), mask, 2) is None   # dh 65
        use_engine("dense")
        assert event_engine.spike_attention(q, k, v, mask, 2) is None


def test_spike_linear_leaves_dense_chunks_to_the_gemm():
    x = (torch.rand(20, 64, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    w, b = torch.randn(48, 64), torch.randn(48)
    packed = torch.ops.spikingbert.pack_weight(w)
    density = float(x.mean())
    assert torch.ops.spikingbert.spike_linear(x, packed, b, 48, density - 0.01, BEST_ISA).numel() == 0
    assert torch.ops.spikingbert.spike_linear(x, packed, b, 48, density + 0.01, BEST_ISA).shape == (20, 48)


@pytest.mark.parametrize("density", [0.1, 0.95])
def test_wrapper_matches_the_dense_product_on_both_sides_of_the_crossover(use_engine, density):
    use_engine("auto")
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(2, 7, 384, generator=g) < density).float()
    parts = [torch.randn(32, 384, generator=g) for _ in range(3)]
    biases = [torch.randn(32, generator=g) for _ in range(3)]
    out = event_engine.spike_linear(x, parts, biases)
    assert out.shape == (2, 7, 96)
    torch.testing.assert_close(out, linear(x, torch.cat(parts), torch.cat(biases)), rtol=0, atol=1e-4)


def test_packed_weights_follow_in_place_updates(use_engine):
    use_engine("auto")
    lin = torch.nn.Linear(64, 40)
    x = (torch.rand(10, 64, generator=torch.Generator().manual_seed(2)) < 0.1).float()
    with torch.no_grad():
        before = event_engine.spike_linear(x, lin.weight, lin.bias)
        lin.weight.mul_(2.0)                                     # what an optimiser step does
        after = event_engine.spike_linear(x, lin.weight, lin.bias)
    torch.testing.assert_close(after, 2 * before - lin.bias, rtol=0, atol=1e-5)


def test_autograd_and_forced_dense_take_the_gemm(use_engine, caplog):
    use_engine("auto")
    lin = torch.nn.Linear(16, 8)
    x = (torch.rand(4, 16) < 0.2).float()
    assert event_engine.spike_linear(x, lin.weight, lin.bias).grad_fn is not None
    use_engine("dense")
    event_engine._resolve.cache_clear()                       # log the choice again
    with caplog.at_level(logging.INFO, logger="spikingbert.modules.event_engine"):
        assert event_engine.engine() == ("dense", 0)
    assert any("simulation engine on CPU: dense (requested: SPIKINGBERT_ENGINE=dense" in r.getMessage()
               for r in caplog.records)
    assert event_engine.fused_if_scan(torch.zeros(2, 3, 4), torch.zeros(3, 4), 1.0, 1.0) is None


@pytest.mark.parametrize("leak", [1.0, 0.9])
def test_fused_scan_equals_the_eager_update(use_engine, leak):
    use_engine("auto")
    g = torch.Generator().manual_seed(3)
    currents = (torch.randn(6, 4, 5, 3 * 24, generator=g) * 0.7)[..., 24:48]   # strided, as a chunk() view
    u_fused = torch.rand(4, 5, 24, generator=g)
    u_eager = u_fused.clone()
    spikes = event_engine.fused_if_scan(currents, u_fused, 0.7, leak)
    use_engine("dense")
    ref, _ = if_scan(currents, u_eager, 0.7, leak)
    assert torch.equal(spikes, ref) and torch.equal(u_fused, u_eager)
    assert 0 < float(spikes.mean()) < 1


def test_fused_scan_fires_at_the_threshold_exactly(use_engine):
    use_engine("auto")
    currents = torch.full((12, 2, 16), 0.25)                  # u reaches vth = 1 exactly every 4th step
    currents[:, 1] = -0.5
    spikes = event_engine.fused_if_scan(currents, torch.zeros(2, 16), 1.0, 1.0)
    expected = torch.zeros(12, 2, 16)
    expected[3::4, 0] = 1.0                                   # hand count: steps 4, 8, 12
    assert torch.equal(spikes, expected)


def test_engine_override_beats_the_environment(use_engine):
    use_engine("dense")
    with event_engine.engine_override("auto"):
        assert event_engine.engine()[0] == "event"
    assert event_engine.engine()[0] == "dense"
    with pytest.raises(ValueError, match="'auto' or 'dense'"), event_engine.engine_override("fast"):
        pass


def _all_spikes(model, inputs):
    seen = {}
    with torch.no_grad():
        out = model(*inputs, recorder=lambda key, t0, s: seen.setdefault(key, []).append(s.clone()),
                    output_layer_rates=True)
    return {k: torch.cat(v) for k, v in seen.items()}, out


@pytest.mark.slow
def test_engines_agree_on_a_sparsely_firing_student(use_engine):
    torch.manual_seed(0)
    model = SpikingBertForSequenceClassification(tiny_config(layers=2, hidden=64, heads=2, inter=256, t_conv=16)).eval()
    inputs = tiny_inputs(batch=4, seq=12)
    rates = shape_firing(model, inputs, rounds=3)
    assert all(0.02 < r < 0.5 for r in rates.values()), rates               # sparse, like a trained student
    use_engine("dense")
    dense, out_dense = _all_spikes(model, inputs)
    use_engine("auto", max_density=1.0)
    assert event_engine.engine()[0] == "event"
    event, out_event = _all_spikes(model, inputs)
    differing = sum(int((dense[k] != event[k]).sum()) for k in dense)
    total = sum(v.numel() for v in dense.values())
    assert differing / total <= 1e-4, f"{differing} of {total} spikes differ"
    torch.testing.assert_close(out_event.logits, out_dense.logits, rtol=0, atol=1e-3)


@pytest.fixture
def threads():
    """``threads(n)`` sets torch's thread count for the test (restored after)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_results_do_not_depend_on_the_thread_count(use_engine, threads):
    """The kernels hand rows and sequences to threads as they come free: the same bits at 1, 2 and 3 threads, on
    uneven work (the first rows and sequences nearly silent, as in the first steps of a simulation) and end to end."""
    g = torch.Generator().manual_seed(7)
    x = (torch.rand(300, 384, generator=g) < torch.linspace(0.01, 0.4, 300)[:, None]).float()   # 10 row blocks
    w, b = torch.randn(200, 384, generator=g), torch.randn(200, generator=g)
    q = torch.randn(9, 20, 64, generator=g)
    kv = (torch.rand(2, 9, 20, 64, generator=g) < torch.linspace(0.01, 0.4, 9)[:, None, None]).float()
    mask = torch.zeros(3, 20)
    mask[1:, 15:] = -10000.0
    use_engine("auto", max_density=1.0)
    model = SpikingBertForSequenceClassification(tiny_config(layers=2, hidden=64, heads=2, inter=128)).eval()
    inputs = tiny_inputs(batch=4, seq=12)
    results = {}
    for n in (1, 2, 3):
        threads(n)
        products = [torch.ops.spikingbert.spike_linear(x, torch.ops.spikingbert.pack_weight(w), b, 200, 1.0, isa)
                    for isa in ISAS]
        if BEST_ISA == 2:
            products.append(torch.ops.spikingbert.spike_attention(q, kv[0], kv[1], mask, 2))
        spikes, out = _all_spikes(model, inputs)
        results[n] = products, spikes, out.logits
    for n in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(results[1][0], results[n][0], strict=True))
        assert all(torch.equal(results[1][1][k], results[n][1][k]) for k in results[1][1])
        assert torch.equal(results[1][2], results[n][2])


def test_engines_reproduce_the_published_checkpoint(use_engine, published_fixture_dir, tmp_path):
    from tests.helpers.students import convert

    convert(str(published_fixture_dir / "pytorch_model.bin"), str(published_fixture_dir), str(tmp_path / "out"),
            t_conv=8)
    expected = torch.load(published_fixture_dir / "expected.pt", weights_only=True)
    model = SpikingBertForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    inputs = (expected["input_ids"], expected["token_type_ids"], expected["attention_mask"])
    spikes = {}
    for name in ("dense", "auto"):
        use_engine(name, max_density=1.0)
        with torch.no_grad():
            out = model(*inputs, vth=expected["vth"])
        for ours, ref in zip(out.reps, expected["reps"], strict=True):      # every spike count equal
            assert torch.equal(ours, ref)
        spikes[name] = _all_spikes(model, inputs)[0]
    assert all(torch.equal(spikes["dense"][k], spikes["auto"][k]) for k in spikes["dense"])


def test_report_convergence_pass_equals_a_hand_count(use_engine):
    """The compiled ASR-convergence pass and the report's tensor code against float64 numpy counts:
    sum over real-token neurons of ``|count_t / t - count_T / T|`` for every ``t``."""
    from spikingbert.evaluation.measure import BatchRecorder

    class Head(torch.nn.Module):                                 # what the recorder needs of a student
        config = tiny_config(layers=1)
        classifier = torch.nn.Linear(32, 2)

    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1:, 3:] = 0
    g = torch.Generator().manual_seed(4)
    chunks = [(0, (torch.rand(7, 3, 5, 32, generator=g) < 0.3).float()),     # two chunks, across byte boundaries
              (7, (torch.rand(12, 3, 5, 32, generator=g) < 0.3).float())]
    trains = torch.cat([c for _, c in chunks]).numpy().astype(np.float64)[:, mask.numpy().astype(bool)]  # (T, N, w)
    counts = trains.cumsum(0)
    steps = np.arange(1, 20, dtype=np.float64)[:, None, None]
    expected = np.abs(counts / steps - counts[-1] / 19).sum((1, 2))
    for name in ("dense", "auto"):
        use_engine(name)
        rec = BatchRecorder(Head(), mask, 19, [], keep_trains=True)
        for t0, chunk in chunks:
            rec("0.K", t0, chunk)
        got = rec.convergence_sums()["0.K"].numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
        assert got[-1] == 0 and got[0] > 0


def test_weights_made_in_inference_mode(use_engine):
    use_engine("auto", max_density=1.0)
    with torch.inference_mode():                              # inference tensors have no version counter
        lin = torch.nn.Linear(64, 40)
        x = (torch.rand(10, 64, generator=torch.Generator().manual_seed(6)) < 0.1).float()
        out = event_engine.spike_linear(x, lin.weight, lin.bias)
        ref = linear(x, lin.weight, lin.bias)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def _adam_params(seed: int) -> list:
    """Parameters across the kernel's 16384-element blocks and vector widths: two blocks and a tail, a block and
    a few, under one vector, one element."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).requires_grad_() for shape in ((2, 16400), (16384 + 37,), (13,), (1,))]


@pytest.mark.parametrize("isa", [0, *ISAS])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fused_bert_adam_equals_its_tensor_operations(isa, weight_decay):
    """BertAdam with the compiled update against its own tensor operations, bit for bit (parameters and both
    moments) over four steps of a warm-up schedule, with gradients from exact zeros over nine decades (second
    moments from zero and below the optimizer's square-root floor up to large) and clipping at work."""
    from spikingbert.transformer.optimization import BertAdam

    def kernel(*args) -> bool:
        torch.ops.spikingbert.bert_adam_update(*args, isa)
        return True

    runs = []
    for update_kernel in (None, kernel):
        params = _adam_params(0)
        opt = BertAdam(params, lr=0.01, warmup=0.5, t_total=8, weight_decay=weight_decay, max_grad_norm=50.0,
                       update_kernel=update_kernel)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            for p in params:
                scale = torch.logspace(-12, -3, p.numel(), dtype=torch.float64).float().view(p.shape)
                p.grad = torch.randn(p.shape, generator=g) * scale * (torch.rand(p.shape, generator=g) > 0.2)
            opt.step()
        runs.append([(p.detach(), opt.state[p]["next_m"], opt.state[p]["next_v"]) for p in params])
    for ops, fused in zip(*runs):
        for a, b in zip(ops, fused):
            assert torch.equal(a.view(torch.int32), b.view(torch.int32))


def test_ide_steps_with_the_compiled_optimizer_equal_those_without(use_engine):
    """Three IDE training steps of a student on the event engine, optimizer from the trainer's `build_optimizer`
    (compiled update) and plain, give the same parameters to the bit: the update also marks the weights as changed,
    so the engine's packed copies of them are made anew for the next step."""
    from spikingbert.training.losses import soft_cross_entropy
    from spikingbert.training.objectives import build_optimizer

    use_engine("auto", max_density=1.0)
    assert event_engine._adam_kernel_agrees(event_engine.engine()[1])            # the compiled update runs
    inputs = tiny_inputs(batch=4, seq=12)
    target = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = SpikingBertForSequenceClassification(tiny_config(hidden=64, inter=128, t_conv=8))
        initial = [p.detach().clone() for p in model.parameters()]
        opt = build_optimizer(model, 0.05, -1, 0.01, "none", 3)
        if not fused:
            opt.update_kernel = None
        for _ in range(3):
            loss = soft_cross_entropy(model(*inputs).logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert sum(not torch.equal(a, b) for a, b in zip(results[0], initial)) > len(initial) // 2     # they trained
