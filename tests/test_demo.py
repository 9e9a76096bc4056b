"""The demo's parts: the rotten-tomatoes task conversion, --init_from_teacher, --do_eval --report/--adaptive_t,
and the demo's stage runner (reuse of finished stages). The full demo is not run here (see README, Demo)."""
from __future__ import annotations

import bz2
import csv
import dataclasses
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from spikingbert.apps import corpora, demo, demo_stages
from spikingbert.core.errors import UserError
from spikingbert.models.init_from_teacher import init_student_from_teacher, teacher_init_map
from spikingbert.models.spiking_bert import (
    SpikingBertConfig,
    SpikingBertForDistillation,
    SpikingBertForSequenceClassification,
)
from spikingbert.transformer.modeling import BertConfig, BertForPreTraining
from tests.helpers.world import REPO, TEACHER, build_world, independent_dev_metrics, run_script

# ------------------------------------------------------------------------------------ rotten tomatoes


def _read_tsv(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "sentence\tlabel"
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(r) == 2 for r in rows)
    return [(text, int(label)) for text, label in rows]


def _write_source(path: Path, rows) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    writer.writerows([category, text, "m", "True"] for category, text in rows)
    path.write_bytes(bz2.compress(buffer.getvalue().encode("utf-8")))
    return path


def test_rotten_tomatoes_rules_on_a_small_source(tmp_path):
    rows = [("fresh", f"a fine film number {i}") for i in range(30)] + \
           [("rotten", f"a dull film number {i}") for i in range(30)] + [
        ("plot", "A man walks into a bar. Things happen."),
        ("fresh", "Great  fun,\tfrom start\nto finish."),             # whitespace normalised
        ("fresh", "great fun, from start to finish."),                # the same text up to case/space: dropped
        ("rotten", "Both ways."), ("fresh", "both  ways."),           # conflicting labels: dropped
    ]
    source = _write_source(tmp_path / "a.csv.bz2", rows)
    stats = corpora.build_rotten_tomatoes_task(tmp_path / "a", dev_fraction=0.25, source=source)
    train, dev = _read_tsv(tmp_path / "a" / "train.tsv"), _read_tsv(tmp_path / "a" / "dev.tsv")
    texts = {t for t, _ in train + dev}
    assert (stats.reviews, stats.plots, stats.duplicates, stats.conflicts) == (64, 1, 2, 1)
    assert len(train) + len(dev) == 61 == stats.train + stats.dev and len(dev) == round(0.25 * 61)
    assert "Great fun, from start to finish." in texts and "great fun, from start to finish." not in texts
    assert not any("ways" in t or "bar" in t for t in texts)
    labels = dict(train + dev)
    assert all(labels[f"a fine film number {i}"] == 1 and labels[f"a dull film number {i}"] == 0 for i in range(30))

    # The split depends only on the texts (and the seed), not on the row order; another seed splits otherwise.
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    corpora.build_rotten_tomatoes_task(tmp_path / "b", dev_fraction=0.25,
                                       source=_write_source(tmp_path / "b.csv.bz2", shuffled))
    assert sorted(_read_tsv(tmp_path / "b" / "dev.tsv")) == sorted(dev)
    corpora.build_rotten_tomatoes_task(tmp_path / "c", dev_fraction=0.25, seed=7, source=source)
    assert sorted(_read_tsv(tmp_path / "c" / "dev.tsv")) != sorted(dev)


def test_rotten_tomatoes_real_corpus(tmp_path):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    stats = corpora.build_rotten_tomatoes_task(out_a)
    corpora.build_rotten_tomatoes_task(out_b)
    for name in ("train.tsv", "dev.tsv"):                                      # deterministic
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes()
    train, dev = _read_tsv(out_a / "train.tsv"), _read_tsv(out_a / "dev.tsv")

    # Independently: the source's review rows, whitespace-normalised, case-folded.
    with bz2.open(corpora.rotten_tomatoes_source(), "rt", encoding="utf-8", newline="") as f:
        source = list(csv.DictReader(f))
    reviews = {}
    for row in source:
        if row["category"] != "plot":
            reviews.setdefault(" ".join(row["text"].split()).casefold(), set()).add(row["category"])
    plots = {" ".join(row["text"].split()).casefold() for row in source if row["category"] == "plot"}

    keys_train = [t.casefold() for t, _ in train]
    keys_dev = [t.casefold() for t, _ in dev]
    assert len(set(keys_train)) == len(keys_train) and len(set(keys_dev)) == len(keys_dev)   # no duplicates
    assert not set(keys_train) & set(keys_dev)                                             # no overlap
    assert set(keys_train) | set(keys_dev) == {k for k, c in reviews.items() if len(c) == 1}
    assert not (set(keys_train) | set(keys_dev)) & plots                                   # no plot rows
    assert 12_000 < stats.train + stats.dev < 13_000 and stats.dev == round(0.1 * (stats.train + stats.dev))
    for text, label in train + dev:                                                        # 1 = fresh
        assert reviews[text.casefold()] == {"fresh" if label else "rotten"}
    assert all("\t" not in t and "\n" not in t and t == t.strip() for t, _ in train + dev)


