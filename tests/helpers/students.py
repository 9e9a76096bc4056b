"""Helpers shared by the student tests: tiny configs, inputs, and an independent step-by-step reference."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from spikingbert.models.spiking_bert import SpikingBertConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_config(layers=2, hidden=32, heads=2, inter=64, vocab=120, t_conv=8, **kw) -> SpikingBertConfig:
    """A small student whose random weights (std 0.5) make every neuron layer spike."""
    base = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                intermediate_size=inter, max_position_embeddings=64, initializer_range=0.5,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, t_conv=t_conv)
    base.update(kw)
    return SpikingBertConfig(**base)


def tiny_inputs(batch=3, seq=9, vocab=120, seed=0):
    """Token ids, segment ids and a mask with padding on all but the first sequence."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    types = torch.randint(0, 2, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for b in range(1, batch):
        mask[b, seq - 2 * b:] = 0
    ids = ids * mask
    return ids, types, mask


def reference_forward(w, cfg, input_ids, token_type_ids, attention_mask, t_conv, vth, leak=1.0):
    """docs/DESIGN.md, "The spiking student", written out step by step, from raw tensors (``w(name)`` returns one).

    Names: ``emb.word/pos/type/ln_w/ln_b``, ``{k}.K_w``, ``{k}.K_b``, ``V``, ``Q``, ``O1`` (+ ``O1_ln_w/b``),
    ``I``, ``O2`` (+ ``O2_ln_w/b``), ``C_w``, ``C_b``. Returns (rates of E and each O2, logits).
    """
    H, nh, L = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers
    dh = H // nh
    B, S = input_ids.shape
    ln = lambda v, p: F.layer_norm(v, (H,), w(p + "_ln_w"), w(p + "_ln_b"), 1e-12)
    lin = lambda v, p: v @ w(p + "_w").T + w(p + "_b")
    emb = w("emb.word")[input_ids] + w("emb.pos")[torch.arange(S)] + w("emb.type")[token_type_ids]
    x = ln(emb, "emb")
    mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
    u = [0.0] * (1 + 6 * L)
    count = [0.0] * (1 + 6 * L)

    def fire(i, current):
        u[i] = u[i] + current
        s = (u[i] >= vth).to(x.dtype)
        u[i] = (u[i] - vth * s) * leak
        count[i] = count[i] + s
        return s

    def heads(v):
        return v.view(B, S, nh, dh).transpose(1, 2)

    for _ in range(t_conv):
        s_in = fire(0, x)
        for k in range(L):
            p = f"{k}."
            s_k = fire(6 * k + 1, lin(s_in, p + "K"))
            s_v = fire(6 * k + 2, lin(s_in, p + "V"))
            q = lin(s_in, p + "Q")
            scores = heads(q) @ heads(s_k).transpose(-1, -2) / math.sqrt(dh) + mask
            att = (torch.softmax(scores, -1) @ heads(s_v)).transpose(1, 2).reshape(B, S, H)
            s_a = fire(6 * k + 3, att)
            s_o1 = fire(6 * k + 4, ln(lin(s_a, p + "O1") + s_in, p + "O1"))
            s_i = fire(6 * k + 5, F.gelu(lin(s_o1, p + "I")))
            s_in = fire(6 * k + 6, ln(lin(s_i, p + "O2") + s_o1, p + "O2"))
    rates = [count[0] / t_conv] + [count[6 * k + 6] / t_conv for k in range(L)]
    logits = torch.relu(rates[-1][:, 0]) @ w("C_w").T + w("C_b")
    return rates, logits


def our_names(state):
    """Map the reference's names onto this project's state dict keys."""
    table = {"emb.word": "bert.embeddings.word_embeddings.weight",
             "emb.pos": "bert.embeddings.position_embeddings.weight",
             "emb.type": "bert.embeddings.token_type_embeddings.weight", "emb_ln_w": "bert.embeddings.LayerNorm.weight",
             "emb_ln_b": "bert.embeddings.LayerNorm.bias", "C_w": "classifier.weight", "C_b": "classifier.bias"}
    parts = {"K": "attention.self.key", "V": "attention.self.value", "Q": "attention.self.query",
             "O1": "attention.output.dense", "I": "intermediate.dense", "O2": "output.dense",
             "O1_ln": "attention.output.LayerNorm", "O2_ln": "output.LayerNorm"}

    def w(name):
        if name in table:
            return state[table[name]]
        k, rest = name.split(".", 1)
        stem, kind = rest.rsplit("_", 1)
        kind = {"w": "weight", "b": "bias"}[kind]
        return state[f"bert.encoder.layer.{k}.{parts[stem]}.{kind}"]
    return w


def convert(checkpoint: str, config: str, output_dir: str, **overrides):
    """A published-code checkpoint converted into a student directory at ``output_dir`` (as the converter's command
    does); returns the model."""
    from spikingbert.models.convert_published import build_converted

    model, vocab = build_converted(checkpoint, config, **overrides)
    model.save_pretrained(output_dir, vocab_file=vocab)
    return model


def by_hand_logits(model, ids):
    """Logits ``(num_labels,)`` of one input ``[CLS] ids [SEP]``, run alone without padding."""
    full = [2, *ids, 3]
    with torch.no_grad():
        out = model(torch.tensor([full]), torch.zeros(1, len(full), dtype=torch.long),
                    torch.ones(1, len(full), dtype=torch.long))
    return out.logits[0].double()
