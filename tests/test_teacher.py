"""The vendored BERT teacher against the Hugging Face implementation, and its checkpoint loading."""
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file

from spikingbert.core.errors import ModelError, UsageError
from spikingbert.transformer.modeling import (
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    SequenceClassifierOutput,
)
from spikingbert.transformer.tokenization import BertTokenizer

SENTENCES = [
    ("Ad sales boost Time Warner profit.", None),
    ("Quarterly profits at US media giant TimeWarner jumped 76% to $1.13bn (£600m) for the three months "
     "to December, from $639m year-earlier.", None),
    ("The firm, which is now one of the biggest investors in Google, benefited from sales of high-speed "
     "internet connections and higher advert sales.", "TimeWarner said fourth quarter sales rose 2% to $11.1bn."),
    ("Dollar gains on Greenspan speech", None),
    ("The dollar has hit its highest level against the euro in almost three months after the Federal "
     "Reserve head said the US trade deficit is set to stabilise.", "And Alan Greenspan highlighted the US "
     "government's willingness to curb spending and rising household savings as factors which may help."),
    ("Yukos unit buyer faces loan claim", "The owners of embattled Russian oil giant Yukos are to ask the "
     "buyer of its former production unit to pay back a $900m (£479m) loan."),
    ("High fuel prices hit BA's profits", None),
    ("Pernod takeover talk lifts Domecq", "Shares in UK drinks and food firm Allied Domecq have risen on "
     "speculation that it could be the target of a takeover by France's Pernod Ricard."),
    ("Ça va? Ünïcödé, 中文 and emoji 🙂 too.", None),
]
TOLERANCE = 1e-4


def _batch(tokenizer, pairs):
    """Pad [CLS] a [SEP] (b [SEP]) encodings to one (B, S) batch."""
    rows = []
    for first, second in pairs:
        tokens = ["[CLS]"] + tokenizer.tokenize(first) + ["[SEP]"]
        segments = [0] * len(tokens)
        if second is not None:
            extra = tokenizer.tokenize(second) + ["[SEP]"]
            tokens += extra
            segments += [1] * len(extra)
        rows.append((tokenizer.convert_tokens_to_ids(tokens), segments))
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [0] * (length - len(ids)) for ids, _ in rows])
    token_type_ids = torch.tensor([seg + [0] * (length - len(seg)) for _, seg in rows])
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids, _ in rows])
    return input_ids, token_type_ids, attention_mask


@pytest.fixture(scope="module")
def minilm_outputs(minilm_dir):
    """Our and Hugging Face's outputs on the same padded batch, plus HF's query/key projections."""
    tokenizer = BertTokenizer.from_pretrained(minilm_dir)
    input_ids, token_type_ids, attention_mask = _batch(tokenizer, SENTENCES)
    assert (attention_mask == 0).any() and len(set(attention_mask.sum(1).tolist())) >= 8

    ours = BertModel.from_pretrained(minilm_dir)
    assert ours.initialised_keys == [] and ours.unexpected_keys == []
    ref = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    projections = {}
    hooks = []
    for i, layer in enumerate(ref.encoder.layer):
        for name in ("query", "key"):
            module = getattr(layer.attention.self, name)
            hooks.append(module.register_forward_hook(
                lambda mod, inp, out, i=i, name=name: projections.__setitem__((i, name), out.detach())))
    with torch.no_grad():
        got = ours(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        want = ref(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                   output_hidden_states=True, output_attentions=True)
    for hook in hooks:
        hook.remove()
    return got, want, projections, attention_mask, ref.config


@pytest.mark.slow
def test_minilm_hidden_states_match_huggingface(minilm_outputs):
    got, want, _, _, config = minilm_outputs
    assert len(got.hidden_states) == config.num_hidden_layers + 1 == len(want.hidden_states)
    diffs = [(a - b).abs().max().item() for a, b in zip(got.hidden_states, want.hidden_states)]
    assert max(diffs) <= TOLERANCE, diffs
    assert (got.pooled_output - want.pooler_output).abs().max().item() <= TOLERANCE


@pytest.mark.slow
def test_minilm_attention_matches_huggingface(minilm_outputs):
    got, want, projections, attention_mask, config = minilm_outputs
    assert len(got.attention_scores) == config.num_hidden_layers
    heads, head_size = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    additive = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
    prob_diffs, score_diffs = [], []
    for i, (scores, probs) in enumerate(zip(got.attention_scores, want.attentions)):
        assert scores.shape == probs.shape
        prob_diffs.append((scores.softmax(-1) - probs).abs().max().item())
        # Pre-softmax scores rebuilt from Hugging Face's own query/key projections.
        b, s, _ = projections[(i, "query")].shape
        q = projections[(i, "query")].view(b, s, heads, head_size).transpose(1, 2)
        k = projections[(i, "key")].view(b, s, heads, head_size).transpose(1, 2)
        expected = q @ k.transpose(-1, -2) / math.sqrt(head_size) + additive
        # relative to max(1, |score|): masked entries sit near -10000, where one float32 step is ~1e-3
        score_diffs.append(((scores - expected).abs() / expected.abs().clamp_min(1.0)).max().item())
        assert scores[attention_mask[:, None, None, :].expand_as(scores) == 0].max() < -9000
    assert max(prob_diffs) <= TOLERANCE, prob_diffs
    assert max(score_diffs) <= TOLERANCE, score_diffs


TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2, num_labels=3)


