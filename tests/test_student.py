"""Spiking student: schedules, reference loop, published checkpoint, model directories."""
import logging

import pytest
import torch

from spikingbert.core.errors import UsageError
from spikingbert.models.spiking_bert import (
    SpikingBertConfig,
    SpikingBertForDistillation,
    SpikingBertForSequenceClassification,
)
from spikingbert.models.stopping import StopRule, class_margins, stop_steps
from tests.helpers.students import our_names, reference_forward, tiny_config, tiny_inputs


def _spikes(model, inputs, **kw):
    """All spikes of every neuron layer, concatenated in simulation order."""
    seen = {}

    def record(key, t0, spikes):
        seen.setdefault(key, []).append(spikes)

    with torch.no_grad():
        out = model(*inputs, recorder=record, output_layer_rates=True, **kw)
    return {k: torch.cat(v) for k, v in seen.items()}, out


@pytest.mark.parametrize("layers", [1, 2, 3, 6])
@pytest.mark.parametrize("leak", [1.0, 0.9])
def test_fast_and_step_schedules_give_identical_spikes_float64(layers, leak):
    torch.manual_seed(layers)
    config = tiny_config(layers=layers, leak=leak, t_conv=11, time_chunk=4)
    model = SpikingBertForSequenceClassification(config).double().eval()
    inputs = tiny_inputs()
    fast, out_fast = _spikes(model, inputs)
    model.config.schedule = "step"
    step, out_step = _spikes(model, inputs)
    assert fast.keys() == step.keys() and len(fast) == 1 + 6 * layers
    for key in fast:
        assert fast[key].shape[0] == 11
        assert torch.equal(fast[key], step[key]), key
    rates = out_fast.layer_rates
    assert all(0.0 < rates[k].mean() < 1.0 for k in rates)       # every layer spikes, none saturates
    assert torch.equal(out_fast.logits, out_step.logits)


def test_fast_and_step_float32_differ_only_at_rounding():
    torch.manual_seed(0)
    model = SpikingBertForSequenceClassification(tiny_config(layers=3, t_conv=32)).eval()
    inputs = tiny_inputs(batch=4, seq=16)
    fast, _ = _spikes(model, inputs)
    model.config.schedule = "step"
    step, _ = _spikes(model, inputs)
    differing = sum(int((fast[k] != step[k]).sum()) for k in fast)
    total = sum(fast[k].numel() for k in fast)
    print(f"float32 fast vs step: {differing} of {total} spikes differ ({differing / total:.2e})")
    assert differing / total <= 1e-4


@pytest.mark.parametrize("leak", [1.0, 0.8])
def test_matches_independent_step_loop(leak):
    torch.manual_seed(3)
    model = SpikingBertForSequenceClassification(tiny_config(layers=2, leak=leak, num_labels=3)).double().eval()
    ids, types, mask = tiny_inputs()
    with torch.no_grad():
        out = model(ids, types, mask)
        rates, logits = reference_forward(our_names(model.state_dict()), model.config, ids, types, mask, 8, 1.0, leak)
    for ours, ref in zip(out.rates, rates):
        assert torch.equal(ours, ref)
    assert torch.allclose(out.logits, logits, atol=1e-12)


def test_call_overrides_and_chunking_do_not_change_results():
    torch.manual_seed(1)
    model = SpikingBertForDistillation(tiny_config(layers=2, fit_size=48)).double().eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        a = model(*inputs, t_conv=13, vth=0.7)
        model.config.time_chunk = 1
        b = model(*inputs, t_conv=13, vth=0.7)
    assert all(torch.equal(x, y) for x, y in zip(a.rates, b.rates))
    assert a.reps[0].shape == (3, 9, 48) and len(a.reps) == 3


def test_published_checkpoint_fixture_reproduced_exactly(published_fixture_dir, tmp_path):
    from tests.helpers.students import convert

    convert(str(published_fixture_dir / "pytorch_model.bin"), str(published_fixture_dir), str(tmp_path / "out"),
            t_conv=8)
    expected = torch.load(published_fixture_dir / "expected.pt", weights_only=True)
    model = SpikingBertForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert model.config.t_conv == 8 and model.config.num_labels == 3
    with torch.no_grad():
        out = model(expected["input_ids"], expected["token_type_ids"], expected["attention_mask"], vth=expected["vth"])
    for ours, ref in zip(out.reps, expected["reps"], strict=True):       # every spike count equal
        assert torch.equal(ours, ref)
    # the classifier's GEMM may add up in another order than the published run's (oneDNN vs MKL)
    torch.testing.assert_close(out.logits, expected["logits"], rtol=0, atol=1e-6)


