"""End-to-end CLI runs of the pipeline on tiny models and data.

preprocess -> general KD -> task IKD -> --pred_distill -> --do_eval, each step reading the
previous step's output dir as is, for SST-2 (classification) and STS-B (regression). The
teachers are tiny random BERTs (H 32, 4 layers) built with the vendored
`transformer.modeling`; the student has H 32, 2 layers, T = 4..8.

The builders (`build_world`, `run_script`, ...) are in tests/helpers/world.py.
"""
from __future__ import annotations

import json
import math
import random
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from spikingbert.data import glue
from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification
from spikingbert.transformer.tokenization import BertTokenizer
from tests.helpers.world import (
    TEACHER,
    World,
    assert_student_dir,
    build_world,
    independent_dev_metrics,
    max_weight_diff,
    random_sentence,
    read_jsonl,
    run_script,
    task_args,
)

pytestmark = [pytest.mark.system, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def general_dir(world) -> Path:
    """preprocess_training_data.py, then general KD (shared by the task chains)."""
    pregenerated = world.root / "pregenerated"
    run_script("preprocess_training_data.py", "--train_corpus", world.corpus, "--output_dir", pregenerated,
               "--bert_model", world.teacher_general, "--do_lower_case", "--epochs_to_generate", "2",
               "--max_seq_len", "24")
    out = world.root / "general"
    run_script("spiking_bert_general_distill.py", "--pregenerated_data", pregenerated,
               "--teacher_model", world.teacher_general, "--spiking_student_model", world.student_config,
               "--output_dir", out, "--do_lower_case", "--train_batch_size", "16", "--num_train_epochs", "2",
               "--t_conv", "6", "--eval_step", "2", "--save_total_limit", "2", "--learning_rate", "1e-3")
    return out


def test_general_distillation_output(general_dir, world):
    assert_student_dir(general_dir)
    config = json.loads((general_dir / "config.json").read_text())
    assert config["t_conv"] == 6                                  # --t_conv is stored with the student
    assert config["fit_size"] == TEACHER["hidden_size"]           # fit_dense projects to the teacher's width
    assert config["num_hidden_layers"] == 2
    # The directory says how its inputs were read; transformers cannot mistake it for a BERT.
    assert (config["model_type"], config["do_lower_case"], config.get("id2label")) == ("spiking_bert", True, None)
    assert config["max_seq_length"] == json.loads((world.root / "pregenerated" / "epoch_0_metrics.json").read_text())[
        "max_seq_len"]
    assert (general_dir / "vocab.txt").read_text() == world.vocab.read_text()
    args = json.loads((general_dir / "args.json").read_text())
    assert args["layer_stride"] == 2 and args["stage"] == "general"
    # 2 data epochs of ~40 instances, batch 16 -> 3 steps each; checkpoints every 2 steps, the last 2 kept.
    steps = [int(p.name.split("-")[1]) for p in general_dir.glob("checkpoint-*")]
    assert len(steps) == 2 and max(steps) == 6
    assert max_weight_diff(general_dir, general_dir / "checkpoint-6") == 0.0   # final model == last checkpoint
    records = read_jsonl(general_dir / "metrics.jsonl")
    assert {"loss", "att_loss", "rep_loss", "lr", "steps_per_sec"} <= records[-1].keys()
    assert all(math.isfinite(r["loss"]) for r in records)   # the values: tests/test_objectives_independent.py
    assert "train" in (general_dir / "train.log").read_text()
    card = (general_dir / "README.md").read_text()
    assert "(general)" in card and "classifier is untrained" in card and "t_conv 6 time steps" in card
    assert f"--spiking_student_model {general_dir} --output_dir" in card      # the next stage's command


def _card_loads_and_predicts(card: str) -> None:
    """The model card's Python snippet runs as written and gives one prediction for one string."""
    snippet = card.split("```python\n")[1].split("```")[0]
    scope: dict = {}
    exec(snippet, scope)
    assert not scope["model"].training and scope["model"].predict("a b").label in ("negative", "positive")


@pytest.mark.parametrize("task", ["SST-2", "STS-B"])
def test_task_chain_ikd_pred_eval(general_dir, world, task):
    root = world.root / task
    ikd, pred, evaluated = root / "ikd", root / "pred", root / "eval"

    # Task IKD: no --num_train_epochs / --max_seq_length -> per-task defaults, capped by --max_steps.
    # STS-B also runs with --fp16 (bf16 autocast on the CPU), SST-2 with --aug_train (train_aug.tsv).
    variant = ["--fp16"] if task == "STS-B" else ["--aug_train"]
    run_script("spiking_bert_task_distill.py", *task_args(world, task, general_dir, ikd, "--max_steps", "3", *variant))
    assert_student_dir(ikd)
    args = json.loads((ikd / "args.json").read_text())
    assert args["fp16"] == (task == "STS-B") and args["aug_train"] == (task == "SST-2")
    assert all(math.isfinite(r["loss"]) for r in read_jsonl(ikd / "metrics.jsonl"))
    defaults = glue.default_task_settings(task)
    assert args["num_train_epochs_used"] == defaults.num_train_epochs
    assert args["max_seq_length_used"] == defaults.max_seq_length
    assert args["stage"] == "intermediate"
    log = (ikd / "train.log").read_text()
    assert ("24 training examples (aug)" if task == "SST-2" else "40 training examples (train)") in log
    assert f"max_seq_length {defaults.max_seq_length} (default for {task.lower()})" in log
    teacher = json.loads((ikd / "teacher_results.json").read_text())
    assert teacher["examples"] == 11 and glue.main_metric(task) in teacher
    assert max_weight_diff(ikd, ikd / "checkpoint-3") == 0.0

    # Prediction KD from the IKD dir as is: dev evaluation every 2 steps and at the end, best kept.
    run_script("spiking_bert_task_distill.py", *task_args(world, task, ikd, pred, "--pred_distill",
               "--num_train_epochs", "1", "--max_seq_length", "24", "--eval_step", "2", "--t_conv", "8"))
    assert_student_dir(pred)
    evals = [r for r in read_jsonl(pred / "metrics.jsonl") if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4, 5]                # every 2 steps + epoch end (40 / 8 = 5 steps)
    metric = glue.main_metric(task)
    best = json.loads((pred / "best_results.json").read_text())
    scores = [r["eval"][metric] for r in evals]
    assert best[metric] == max(s for s in scores if s == s)
    assert best["step"] == next(r["step"] for r in evals if r["eval"][metric] == best[metric])
    # The default --save_total_limit 1 keeps the last checkpoint only; output_dir holds the best model (its dev
    # score is --do_eval's, below).
    assert [p.name for p in pred.glob("checkpoint-*")] == ["checkpoint-5"]
    if best["step"] == 5:
        assert max_weight_diff(pred, pred / "checkpoint-5") == 0.0
    config = json.loads((pred / "config.json").read_text())
    assert (config["t_conv"], config["do_lower_case"], config["max_seq_length"]) == (8, True, 24)
    if task == "SST-2":
        assert config["id2label"] == {"0": "negative", "1": "positive"}
        predictions = SpikingBertForSequenceClassification.from_pretrained(pred).predict(["a b", "c"])
        assert {p.label for p in predictions} <= {"negative", "positive"}
    # The model card: what it is, from the directory's own files, and the command as typed.
    card = (pred / "README.md").read_text()
    assert f"| task | {task}" in card and "| stage | prediction |" in card
    dev_row = next(line for line in card.splitlines() if line.startswith("| dev metric |"))
    assert f"{metric} {best[metric]:.4f}" in dev_row and f"(step {best['step']}, `best_results.json`)" in dev_row
    assert "t_conv 8 time steps, vth 1.0, IF" in card
    command = shlex.join(["python", "spiking_bert_task_distill.py", *map(str, task_args(
        world, task, ikd, pred, "--pred_distill", "--num_train_epochs", "1", "--max_seq_length", "24", "--eval_step",
        "2", "--t_conv", "8"))])
    assert f"```\n{command}\n```" in card
    if task == "SST-2":
        assert "(labels: negative, positive)" in card
        _card_loads_and_predicts(card)

    # --do_eval of the prediction-KD dir as is (no teacher, no --do_lower_case or --max_seq_length: the
    # directory records them); an independent recomputation agrees.
    proc = run_script("spiking_bert_task_distill.py", "--do_eval", "--task_name", task, "--data_dir",
                      world.sst2 if task == "SST-2" else world.stsb, "--spiking_student_model", pred,
                      "--output_dir", evaluated, "--eval_batch_size", "64", "--no_cuda")   # on the CPU, like below
    results = json.loads((evaluated / "eval_results.json").read_text())
    assert {"t_conv", "vth", "examples", "seconds"} <= results.keys()
    assert results["t_conv"] == 8 and results["vth"] == 1.0 and results["examples"] == 11
    expected = independent_dev_metrics(pred, task, world.sst2 if task == "SST-2" else world.stsb, 24)
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-6)
    if task == "STS-B":
        assert {"pearson", "spearmanr", "corr"} <= results.keys()
        assert np.isfinite(results["pearson"])                   # predictions vary across examples
    assert metric in proc.stdout and "t_conv" in proc.stdout      # the printed table
    # The evaluation in the pred-KD run at the best step gave the same score as --do_eval (both on the
    # CPU: a GPU's different float rounding can flip spikes at the threshold).
    if not torch.cuda.is_available():
        assert best[metric] == pytest.approx(results[metric], abs=1e-6)


