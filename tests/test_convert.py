"""Import of checkpoints written by the published code (shared/PUBLISHED_CHECKPOINTS.md)."""
import subprocess
import sys

import pytest
import torch

from spikingbert.core.errors import UsageError
from spikingbert.models.spiking_bert import SpikingBertForDistillation, SpikingBertForSequenceClassification
from tests.helpers.published import VOCAB, published_state, raw_names, write_config
from tests.helpers.students import REPO_ROOT, convert, reference_forward, tiny_inputs


@pytest.mark.parametrize("layers", [2, 4])
def test_converted_task_checkpoint_reproduces_reference(tmp_path, layers):
    sd = published_state(layers)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    cfg_dir = write_config(tmp_path / "cfg", layers)
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


@pytest.mark.system
def test_general_kd_checkpoint_cli(tmp_path):
    sd = published_state(2, task=False)
    torch.save(sd, tmp_path / "step_100_pytorch_model.bin")
    cfg_dir = write_config(tmp_path / "cfg", 2)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(VOCAB - 4)]
    (cfg_dir / "vocab.txt").write_text("\n".join(words))
    result = subprocess.run([sys.executable, "-m", "apps.convert_published", "--checkpoint",
                             str(tmp_path / "step_100_pytorch_model.bin"), "--config", str(cfg_dir),
                             "--output_dir", str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    model = SpikingBertForDistillation.from_pretrained(tmp_path / "out")
    assert model.config.t_conv == 100 and model.config.fit_size == 24
    torch.testing.assert_close(model.bert.encoder.layer[1].output.dense.weight, sd["network_s12.dense.weight"])


@pytest.mark.system
def test_unrecognised_and_mismatched_checkpoints_are_clear_errors(tmp_path):
    sd = published_state(2)
    sd["network_s3.surprise.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "a.bin")
    with pytest.raises(UsageError, match="unrecognised keys.*network_s3.surprise"):
        convert(str(tmp_path / "a.bin"), str(write_config(tmp_path / "c2", 2)), str(tmp_path / "o"))
    torch.save(published_state(4), tmp_path / "b.bin")
    with pytest.raises(UsageError, match="unrecognised keys"):
        convert(str(tmp_path / "b.bin"), str(tmp_path / "c2"), str(tmp_path / "o"))   # 4-layer file, 2-layer config
    result = subprocess.run([sys.executable, "-m", "apps.convert_published", "--checkpoint", str(tmp_path / "b.bin"),
                             "--config", str(tmp_path / "c2"), "--output_dir", str(tmp_path / "o")],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: unrecognised keys")
