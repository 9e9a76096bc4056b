"""The distillation objectives as the trainer uses them, against numpy float64 (tests/helpers/float64_reference.py).

In process: `IntermediateDistillation` and `PredictionDistillation` (soft cross-entropy at a temperature
other than 1, gold labels, regression) are called as the trainer calls them; their loss and every logged
part must equal the losses computed in numpy from the same tensors (captured with a forward hook on
the student) and, from the saved weights alone, from an independent float64 simulation.

Through the CLI: one-step runs (the whole training set in one batch, so the data order does not
matter; students without dropout) whose first ``metrics.jsonl`` record is recomputed from the saved
initial student, the teacher and the data files: general KD (with ``--reduce_memory`` and ``--vth``),
prediction KD with ``--temperature 3 --leak 0.9 --vth 0.8``, ``--train_true_labels`` with
``--skip_bad_rows``, STS-B regression, and task IKD with ``--group_by_length`` (its first batch is one
length group, not trimmed).

Tolerances: the project simulates in float32, the reference in float64; a membrane within rounding of
the threshold could fire in one and not the other (the students use thresholds other than 1, where
attention currents of exactly 1 would sit on it; no neuron flipped in these runs), which would move a
rate by 1/T in one neuron: comparisons with the simulation allow a relative 1e-4.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spikingbert.models.spiking_bert import SpikingBertForDistillation, SpikingBertForSequenceClassification
from spikingbert.training.objectives import IntermediateDistillation, PredictionDistillation
from spikingbert.transformer.modeling import BertForPreTraining
from tests.helpers import cli_runner
from tests.helpers import float64_reference as ref
from tests.helpers.kd_world import (
    SEQ,
    STRIDE,
    VTH,
    KDWorld,
    build_kd_world,
    encode,
    encode_instances,
    first_record,
    numpy_intermediate_loss,
    numpy_student_logits,
    numpy_teacher_logits,
)

REL = 1e-4


@pytest.fixture(scope="module")
def kd(tmp_path_factory) -> KDWorld:
    return build_kd_world(tmp_path_factory.mktemp("kd_world"))


def _capture(student):
    captured = []
    student.register_forward_hook(lambda module, args, out: captured.append(out))
    return captured


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _sst2_inputs(kd: KDWorld, rows):
    return encode(kd.vocab, [s for s, _ in rows])


# ------------------------------------------------------------------------------------------ in process

def test_intermediate_objective_against_numpy(kd):
    student = SpikingBertForDistillation.from_pretrained(kd.student_general).train()
    teacher = BertForPreTraining.from_pretrained(kd.base.teacher_general).eval()
    inputs = encode_instances(kd.vocab, kd.pregenerated_instances)
    ids, types, mask = map(torch.from_numpy, inputs)
    with torch.no_grad():
        t_out = teacher(ids, token_type_ids=types, attention_mask=mask)
    objective = IntermediateDistillation(student, STRIDE)
    captured = _capture(student)
    losses = objective((ids, mask, types), (t_out.hidden_states, t_out.attention_scores))
    out = captured[0]

    # From the same tensors.
    hidden, scores = [_np(h) for h in t_out.hidden_states], [_np(s) for s in t_out.attention_scores]
    att = ref.att_loss([_np(s) for s in out.attention_scores], scores, STRIDE)
    rep = ref.rep_loss([_np(r) for r in out.reps], hidden, STRIDE)
    assert losses["att_loss"].item() == pytest.approx(att, rel=1e-6)
    assert losses["rep_loss"].item() == pytest.approx(rep, rel=1e-6)
    assert losses["loss"].item() == pytest.approx(att + rep, rel=1e-6)
    assert min(att, rep) > 1e-3 * (att + rep)              # both parts count: a reweighting of either shows

    # From the weights alone: rates simulated, attention scores of the equivalent (ann) network.
    expected = numpy_intermediate_loss(kd.student_general, kd.base.teacher_general, inputs, t_conv=4, vth=VTH)
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value, rel=REL), key


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_prediction_objective_soft_cross_entropy_at_a_temperature(kd, tau):
    student = SpikingBertForSequenceClassification.from_pretrained(kd.student_cls).train()
    inputs = _sst2_inputs(kd, kd.sst2_train)
    ids, types, mask = map(torch.from_numpy, inputs)
    labels = torch.tensor([y for _, y in kd.sst2_train])
    teacher_logits = torch.from_numpy(numpy_teacher_logits(kd.base.teacher_sst2, inputs)).float() * 3.0
    captured = _capture(student)
    losses = PredictionDistillation(student, "classification", temperature=tau)((ids, mask, types, labels),
                                                                                 teacher_logits)
    logits = _np(captured[0].logits)
    expected = ref.soft_cross_entropy(logits, _np(teacher_logits), tau)
    assert losses["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert losses["cls_loss"].item() == pytest.approx(expected, rel=1e-6)
    if tau != 1.0:      # the temperature changes the value: a loss that ignored it would fail here
        assert abs(expected - ref.soft_cross_entropy(logits, _np(teacher_logits), 1.0)) > 0.01 * expected
    student_logits = numpy_student_logits(kd.student_cls, inputs, 4, VTH)
    from_weights = ref.soft_cross_entropy(student_logits, _np(teacher_logits), tau)
    assert losses["loss"].item() == pytest.approx(from_weights, rel=REL)


def test_prediction_objective_gold_labels_and_regression(kd):
    student = SpikingBertForSequenceClassification.from_pretrained(kd.student_cls).train()
    inputs = _sst2_inputs(kd, kd.sst2_train)
    ids, types, mask = map(torch.from_numpy, inputs)
    labels = np.array([y for _, y in kd.sst2_train])
    captured = _capture(student)
    objective = PredictionDistillation(student, "classification", temperature=2.0, true_labels=True)
    assert not objective.needs_teacher
    losses = objective((ids, mask, types, torch.from_numpy(labels)), None)
    assert losses["loss"].item() == pytest.approx(ref.cross_entropy(_np(captured[0].logits), labels), rel=1e-6)

    student = SpikingBertForSequenceClassification.from_pretrained(kd.student_reg).train()
    inputs = encode(kd.vocab, [a for a, _, _ in kd.stsb_train], [b for _, b, _ in kd.stsb_train])
    ids, types, mask = map(torch.from_numpy, inputs)
    scores = np.array([s for _, _, s in kd.stsb_train])
    captured = _capture(student)
    objective = PredictionDistillation(student, "regression", temperature=2.0)
    assert not objective.needs_teacher
    losses = objective((ids, mask, types, torch.from_numpy(scores).float()), None)
    assert losses["loss"].item() == pytest.approx(ref.mse(_np(captured[0].logits).reshape(-1), scores), rel=1e-6)
    from_weights = ref.mse(numpy_student_logits(kd.student_reg, inputs, 4, VTH).reshape(-1), scores)
    assert losses["loss"].item() == pytest.approx(from_weights, rel=REL)


# ------------------------------------------------------------------------------------------ CLI

def _task_argv(data: Path, teacher: Path, student: Path, out: Path, *extra):
    return ["--task_name", data.name, "--data_dir", data, "--teacher_model", teacher,
            "--spiking_student_model", student, "--output_dir", out, "--do_lower_case", "--max_seq_length", SEQ,
            "--max_steps", "1", "--logging_steps", "1", "--learning_rate", "1e-3", "--seed", "4", *extra]


@pytest.mark.system
@pytest.mark.slow
def test_general_kd_cli_first_logged_loss_recomputed(kd, tmp_path):
    """--reduce_memory and --vth 0.9: the 10 instances of epoch_0.json in one batch."""
    out = tmp_path / "general"
    cli_runner.run(cli_runner.GENERAL, [
        "--pregenerated_data", kd.pregenerated, "--teacher_model", kd.base.teacher_general, "--spiking_student_model",
        kd.student_general, "--output_dir", out, "--do_lower_case", "--train_batch_size", "10", "--max_steps", "1",
        "--logging_steps", "1", "--reduce_memory", "--vth", "0.9", "--t_conv", "5"], tempdir=tmp_path)
    record = first_record(out)
    inputs = encode_instances(kd.vocab, kd.pregenerated_instances)
    expected = numpy_intermediate_loss(kd.student_general, kd.base.teacher_general, inputs, t_conv=5, vth=0.9)
    assert record["step"] == 1
    for key, value in expected.items():
        assert record[key] == pytest.approx(value, rel=REL), key
    assert not list(tmp_path.glob("spikingbert-pregenerated-*"))      # the memory maps were removed


@pytest.mark.system
@pytest.mark.slow
def test_pred_distill_cli_temperature_leak_vth_first_logged_loss_recomputed(kd, tmp_path):
    out = tmp_path / "pred"
    cli_runner.run(cli_runner.TASK, _task_argv(kd.sst2, kd.base.teacher_sst2, kd.student_cls, out, "--pred_distill",
                                               "--train_batch_size", "12", "--temperature", "3", "--leak", "0.9",
                                               "--vth", "0.8", "--t_conv", "5"))
    inputs = _sst2_inputs(kd, kd.sst2_train)
    student = numpy_student_logits(kd.student_cls, inputs, t_conv=5, vth=0.8, leak=0.9)
    teacher = numpy_teacher_logits(kd.base.teacher_sst2, inputs)
    expected = ref.soft_cross_entropy(student, teacher, 3.0)
    record = first_record(out)
    assert record["loss"] == pytest.approx(expected, rel=REL)
    assert abs(ref.soft_cross_entropy(student, teacher, 1.0) - expected) > 0.01 * expected   # tau matters here


@pytest.mark.system
@pytest.mark.slow
def test_train_true_labels_cli_skips_bad_rows_first_logged_loss_recomputed(kd, tmp_path):
    """--train_true_labels: cross-entropy to the gold labels, no teacher forward; --skip_bad_rows drops the
    three malformed rows (wrong column count, unknown label, empty text) and keeps every other row."""
    data = tmp_path / "SST-2"
    data.mkdir()
    good = kd.sst2_train
    rows = [f"{s}\t{y}" for s, y in good[:5]] + ["w1 w2\t1\textra", "w3 w4\t7", "\t0"] + \
           [f"{s}\t{y}" for s, y in good[5:]]
    (data / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (data / "dev.tsv").write_text((kd.sst2 / "dev.tsv").read_text())
    out = tmp_path / "gold"
    result = cli_runner.run(cli_runner.TASK, _task_argv(data, kd.base.teacher_sst2, kd.student_cls, out,
                                                        "--train_true_labels", "--skip_bad_rows",
                                                        "--train_batch_size", str(len(good)), "--t_conv", "4"))
    assert "skipped 3 malformed rows" in result.output
    assert f"(target: gold labels), {len(good)} training examples" in result.output
    inputs = _sst2_inputs(kd, good)
    expected = ref.cross_entropy(numpy_student_logits(kd.student_cls, inputs, 4, VTH), np.array([y for _, y in good]))
    assert first_record(out)["loss"] == pytest.approx(expected, rel=REL)


@pytest.mark.system
@pytest.mark.slow
def test_regression_pred_distill_cli_first_logged_loss_recomputed(kd, tmp_path):
    """STS-B (named in lower case) with the batch of 8 split into 2 accumulated micro-batches of 4: the
    step's loss is still the mean over all 8 examples."""
    out = tmp_path / "stsb"
    argv = _task_argv(kd.stsb, kd.base.teacher_stsb, kd.student_reg, out, "--pred_distill", "--train_batch_size", "8",
                      "--gradient_accumulation_steps", "2", "--t_conv", "4")
    argv[argv.index("STS-B")] = "sts-b"
    cli_runner.run(cli_runner.TASK, argv)
    rows = kd.stsb_train
    inputs = encode(kd.vocab, [a for a, _, _ in rows], [b for _, b, _ in rows])
    logits = numpy_student_logits(kd.student_reg, inputs, 4, VTH).reshape(-1)
    assert first_record(out)["loss"] == pytest.approx(ref.mse(logits, [s for _, _, s in rows]), rel=REL)


