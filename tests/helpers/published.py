"""State dicts in the format of the authors' published code (shared/PUBLISHED_CHECKPOINTS.md), for the converter tests.

`published_state`: a published-format state dict built from the key table, aliases and frozen copy included;
`raw_names`: the step-by-step reference's names (tests.helpers.students.reference_forward) onto its tensors;
`write_config`: the published code's BERT-style config.json.
"""
import json

import torch

H, INTER, HEADS, VOCAB = 16, 32, 2, 120


def published_state(layers, task=True, seed=0):
    """A published-format state dict built from the key table, aliases and frozen copy included."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.5
    sd = {"network_x.word_embeddings.weight": rnd(VOCAB, H), "network_x.position_embeddings.weight": rnd(64, H),
          "network_x.token_type_embeddings.weight": rnd(2, H), "network_x.LayerNorm.weight": 1 + rnd(H) * 0.1,
          "network_x.LayerNorm.bias": rnd(H) * 0.1}
    for k in range(layers):
        n = 6 * k
        shapes = {1: ("dense", H, H), 2: ("dense", H, H), 3: ("query", H, H), 4: ("dense", H, H),
                  5: ("dense", INTER, H), 6: ("dense", H, INTER)}
        for off, (sub, out_f, in_f) in shapes.items():
            sd[f"network_s{n + off}.{sub}.weight"] = rnd(out_f, in_f)
            sd[f"network_s{n + off}.{sub}.bias"] = rnd(out_f)
        for off in (4, 6):
            sd[f"network_s{n + off}.LayerNorm.weight"] = 1 + rnd(H) * 0.1
            sd[f"network_s{n + off}.LayerNorm.bias"] = rnd(H) * 0.1
    sd[f"network_s{6 * layers + 1}.fc.weight"] = rnd(H, H)
    sd["fit_dense.weight"], sd["fit_dense.bias"] = rnd(24, H), rnd(24)
    sd["pooler_layer.dense.weight"], sd["pooler_layer.dense.bias"] = rnd(H, H), rnd(H)
    if task:
        sd["classification.weight"], sd["classification.bias"] = rnd(3, H), rnd(3)
    base = dict(sd)
    for key, v in base.items():
        if key.startswith("network_s"):
            i, rest = key[len("network_s"):].split(".", 1)
            alias = f"snn_func.network_s_list.{int(i) - 1}.{rest}"
        elif key.startswith("network_x"):
            alias = "snn_func." + key
        else:
            continue
        sd[alias] = v
        sd["snn_ide_conv." + alias] = v
        sd["snn_func_copy." + alias[len("snn_func."):]] = torch.zeros_like(v)   # stale frozen copy
    return sd


def raw_names(sd):
    """Reference names -> raw published tensors."""
    emb = {"emb.word": "word_embeddings.weight", "emb.pos": "position_embeddings.weight",
           "emb.type": "token_type_embeddings.weight", "emb_ln_w": "LayerNorm.weight", "emb_ln_b": "LayerNorm.bias"}
    offsets = {"K": (1, "dense"), "V": (2, "dense"), "Q": (3, "query"), "O1": (4, "dense"), "I": (5, "dense"),
               "O2": (6, "dense"), "O1_ln": (4, "LayerNorm"), "O2_ln": (6, "LayerNorm")}

    def w(name):
        if name in emb:
            return sd["network_x." + emb[name]]
        if name.startswith("C_"):
            return sd["classification." + {"w": "weight", "b": "bias"}[name[-1]]]
        k, rest = name.split(".", 1)
        stem, kind = rest.rsplit("_", 1)
        off, sub = offsets[stem]
        return sd[f"network_s{6 * int(k) + off}.{sub}.{ {'w': 'weight', 'b': 'bias'}[kind]}"]
    return w


def write_config(path, layers):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({
        "hidden_size": H, "num_hidden_layers": layers, "num_attention_heads": HEADS, "intermediate_size": INTER,
        "vocab_size": VOCAB, "max_position_embeddings": 64, "type_vocab_size": 2, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02, "hidden_act": "gelu"}))
    return path
