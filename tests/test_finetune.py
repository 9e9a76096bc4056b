"""Teacher fine-tuning (`python -m apps.finetune`) end to end on a tiny BERT and an easy task.

The task: sentences of filler words with one sentiment word; label 1 iff it is a positive one.
A tiny random BERT (H 32, 2 layers) learns it in a few epochs on the CPU.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from spikingbert.data import glue
from spikingbert.transformer.modeling import BertConfig, BertForPreTraining, BertForSequenceClassification
from spikingbert.transformer.tokenization import BertTokenizer
from tests.helpers.world import run_finetune

pytestmark = [pytest.mark.system, pytest.mark.slow]

POSITIVE = ["good", "great", "fine", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull"]
FILLER = [f"w{i}" for i in range(40)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _write_task(directory: Path, rng: random.Random, n_train: int, n_dev: int) -> None:
    directory.mkdir(parents=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = []
        for _ in range(n):
            label = rng.randint(0, 1)
            words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
            words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
            rows.append(f"{' '.join(words)}\t{label}\n")
        (directory / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(rows))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    bert = root / "bert"
    vocab = SPECIAL + FILLER + POSITIVE + NEGATIVE
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertForPreTraining(config).save_pretrained(bert)           # a "pre-trained" BERT without classifier
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    task = root / "task"
    _write_task(task, random.Random(0), n_train=192, n_dev=64)
    return root, bert, task


def test_finetune_learns_the_task_and_writes_a_teacher_dir(setup):
    root, bert, task = setup
    out = root / "teacher"
    proc = run_finetune("--task_name", "sst-2", "--data_dir", task, "--bert_model", bert, "--output_dir", out,
                        "--do_lower_case", "--max_seq_length", "16", "--train_batch_size", "16",
                        "--num_train_epochs", "6", "--learning_rate", "2e-3", "--warmup_proportion", "0.1",
                        "--no_cuda")

    # A complete teacher dir: config with num_labels, weights (classifier included), the vocabulary.
    config = json.loads((out / "config.json").read_text())
    assert config["num_labels"] == 2 and config["architectures"] == ["BertForSequenceClassification"]
    assert (out / "vocab.txt").read_text() == (bert / "vocab.txt").read_text()
    teacher = BertForSequenceClassification.from_pretrained(out)
    assert teacher.initialised_keys == []                  # nothing missing: the classifier was saved
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["do_lower_case"] is True
    assert config["model_type"] == "bert" and config["max_seq_length"] == 16

    # The reported dev accuracy is the saved model's (recomputed here) and far above chance.
    results = json.loads((out / "eval_results.json").read_text())
    tokenizer = BertTokenizer.from_pretrained(out, do_lower_case=True)
    dev, _, _ = glue.load_task_dataset("sst-2", task, "dev", tokenizer, 16)
    input_ids, input_mask, segment_ids, labels, _ = dev.tensors
    with torch.no_grad():
        logits = teacher(input_ids, token_type_ids=segment_ids, attention_mask=input_mask).logits
    accuracy = (logits.argmax(1) == labels).double().mean().item()
    # Hugging Face loads the teacher dir as it is, to the same logits and label names.
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        hf_logits = hf(input_ids=input_ids, token_type_ids=segment_ids, attention_mask=input_mask).logits
    assert (hf_logits - logits).abs().max().item() <= 1e-4
    assert hf.config.id2label == {0: "negative", 1: "positive"}
    assert results["acc"] == pytest.approx(accuracy, abs=1e-9)
    assert results["chance_acc"] == pytest.approx(np.bincount(labels.numpy()).max() / len(labels))
    assert results["acc"] >= 0.85 > results["chance_acc"] + 0.2
    assert results["train_examples"] == 192 and results["dev_examples"] == 64
    assert "acc" in proc.stdout and "chance_acc" in proc.stdout    # the printed table

    # The shared training loop ran it: loss log (decreasing), one dev evaluation per epoch, a checkpoint.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    assert [r["step"] for r in records if "eval" in r] == [12 * e for e in range(1, 7)]   # 192 / 16 = 12 steps
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-72"]
    assert json.loads((out / "args.json").read_text())["stage"] == "finetune"


def test_finetune_usage_errors_are_one_line(setup, tmp_path):
    root, bert, task = setup
    proc = run_finetune("--task_name", "SST-2", "--data_dir", task, "--bert_model", tmp_path / "missing",
                        "--output_dir", tmp_path / "out", expect_rc=2)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --bert_model")
    proc = run_finetune("--task_name", "nope", "--data_dir", task, "--bert_model", bert,
                        "--output_dir", tmp_path / "out", expect_rc=2)
    assert "unknown task" in proc.stderr and not (tmp_path / "out").exists()