@pytest.mark.system
@pytest.mark.slow
def test_task_ikd_group_by_length_first_batch_is_one_length_group_untrimmed(kd, tmp_path):
    """Six 2-word and six 11-word sentences, batches of 6: grouped, the first batch holds one of the two
    length groups (a random batch of 6 from 12 almost never does), padded to --max_seq_length (task IKD
    only groups; its att/rep losses average over the padded positions too)."""
    rng = np.random.default_rng(0)
    words = [w for w in kd.vocab if w.startswith("w")]
    short = [" ".join(rng.choice(words, 2)) for _ in range(6)]
    long = [" ".join(rng.choice(words, 11)) for _ in range(6)]
    order = [s for pair in zip(short, long) for s in pair]               # interleaved in the file
    data = tmp_path / "SST-2"
    data.mkdir()
    (data / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(order)))
    (data / "dev.tsv").write_text((kd.sst2 / "dev.tsv").read_text())
    out = tmp_path / "ikd"
    result = cli_runner.run(cli_runner.TASK, _task_argv(data, kd.base.teacher_sst2, kd.student_cls, out,
                                                        "--group_by_length", "--train_batch_size", "6",
                                                        "--t_conv", "4"))
    assert "--group_by_length: batches of similar length" in result.output and "(not trimmed" in result.output
    logged = first_record(out)
    candidates = {name: numpy_intermediate_loss(kd.student_cls, kd.base.teacher_sst2, encode(kd.vocab, group), 4, VTH)
                  for name, group in (("short", short), ("long", long))}
    matches = [name for name, exp in candidates.items()
               if all(logged[k] == pytest.approx(v, rel=REL) for k, v in exp.items())]
    assert len(matches) == 1, (logged, candidates)
    texts, longest = (short, 4) if matches == ["short"] else (long, 13)
    trimmed = numpy_intermediate_loss(kd.student_cls, kd.base.teacher_sst2, encode(kd.vocab, texts, seq=longest), 4,
                                      VTH)
    assert logged["loss"] != pytest.approx(trimmed["loss"], rel=REL)    # not cut to the longest example
