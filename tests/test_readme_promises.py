"""README promises that no other test exercises, each against an independent value where one exists.

* "Training memory with IDE does not grow with t_conv": the bytes autograd saves for backward
  (counted with saved-tensor hooks) are the same at T = 4 and T = 32; BPTT's grow with T.
* ``--fp16`` on the CPU runs in bf16 (the first loss moves by bf16 rounding from the float64 one).
* ``--feedback``, ``--train_mode bptt``, ``--ide_point snn`` through the CLI: the flag reaches the saved
  config, and the first optimizer step of task IKD (constant learning rate) is BertAdam's step on the
  gradient of that training mode (and not the default mode's).
* "A skipped step does not advance BertAdam's schedule": a warm-up schedule with one NaN step skipped,
  every weight and logged learning rate against a hand computation.
* "metrics.jsonl logs the mean loss parts and the mean gradient norm of every logging window": against
  losses and gradient norms computed by hand.
* ``--continue_train`` refuses a training state written by an incompatible version.
* The near-chance teacher warning (teacher_results.json checked against the teacher run in numpy).
* The converter's ``--leak`` and ``--num_labels``; ``download_glue_data.py --tasks all --mirror DIR``.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from spikingbert.apps import convert_published
from spikingbert.cli.edge import run_cli
from spikingbert.models.spiking_bert import SpikingBertConfig, SpikingBertForSequenceClassification
from spikingbert.runtime import Runtime
from spikingbert.training.objectives import IntermediateDistillation, build_optimizer
from spikingbert.training.trainer import Stage, Trainer, TrainerConfig
from spikingbert.transformer.modeling import BertForSequenceClassification
from spikingbert.transformer.optimization import BertAdam
from tests.helpers import cli_runner
from tests.helpers import float64_reference as ref
from tests.helpers.glue_files import COLA_TRAIN, DEV_IDS, MSR_TRAIN_ROWS, SST_TRAIN, standard_files, task_zip
from tests.helpers.kd_world import (
    SEQ,
    STRIDE,
    VTH,
    KDWorld,
    build_kd_world,
    encode,
    first_record,
    numpy_student_logits,
    numpy_teacher_logits,
)
from tests.helpers.published import VOCAB, published_state, raw_names, write_config
from tests.helpers.students import reference_forward, tiny_config, tiny_inputs
from tests.helpers.world import read_jsonl

CPU = Runtime(device=torch.device("cpu"))


@pytest.fixture(scope="module")
def kd(tmp_path_factory) -> KDWorld:
    return build_kd_world(tmp_path_factory.mktemp("promises_world"))


# ------------------------------------------------------------------------------------------ memory

def _saved_bytes(model, t_conv: int) -> int:
    """Bytes of the tensors autograd keeps for backward during one training forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*tiny_inputs(), t_conv=t_conv, output_attentions=True)
        loss = sum(r.sum() for r in out.reps) + sum(s.sum() for s in out.attention_scores) + out.logits.sum()
    loss.backward()
    return total


def test_ide_training_memory_does_not_grow_with_t_conv():
    torch.manual_seed(0)
    ide = SpikingBertForSequenceClassification(tiny_config(layers=1)).train()
    bptt = SpikingBertForSequenceClassification(tiny_config(layers=1, train_mode="bptt")).train()
    assert _saved_bytes(ide, 4) == _saved_bytes(ide, 32) > 0
    assert _saved_bytes(bptt, 16) > 3 * _saved_bytes(bptt, 4)                 # BPTT keeps every step


# ------------------------------------------------------------------------------------------ training modes

