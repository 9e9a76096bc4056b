"""Benchmark cases. Each returns a list of JSON-able result dicts.

Every ratio is measured in one process, alternating its sides, as the median
of ``repeats`` timings after a warm-up (this machine is shared and noisy). The
spiking side runs on both simulation engines (``modules.event_engine``): the
default (event-driven on CPU where built) and the dense engine (``_dense``
fields), interleaved.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from bench.firing import DEMO_RATES, DENSE_RATES, shape_firing
from spikingbert.core.linear import linear
from spikingbert.models.spiking_bert import SpikingBertConfig, SpikingBertForSequenceClassification
from spikingbert.modules import event_engine
from spikingbert.modules.event_engine import fused_bert_adam_update
from spikingbert.runtime import cpu_name
from spikingbert.transformer.modeling import BertConfig, BertModel
from spikingbert.transformer.optimization import BertAdam

RECIPES = {"recipe": DEMO_RATES, "dense_recipe": DENSE_RATES}

SIZES = {
    "small": dict(num_hidden_layers=4, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "base": dict(num_hidden_layers=4, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}


@dataclass
class Setting:
    size: str
    batch: int
    seq_len: int
    t_conv: int
    device: str = "cpu"
    #: "random" (init weights), "recipe" / "dense_recipe" (:func:`bench.firing.shape_firing` to the demo
    #: student's rates / to dense firing) or a trained student's directory
    weights: str = "random"

    def dims(self) -> dict:
        if self.weights in RECIPES or self.weights == "random":
            return SIZES[self.size]
        cfg = SpikingBertConfig.from_pretrained(self.weights)
        return dict(num_hidden_layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size,
                    num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size)

    def describe(self) -> dict:
        return {"size": self.size, **self.dims(), "B": self.batch, "S": self.seq_len, "T": self.t_conv,
                "weights": self.weights, "device": self.device, "threads": torch.get_num_threads(),
                "torch": torch.__version__, "cpu": cpu_name(), "loadavg": round(os.getloadavg()[0], 2)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_alternating(fns: dict[str, Callable[[], object]], device: str, repeats: int,
                     warmup: int = 1) -> dict[str, float]:
    """Median milliseconds of each function, the functions run in turn ``repeats`` times."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(v) for name, v in samples.items()}