def test_save_load_round_trip(tmp_path, bert_vocab):
    torch.manual_seed(0)
    model = SpikingBertForSequenceClassification(tiny_config(num_labels=3, t_conv=6)).eval()
    model.save_pretrained(tmp_path / "m", vocab_file=bert_vocab)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    again = SpikingBertForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        a, b = model(*inputs), again(*inputs)
    assert torch.equal(a.logits, b.logits)
    assert again.config.t_conv == 6 and again.config.initializer_range == 0.5
    # saving again carries the vocab it was loaded with
    again.save_pretrained(tmp_path / "m2")
    assert (tmp_path / "m2" / "vocab.txt").read_bytes() == bert_vocab.read_bytes()


def test_general_kd_dir_loads_into_classifier_with_only_head_initialised(tmp_path, caplog):
    torch.manual_seed(0)
    general = SpikingBertForDistillation(tiny_config())
    general.save_pretrained(tmp_path / "g")
    with caplog.at_level(logging.INFO, logger="spikingbert.core.pretrained"):
        task = SpikingBertForSequenceClassification.from_pretrained(tmp_path / "g", num_labels=2)
    notes = [r.getMessage() for r in caplog.records if "initialised" in r.getMessage()]
    assert len(notes) == 1 and "classifier.weight, classifier.bias" in notes[0]
    for k, v in general.state_dict().items():
        assert torch.equal(task.state_dict()[k], v)
    # a task dir goes back into the distillation student with its head dropped
    task.save_pretrained(tmp_path / "t")
    SpikingBertForDistillation.from_pretrained(tmp_path / "t")


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    SpikingBertForDistillation(tiny_config(layers=2)).save_pretrained(tmp_path / "g")
    with pytest.raises(UsageError, match="missing .*encoder.layer.2"):
        SpikingBertForDistillation.from_pretrained(tmp_path / "g", num_hidden_layers=3)
    SpikingBertForSequenceClassification(tiny_config(num_labels=3)).save_pretrained(tmp_path / "c")
    with pytest.raises(UsageError, match=r"classifier\.(weight|bias) has shape"):
        SpikingBertForSequenceClassification.from_pretrained(tmp_path / "c", num_labels=2)


def test_config_dir_without_weights_gives_new_student(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    model = SpikingBertForSequenceClassification.from_pretrained(tmp_path, num_labels=4)
    assert model.classifier.out_features == 4


@pytest.mark.parametrize("bad, message", [
    (dict(t_conv=0), "t_conv"), (dict(vth=0.0), "vth"), (dict(leak=1.5), "leak"),
    (dict(hidden_size=30, num_attention_heads=4), "multiple"), (dict(ide_point="x"), "ide_point"),
])
def test_invalid_settings_are_rejected(bad, message):
    with pytest.raises(UsageError, match=message):
        tiny_config(**bad)


def test_reference_student_config_loads():
    cfg = SpikingBertConfig.from_pretrained("spiking_student_model")
    sizes = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size)
    assert sizes == (4, 768, 12, 3072)
    assert (cfg.t_conv, cfg.vth, cfg.leak) == (100, 1.0, 1.0)


@pytest.mark.slow
def test_adaptive_t_stops_each_example_where_separate_fixed_runs_say():
    """Each example's logits are those of a separate run with t_conv = its stop step, and its stop step is the one
    the rule gives on the logits of separate runs at every t = 1..T (float64: bit-identical)."""
    torch.manual_seed(0)
    t_conv = 24
    model = SpikingBertForSequenceClassification(tiny_config(layers=2, t_conv=t_conv)).double().eval()
    inputs = tiny_inputs(batch=6)
    with torch.no_grad():
        per_step = torch.stack([model(*inputs, t_conv=t).logits for t in range(1, t_conv + 1)], 1)   # (B, T, C)
    classes, margins = class_margins(per_step)
    rule = StopRule(margin=float(margins[:, 4:].median()), window=2, min_steps=3)
    expected = stop_steps(classes, margins, rule)
    assert expected.min() < t_conv and len(set(expected.tolist())) > 1        # a mix of early and late stops
    for chunk in (None, 1, 5):
        model.config.time_chunk = chunk
        with torch.no_grad():
            out = model(*inputs, adaptive=rule)
        assert torch.equal(out.example_steps, expected), chunk
        assert expected.max() <= out.steps <= t_conv and (chunk != 1 or out.steps == expected.max())
        assert torch.equal(out.logits, per_step[torch.arange(6), expected - 1]), chunk
    model.config.time_chunk = 5
    with torch.no_grad():
        everyone_at_once = model(*inputs, adaptive=StopRule(0.0, 1, 1))
        fixed = model(*inputs)
    assert everyone_at_once.steps == 5 and (everyone_at_once.example_steps == 1).all()    # one chunk ran
    assert torch.equal(fixed.example_steps, torch.full((6,), t_conv)) and fixed.steps == t_conv
