"""Spiking BERT blocks: the input current of every neuron layer.

Each block only computes *currents*. Fed with spikes it drives the simulation;
fed with average spiking rates (and followed by ``clip(c / vth, 0, 1)``) it is
the equivalent rate function used by implicit differentiation. The blocks that
compute exactly what the teacher's compute are the teacher's own classes
(`transformer.modeling`: ``BertSelfOutput`` for O1, ``BertIntermediate`` for I,
``BertOutput`` for O2), so parameter names (``attention.self.query``,
``intermediate.dense``, ``output.LayerNorm``) and teacher weights map by key by
construction. The embeddings keep the teacher's modules but their own order of
summation (word + position + token type), which reproduces the published
checkpoints bit for bit.

Shapes: ``N`` is any number of independent sequences (``B``, or ``T*B`` with time
folded into the batch), ``S`` sequence length, ``H`` hidden size, ``nh`` heads,
``dh = H / nh``, ``I`` intermediate size. The additive attention mask is
``(B, 1, 1, S)`` and is broadcast over time when ``N = T*B``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from spikingbert.core.linear import linear
from spikingbert.transformer.modeling import (
    BertEmbeddings,
    BertIntermediate,
    BertOutput,
    BertSelfAttention,
    BertSelfOutput,
)

from .event_engine import spike_attention, spike_linear

#: ``scan(name, currents) -> spikes`` runs neuron layer ``name`` over a chunk of steps,
#: with currents and spikes ``(Tc, B, S, width)``.
ScanFn = Callable[[str, Tensor], Tensor]

#: ``activate(name, currents) -> rates`` turns equivalent-network currents into rates.
ActivateFn = Callable[[str, Tensor], Tensor]

#: Neuron layers of one encoder layer, in chain order.
NEURON_LAYERS = ("K", "V", "A", "O1", "I", "O2")


class SpikingBertEmbeddings(BertEmbeddings):
    """Word + position + token-type embeddings and LayerNorm: the constant current ``x`` of layer E.

    The teacher's modules, summed as the published student sums them (the teacher adds the
    position embeddings last); in float32 the order decides which neurons reach the threshold.
    """

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        """``input_ids``, ``token_type_ids`` ``(B, S)`` -> ``x`` ``(B, S, H)``."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.LayerNorm(x))