@pytest.fixture(scope="module")
def tiny_hf_classifier():
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**TINY)).eval()
    with torch.no_grad():  # a visible pooler/classifier so that head mistakes show in the logits
        model.classifier.weight.normal_(0, 1.0)
    return model


@pytest.fixture(scope="module")
def tiny_inputs():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, TINY["vocab_size"], (3, 7), generator=generator)
    token_type_ids = torch.tensor([[0] * 4 + [1] * 3] * 3)
    attention_mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    return input_ids, token_type_ids, attention_mask


def _kw(inputs):
    """Keyword form of (input_ids, token_type_ids, attention_mask): HF's positional order differs."""
    return dict(zip(("input_ids", "token_type_ids", "attention_mask"), inputs))


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_huggingface_classifier_checkpoint_loads(tmp_path, tiny_hf_classifier, tiny_inputs, safe_serialization):
    tiny_hf_classifier.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    weights = "model.safetensors" if safe_serialization else "pytorch_model.bin"
    assert (tmp_path / weights).is_file()
    ours = BertForSequenceClassification.from_pretrained(tmp_path)
    assert ours.weights_file == tmp_path / weights
    assert ours.initialised_keys == [] and not ours.training
    with torch.no_grad():
        got = ours(*tiny_inputs)
        want = tiny_hf_classifier(**_kw(tiny_inputs), output_hidden_states=True)
    assert isinstance(got, SequenceClassifierOutput) and got.logits.shape == (3, 3)
    assert (got.logits - want.logits).abs().max().item() <= 1e-5
    for a, b in zip(got.hidden_states, want.hidden_states, strict=True):
        assert (a - b).abs().max().item() <= 1e-5


def test_relu_head(tmp_path, tiny_hf_classifier, tiny_inputs):
    tiny_hf_classifier.save_pretrained(tmp_path)
    ours = BertForSequenceClassification.from_pretrained(tmp_path, classifier_head="relu")
    assert ours.config.classifier_head == "relu"
    with torch.no_grad():
        got = ours(*tiny_inputs).logits
        pooled = tiny_hf_classifier.bert(**_kw(tiny_inputs)).pooler_output
        expected = F.linear(torch.relu(pooled), tiny_hf_classifier.classifier.weight,
                            tiny_hf_classifier.classifier.bias)
        standard = tiny_hf_classifier(**_kw(tiny_inputs)).logits
    assert (got - expected).abs().max().item() <= 1e-5
    assert (got - standard).abs().max().item() > 1e-2  # the two heads really differ here
    config = json.loads((tmp_path / "config.json").read_text())
    config["classifier_head"] = "relu"
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert BertForSequenceClassification.from_pretrained(tmp_path).config.classifier_head == "relu"


def test_legacy_gamma_beta_names_and_unprefixed_keys(tmp_path, tiny_hf_classifier, tiny_inputs):
    tiny_hf_classifier.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    legacy = {}
    for key, tensor in state.items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        legacy[key.removeprefix("bert.")] = tensor
    assert any(k.endswith("gamma") for k in legacy) and not any(k.startswith("bert.") for k in legacy)
    (tmp_path / "model.safetensors").unlink()
    torch.save(legacy, tmp_path / "pytorch_model.bin")
    ours = BertForSequenceClassification.from_pretrained(tmp_path)
    encoder = BertModel.from_pretrained(tmp_path)
    assert sorted(encoder.unexpected_keys) == ["classifier.bias", "classifier.weight"]
    with torch.no_grad():
        want = tiny_hf_classifier(**_kw(tiny_inputs), output_hidden_states=True)
        assert (ours(*tiny_inputs).logits - want.logits).abs().max().item() <= 1e-5
        assert (encoder(*tiny_inputs).hidden_states[-1] - want.hidden_states[-1]).abs().max().item() <= 1e-5


def test_missing_encoder_weight_is_a_clear_error(tmp_path, tiny_hf_classifier):
    tiny_hf_classifier.save_pretrained(tmp_path, safe_serialization=False)
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    del state["bert.encoder.layer.1.attention.self.key.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(UsageError) as err:
        BertForSequenceClassification.from_pretrained(tmp_path)
    assert "bert.encoder.layer.1.attention.self.key.weight" in str(err.value)
    assert str(tmp_path / "pytorch_model.bin") in str(err.value)


def test_missing_head_is_initialised_and_reported(minilm_dir):
    model = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=4)
    assert sorted(model.initialised_keys) == ["classifier.bias", "classifier.weight"]
    assert model.classifier.weight.shape == (4, 384)
    assert torch.all(model.classifier.bias == 0)
    assert abs(model.classifier.weight.std().item() - model.config.initializer_range) < 0.005


