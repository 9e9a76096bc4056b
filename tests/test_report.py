"""Spike/energy report: one-pass statistics against independent computations, and the files written."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from spikingbert.core.errors import DataError
from spikingbert.core.errors import UsageError as ReportError
from spikingbert.evaluation.adaptive import adaptive_t_eval
from spikingbert.evaluation.energy import BertSize, fan_outs, neuron_layers, uncounted_ops
from spikingbert.evaluation.measure import collect_spike_stats
from spikingbert.evaluation.plots import REPORT_FILES, write_report
from spikingbert.models.spiking_bert import (
    SpikingBertConfig,
    SpikingBertForDistillation,
    SpikingBertForSequenceClassification,
)
from spikingbert.models.stopping import StopRule, stop_steps
from spikingbert.modules.event_engine import engine_override
from tests.helpers.students import tiny_config, tiny_inputs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _data(batch=6, seq=9, num_labels=2, seed=0):
    """Inputs with different amounts of padding per example, and labels."""
    ids, types, mask = tiny_inputs(batch=batch, seq=seq, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    if num_labels == 1:
        return ids, types, mask, torch.rand(batch, generator=g) * 5
    labels = torch.randint(0, num_labels, (batch,), generator=g)
    return ids, types, mask, labels


def _loader(ids, types, mask, labels, batch_size):
    """Batches in the layout of spikingbert.data.glue.load_task_dataset."""
    dataset = TensorDataset(ids, mask, types, labels, mask.sum(1))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def _model(seed, dtype=torch.float64, **config):
    torch.manual_seed(seed)
    return SpikingBertForSequenceClassification(tiny_config(**config)).to(dtype).eval()


def _batches(ids, types, mask, batch_size):
    for i in range(0, ids.shape[0], batch_size):
        yield ids[i:i + batch_size], types[i:i + batch_size], mask[i:i + batch_size]


@pytest.mark.parametrize("layers", [1, 2])
def test_spikes_sops_rates_and_macs_match_a_hand_count(layers):
    t_conv, hidden, inter = 8, 32, 64
    model = _model(layers, layers=layers, hidden=hidden, inter=inter, t_conv=t_conv)
    ids, types, mask, labels = _data()
    stats = collect_spike_stats(model, _loader(ids, types, mask, labels, 4), t_values=[t_conv])

    # Fan-outs written out by hand: what each spike drives (S = real tokens of the example).
    def fan(key, s):
        k, _, name = key.rpartition(".")
        if key == "E":
            return 3 * hidden
        return {"K": s, "V": s, "A": hidden, "O1": inter, "I": hidden,
                "O2": 0 if int(k) == layers - 1 else 3 * hidden}[name]

    spikes, sops, real_sum, all_sum = {}, {}, {}, {}
    macs = 0.0
    for b_ids, b_types, b_mask in _batches(ids, types, mask, 4):
        with torch.no_grad():
            out = model(b_ids, b_types, b_mask, output_layer_rates=True)
        for key, rate in out.layer_rates.items():
            counts = torch.round(rate * t_conv)                        # (B, S, width) spikes per neuron
            per_example = (counts.sum(-1) * b_mask).sum(-1)            # real tokens only
            for count, s in zip(per_example.tolist(), b_mask.sum(1).tolist()):
                spikes[key] = spikes.get(key, 0.0) + count
                sops[key] = sops.get(key, 0.0) + count * fan(key, s)
            real_sum[key] = real_sum.get(key, 0.0) + float(counts.sum(-1).mul(b_mask).sum())
            all_sum[key] = all_sum.get(key, 0.0) + float(counts.sum())
        for s in b_mask.sum(1).tolist():
            macs += layers * (4 * hidden * hidden * s + 2 * hidden * inter * s + 2 * hidden * s * s)

    n, real_tokens = ids.shape[0], int(mask.sum())
    assert len(spikes) == 1 + 6 * layers and set(stats.layers) == set(spikes)
    for key in spikes:
        width = inter if key.endswith(".I") else hidden
        assert stats.spikes_per_example[key] == pytest.approx(spikes[key] / n, rel=1e-12), key
        assert stats.sops_per_example[key] == pytest.approx(sops[key] / n, rel=1e-12), key
        assert stats.asr_real_tokens[key] == pytest.approx(real_sum[key] / (t_conv * real_tokens * width), rel=1e-12)
        assert stats.asr_all_positions[key] == pytest.approx(all_sum[key] / (t_conv * mask.numel() * width), rel=1e-12)
    total_sops = sum(sops.values()) / n
    assert total_sops > 0
    assert stats.total_sops_per_example == pytest.approx(total_sops, rel=1e-12)
    assert stats.energy_snn_uj == pytest.approx(total_sops * 0.9e-6, rel=1e-12)
    assert stats.ann_macs_per_example["student"] == pytest.approx(macs / n, rel=1e-12)
    assert stats.energy_ann_uj() == pytest.approx(macs / n * 4.6e-6, rel=1e-12)
    # padding spikes too, so the two averages differ
    assert any(stats.asr_real_tokens[k] != stats.asr_all_positions[k] for k in spikes)


@pytest.mark.slow
@pytest.mark.parametrize("dtype, time_chunk, num_labels, task, pooler", [
    (torch.float64, None, 3, None, True),
    (torch.float64, 3, 2, "sst-2", False),
    (torch.float32, 1, 2, "mrpc", False),
    (torch.float64, None, 1, "sts-b", False),
])
def test_metric_curve_from_one_pass_equals_separate_runs(dtype, time_chunk, num_labels, task, pooler):
    t_conv, t_values = 10, [1, 2, 3, 4, 5, 7, 10]
    model = _model(7, dtype, layers=2, t_conv=t_conv, time_chunk=time_chunk, num_labels=num_labels,
                   use_pooler=pooler)
    ids, types, mask, labels = _data(batch=10, num_labels=num_labels, seed=3)
    stats = collect_spike_stats(model, _loader(ids, types, mask, labels, 4), t_values=t_values, task=task)

    assert stats.t_values == t_values
    separate = {}
    for t in t_values:
        logits = []
        for b_ids, b_types, b_mask in _batches(ids, types, mask, 4):
            with torch.no_grad():
                logits.append(model(b_ids, b_types, b_mask, t_conv=t).logits)
        logits = torch.cat(logits)
        separate[t] = (logits[:, 0] if num_labels == 1 else logits.argmax(1)).numpy()
        assert np.array_equal(stats.predictions_at_t[t], separate[t]), t
        assert stats.metrics_at_t[t] == stats.to_dict()["metric_vs_t"]["metrics"][t_values.index(t)]
    assert np.array_equal(stats.predictions, separate[t_conv])
    assert stats.metrics == stats.metrics_at_t[t_conv]
    assert np.array_equal(stats.labels, labels.numpy())
    # the curve is not trivially constant: predictions change with t
    assert len({separate[t].tobytes() for t in t_values}) > 1


def test_asr_convergence_and_spikes_per_step_match_stored_spike_trains():
    t_conv = 12
    model = _model(5, layers=2, t_conv=t_conv, time_chunk=5)
    ids, types, mask, labels = _data(batch=5, seed=2)
    stats = collect_spike_stats(model, _loader(ids, types, mask, labels, 3), t_values=[t_conv])

    diff_sum, neurons, per_step = {}, {}, torch.zeros(t_conv, dtype=torch.float64)
    for b_ids, b_types, b_mask in _batches(ids, types, mask, 3):
        seen = {}
        with torch.no_grad():
            model(b_ids, b_types, b_mask, recorder=lambda key, t0, s: seen.setdefault(key, []).append(s.clone()))
        real = b_mask.bool()
        for key, chunks in seen.items():
            trains = torch.cat(chunks)[:, real]                            # (T, N_real, width)
            asr_t = trains.cumsum(0) / torch.arange(1, t_conv + 1, dtype=trains.dtype)[:, None, None]
            diff_sum[key] = diff_sum.get(key, 0.0) + (asr_t - asr_t[-1]).abs().sum((1, 2))
            neurons[key] = neurons.get(key, 0) + trains[0].numel()
            per_step += trains.sum((1, 2))
    for key in stats.layers:
        expected = (diff_sum[key] / neurons[key]).tolist()
        assert stats.convergence[key] == pytest.approx(expected, rel=1e-12, abs=1e-15), key
        assert stats.convergence[key][-1] == 0.0 and stats.convergence[key][0] > 0
    assert stats.spikes_per_step == pytest.approx((per_step / ids.shape[0]).tolist(), rel=1e-12)
    assert sum(stats.spikes_per_step) == pytest.approx(stats.total_spikes_per_example, rel=1e-12)


def test_adaptive_t_matches_fixed_runs_at_the_steps_it_used():
    t_conv, k = 16, 5
    model = _model(2, layers=2, t_conv=t_conv)
    ids, types, mask, labels = _data(batch=6, seed=4)
    loader = _loader(ids, types, mask, labels, 3)
    stats = collect_spike_stats(model, loader, task="sst-2")
    assert stats.t_values == list(range(1, t_conv + 1)) and stats.step_margins.shape == (6, t_conv)

    never = adaptive_t_eval(model, loader, StopRule(0.0, 1, t_conv), "sst-2")          # its own fixed-T pass
    assert never.mean_steps == t_conv and (never.steps_per_example == t_conv).all()
    assert np.array_equal(never.predictions, stats.predictions) and never.agreement == 1.0
    assert never.metrics == never.metrics_fixed == stats.metrics and never.offline_agreement == 1.0
    assert never.sops_per_example == pytest.approx(stats.total_sops_per_example, rel=1e-12)

    # Margin 0 from step k: every example stops at k, with the prediction and the spikes of its first k steps.
    early = adaptive_t_eval(model, loader, StopRule(0.0, 1, k), "sst-2", reference=stats)
    assert (early.steps_per_example == k).all() and early.offline_agreement == 1.0
    assert np.array_equal(early.predictions, stats.predictions_at_t[k])
    assert early.agreement == float(np.mean(stats.predictions_at_t[k] == stats.predictions))
    assert early.curve_at_mean_steps == stats.metrics_at_t[k]["acc"]
    fans = fan_outs(model.config)
    sops = 0.0
    for b_ids, b_types, b_mask in _batches(ids, types, mask, 3):
        seen = {}
        with torch.no_grad():
            model(b_ids, b_types, b_mask, recorder=lambda key, t0, s: seen.setdefault(key, []).append(s.clone()))
        lengths = b_mask.sum(1).double()
        for key, chunks in seen.items():
            counts = (torch.cat(chunks)[:k].sum((0, 3)).double() * b_mask).sum(1)       # first k steps, real tokens
            sops += float((counts * fans[key](lengths)).sum())
    assert early.sops_per_example == pytest.approx(sops / 6, rel=1e-12)
    assert early.sops_per_example_fixed == stats.total_sops_per_example > early.sops_per_example


def test_adaptive_t_for_a_budget_reports_the_rule_it_chose():
    t_conv = 12
    model = _model(3, layers=2, t_conv=t_conv)
    ids, types, mask, labels = _data(batch=8, seed=5)
    loader = _loader(ids, types, mask, labels, 4)
    stats = collect_spike_stats(model, loader, task="sst-2")
    result = adaptive_t_eval(model, loader, None, "sst-2", budget=0.0, window=2, reference=stats)
    chosen = result.calibration
    assert chosen is not None and result.rule == chosen.rule and chosen.rule.window == 2
    expected = stop_steps(torch.from_numpy(stats.step_classes), torch.from_numpy(stats.step_margins), chosen.rule)
    assert np.array_equal(result.steps_per_example, expected.numpy()) and result.offline_agreement == 1.0
    assert result.metrics["acc"] >= stats.metrics["acc"] - 1e-12 and result.mean_steps == chosen.mean_steps
    curve = [stats.metrics_at_t[t]["acc"] for t in range(1, t_conv + 1)]
    assert result.curve_at_mean_steps == pytest.approx(np.interp(result.mean_steps, range(1, t_conv + 1), curve))
    fields = result.eval_fields()
    assert fields["budget_pt"] == 0.0 and fields["margin"] == chosen.rule.margin
    assert fields["beats_fixed_T_curve"] == (fields["acc"] >= fields["acc_fixed_T_at_mean_steps"])


@pytest.mark.slow
def test_report_files_json_pngs_and_markdown(tmp_path):
    t_conv = 8
    model = _model(0, torch.float32, layers=2, t_conv=t_conv)
    model.train()
    ids, types, mask, labels = _data(batch=6)
    loader = _loader(ids, types, mask, labels, 4)
    teacher = SpikingBertConfig(num_hidden_layers=4, hidden_size=64, num_attention_heads=2, intermediate_size=256)
    stats = collect_spike_stats(model, loader, task="SST-2", teacher_config=teacher)
    adaptive = adaptive_t_eval(model, loader, StopRule(0.05, 2, 4), "SST-2", reference=stats)
    assert model.training and all(m.training for m in model.modules())      # mode restored
    out_dir = tmp_path / "report"
    info = {"model": "tiny", "teacher_acc": 0.75, "nan": float("nan")}
    write_report(stats, out_dir, {"model": "an earlier run"})
    paths = write_report(stats, out_dir, info, adaptive=adaptive)                # replaces the earlier files

    assert sorted(p.name for p in out_dir.iterdir()) == sorted(REPORT_FILES.values())   # no temp files left
    report = json.loads(paths["json"].read_text())
    layers = ["E"] + [f"{k}.{n}" for k in range(2) for n in ("K", "V", "A", "O1", "I", "O2")]
    assert report["layers"] == layers and report["t_conv"] == t_conv and report["num_examples"] == 6
    assert report["info"] == {"model": "tiny", "teacher_acc": 0.75, "nan": None}
    assert report["asr"]["reported"] == "real_tokens"
    for kind in ("real_tokens", "all_positions"):
        assert set(report["asr"][kind]) == set(layers)
        assert all(0.0 < v < 1.0 for v in report["asr"][kind].values())
    conv = report["asr_convergence"]
    assert conv["t"] == list(range(1, t_conv + 1))
    assert all(len(v) == t_conv and v[-1] == 0.0 for v in conv["mean_abs_diff_to_T"].values())
    curve = report["metric_vs_t"]
    assert report["metric"] == "acc" and curve["t"] == list(range(1, t_conv + 1))
    assert curve["acc"][-1] == report["metrics_at_T"]["acc"] and all(0 <= a <= 1 for a in curve["acc"])
    assert len(report["spikes_per_step"]) == t_conv
    per_layer = report["spikes_per_example"]["per_layer"]
    assert report["spikes_per_example"]["total"] == pytest.approx(sum(per_layer.values()))
    sops = report["sops_per_example"]
    assert sops["total"] > 0 and sops["fan_out"]["0.K"] == "S" and sops["fan_out"]["1.O2"] == "0"
    assert sops["fan_out"]["E"] == "96" and sops["fan_out"]["0.O1"] == "64"
    energy = report["energy"]
    assert energy["snn_uj_per_example"] == pytest.approx(sops["total"] * 0.9e-6)
    lengths = mask.sum(1).double()
    teacher_macs = float((4 * (4 * 64 * 64 * lengths + 2 * 64 * 256 * lengths + 2 * 64 * lengths ** 2)).mean())
    assert energy["ann"]["teacher"]["macs_per_example"] == pytest.approx(teacher_macs)
    assert energy["ann"]["teacher"]["uj_per_example"] == pytest.approx(teacher_macs * 4.6e-6)
    assert energy["ann"]["student"]["ann_over_snn"] == pytest.approx(
        energy["ann"]["student"]["uj_per_example"] / energy["snn_uj_per_example"])
    assert report["adaptive_t"]["window"] == 2 and 4 <= report["adaptive_t"]["mean_steps"] <= t_conv
    assert set(report["plots"].values()) == {n for n in REPORT_FILES.values() if n.endswith(".png")}

    for name in report["plots"].values():
        data = (out_dir / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(out_dir / name) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100
            image.verify()
    markdown = paths["markdown"].read_text()
    for name in report["plots"].values():
        assert f"]({name})" in markdown
    assert all(f"| {key} |" in markdown for key in layers)
    assert "| teacher_acc | 0.75 |" in markdown and "## Adaptive T" in markdown


def test_bad_arguments_are_clear_errors(tmp_path):
    model = _model(0, layers=1, t_conv=4)
    ids, types, mask, labels = _data(batch=2)
    loader = _loader(ids, types, mask, labels, 2)
    with pytest.raises(ReportError, match=r"t_values .* 1\.\.t_conv=4"):
        collect_spike_stats(model, loader, t_values=[2, 5])
    with pytest.raises(ReportError, match="classification student"):
        collect_spike_stats(SpikingBertForDistillation(tiny_config(layers=1)), loader)
    with pytest.raises(DataError, match="no batches"):
        collect_spike_stats(model, [])
    with pytest.raises(ReportError, match="either a rule"):
        adaptive_t_eval(model, loader, StopRule(0.5), budget=1.0)
    stats = collect_spike_stats(model, loader, t_values=[4], convergence=False)
    assert stats.convergence == {}
    with pytest.raises(ReportError, match="12 examples but the loader gave 2"):
        adaptive_t_eval(model, loader, StopRule(0.1), reference=collect_spike_stats(
            model, _loader(*_data(batch=12), 4), t_values=[4], convergence=False))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportError, match="not a directory"):
        write_report(stats, tmp_path / "file")


@pytest.mark.parametrize("layers, seq_len", [(1, 5), (3, 17)])
def test_fan_outs_mirror_the_ann_macs(layers, seq_len):
    """Every neuron firing at every step costs T times the MACs of the same-size BERT: the two counts agree."""
    config = tiny_config(layers=layers, hidden=48, heads=4, inter=80)
    widths = {key: 80 if key.endswith(".I") else 48 for key in neuron_layers(config)}
    s = torch.tensor([float(seq_len)])
    all_firing = sum(widths[key] * seq_len * float(fan(s)) for key, fan in fan_outs(config).items())
    assert all_firing == float(BertSize.of(config).macs(s))
    assert float(BertSize.of(config).macs(s)) == layers * (4 * 48 * 48 * seq_len + 2 * 48 * 80 * seq_len
                                                            + 2 * 48 * seq_len ** 2)


def _count_elementwise(model, bert, inputs) -> dict[str, float]:
    """LayerNorm, softmax and GELU elements one forward pass of ``model`` processes, counted at the calls (the
    softmax's at the attention dropout it feeds: on the dense engine, since the event engine's attention kernel
    computes its softmax inside)."""
    counts = {"layernorm_elements": 0, "softmax_elements": 0, "gelu_elements": 0}

    def counter(name):
        return lambda module, args, out: counts.__setitem__(name, counts[name] + out.numel())

    hooks = [m.register_forward_hook(counter("layernorm_elements"))
             for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    hooks += [layer.attention.self.dropout.register_forward_hook(counter("softmax_elements"))
              for layer in bert.encoder.layer]
    acts = [layer.intermediate.intermediate_act_fn for layer in bert.encoder.layer]
    for layer, act in zip(bert.encoder.layer, acts):
        layer.intermediate.intermediate_act_fn = lambda x, act=act: counts.__setitem__(
            "gelu_elements", counts["gelu_elements"] + x.numel()) or act(x)
    with torch.no_grad(), engine_override("dense"):
        model(*inputs)
    for hook in hooks:
        hook.remove()
    for layer, act in zip(bert.encoder.layer, acts):
        layer.intermediate.intermediate_act_fn = act
    return counts


def test_uncounted_operations_match_the_calls_of_a_forward_pass():
    """Membrane updates, LayerNorm, softmax and GELU elements of one example without padding: the SNN's counted at
    the simulation's own calls (T steps), the ANN's at a same-size BERT's (once)."""
    from spikingbert.transformer.configuration import BertConfig
    from spikingbert.transformer.modeling import BertForSequenceClassification

    t_conv, seq = 3, 7
    config = tiny_config(layers=2, hidden=32, heads=4, inter=64, t_conv=t_conv, time_chunk=2)
    student = SpikingBertForSequenceClassification(config).eval()
    ids, types, mask = tiny_inputs(batch=1, seq=seq)
    snn = _count_elementwise(student, student.bert, (ids, types, mask))
    updates = []
    with torch.no_grad():
        student(ids, types, mask, recorder=lambda key, t0, spikes: updates.append(spikes.numel()))
    snn["membrane_updates"] = sum(updates)
    teacher = BertForSequenceClassification(BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64)).eval()
    ann = _count_elementwise(teacher, teacher.bert, (ids, types, mask))
    expected = uncounted_ops(config, torch.tensor([float(seq)]), t_conv)
    assert {k: float(v) for k, v in expected["snn"].items()} == snn
    assert {k: float(v) for k, v in expected["ann"].items()} == {**ann, "membrane_updates": 0.0}