class SpikingBertSelfAttention(BertSelfAttention):
    """Projections of neuron layers K, V (``key``, ``value``) and the query of layer A (the teacher's modules)."""

    def key_value_query(self, x: Tensor, spikes: bool = False, steps: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """One product for the three projections of the input layer: ``(N, S, H)`` -> 3 x ``(N, S, H)``.

        ``spikes``: ``x`` is 0/1 (the simulation, ``N`` = ``steps`` x B), so
        :func:`~modules.event_engine.spike_linear` computes it."""
        weights = [self.key.weight, self.value.weight, self.query.weight]                # 3 x (H, H)
        biases = [self.key.bias, self.value.bias, self.query.bias]
        if spikes:
            return spike_linear(x, weights, biases, steps).chunk(3, dim=-1)
        return linear(x, torch.cat(weights), torch.cat(biases)).chunk(3, dim=-1)

    def attend_spikes(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor,
                      keep_scores: bool) -> tuple[Tensor, Optional[Tensor]]:
        """:meth:`attend` for 0/1 ``k`` and ``v`` (the simulation): accumulate-only on the event engine
        (:func:`~modules.event_engine.spike_attention`) unless the scores are kept or dropout is active; the
        scores are returned only when kept."""
        if not keep_scores and not (self.dropout.training and self.dropout.p > 0):
            context = spike_attention(q, k, v, mask, self.num_attention_heads)
            if context is not None:
                return context, None
        return self.attend(q, k, v, mask)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Current of layer A: per head ``softmax(q k^T / sqrt(dh) + mask) v``.

        ``q``, ``k``, ``v`` ``(N, S, H)``; returns the current ``(N, S, H)`` and the scores ``(N, nh, S, S)``.
        """
        n, s, h = q.shape
        nh, dh = self.num_attention_heads, self.attention_head_size
        q = q.view(n, s, nh, dh).transpose(1, 2)                     # (N, nh, S, dh)
        k = k.view(n, s, nh, dh).transpose(1, 2)
        v = v.view(n, s, nh, dh).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh)  # (N, nh, S, S)
        b = mask.shape[0]
        scores = (scores.view(n // b, b, nh, s, s) + mask).view(n, nh, s, s)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, v)                             # (N, nh, S, dh)
        return context.transpose(1, 2).reshape(n, s, h), scores


class SpikingBertAttention(nn.Module):
    """Layer A's projections (``self``) and layer O1's current ``LayerNorm(W_O s_A + b_O + s_in)`` (``output``)."""

    def __init__(self, config):
        super().__init__()
        self.self = SpikingBertSelfAttention(config)
        self.output = BertSelfOutput(config)


class SpikingBertLayer(nn.Module):
    """One encoder layer: the six neuron layers K, V, A, O1, I, O2."""

    def __init__(self, config):
        super().__init__()
        self.attention = SpikingBertAttention(config)
        self.intermediate = BertIntermediate(config)      # layer I: GELU(W_I s_O1 + b_I), width intermediate_size
        self.output = BertOutput(config)                  # layer O2: LayerNorm(W_2 s_I + b_2 + s_O1)

    def simulate(self, s_in: Tensor, mask: Tensor, scan: ScanFn,
                 keep_scores: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        """Advance the six neuron layers over a chunk of steps, each layer over all steps at once.

        ``s_in`` ``(Tc, B, S, H)`` spikes of the input layer. Returns the O2 spikes ``(Tc, B, S, H)`` and,
        if ``keep_scores``, the attention scores summed over the chunk ``(B, nh, S, S)``. Every dense product
        here takes spikes, so it goes through :func:`~modules.event_engine.spike_linear` (event-driven on
        CPU where that is faster, else the block's GEMM) and the block does the rest (``after_dense``).
        """
        tc, b, s, h = s_in.shape
        s_flat = s_in.reshape(tc * b, s, h)                                   # (Tc*B, S, H)
        k, v, q = self.attention.self.key_value_query(s_flat, spikes=True, steps=tc)
        s_k = scan("K", k.view(tc, b, s, h))
        s_v = scan("V", v.view(tc, b, s, h))
        att, scores = self.attention.self.attend_spikes(q, s_k.view(tc * b, s, h), s_v.view(tc * b, s, h), mask,
                                                        keep_scores)
        s_a = scan("A", att.view(tc, b, s, h))
        out, inter, ffn = self.attention.output, self.intermediate, self.output
        s_o1 = scan("O1", out.after_dense(spike_linear(s_a, out.dense.weight, out.dense.bias, tc), s_in))
        s_i = scan("I", inter.after_dense(spike_linear(s_o1, inter.dense.weight, inter.dense.bias, tc)))
        s_o2 = scan("O2", ffn.after_dense(spike_linear(s_i, ffn.dense.weight, ffn.dense.bias, tc), s_o1))
        score_sum = scores.view(tc, b, *scores.shape[1:]).sum(0) if keep_scores else None
        return s_o2, score_sum

    def equivalent(self, a_in: Tensor, mask: Tensor, activate: ActivateFn) -> tuple[Tensor, Tensor]:
        """Equivalent rate function of the layer: ``a_in`` ``(B, S, H)`` -> ``a_O2`` ``(B, S, H)`` and scores
        ``(B, nh, S, S)``.

        ``activate(name, current)`` maps each neuron layer's current to its rate (clip and, for the
        ``snn`` IDE point, substitution of the simulated rate).
        """
        k, v, q = self.attention.self.key_value_query(a_in)
        a_k = activate("K", k)
        a_v = activate("V", v)
        att, scores = self.attention.self.attend(q, a_k, a_v, mask)
        a_a = activate("A", att)
        a_o1 = activate("O1", self.attention.output(a_a, a_in))
        a_i = activate("I", self.intermediate(a_o1))
        a_o2 = activate("O2", self.output(a_i, a_o1))
        return a_o2, scores


class SpikingBertEncoder(nn.Module):
    """``num_hidden_layers`` encoder layers (``encoder.layer.{k}``)."""

    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(SpikingBertLayer(config) for _ in range(config.num_hidden_layers))
