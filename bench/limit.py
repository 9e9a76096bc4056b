"""How far the event engine is from its physical limit (``python -m bench --cases limit``).

Each spike-input product of one eval forward (its real input chunks, recorded from the forward) is timed alone
on both paths: the event-driven product's synaptic additions per second (active inputs x outputs / time) against
the core's peak vector addition rate, and the dense GEMM's FLOP/s against the core's peak FMA rate (both peaks
measured by ``torch.ops.spikingbert.vector_peak``: register-only loops of the widest vector instruction). The
attention's additions (scores: the active key dimensions times the query positions, per head; context: the
active value entries times the query positions) are counted and timed the same way. The forward's floor is all
its synaptic additions at the peak addition rate. Times are CPU seconds of this process (``time.process_time``),
so other processes on the machine cost the measured code its share of the cores but not its rates.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from bench.cases import Setting, build
from spikingbert.core.linear import linear
from spikingbert.modules import event_engine


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU milliseconds of ``fn`` (after one warm-up run)."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        samples.append((time.process_time() - start) * 1000.0)
    return statistics.median(samples)


def peak_rates(iterations: int = 20_000_000) -> dict[str, float]:
    """Per core: vector float additions per second and FLOP/s of FMAs (2 per FMA), best of three."""
    ops = torch.ops.spikingbert
    rates = {}
    for name, kind, flops in (("add_per_s", 0, 1), ("flop_per_s", 1, 2)):
        best = 0.0
        for _ in range(3):
            start = time.process_time()
            done = ops.vector_peak(kind, iterations)
            best = max(best, flops * done / (time.process_time() - start))
        rates[name] = best
    return rates


def recorded_chunks(student, ids, types, mask) -> dict[str, list[torch.Tensor]]:
    """Every neuron layer's spike chunks ``(Tc, B, S, width)`` of one eval forward, keyed like the layer rates."""
    chunks: dict[str, list[torch.Tensor]] = {}
    student.eval()
    with torch.inference_mode(), event_engine.engine_override("auto"):
        student(ids, types, mask, recorder=lambda key, t0, spikes: chunks.setdefault(key, []).append(spikes.clone()))
    return chunks


def products(student, chunks) -> list[tuple[str, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]]:
    """(name, input chunks, weights, biases) of every spike-input product, in forward order."""
    out, feed = [], "E"
    for k, layer in enumerate(student.bert.encoder.layer):
        att = layer.attention.self
        out += [(f"{k}.key_value_query", chunks[feed], [att.key.weight, att.value.weight, att.query.weight],
                 [att.key.bias, att.value.bias, att.query.bias]),
                (f"{k}.attention.output", chunks[f"{k}.A"], [layer.attention.output.dense.weight],
                 [layer.attention.output.dense.bias]),
                (f"{k}.intermediate", chunks[f"{k}.O1"], [layer.intermediate.dense.weight],
                 [layer.intermediate.dense.bias]),
                (f"{k}.output", chunks[f"{k}.I"], [layer.output.dense.weight], [layer.output.dense.bias])]
        feed = f"{k}.O2"
    return out


def product_row(name: str, inputs, weights, biases, peaks: dict, repeats: int) -> dict:
    """One product's event-driven and dense times over all its chunks, and their rates against the peaks."""
    n = sum(w.shape[0] for w in weights)
    k = inputs[0].shape[-1]
    rows = sum(c.numel() // k for c in inputs)
    adds = sum(int(c.count_nonzero()) for c in inputs) * n
    w, b = torch.cat(weights), torch.cat(biases)

    def event():
        for c in inputs:
            event_engine.spike_linear(c, weights, biases, c.shape[0])

    def dense():
        for c in inputs:
            linear(c, w, b)

    with torch.inference_mode(), event_engine.engine_override("auto"):
        ms_event, ms_dense = cpu_ms(event, repeats), cpu_ms(dense, repeats)
    adds_per_s, flop_per_s = adds / (ms_event / 1000.0), 2.0 * rows * k * n / (ms_dense / 1000.0)
    return {"product": name, "K": k, "N": n, "rows": rows, "density": round(adds / (rows * k * n), 4),
            "synaptic_adds": adds, "ms_event": ms_event, "ms_dense": ms_dense,
            "adds_per_s": adds_per_s, "adds_of_peak": adds_per_s / peaks["add_per_s"],
            "dense_flop_per_s": flop_per_s, "dense_flop_of_peak": flop_per_s / peaks["flop_per_s"],
            "event_over_dense": ms_event / ms_dense}


def attention_row(student, chunks, mask, peaks: dict, repeats: int) -> dict:
    """The attention of every layer: its synaptic additions and the accumulate-only kernel's rate."""
    work, adds, feed = [], 0, "E"
    ext = (1.0 - mask[:, None, None, :].float()) * -10000.0
    with torch.inference_mode():
        for k, layer in enumerate(student.bert.encoder.layer):
            att = layer.attention.self
            for s_in, s_k, s_v in zip(chunks[feed], chunks[f"{k}.K"], chunks[f"{k}.V"]):
                tc, b, s, h = s_in.shape
                q = att.key_value_query(s_in.reshape(tc * b, s, h), spikes=True)[2]
                work.append((q, s_k.reshape(tc * b, s, h), s_v.reshape(tc * b, s, h)))
                adds += (int(s_k.count_nonzero()) + int(s_v.count_nonzero())) * s
            feed = f"{k}.O2"
        heads = student.config.num_attention_heads

        def event():
            for q, s_k, s_v in work:
                event_engine.spike_attention(q, s_k, s_v, ext, heads)

        with event_engine.engine_override("auto"):
            ms = cpu_ms(event, repeats)
    return {"product": "attention", "synaptic_adds": adds, "ms_event": ms, "adds_per_s": adds / (ms / 1000.0),
            "adds_of_peak": adds / (ms / 1000.0) / peaks["add_per_s"]}


def case_limit(setting: Setting, repeats: int) -> list[dict]:
    """Per product and for the whole eval forward: achieved rates against the core's peaks."""
    from spikingbert.modules import event_ops

    if setting.device != "cpu" or event_ops.load() is not None:
        return []
    student, _, ids, types, mask = build(setting)
    peaks = peak_rates()

    def forward():
        with torch.inference_mode(), event_engine.engine_override("auto"):
            student(ids, types, mask)

    ms_forward = cpu_ms(forward, repeats)          # timed before the recorded chunks (up to GBs) are held
    chunks = recorded_chunks(student, ids, types, mask)
    rows = [product_row(*p, peaks, repeats) for p in products(student, chunks)]
    if event_engine.engine()[1] == 2:
        rows.append(attention_row(student, chunks, mask, peaks, repeats))
    adds = sum(r["synaptic_adds"] for r in rows)
    floor_ms = adds / peaks["add_per_s"] * 1000.0
    head = {"case": "limit", **setting.describe(), "peak_add_per_s": peaks["add_per_s"],
            "peak_flop_per_s": peaks["flop_per_s"]}
    return [{**head, **r} for r in rows] + [
        {**head, "product": "forward", "synaptic_adds": adds, "ms_event": ms_forward, "floor_ms": floor_ms,
         "floor_over_forward": floor_ms / ms_forward, "products_ms": sum(r["ms_event"] for r in rows)}]
