"""Energy accounting of the spike report: neuron layers, fan-outs, synaptic operations, ANN MACs and energy.

See docs/DESIGN.md, "Spike and energy report", for the fan-out table and the MAC count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from spikingbert.modules.blocks import NEURON_LAYERS

__all__ = ["PJ_PER_SOP", "PJ_PER_MAC", "neuron_layers", "layer_width", "FanOut", "fan_outs", "BertSize",
           "snn_uj", "ann_uj", "uncounted_ops", "UNCOUNTED", "OperationCounter"]

#: Energy of one synaptic operation (a 32-bit float add) and of one multiply-accumulate (a 32-bit float multiply,
#: 3.7 pJ, plus an add), 45 nm CMOS at 0.9 V, arithmetic only, no memory access (Horowitz, ISSCC 2014), picojoules.
PJ_PER_SOP = 0.9
PJ_PER_MAC = 4.6
#: The operations the energy estimate leaves out, per example (`uncounted_ops`).
UNCOUNTED = ("membrane_updates", "layernorm_elements", "softmax_elements", "gelu_elements")


def neuron_layers(config) -> list[str]:
    """Neuron layer keys in chain order: ``E``, then ``{k}.K`` … ``{k}.O2`` for each encoder ``k``."""
    return ["E"] + [f"{k}.{name}" for k in range(config.num_hidden_layers) for name in NEURON_LAYERS]


def layer_width(config, key: str) -> int:
    """Neurons per token of layer ``key``."""
    return config.intermediate_size if key.endswith(".I") else config.hidden_size


@dataclass(frozen=True)
class FanOut:
    """Synaptic operations caused by one spike: ``fixed + per_token * S_b`` (``S_b`` = real tokens)."""

    fixed: int
    per_token: int = 0

    def __call__(self, seq_len: Tensor) -> Tensor:
        return self.fixed + self.per_token * seq_len

    def describe(self) -> str:
        if self.per_token:
            return "S" if self.per_token == 1 else f"{self.per_token}S"
        return str(self.fixed)


def fan_outs(config) -> dict[str, FanOut]:
    """Fan-out of every neuron layer (the table in docs/DESIGN.md)."""
    h, inner, last = config.hidden_size, config.intermediate_size, config.num_hidden_layers - 1
    per_name = {"K": FanOut(0, 1), "V": FanOut(0, 1), "A": FanOut(h), "O1": FanOut(inner), "I": FanOut(h)}
    result = {"E": FanOut(3 * h)}
    for key in neuron_layers(config)[1:]:
        k, name = key.split(".")
        result[key] = FanOut(0 if int(k) == last else 3 * h) if name == "O2" else per_name[name]
    return result


@dataclass(frozen=True)
class BertSize:
    """Size of a BERT encoder, for its multiply-accumulate count."""

    num_layers: int
    hidden_size: int
    intermediate_size: int

    @classmethod
    def of(cls, config) -> "BertSize":
        """From any config with ``num_hidden_layers``, ``hidden_size``, ``intermediate_size`` (student or teacher)."""
        return cls(int(config.num_hidden_layers), int(config.hidden_size), int(config.intermediate_size))

    def macs(self, seq_len: Tensor) -> Tensor:
        """MACs of one example of ``seq_len`` real tokens: ``L (4 H^2 S + 2 H I S + 2 H S^2)``."""
        h, inner = self.hidden_size, self.intermediate_size
        s = seq_len.to(torch.float64)
        return self.num_layers * (4 * h * h * s + 2 * h * inner * s + 2 * h * s * s)

    def to_dict(self) -> dict[str, int]:
        return {"num_layers": self.num_layers, "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size}


def uncounted_ops(config, seq_len: Tensor, steps: int) -> dict[str, dict[str, Tensor]]:
    """What neither energy figure charges, per example of ``seq_len`` real tokens ``(B,)``, for the SNN (simulated
    for ``steps`` steps) and for a BERT of the same size: membrane updates (one per neuron and step), and the
    elements LayerNorm, softmax and GELU process. The SNN recomputes the last three at every step (the currents of
    O1, O2, A and I), the ANN once; the embeddings' LayerNorm runs once in both."""
    h, inner, layers, heads = (config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                               config.num_attention_heads)
    s = seq_len.to(torch.float64)
    neurons = h + layers * (5 * h + inner)                                # E, then K, V, A, O1, O2 and I per layer
    once = {"layernorm_elements": s * h * (1 + 2 * layers), "softmax_elements": layers * heads * s * s,
            "gelu_elements": layers * s * inner}
    snn = {"membrane_updates": steps * s * neurons, "layernorm_elements": s * h * (1 + 2 * layers * steps),
           "softmax_elements": steps * once["softmax_elements"], "gelu_elements": steps * once["gelu_elements"]}
    return {"snn": snn, "ann": {"membrane_updates": torch.zeros_like(s), **once}}


def snn_uj(sops: float) -> float:
    """``E_SNN`` in microjoules of ``sops`` synaptic operations."""
    return sops * PJ_PER_SOP * 1e-6


def ann_uj(macs: float) -> float:
    """``E_ANN`` in microjoules of ``macs`` multiply-accumulates."""
    return macs * PJ_PER_MAC * 1e-6


class OperationCounter:
    """Spikes and synaptic operations of every neuron layer (real tokens) and the MACs of BERTs of the given
    sizes, summed over batches in float64 on ``device`` (whole numbers, so the sums are exact)."""

    def __init__(self, config, sizes: dict[str, BertSize], device: torch.device):
        self.layers = neuron_layers(config)
        self.fans = fan_outs(config)
        self.sizes = sizes
        zero = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
        self.spikes = {key: zero() for key in self.layers}
        self.sops = {key: zero() for key in self.layers}
        self.macs = {name: zero() for name in sizes}
        self.config = config
        self.uncounted = {side: {name: zero() for name in UNCOUNTED} for side in ("snn", "ann")}

    def add(self, counts: dict[str, Tensor], seq_len: Tensor) -> None:
        """One batch: ``counts[key]`` spikes of each example ``(B,)`` at real tokens, ``seq_len`` ``(B,)`` float64."""
        for key in self.layers:
            self.spikes[key] += counts[key].sum()
            self.sops[key] += (counts[key] * self.fans[key](seq_len)).sum()
        for name, size in self.sizes.items():
            self.macs[name] += size.macs(seq_len).sum()
        for side, ops in uncounted_ops(self.config, seq_len, int(self.config.t_conv)).items():
            for name, values in ops.items():
                self.uncounted[side][name] += values.sum()

    def per_example(self, totals: dict[str, Tensor], examples: int, keys: Sequence[str] | None = None
                    ) -> dict[str, float]:
        """``totals`` (one of the sums above) divided by ``examples``, as floats."""
        return {key: float(totals[key]) / examples for key in (keys if keys is not None else totals)}
