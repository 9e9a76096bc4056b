"""The tiny GLUE world of the CLI tests, and runners for the repository's entry scripts.

`build_world`: tiny random BERT teachers (H 32, 4 layers) built with the vendored `transformer.modeling`,
a student config (H 32, 2 layers), a pretraining corpus and SST-2 / STS-B TSVs. `run_script` /
`script_env` / `task_args` run the entry scripts in a subprocess; `run_finetune` runs
``python -m apps.finetune``; `max_weight_diff`, `read_jsonl`, `independent_dev_metrics` and
`assert_student_dir` read what a run wrote.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import torch
from safetensors.torch import load_file
from scipy.stats import pearsonr

from spikingbert.data import glue
from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification
from spikingbert.transformer.modeling import BertConfig, BertForPreTraining, BertForSequenceClassification
from spikingbert.transformer.tokenization import BertTokenizer

REPO = Path(__file__).resolve().parents[2]
WORDS = [f"w{i}" for i in range(120)] + ["good", "great", "fine", "bad", "awful", "poor", "movie", "plot"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEACHER = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=128)
# initializer_range 0.5: a random tiny student whose deeper layers spike (so predictions vary by input).
STUDENT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=128, initializer_range=0.5, t_conv=4, vth=1.0)
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


@dataclass
class World:
    root: Path
    vocab: Path
    teacher_general: Path
    teacher_sst2: Path
    teacher_stsb: Path
    student_config: Path
    corpus: Path
    sst2: Path
    stsb: Path


def random_sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def build_world(root: Path, seed: int = 0, dev_size: int = 11) -> World:
    """Tiny teachers, a student config, a corpus and SST-2 / STS-B TSVs under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS + [".", ","]) + "\n")
    vocab_size = len(SPECIAL) + len(WORDS) + 2
    torch.manual_seed(seed)
    teachers = {}
    for name, cls, labels in (("teacher_general", BertForPreTraining, 2),
                              ("teacher_sst2", BertForSequenceClassification, 2),
                              ("teacher_stsb", BertForSequenceClassification, 1)):
        model = cls(BertConfig(vocab_size=vocab_size, num_labels=labels, **TEACHER))
        model.save_pretrained(root / name)
        (root / name / "vocab.txt").write_text(vocab.read_text())
        teachers[name] = root / name
    student = root / "student_config"
    student.mkdir(exist_ok=True)
    (student / "config.json").write_text(json.dumps(dict(vocab_size=vocab_size, **STUDENT)))

    rng = random.Random(seed)
    corpus = root / "corpus.txt"
    docs = ["\n".join(random_sentence(rng, 4, 9) + " ." for _ in range(rng.randint(3, 6))) for _ in range(16)]
    corpus.write_text("\n\n".join(docs) + "\n")
    sst2 = root / "SST-2"
    sst2.mkdir(exist_ok=True)
    stsb = root / "STS-B"
    stsb.mkdir(exist_ok=True)
    for split, n in (("train", 40), ("dev", dev_size)):
        rows = "".join(f"{random_sentence(rng, 3, 8)}\t{rng.randint(0, 1)}\n" for _ in range(n))
        (sst2 / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
        rows = "".join(f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{random_sentence(rng, 3, 7)}\t"
                       f"{random_sentence(rng, 3, 7)}\t{rng.uniform(0, 5):.3f}\n" for i in range(n))
        (stsb / f"{split}.tsv").write_text(STSB_HEADER + rows)
    rows = "".join(f"{random_sentence(rng, 3, 8)}\t{rng.randint(0, 1)}\n" for _ in range(24))
    (sst2 / "train_aug.tsv").write_text("sentence\tlabel\n" + rows)
    return World(root, vocab, teachers["teacher_general"], teachers["teacher_sst2"], teachers["teacher_stsb"],
                 student, corpus, sst2, stsb)


def script_env() -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def run_script(script: str, *args, expect_rc: int = 0, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run one of the repository's entry scripts; assert its exit status."""
    proc = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, env=script_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == expect_rc, f"{script} exited {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc


def task_args(world: World, task: str, student: Path, output: Path, *extra) -> List[str]:
    data, teacher = (world.sst2, world.teacher_sst2) if task == "SST-2" else (world.stsb, world.teacher_stsb)
    return ["--task_name", task, "--data_dir", data, "--teacher_model", teacher, "--spiking_student_model", student,
            "--output_dir", output, "--do_lower_case", "--train_batch_size", "8", *extra]


def weights(directory: Path) -> Dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def read_jsonl(path: Path) -> List[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def independent_dev_metrics(student_dir: Path, task: str, data_dir: Path, max_seq_length: int) -> Dict[str, float]:
    """Dev metrics recomputed in this process from the saved student, with numpy/scipy."""
    tokenizer = BertTokenizer.from_pretrained(student_dir, do_lower_case=True)
    dataset, _, _ = glue.load_task_dataset(task, data_dir, "dev", tokenizer, max_seq_length)
    input_ids, input_mask, segment_ids, labels, _ = dataset.tensors
    num_labels = 1 if task == "STS-B" else 2
    model = SpikingBertForSequenceClassification.from_pretrained(student_dir, num_labels=num_labels).eval()
    with torch.no_grad():
        logits = model(input_ids, token_type_ids=segment_ids, attention_mask=input_mask).logits.numpy()
    if task == "STS-B":
        return {"pearson": float(pearsonr(logits.reshape(-1), labels.numpy())[0])}
    return {"acc": float((logits.argmax(1) == labels.numpy()).mean())}


def assert_student_dir(directory: Path) -> None:
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        assert (directory / name).is_file(), f"{directory} lacks {name}"


def run_finetune(*args, expect_rc: int = 0) -> subprocess.CompletedProcess:
    """``python -m apps.finetune args``; assert its exit status."""
    proc = subprocess.run([sys.executable, "-m", "apps.finetune", *map(str, args)], cwd=REPO,
                          env=script_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == expect_rc, proc.stderr[-3000:]
    return proc