# ------------------------------------------------------------------------------------ --init_from_teacher


def _teacher(layers=4, hidden=32, inter=64, seed=0) -> BertForPreTraining:
    torch.manual_seed(seed)
    return BertForPreTraining(BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers,
                                         num_attention_heads=2, intermediate_size=inter, max_position_embeddings=32))


def _student(layers=2, hidden=32, inter=64) -> SpikingBertForDistillation:
    torch.manual_seed(1)
    return SpikingBertForDistillation(SpikingBertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers,
                                                        num_attention_heads=2, intermediate_size=inter,
                                                        max_position_embeddings=32))


def test_init_from_teacher_copies_exactly_the_mapped_tensors():
    teacher, student = _teacher(layers=4), _student(layers=2)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    mapping = init_student_from_teacher(student, teacher, stride=2)
    after, source = student.state_dict(), teacher.state_dict()
    for key in after:
        if key.startswith("bert.embeddings."):
            assert mapping[key] == key and torch.equal(after[key], source[key])
        elif key.startswith("bert.encoder.layer."):
            j = int(key.split(".")[3])
            expected = key.replace(f"layer.{j}.", f"layer.{2 * j + 1}.", 1)    # layer j*k + k - 1
            assert mapping[key] == expected and torch.equal(after[key], source[expected])
        else:                                                                  # fit_dense: untouched
            assert key not in mapping and torch.equal(after[key], before[key])
    assert len(mapping) == 5 + 2 * 16

    # Tensors whose shapes differ (here the FFN of a narrower intermediate size) are left alone.
    student = _student(layers=2, inter=48)
    mapping = teacher_init_map(teacher.state_dict(), student.state_dict(), stride=2)
    assert not any(".intermediate." in k or ".output.dense.weight" in k and "attention" not in k for k in mapping)
    assert "bert.encoder.layer.1.attention.self.query.weight" in mapping


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("demo_world"))


@pytest.mark.system
@pytest.mark.slow
def test_init_from_teacher_through_the_cli(world, tmp_path):
    """General KD with --init_from_teacher: after one step at a vanishing learning rate the student's
    encoder equals the teacher's mapped layers; task KD from a trained student ignores the flag."""
    pregenerated = tmp_path / "pregenerated"
    run_script("preprocess_training_data.py", "--train_corpus", world.corpus, "--output_dir", pregenerated,
               "--bert_model", world.teacher_general, "--do_lower_case", "--epochs_to_generate", "1",
               "--max_seq_len", "16")
    out = tmp_path / "general"
    proc = run_script("spiking_bert_general_distill.py", "--pregenerated_data", pregenerated, "--teacher_model",
               world.teacher_general, "--spiking_student_model", world.student_config, "--output_dir", out,
               "--do_lower_case", "--train_batch_size", "8", "--max_steps", "1", "--learning_rate", "1e-12",
               "--warmup_proportion", "0", "--t_conv", "4", "--init_from_teacher")
    student = load_file(str(out / "model.safetensors"))
    teacher = load_file(str(world.teacher_general / "model.safetensors"))
    stride = TEACHER["num_hidden_layers"] // 2
    copied = 0
    for key, value in student.items():
        if key.startswith("bert.encoder.layer."):
            j = int(key.split(".")[3])
            key = key.replace(f"layer.{j}.", f"layer.{j * stride + stride - 1}.", 1)
        elif not key.startswith("bert.embeddings."):
            continue
        assert torch.allclose(value, teacher[key], atol=1e-9, rtol=0), key
        copied += 1
    assert json.loads((out / "args.json").read_text())["init_from_teacher_tensors"] == copied == 5 + 2 * 16
    assert "copied 37 tensors: the embeddings (5) and student layer <- teacher layer 0 <- 1, 1 <- 3" in proc.stderr

    task_out = tmp_path / "ikd"
    proc = run_script("spiking_bert_task_distill.py", "--task_name", "SST-2", "--data_dir", world.sst2,
               "--teacher_model", world.teacher_sst2, "--spiking_student_model", out, "--output_dir", task_out,
               "--do_lower_case", "--train_batch_size", "8", "--max_steps", "1", "--max_seq_length", "16",
               "--init_from_teacher")
    assert "--init_from_teacher ignored" in proc.stderr
    assert json.loads((task_out / "args.json").read_text())["init_from_teacher_tensors"] is None