def test_save_total_limit_0_writes_the_model_only(world, tmp_path):
    """--save_total_limit 0: the published code's single model, no checkpoint (and nothing to resume from)."""
    out = tmp_path / "pred"
    proc = run_script("spiking_bert_task_distill.py", *task_args(world, "SST-2", world.student_config, out,
                      "--pred_distill", "--max_steps", "3", "--eval_step", "1", "--save_steps", "1",
                      "--save_total_limit", "0", "--max_seq_length", "24", "--t_conv", "4"))
    assert_student_dir(out)
    assert not list(out.glob("checkpoint-*")) and (out / "best_results.json").is_file()
    assert f"saved {out}/checkpoint-" not in proc.stderr
    proc = run_script("spiking_bert_task_distill.py", *task_args(world, "SST-2", world.student_config, out,
                      "--pred_distill", "--max_steps", "3", "--eval_step", "1", "--save_total_limit", "0",
                      "--max_seq_length", "24", "--t_conv", "4", "--continue_train"))
    assert "no complete checkpoint" in proc.stderr


def _single_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_layer_count_mismatch_is_one_clear_line(world, tmp_path):
    student = tmp_path / "student3"
    student.mkdir()
    config = json.loads((world.student_config / "config.json").read_text())
    (student / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    out = tmp_path / "out"
    proc = run_script("spiking_bert_task_distill.py", *task_args(world, "SST-2", student, out), expect_rc=2)
    line = _single_error_line(proc)
    assert "teacher has 4 layers and the student 3" in line and "--spiking_student_model" in line
    assert not out.exists()                                       # checked before anything is written


def test_non_empty_output_dir_is_one_clear_line(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something.txt").write_text("x")
    proc = run_script("spiking_bert_task_distill.py", *task_args(world, "SST-2", world.student_config, out),
                      expect_rc=2)
    line = _single_error_line(proc)
    assert str(out) in line and "--continue_train" in line and "--overwrite_output_dir" in line
    assert sorted(p.name for p in out.iterdir()) == ["something.txt"]


def test_mnli_eval_reports_matched_and_mismatched(world, tmp_path):
    """--do_eval on MNLI evaluates dev_matched and dev_mismatched (mm_ keys), each checked independently."""
    data = tmp_path / "MNLI"
    data.mkdir()
    rng = random.Random(3)
    header = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label\n"
    labels = ("contradiction", "entailment", "neutral")
    for name, n in (("dev_matched.tsv", 7), ("dev_mismatched.tsv", 9)):
        rows = "".join(f"{i}\t1\t1\tg\tx\tx\tx\tx\t{random_sentence(rng, 3, 6)}\t{random_sentence(rng, 3, 6)}\tl\t"
                       f"{rng.choice(labels)}\n" for i in range(n))
        (data / name).write_text(header + rows)
    student = tmp_path / "student"
    SpikingBertForSequenceClassification.from_pretrained(world.student_config, num_labels=3).save_pretrained(
        student, vocab_file=world.vocab)
    out = tmp_path / "eval"
    run_script("spiking_bert_task_distill.py", "--do_eval", "--task_name", "MNLI", "--data_dir", data,
               "--spiking_student_model", student, "--output_dir", out, "--do_lower_case", "--max_seq_length", "24",
               "--eval_batch_size", "64", "--no_cuda")
    results = json.loads((out / "eval_results.json").read_text())
    assert results["examples"] == 16
    tokenizer = BertTokenizer.from_pretrained(student, do_lower_case=True)
    model = SpikingBertForSequenceClassification.from_pretrained(student, num_labels=3).eval()
    for split, key in (("dev", "acc"), ("dev_mm", "mm_acc")):
        dataset, _, _ = glue.load_task_dataset("MNLI", data, split, tokenizer, 24)
        input_ids, input_mask, segment_ids, gold, _ = dataset.tensors
        with torch.no_grad():
            logits = model(input_ids, token_type_ids=segment_ids, attention_mask=input_mask).logits
        assert results[key] == pytest.approx((logits.argmax(1) == gold).double().mean().item(), abs=1e-12)