def test_wrong_num_labels_is_a_clear_error(tmp_path, tiny_hf_classifier):
    tiny_hf_classifier.save_pretrained(tmp_path)
    message = r"model\.safetensors: classifier\.(weight|bias) has shape \(3.*expects \(5"
    with pytest.raises(UsageError, match=message):
        BertForSequenceClassification.from_pretrained(tmp_path, num_labels=5)


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        BertModel.from_pretrained(tmp_path)
    BertConfig(**dict(TINY.items())).to_json_file(tmp_path / "config.json")
    with pytest.raises(ModelError, match="model.safetensors nor pytorch_model.bin"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="model.safetensors cannot be read"):
        BertModel.from_pretrained(tmp_path)


def test_pretraining_teacher_with_and_without_heads(tmp_path, minilm_dir, tiny_inputs):
    teacher = BertForPreTraining.from_pretrained(minilm_dir)
    assert teacher.initialised_keys and all(k.startswith("cls.") for k in teacher.initialised_keys)
    out = teacher(*tiny_inputs)
    assert len(out.hidden_states) == 7 and len(out.attention_scores) == 6

    torch.manual_seed(0)
    ref = transformers.BertForPreTraining(transformers.BertConfig(**TINY)).eval()
    ref.save_pretrained(tmp_path)
    ours = BertForPreTraining.from_pretrained(tmp_path)
    assert ours.initialised_keys == [] and ours.unexpected_keys == []
    assert torch.equal(ours.cls.seq_relationship.weight, ref.cls.seq_relationship.weight)      # heads load by key
    assert torch.equal(ours.cls.predictions.transform.dense.weight, ref.cls.predictions.transform.dense.weight)
    with torch.no_grad():
        got = ours(*tiny_inputs)
        want = ref(**_kw(tiny_inputs), output_hidden_states=True)
    assert (got.hidden_states[-1] - want.hidden_states[-1]).abs().max().item() <= 1e-5


def test_save_pretrained_round_trip(tmp_path, tiny_inputs):
    torch.manual_seed(3)
    model = BertForSequenceClassification(BertConfig(**TINY, classifier_head="relu")).eval()
    model.save_pretrained(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    loaded = BertForSequenceClassification.from_pretrained(tmp_path / "out")
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(*tiny_inputs).logits, model(*tiny_inputs).logits)
    # Hugging Face reads what we write.
    hf = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path / "out")).eval()
    with torch.no_grad():
        pooled = hf.bert(**_kw(tiny_inputs)).pooler_output
        assert (F.linear(torch.relu(pooled), hf.classifier.weight, hf.classifier.bias)
                - model(*tiny_inputs).logits).abs().max().item() <= 1e-5


def test_config_round_trip_preserves_unknown_fields(tmp_path, minilm_dir):
    original = json.loads((minilm_dir / "config.json").read_text())
    config = BertConfig.from_pretrained(minilm_dir)
    assert (config.hidden_size, config.num_hidden_layers, config.layer_norm_eps) == (384, 6, 1e-12)
    assert config.classifier_head == "dropout"
    assert config.extra["_name_or_path"] == original["_name_or_path"]
    config.to_json_file(tmp_path / "config.json")
    written = json.loads((tmp_path / "config.json").read_text())
    assert {k: v for k, v in written.items() if k not in ("num_labels", "classifier_head")} == original
    assert BertConfig.from_json_file(tmp_path / "config.json") == config
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_config_errors(tmp_path):
    with pytest.raises(UsageError, match="not a multiple"):
        BertModel(BertConfig(hidden_size=30, num_attention_heads=4))
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"hidden_size": 32, "num_attention_heads": 4, "classifier_head": "tanh"}))
    expected = f"{bad}: classifier_head must be one of 'dropout', 'relu' (got \"tanh\")"
    with pytest.raises(UsageError, match=re.escape(expected)):
        BertConfig.from_json_file(bad)
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        BertConfig.from_json_file(bad)


def test_init_weights_follow_bert():
    config = BertConfig(**TINY, initializer_range=0.05)
    model = BertForSequenceClassification(config)
    emb = model.bert.embeddings.word_embeddings.weight
    assert torch.all(emb[config.pad_token_id] == 0)
    assert abs(emb[1:].std().item() - 0.05) < 0.005
    assert abs(model.bert.encoder.layer[0].intermediate.dense.weight.std().item() - 0.05) < 0.005
    for name, param in model.named_parameters():
        if "LayerNorm.weight" in name:
            assert torch.all(param == 1), name
        elif name.endswith("bias"):
            assert torch.all(param == 0), name
    pretraining = BertForPreTraining(config)
    assert pretraining.cls.predictions.decoder.weight is pretraining.bert.embeddings.word_embeddings.weight
    assert torch.all(pretraining.bert.embeddings.word_embeddings.weight[config.pad_token_id] == 0)
    assert torch.all(pretraining.cls.predictions.bias == 0)
