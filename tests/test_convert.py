"""Import of checkpoints written by the published code (shared/PUBLISHED_CHECKPOINTS.md)."""
import json
import subprocess
import sys

import pytest
import torch

from tests.student_utils import convert
from core.errors import UsageError
from models.spiking_bert import SpikingBertForDistillation, SpikingBertForSequenceClassification
from tests.student_utils import REPO_ROOT, reference_forward, tiny_inputs

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


def _write_config(path, layers):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({
        "hidden_size": H, "num_hidden_layers": layers, "num_attention_heads": HEADS, "intermediate_size": INTER,
        "vocab_size": VOCAB, "max_position_embeddings": 64, "type_vocab_size": 2, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02, "hidden_act": "gelu"}))
    return path


@pytest.mark.parametrize("layers", [2, 4])
def test_converted_task_checkpoint_reproduces_reference(tmp_path, layers):
    sd = published_state(layers)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    cfg_dir = _write_config(tmp_path / "cfg", layers)
    convert(str(tmp_path / "pytorch_model.bin"), str(cfg_dir), str(tmp_path / "out"), t_conv=10, vth=0.8)
    model = SpikingBertForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    ids, types, mask = tiny_inputs(vocab=VOCAB)
    with torch.no_grad():
        out = model(ids, types, mask)
        rates, logits = reference_forward(raw_names(sd), model.config, ids, types, mask, 10, 0.8)
    for ours, ref in zip(out.rates, rates, strict=True):
        assert torch.equal(ours, ref)
        assert 0 < ref.mean() < 1
    torch.testing.assert_close(out.logits, logits)
    for ours, ref in zip(out.reps, rates):
        torch.testing.assert_close(ours, ref @ sd["fit_dense.weight"].T + sd["fit_dense.bias"])


def test_general_kd_checkpoint_cli(tmp_path):
    sd = published_state(2, task=False)
    torch.save(sd, tmp_path / "step_100_pytorch_model.bin")
    cfg_dir = _write_config(tmp_path / "cfg", 2)
    (cfg_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(VOCAB - 4)]))
    result = subprocess.run([sys.executable, "-m", "apps.convert_published", "--checkpoint",
                             str(tmp_path / "step_100_pytorch_model.bin"), "--config", str(cfg_dir),
                             "--output_dir", str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    model = SpikingBertForDistillation.from_pretrained(tmp_path / "out")
    assert model.config.t_conv == 100 and model.config.fit_size == 24
    torch.testing.assert_close(model.bert.encoder.layer[1].output.dense.weight, sd["network_s12.dense.weight"])


def test_unrecognised_and_mismatched_checkpoints_are_clear_errors(tmp_path):
    sd = published_state(2)
    sd["network_s3.surprise.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "a.bin")
    with pytest.raises(UsageError, match="unrecognised keys.*network_s3.surprise"):
        convert(str(tmp_path / "a.bin"), str(_write_config(tmp_path / "c2", 2)), str(tmp_path / "o"))
    torch.save(published_state(4), tmp_path / "b.bin")
    with pytest.raises(UsageError, match="unrecognised keys"):
        convert(str(tmp_path / "b.bin"), str(tmp_path / "c2"), str(tmp_path / "o"))   # 4-layer file, 2-layer config
    result = subprocess.run([sys.executable, "-m", "apps.convert_published", "--checkpoint", str(tmp_path / "b.bin"),
                             "--config", str(tmp_path / "c2"), "--output_dir", str(tmp_path / "o")],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: unrecognised keys")