@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--train_mode bptt", "--ide_point snn", "--feedback"])
def test_training_mode_flags_reach_the_first_update(kd, tmp_path, flag):
    student = kd.student_cls
    if flag == "--feedback":          # a student with feedback weights whose config.json says feedback false
        student = tmp_path / "student_feedback"
        torch.manual_seed(5)
        config = SpikingBertConfig.from_pretrained(kd.student_cls, feedback=True, solver_tol=1e-8, solver_max_iter=60)
        model = SpikingBertForSequenceClassification(config)
        model.load_weights(load_file(str(kd.student_cls / "model.safetensors")), kd.student_cls)
        with torch.no_grad():
            model.bert.feedback.weight.mul_(0.05)
        model.save_pretrained(student, vocab_file=kd.base.vocab)
        saved = json.loads((student / "config.json").read_text())
        (student / "config.json").write_text(json.dumps({**saved, "feedback": False}))
    name, _, value = flag[2:].partition(" ")
    overrides = {name: value or True}
    out = tmp_path / "ikd"
    lr = 1e-3
    cli_runner.run(cli_runner.TASK, [
        "--task_name", "SST-2", "--data_dir", kd.sst2, "--teacher_model", kd.base.teacher_sst2,
        "--spiking_student_model", student, "--output_dir", out, "--do_lower_case", "--max_seq_length", SEQ,
        "--train_batch_size", "12", "--max_steps", "1", "--learning_rate", lr, *flag.split()])
    assert json.loads((out / "config.json").read_text())[name] == overrides[name]
    trained = load_file(str(out / "model.safetensors"))

    def first_update(**mode):
        """The weights after BertAdam's first step (constant rate) on the IKD gradient of ``mode``, in process."""
        torch.set_num_threads(1)
        model = SpikingBertForSequenceClassification.from_pretrained(student, **mode).train()
        teacher = BertForSequenceClassification.from_pretrained(kd.base.teacher_sst2).eval()
        ids, types, mask = map(torch.from_numpy, encode(kd.vocab, [s for s, _ in kd.sst2_train]))
        with torch.no_grad():
            t_out = teacher(ids, token_type_ids=types, attention_mask=mask)
        objective = IntermediateDistillation(model, STRIDE)
        objective((ids, mask, types), (t_out.hidden_states, t_out.attention_scores))["loss"].backward()
        build_optimizer(model, learning_rate=lr, warmup_proportion=0.1, weight_decay=0.01, schedule="none",
                        total_steps=1).step()
        return {k: v.detach() for k, v in model.state_dict().items()}

    threads = torch.get_num_threads()
    try:
        expected, default = first_update(**overrides), first_update()
    finally:
        torch.set_num_threads(threads)
    key = "bert.encoder.layer.0.attention.self.key.weight"
    moved = (trained[key] - load_file(str(student / "model.safetensors"))[key]).abs()
    assert moved.max() > 0.5 * lr                                        # a real step (about lr * sqrt(10))
    mismatch = sum(int((trained[k] - v).abs().gt(1e-7).sum()) for k, v in expected.items())
    assert mismatch <= 2, mismatch     # a gradient component within rounding of 0 may take either sign
    assert sum(int((trained[k] - v).abs().gt(1e-7).sum()) for k, v in default.items()) > 100


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path: bf16 autocast")
def test_fp16_on_the_cpu_runs_the_forward_in_bf16(kd, tmp_path):
    """``--fp16`` on the CPU: the first logged loss is the float64 one up to bf16 rounding (~3 significant
    digits): not equal to it within float32 rounding (as without the flag, see test_objectives_independent)."""
    out = tmp_path / "pred"
    cli_runner.run(cli_runner.TASK, [
        "--task_name", "SST-2", "--data_dir", kd.sst2, "--teacher_model", kd.base.teacher_sst2,
        "--spiking_student_model", kd.student_cls, "--output_dir", out, "--do_lower_case", "--max_seq_length", SEQ,
        "--train_batch_size", "12", "--max_steps", "1", "--logging_steps", "1", "--pred_distill", "--temperature", "2",
        "--fp16", "--no_cuda"])
    inputs = encode(kd.vocab, [s for s, _ in kd.sst2_train])
    expected = ref.soft_cross_entropy(numpy_student_logits(kd.student_cls, inputs, 4, VTH),
                                      numpy_teacher_logits(kd.base.teacher_sst2, inputs), 2.0)
    logged = first_record(out)["loss"]
    assert 1e-3 < abs(logged - expected) / expected < 0.05, (logged, expected)


# ------------------------------------------------------------------------------------------ trainer promises