def build(setting: Setting, **student_kw):
    """Student and same-size ANN BERT (teacher class), plus inputs. The student has random weights, weights
    shaped to fire like the demo's trained student (``weights="recipe"``) or a trained student's weights."""
    dims = setting.dims()
    torch.manual_seed(0)
    common = dict(t_conv=setting.t_conv, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **student_kw)
    if setting.weights in RECIPES or setting.weights == "random":
        student = SpikingBertForSequenceClassification(SpikingBertConfig(**dims, **common))
    else:
        student = SpikingBertForSequenceClassification.from_pretrained(setting.weights, **common)
    ann = BertModel(BertConfig(vocab_size=30522, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **dims))
    ids = torch.randint(1000, 30000, (setting.batch, setting.seq_len))
    mask = torch.ones_like(ids)
    mask[1:, setting.seq_len * 3 // 4:] = 0                      # some padding, as in real batches
    types = torch.zeros_like(ids)
    if setting.weights in RECIPES:
        shape_firing(student, (ids, types, mask), RECIPES[setting.weights])
    student, ann = student.to(setting.device), ann.to(setting.device)
    return student, ann, ids.to(setting.device), types.to(setting.device), mask.to(setting.device)


def on_engine(name: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run on simulation engine ``name`` (``"auto"`` or ``"dense"``)."""
    def run():
        with event_engine.engine_override(name):
            return fn()
    return run


def firing_rates(student, ids, types, mask) -> dict[str, float]:
    """Average spiking rate of every neuron layer over all positions (padding included, as the engine sees it)."""
    student.eval()
    with torch.inference_mode():
        rates = student(ids, types, mask, output_layer_rates=True).layer_rates
    return {k: round(float(v.float().mean()), 3) for k, v in rates.items()}


def input_densities(asr: dict[str, float]) -> dict[str, float]:
    """Density of each spike-input product's input (the rate of the layer that feeds it), from ``asr``."""
    out, feed = {}, "E"
    for k in range(sum(key.endswith(".O2") for key in asr)):
        out.update({f"{k}.key_value_query": asr[feed], f"{k}.attention.output": asr[f"{k}.A"],
                    f"{k}.intermediate": asr[f"{k}.O1"], f"{k}.output": asr[f"{k}.I"]})
        feed = f"{k}.O2"
    return out


def case_eval(setting: Setting, repeats: int) -> dict:
    """Student eval forward vs T x ANN forward: ``R_eval = t_snn / (T * t_ann)``."""
    student, ann, ids, types, mask = build(setting)
    student.eval(), ann.eval()

    def snn():
        with torch.inference_mode():
            student(ids, types, mask)

    def ann_fwd():
        with torch.inference_mode():
            ann(ids, types, mask)

    ms = time_alternating({"snn": on_engine("auto", snn), "dense_snn": on_engine("dense", snn), "ann": ann_fwd},
                          setting.device, repeats)
    asr = firing_rates(student, ids, types, mask)
    return {"case": "eval", **setting.describe(), "engine": event_engine.engine()[0],
            "asr": asr, "density_in": input_densities(asr), "ms_snn": ms["snn"], "ms_dense_snn": ms["dense_snn"],
            "ms_ann": ms["ann"], "R_eval": ms["snn"] / (setting.t_conv * ms["ann"]),
            "R_eval_dense": ms["dense_snn"] / (setting.t_conv * ms["ann"]), "speedup": ms["dense_snn"] / ms["snn"]}


def case_schedule(setting: Setting, repeats: int) -> dict:
    """Fast (time-batched) schedule vs the step-by-step schedule, eval forward."""
    student, _, ids, types, mask = build(setting)
    student.eval()

    def run(schedule):
        def fn():
            student.config.schedule = schedule
            with torch.inference_mode():
                student(ids, types, mask)
        return fn

    ms = time_alternating({"fast": run("fast"), "step": run("step")}, setting.device, repeats)
    return {"case": "schedule", **setting.describe(), "ms_fast": ms["fast"], "ms_step": ms["step"],
            "speedup": ms["step"] / ms["fast"]}


def _train_step_fn(student, ids, types, mask, setting: Setting):
    """One IDE step: forward, intermediate + prediction KD losses against fixed targets, backward, BertAdam."""
    from spikingbert.training.losses import att_loss, rep_loss, soft_cross_entropy

    g = torch.Generator(device="cpu").manual_seed(1)
    cfg = student.config
    b, s = ids.shape
    hidden = [torch.randn(b, s, cfg.fit_size, generator=g).to(ids.device) for _ in range(cfg.num_hidden_layers + 1)]
    atts = [torch.randn(b, cfg.num_attention_heads, s, s, generator=g).to(ids.device)
            for _ in range(cfg.num_hidden_layers)]
    logits_t = torch.randn(b, cfg.num_labels, generator=g).to(ids.device)
    opt = BertAdam(student.parameters(), lr=1e-5, warmup=0.1, t_total=1000, update_kernel=fused_bert_adam_update)
    student.train()

    def step():
        out = student(ids, types, mask)
        loss = (rep_loss(out.reps, hidden, 1) + att_loss(out.attention_scores, atts, 1)
                + soft_cross_entropy(out.logits, logits_t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def case_train(setting: Setting, repeats: int) -> dict:
    """IDE training step vs (student eval forward + ANN forward/backward): ``R_train``."""
    student, ann, ids, types, mask = build(setting)
    train_step = _train_step_fn(student, ids, types, mask, setting)
    ann.train()

    def snn_eval():
        student.eval()
        with torch.inference_mode():
            student(ids, types, mask)
        student.train()

    def ann_fwd_bwd():
        out = ann(ids, types, mask)
        (sum(h.float().pow(2).mean() for h in out.hidden_states)).backward()
        ann.zero_grad(set_to_none=True)

    ms = time_alternating({"train": on_engine("auto", train_step), "train_dense": on_engine("dense", train_step),
                           "snn_eval": on_engine("auto", snn_eval), "snn_eval_dense": on_engine("dense", snn_eval),
                           "ann_fwd_bwd": ann_fwd_bwd}, setting.device, repeats)
    return {"case": "train", **setting.describe(), "engine": event_engine.engine()[0],
            "ms_train": ms["train"], "ms_train_dense": ms["train_dense"], "ms_snn_eval": ms["snn_eval"],
            "ms_snn_eval_dense": ms["snn_eval_dense"], "ms_ann_fwd_bwd": ms["ann_fwd_bwd"],
            "R_train": ms["train"] / (ms["snn_eval"] + ms["ann_fwd_bwd"]),
            "R_train_dense": ms["train_dense"] / (ms["snn_eval_dense"] + ms["ann_fwd_bwd"]),
            "speedup": ms["train_dense"] / ms["train"]}


def case_crossover(setting: Setting, repeats: int, densities=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)) -> list[dict]:
    """Event-driven vs dense product of each simulation layer shape, on random spikes of a range of
    densities, rows of one time chunk: the density where the two cost the same (what the engine's
    ``max_density`` is set from), per instruction set."""
    from spikingbert.modules import event_ops

    if setting.device != "cpu" or event_ops.load() is not None:
        return []
    dims = setting.dims()
    h, inter = dims["hidden_size"], dims["intermediate_size"]
    student = SpikingBertForSequenceClassification(SpikingBertConfig(**dims, t_conv=setting.t_conv))
    rows = student.bert.time_chunk(setting.t_conv, setting.batch, setting.seq_len) * setting.batch * setting.seq_len
    ops = torch.ops.spikingbert
    best = int(ops.event_isa())
    g = torch.Generator().manual_seed(0)
    out = []
    for name, k, n in (("key_value_query", h, 3 * h), ("attention.output", h, h), ("intermediate", h, inter),
                       ("output", inter, h)):
        w, b = torch.randn(n, k, generator=g) * 0.05, torch.randn(n, generator=g)
        packed = ops.pack_weight(w)
        for isa in [i for i in (2, 1) if i <= best]:
            ratios = []
            for d in densities:
                x = (torch.rand(rows, k, generator=g) < d).float()
                ms = time_alternating({"dense": lambda: linear(x, w, b),
                                       "event": lambda: ops.spike_linear(x, packed, b, n, 1.0, isa)}, "cpu", repeats)
                ratios.append(ms["event"] / ms["dense"])
            cross = next((d0 + (1 - r0) * (d1 - d0) / (r1 - r0) for d0, r0, d1, r1
                          in zip(densities, ratios, densities[1:], ratios[1:]) if r0 < 1 <= r1), None)
            out.append({"case": "crossover", **setting.describe(), "layer": name, "K": k, "N": n, "rows": rows,
                        "isa": "avx512" if isa == 2 else "avx2", "densities": list(densities),
                        "event_over_dense": [round(r, 3) for r in ratios],
                        "crossover": None if cross is None else round(cross, 3),
                        "max_density": event_engine.max_density(k, isa)})
    return out


def measure_peak_memory(setting: Setting, mode: str) -> float:
    """Peak memory (MiB) of one training step in a fresh process (``mode`` = ``ide`` or ``bptt``).

    CUDA: ``max_memory_allocated`` beyond what the model and inputs hold. CPU: peak resident set
    size beyond the resident size before the step.
    """
    args = [sys.executable, "-m", "bench.cases", json.dumps({**setting.__dict__, "mode": mode})]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(args, cwd=root, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _memory_probe(spec: dict) -> float:
    import gc
    import resource

    from spikingbert.runtime import keep_freed_memory

    keep_freed_memory()
    setting = Setting(**{k: spec[k] for k in ("size", "batch", "seq_len", "t_conv", "device")})
    student, ann, ids, types, mask = build(setting, train_mode=spec["mode"])
    del ann
    step = _train_step_fn(student, ids, types, mask, setting)
    gc.collect()
    if setting.device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/statm") as f:
        base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (peak - base) / 2**20


def case_memory(size: str, batch: int, seq_len: int, ide_ts, bptt_ts, device: str) -> list[dict]:
    """Peak training-step memory vs T for IDE and for the BPTT baseline."""
    rows = []
    for mode, ts in (("ide", ide_ts), ("bptt", bptt_ts)):
        peaks = {t: measure_peak_memory(Setting(size, batch, seq_len, t, device), mode) for t in ts}
        rows.append({"case": "memory", "mode": mode, **Setting(size, batch, seq_len, ts[0], device).describe(),
                     "T": list(ts), "peak_mib": [round(peaks[t], 1) for t in ts],
                     "growth": peaks[ts[-1]] / peaks[ts[0]]})
    return rows


if __name__ == "__main__":
    print(_memory_probe(json.loads(sys.argv[1])))