# ------------------------------------------------------------------ --report, --adaptive_budget, --adaptive_t


@pytest.mark.system
@pytest.mark.slow
def test_do_eval_report_and_adaptive_t(world, tmp_path):
    student_dir = tmp_path / "student"
    torch.manual_seed(0)
    model = SpikingBertForSequenceClassification.from_pretrained(world.student_config, t_conv=12)
    model.save_pretrained(student_dir, vocab_file=world.vocab)
    out = tmp_path / "eval"
    proc = run_script("spiking_bert_task_distill.py", "--do_eval", "--task_name", "SST-2", "--data_dir", world.sst2,
                      "--spiking_student_model", student_dir, "--teacher_model", world.teacher_sst2,
                      "--output_dir", out, "--do_lower_case", "--max_seq_length", "16", "--eval_batch_size", "4",
                      "--no_cuda", "--report", "--adaptive_budget", "2", "--adaptive_window", "2")
    results = json.loads((out / "eval_results.json").read_text())
    files = results["report"]
    assert Path(files["dir"]) == out / "report"
    for name in ("json", "markdown", "asr_per_layer", "asr_convergence", "metric_vs_t", "energy"):
        assert Path(files[name]).is_file() and Path(files[name]).parent == out / "report"
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["num_examples"] == results["examples"] == 11
    expected = independent_dev_metrics(student_dir, "SST-2", world.sst2, 16)["acc"]   # full batches, in this process
    assert results["acc"] == pytest.approx(expected, abs=1e-12)
    assert report["metrics_at_T"]["acc"] == pytest.approx(expected, abs=1e-12)
    assert report["energy"]["ann"]["teacher"]["num_layers"] == TEACHER["num_hidden_layers"]
    assert results["spikes_per_example"] == pytest.approx(report["spikes_per_example"]["total"])

    adaptive = results["adaptive_t"]
    assert (adaptive["budget_pt"], adaptive["window"], adaptive["t_conv"]) == (2.0, 2, 12)
    assert report["adaptive_t"]["calibration"]["margin"] == adaptive["margin"]
    assert report["adaptive_t"]["offline_agreement"] == 1.0
    assert adaptive["acc_fixed_T"] == pytest.approx(expected, abs=1e-12)
    assert adaptive["acc"] >= adaptive["acc_fixed_T"] - 0.02 - 1e-12                   # within the budget
    assert adaptive["min_steps_used"] <= adaptive["mean_steps"] <= adaptive["max_steps_used"] <= 12
    assert adaptive["step_reduction"] == pytest.approx(1 - adaptive["mean_steps"] / 12)
    assert adaptive["acc_change"] == pytest.approx(adaptive["acc"] - adaptive["acc_fixed_T"])
    curve = report["metric_vs_t"]
    assert adaptive["acc_fixed_T_at_mean_steps"] == pytest.approx(np.interp(adaptive["mean_steps"], curve["t"],
                                                                            curve["acc"]))
    assert "adaptive_t.mean_steps" in proc.stdout and "report.markdown" in proc.stdout

    # The rule it chose, given by hand and without --report (its own fixed-T pass): the same stops and accuracy.
    out2 = tmp_path / "eval2"
    run_script("spiking_bert_task_distill.py", "--do_eval", "--task_name", "SST-2", "--data_dir", world.sst2,
               "--spiking_student_model", student_dir, "--output_dir", out2, "--do_lower_case",
               "--max_seq_length", "16", "--eval_batch_size", "4", "--no_cuda", "--adaptive_t", str(adaptive["margin"]),
               "--adaptive_min_steps", str(adaptive["min_steps"]), "--adaptive_window", "2")
    again = json.loads((out2 / "eval_results.json").read_text())
    assert again["adaptive_t"]["budget_pt"] is None and "report" not in again and not (out2 / "report").exists()
    for key in ("mean_steps", "acc", "acc_fixed_T", "acc_fixed_T_at_mean_steps", "sops_per_example"):
        assert again["adaptive_t"][key] == pytest.approx(adaptive[key]), key

    proc = run_script("spiking_bert_task_distill.py", "--do_eval", "--task_name", "SST-2", "--data_dir", world.sst2,
                      "--spiking_student_model", student_dir, "--output_dir", tmp_path / "y", "--adaptive_t", "0.1",
                      "--adaptive_budget", "1", expect_rc=2)
    assert "not both" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_script("spiking_bert_task_distill.py", "--task_name", "SST-2", "--data_dir", world.sst2,
                      "--spiking_student_model", student_dir, "--teacher_model", world.teacher_sst2,
                      "--output_dir", tmp_path / "x", "--report", expect_rc=2)
    assert "--do_eval" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ demo stages