class _Linear(nn.Module):
    """``loss = mean((X w + b - y)^2)`` in float64."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -0.2, 0.1, 0.3], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(0.05, dtype=torch.float64))

    def forward(self, batch, teacher_out):
        x, y = batch
        return {"loss": ((x @ self.w + self.b - y) ** 2).mean()}


def _epoch_data(epochs: int, n: int = 6, poisoned=()):
    rng = np.random.default_rng(3)
    data = []
    for e in range(epochs):
        x, y = rng.normal(size=(n, 4)), rng.normal(size=n)
        if e in poisoned:
            x[0, 0] = np.nan
        data.append((x, y))
    return data


def _train(out: Path, data, optimizer, micro_batch_size=None, **config):
    """Epoch ``e`` on ``data[e]``, one full-batch optimizer step per epoch unless ``micro_batch_size``."""
    model = _Linear()
    sets = [TensorDataset(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]

    def save(directory: Path):
        (directory / "config.json").write_text("{}")
        (directory / "model.safetensors").write_bytes(b"")

    stage = Stage(student=model, objective=model, make_optimizer=lambda total: optimizer(model, total),
                  train_dataset=lambda e: sets[e], num_train_examples=lambda e: len(sets[e]), save_student=save)
    out.mkdir()
    batch = (micro_batch_size or len(sets[0])) * config.get("gradient_accumulation_steps", 1)
    Trainer(TrainerConfig(output_dir=out, train_batch_size=batch, num_train_epochs=len(data), seed=7, **config), CPU,
            stage).train()
    return model, read_jsonl(out / "metrics.jsonl")


def _gradient(w, b, x, y):
    r = x @ w + b - y
    return 2 * x.T @ r / len(y), 2 * r.mean(), float((r ** 2).mean())


def _warmup_linear(p, warmup):
    return p / warmup if p < warmup else max((1.0 - p) / (1.0 - warmup), 0.0)


def _hand_bertadam(data, lr, warmup, total, skipped, advance_on_skip=False):
    """BertAdam written out: per-tensor clipping to norm 1, moments without bias correction, weight decay
    0.01 on w, the scheduled rate of ``lr * warmup_linear(updates / total)``; returns (w, b, rates)."""
    w, b = np.array([0.5, -0.2, 0.1, 0.3]), 0.05
    m, v = [np.zeros(4), 0.0], [np.zeros(4), 0.0]
    updates, rates = 0, []
    for step, (x, y) in enumerate(data, start=1):
        if step in skipped:
            updates += advance_on_skip
        else:
            rate = lr * _warmup_linear(updates / total, warmup)
            gw, gb, _ = _gradient(w, b, x, y)
            new = []
            for i, (p, g, decay) in enumerate(((w, gw, 0.01), (b, gb, 0.0))):
                g = g * min(1.0, 1.0 / (np.sqrt(np.sum(g ** 2)) + 1e-6))
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                new.append(p - rate * (m[i] / (np.sqrt(v[i]) + 1e-6) + decay * p))
            w, b = new
            updates += 1
        rates.append(lr * _warmup_linear(updates / total, warmup))     # the rate of the next update
    return w, b, rates


@pytest.mark.slow
def test_a_skipped_step_does_not_advance_bertadams_schedule(tmp_path):
    lr, warmup, epochs = 0.1, 0.5, 6
    data = _epoch_data(epochs, poisoned={1})
    optimizer = lambda model, total: BertAdam(
        [{"params": [model.w], "weight_decay": 0.01}, {"params": [model.b], "weight_decay": 0.0}],
        lr=lr, warmup=warmup, t_total=total, schedule="warmup_linear")
    model, records = _train(tmp_path / "run", data, optimizer, skip_nan_batches=1, logging_steps=1)
    w, b, rates = _hand_bertadam(data, lr, warmup, epochs, skipped={2})
    np.testing.assert_allclose(model.w.detach().numpy(), w, rtol=1e-12, atol=1e-15)
    assert model.b.item() == pytest.approx(b, rel=1e-12)
    assert [r["lr"] for r in records] == pytest.approx(rates, rel=1e-12)
    assert [r["step"] for r in records if "loss" in r] == [1, 3, 4, 5, 6]
    other, _, _ = _hand_bertadam(data, lr, warmup, epochs, skipped={2}, advance_on_skip=True)
    assert np.abs(other - w).max() > 1e-3                # the test tells the two apart


@pytest.mark.slow
def test_metrics_log_the_mean_loss_and_gradient_norm_of_each_logging_window(tmp_path):
    """One epoch of 36 examples in 6 steps of 6, logged every 3 steps. A zero learning rate keeps the weights,
    so each step's loss and gradient norm are known by hand, on the batches of epoch 0's order: a permutation
    seeded with seed + epoch (torch's DistributedSampler, shuffled, one replica)."""
    data = _epoch_data(1, n=36)
    _, records = _train(tmp_path / "run", data, lambda model, total: BertAdam(model.parameters(), lr=0.0),
                        micro_batch_size=6, logging_steps=3)
    order = torch.randperm(36, generator=torch.Generator().manual_seed(7 + 0)).numpy()
    w, b = np.array([0.5, -0.2, 0.1, 0.3]), 0.05
    per_step = []
    for step in range(6):
        batch = order[6 * step:6 * (step + 1)]
        gw, gb, loss = _gradient(w, b, data[0][0][batch], data[0][1][batch])
        per_step.append((loss, math.sqrt(float(np.sum(gw ** 2)) + gb ** 2)))
    assert [r["step"] for r in records] == [3, 6]
    for record, window in zip(records, (per_step[:3], per_step[3:])):
        assert record["loss"] == pytest.approx(np.mean([loss for loss, _ in window]), rel=1e-6)
        assert record["grad_norm"] == pytest.approx(np.mean([norm for _, norm in window]), rel=1e-6)
    assert records[0]["loss"] != pytest.approx(records[1]["loss"], rel=1e-3)     # two different windows


@pytest.mark.system
@pytest.mark.slow
def test_continue_train_refuses_a_state_of_an_incompatible_version(kd, tmp_path):
    out = tmp_path / "run"
    argv = ["--task_name", "SST-2", "--data_dir", kd.sst2, "--teacher_model", kd.base.teacher_sst2,
            "--spiking_student_model", kd.student_cls, "--output_dir", out, "--do_lower_case", "--max_seq_length", SEQ,
            "--train_batch_size", "6", "--max_steps", "1"]
    cli_runner.run(cli_runner.TASK, argv)
    state_path = out / "checkpoint-1" / "training_state.pt"
    state = torch.load(state_path, weights_only=True)
    torch.save({**state, "version": state["version"] - 1}, state_path)
    result = cli_runner.run(cli_runner.TASK, [*argv[:-1], "2", "--continue_train"], expect=1)
    assert result.error_line() == (f"error: {out / 'checkpoint-1'} was written by an incompatible version; start over "
                                   "with --overwrite_output_dir")
    assert not (out / "checkpoint-2").exists()


# ------------------------------------------------------------------------------------------ teacher warning

@pytest.mark.system
@pytest.mark.slow
def test_near_chance_teacher_is_warned_about(kd, tmp_path):
    """A teacher whose classifier bias puts half of the dev sentences on each side: with dev labels equal to
    its (numpy float64) predictions it scores 1.0, with the opposite labels 0.0 (below chance: warned)."""
    teacher = tmp_path / "teacher"
    shutil.copytree(kd.base.teacher_sst2, teacher)
    rng = np.random.default_rng(1)
    words = [w for w in kd.vocab if w.startswith("w")]
    sentences = [" ".join(rng.choice(words, 6)) for _ in range(8)]
    logits = numpy_teacher_logits(teacher, encode(kd.vocab, sentences))
    margin = logits[:, 1] - logits[:, 0]
    weights = load_numpy(str(teacher / "model.safetensors"))
    middle = np.median(margin)
    assert np.abs(margin - middle).min() > 1e-6                 # no sentence on the decision boundary
    weights["classifier.bias"] = weights["classifier.bias"] + np.array([middle / 2, -middle / 2], np.float32)
    save_numpy(weights, str(teacher / "model.safetensors"), metadata={"format": "pt"})
    predictions = numpy_teacher_logits(teacher, encode(kd.vocab, sentences)).argmax(1)
    assert sorted(predictions.tolist()) == [0] * 4 + [1] * 4

    for name, labels, accuracy in (("agrees", predictions, 1.0), ("disagrees", 1 - predictions, 0.0)):
        data = tmp_path / name / "SST-2"
        data.mkdir(parents=True)
        (data / "train.tsv").write_text((kd.sst2 / "train.tsv").read_text())
        (data / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in zip(sentences, labels)))
        out = tmp_path / name / "out"
        result = cli_runner.run(cli_runner.TASK, [
            "--task_name", "SST-2", "--data_dir", data, "--teacher_model", teacher, "--spiking_student_model",
            kd.student_cls, "--output_dir", out, "--do_lower_case", "--max_seq_length", SEQ, "--pred_distill",
            "--train_batch_size", "12", "--max_steps", "1"])
        results = json.loads((out / "teacher_results.json").read_text())
        assert results["acc"] == accuracy and results["chance_acc"] == 0.5 and results["examples"] == 8
        warned = "is near chance (0.5000): check --teacher_model" in result.output
        assert warned == (name == "disagrees"), result.output[-2000:]