def _stage(name: str, target: Path, text: str) -> demo.DemoStage:
    code = f"import pathlib; pathlib.Path({str(target)!r}).write_text({text!r})"
    return demo.DemoStage(name, name, ["-c", code], [target])


@pytest.mark.system
def test_demo_reuses_finished_stages(tmp_path, capsys):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    stages = [_stage("one", a, "1"), _stage("two", b, "2")]
    runs = demo.run_stages(stages, tmp_path)
    assert [r.reused for r in runs] == [False, False] and a.read_text() == "1"
    assert json.loads((tmp_path / "stages" / "one.json").read_text())["command"] == stages[0].shell()
    a.write_text("changed")
    runs = demo.run_stages(stages, tmp_path)
    assert [r.reused for r in runs] == [True, True] and a.read_text() == "changed"
    # A changed second stage re-runs alone; a changed (or incomplete) first stage re-runs both.
    runs = demo.run_stages([stages[0], _stage("two", b, "3")], tmp_path)
    assert [r.reused for r in runs] == [True, False] and b.read_text() == "3"
    a.unlink()
    runs = demo.run_stages([stages[0], _stage("two", b, "3")], tmp_path)
    assert [r.reused for r in runs] == [False, False] and a.read_text() == "1"
    # A failing stage: one clear error naming its log, no marker, the next run retries it.
    failing = demo.DemoStage("bad", "bad", ["-c", "import sys; print('boom'); sys.exit(3)"], [tmp_path / "never"])
    with pytest.raises(UserError, match=r"stage 'bad' failed \(exit status 3\).*bad\.log"):
        demo.run_stages([stages[0], failing], tmp_path)
    assert not (tmp_path / "stages" / "bad.json").exists()
    assert "boom" in (tmp_path / "logs" / "bad.log").read_text()


@pytest.mark.system
def test_demo_stages_record_their_cpu_seconds(tmp_path):
    """A stage that computes for 0.6 s of CPU and one that sleeps 0.6 s: the first's CPU time is at least what it
    spent, the second's far below its wall time; a reused stage reports what its run recorded."""
    burn, nap = tmp_path / "burn.txt", tmp_path / "nap.txt"
    stages = [demo.DemoStage("burn", "burn", ["-c", "import pathlib, time\nwhile time.process_time() < 0.6: pass\n"
                                                    f"pathlib.Path({str(burn)!r}).write_text('x')"], [burn]),
              demo.DemoStage("nap", "nap", ["-c", f"import pathlib, time; time.sleep(0.6); "
                                                  f"pathlib.Path({str(nap)!r}).write_text('x')"], [nap])]
    first = demo.run_stages(stages, tmp_path)
    assert first[0].cpu_seconds >= 0.6 and first[1].cpu_seconds < 0.4 < 0.6 <= first[1].seconds
    again = demo.run_stages(stages, tmp_path)
    assert [r.reused for r in again] == [True, True]
    assert [r.cpu_seconds for r in again] == [round(r.cpu_seconds, 2) for r in first]


def test_demo_commands_are_in_the_readme():
    """README's Demo section lists the commands the demo runs (with $MINILM for the teacher package)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    minilm = demo_stages.repo_relative(demo.minilm_dir())
    for stage in demo.build_stages(demo.FULL, Path("runs/demo"), minilm):
        command = stage.shell().replace(str(minilm), "$MINILM")
        assert " ".join(command.split()) in " ".join(readme.replace("\\\n", " ").split()), stage.name


def test_demo_recipe_flags(monkeypatch):
    parser = demo.demo_parser()
    monkeypatch.delenv("DEMO_FAST", raising=False)
    assert demo.parse_recipe(parser.parse_args([])) == demo.FULL
    assert demo.parse_recipe(parser.parse_args(["--fast", "--t_conv", "32"])) == dataclasses.replace(demo.FAST,
                                                                                                 t_conv=32)
    monkeypatch.setenv("DEMO_FAST", "1")
    assert demo.parse_recipe(parser.parse_args(["--init_from_teacher", "false"])).init_from_teacher is False
    assert demo.parse_recipe(parser.parse_args([])).max_train_examples == demo.FAST.max_train_examples
    with pytest.raises(Exception, match="student_layers"):
        demo.parse_recipe(parser.parse_args(["--student_layers", "4"]))