# ------------------------------------------------------------------------------------------ converter, download

def test_converter_leak_and_num_labels(tmp_path, capsys):
    sd = published_state(2)                                         # a task checkpoint with a 3-class head
    torch.save(sd, tmp_path / "task.bin")
    config = write_config(tmp_path / "cfg", 2)
    assert convert_published.main(["--checkpoint", str(tmp_path / "task.bin"), "--config", str(config), "--output_dir",
                                   str(tmp_path / "leaky"), "--leak", "0.5", "--t_conv", "7", "--vth", "0.9"]) == 0
    saved = json.loads((tmp_path / "leaky" / "config.json").read_text())
    assert (saved["leak"], saved["t_conv"], saved["vth"], saved["num_labels"]) == (0.5, 7, 0.9, 3)
    model = SpikingBertForSequenceClassification.from_pretrained(tmp_path / "leaky").eval()
    ids, types, mask = tiny_inputs(vocab=VOCAB)
    with torch.no_grad():
        out = model(ids, types, mask)
        rates, logits = reference_forward(raw_names(sd), model.config, ids, types, mask, 7, 0.9, leak=0.5)
        if_rates, _ = reference_forward(raw_names(sd), model.config, ids, types, mask, 7, 0.9, leak=1.0)
    assert all(torch.equal(a, b) for a, b in zip(out.rates, rates))
    assert not all(torch.equal(a, b) for a, b in zip(out.rates, if_rates))     # the leak made a difference
    torch.testing.assert_close(out.logits, logits)

    # --num_labels: stored for a general-KD checkpoint (no head); a head of another size is a one-line error.
    torch.save(published_state(2, task=False), tmp_path / "general.bin")
    assert convert_published.main(["--checkpoint", str(tmp_path / "general.bin"), "--config", str(config),
                                   "--output_dir", str(tmp_path / "general"), "--num_labels", "5"]) == 0
    assert json.loads((tmp_path / "general" / "config.json").read_text())["num_labels"] == 5
    assert SpikingBertForSequenceClassification.from_pretrained(tmp_path / "general").classifier.out_features == 5
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        run_cli(convert_published.main, ["--checkpoint", str(tmp_path / "task.bin"), "--config", str(config),
                                         "--output_dir", str(tmp_path / "bad"), "--num_labels", "2"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "classifier.weight has shape (3, 16)" in err[0]
    assert not (tmp_path / "bad").exists()


@pytest.mark.system
def test_download_all_tasks_from_a_local_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    files = {**standard_files(), "QQP-clean.zip": task_zip("QQP"), "STS-B.zip": task_zip("STS-B"),
             "RTE.zip": task_zip("RTE"), "WNLI.zip": task_zip("WNLI")}
    for name, body in files.items():
        (mirror / name).write_bytes(body)
    data = tmp_path / "glue"
    cli_runner.run(cli_runner.DOWNLOAD, ["--data_dir", data, "--tasks", "all", "--mirror", mirror])
    splits = ("train.tsv", "dev.tsv", "test.tsv")
    expected = {**dict.fromkeys(("CoLA", "SST-2", "MRPC", "QQP", "STS-B", "QNLI", "RTE", "WNLI"), splits),
                "MNLI": ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv", "test_matched.tsv",
                         "test_mismatched.tsv"),
                "diagnostic": ("diagnostic.tsv",)}
    assert sorted(p.name for p in data.iterdir()) == sorted(expected)       # nothing else (no staging, downloads)
    for task, names in expected.items():
        assert sorted(p.name for p in (data / task).iterdir()) == sorted(names), task
    assert (data / "CoLA" / "train.tsv").read_text() == COLA_TRAIN
    assert (data / "SST-2" / "train.tsv").read_text() == SST_TRAIN
    assert (data / "WNLI" / "dev.tsv").read_text() == "content of WNLI/dev.tsv\n"
    assert (data / "diagnostic" / "diagnostic.tsv").read_bytes() == files["AX.tsv"]
    dev_pairs = {tuple(line.split("\t")) for line in DEV_IDS.splitlines()}
    mrpc_dev = (data / "MRPC" / "dev.tsv").read_text().splitlines()[1:]
    mrpc_train = (data / "MRPC" / "train.tsv").read_text().splitlines()[1:]
    assert {tuple(row.split("\t")[1:3]) for row in mrpc_dev} == dev_pairs
    assert len(mrpc_train) + len(mrpc_dev) == len(MSR_TRAIN_ROWS)
    assert sorted(p.name for p in mirror.iterdir()) == sorted(files)          # the mirror is left as it was
