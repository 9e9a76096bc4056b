"""A tiny world for CLI runs whose losses are recomputed independently (tests/helpers/float64_reference.py).

On top of `tests.helpers.world.build_world` (random tiny BERT teachers, 4 layers, H 32, and a
whole-word vocabulary) it adds what an independent recomputation needs:

* saved students without dropout (so a training forward is deterministic): a general-KD student
  (``SpikingBertForDistillation``) and a classification student, 2 layers, H 16, ``fit_dense`` to the
  teachers' width 32;
* hand-written data: ``epoch_0.json`` of pregenerated instances, SST-2 and STS-B TSVs whose words are
  all whole vocabulary entries, so tokenization is a split on spaces;
* `encode`: the model inputs of those texts, written from the data formats (``[CLS] a [SEP] (b [SEP])``,
  segment ids, padding), and `numpy_*` helpers that compute the objectives in float64.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from spikingbert.models.spiking_bert import (
    SpikingBertConfig,
    SpikingBertForDistillation,
    SpikingBertForSequenceClassification,
)
from tests.helpers import float64_reference as ref
from tests.helpers.world import STSB_HEADER, TEACHER, World, build_world, random_sentence

STUDENT = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
               max_position_embeddings=64, initializer_range=0.5, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0, t_conv=4, vth=0.95, fit_size=TEACHER["hidden_size"])
LAYERS, HEADS = STUDENT["num_hidden_layers"], STUDENT["num_attention_heads"]
T_LAYERS, T_HEADS = TEACHER["num_hidden_layers"], TEACHER["num_attention_heads"]
STRIDE = T_LAYERS // LAYERS
SEQ = 16                      # --max_seq_length of the task runs and max_seq_len of the pregenerated data
# Not 1: an attention current is exactly 1 (up to rounding) where every attended value spike is 1, and a
# membrane exactly at the threshold fires or not by the last bit of rounding, in float32 as in float64.
VTH = STUDENT["vth"]


@dataclass
class KDWorld:
    base: World
    vocab: Dict[str, int]
    student_general: Path       # saved SpikingBertForDistillation (+ vocab.txt)
    student_cls: Path           # saved SpikingBertForSequenceClassification, 2 labels
    student_reg: Path           # saved SpikingBertForSequenceClassification, 1 output
    pregenerated: Path
    sst2: Path
    stsb: Path
    sst2_train: List[Tuple[str, int]]
    stsb_train: List[Tuple[str, str, float]]
    pregenerated_instances: List[dict]


def _save_student(cls, path: Path, vocab_file: Path, vocab_size: int, seed: int, **extra) -> Path:
    torch.manual_seed(seed)
    cls(SpikingBertConfig(vocab_size=vocab_size, **{**STUDENT, **extra})).save_pretrained(path, vocab_file=vocab_file)
    return path


def build_kd_world(root: Path) -> KDWorld:
    base = build_world(root / "base")
    tokens = base.vocab.read_text().split("\n")
    vocab = {token: i for i, token in enumerate(t for t in tokens if t)}
    size = len(vocab)
    rng = random.Random(7)

    general = _save_student(SpikingBertForDistillation, root / "student_general", base.vocab, size, 1)
    cls = _save_student(SpikingBertForSequenceClassification, root / "student_cls", base.vocab, size, 2, num_labels=2)
    reg = _save_student(SpikingBertForSequenceClassification, root / "student_reg", base.vocab, size, 3, num_labels=1)

    pregenerated = root / "pregenerated"
    pregenerated.mkdir()
    instances = []
    for i in range(10):
        a, b = random_sentence(rng, 2, 5).split(), random_sentence(rng, 2, 6).split()
        toks = ["[CLS]", *a, "[SEP]", *b, "[SEP]"]
        instances.append({"tokens": toks, "segment_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
                          "is_random_next": bool(i % 2), "masked_lm_positions": [], "masked_lm_labels": []})
    (pregenerated / "epoch_0.json").write_text("".join(json.dumps(x) + "\n" for x in instances))
    (pregenerated / "epoch_0_metrics.json").write_text(json.dumps({"num_training_examples": len(instances),
                                                                   "max_seq_len": SEQ}))

    sst2, stsb = root / "SST-2", root / "STS-B"
    sst2.mkdir()
    stsb.mkdir()
    sst2_train = [(random_sentence(rng, 3, 10), rng.randint(0, 1)) for _ in range(12)]
    (sst2 / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in sst2_train))
    dev = [(random_sentence(rng, 3, 10), rng.randint(0, 1)) for _ in range(6)]
    (sst2 / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in dev))
    stsb_train = [(random_sentence(rng, 2, 5), random_sentence(rng, 2, 5), round(rng.uniform(0, 5), 3))
                  for _ in range(8)]
    for split, rows in (("train", stsb_train), ("dev", stsb_train[:4])):
        (stsb / f"{split}.tsv").write_text(STSB_HEADER + "".join(
            f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{score}\n" for i, (a, b, score) in enumerate(rows)))
    return KDWorld(base, vocab, general, cls, reg, pregenerated, sst2, stsb, sst2_train, stsb_train, instances)


# ------------------------------------------------------------------------------------------ inputs

def encode(vocab: Dict[str, int], texts_a: Sequence[str], texts_b: Optional[Sequence[str]] = None,
           seq: int = SEQ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, segment_ids, input_mask), each (N, seq): ``[CLS] a [SEP]`` (+ ``b [SEP]``), zero padded."""
    n = len(texts_a)
    ids, types, mask = (np.zeros((n, seq), np.int64) for _ in range(3))
    for i, a in enumerate(texts_a):
        tokens = ["[CLS]", *a.split(), "[SEP]"]
        segments = [0] * len(tokens)
        if texts_b is not None:
            b = texts_b[i].split() + ["[SEP]"]
            tokens += b
            segments += [1] * len(b)
        assert len(tokens) <= seq, "keep the test sentences short enough not to be truncated"
        ids[i, :len(tokens)] = [vocab[t] for t in tokens]
        types[i, :len(tokens)] = segments
        mask[i, :len(tokens)] = 1
    return ids, types, mask


def encode_instances(vocab: Dict[str, int], instances: Sequence[dict], seq: int = SEQ):
    n = len(instances)
    ids, types, mask = (np.zeros((n, seq), np.int64) for _ in range(3))
    for i, inst in enumerate(instances):
        k = len(inst["tokens"])
        ids[i, :k] = [vocab[t] for t in inst["tokens"]]
        types[i, :k] = inst["segment_ids"]
        mask[i, :k] = 1
    return ids, types, mask


# ------------------------------------------------------------------------------------------ objectives

def numpy_intermediate_loss(student_dir: Path, teacher_dir: Path, inputs, t_conv: int, vth: float,
                            leak: float = 1.0) -> Dict[str, float]:
    """``att_loss + rep_loss`` of a training forward: rates simulated, scores from the equivalent (ann) network."""
    ws, wt = ref.load_weights(student_dir), ref.load_weights(teacher_dir)
    hidden, scores, _ = ref.teacher_forward(wt, *inputs, T_LAYERS, T_HEADS)
    rates = ref.output_rates(ref.student_simulate(ws, *inputs, LAYERS, HEADS, t_conv, vth, leak)[0], LAYERS)
    _, student_scores = ref.student_equivalent(ws, *inputs, LAYERS, HEADS, vth)
    att = ref.att_loss(student_scores, scores, STRIDE)
    rep = ref.rep_loss(ref.fit_dense(ws, rates), hidden, STRIDE)
    return {"loss": att + rep, "att_loss": att, "rep_loss": rep}


def numpy_student_logits(student_dir: Path, inputs, t_conv: int, vth: float, leak: float = 1.0) -> np.ndarray:
    ws = ref.load_weights(student_dir)
    rates, _ = ref.student_simulate(ws, *inputs, LAYERS, HEADS, t_conv, vth, leak)
    return ref.student_logits(ws, rates[f"{LAYERS - 1}.O2"])


def numpy_teacher_logits(teacher_dir: Path, inputs) -> np.ndarray:
    return ref.teacher_forward(ref.load_weights(teacher_dir), *inputs, T_LAYERS, T_HEADS)[2]


def first_record(output_dir: Path) -> dict:
    """The first loss record of ``metrics.jsonl``."""
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return next(r for r in map(json.loads, lines) if "loss" in r)


def task_argv(kd: KDWorld, out: Path, *extra, student=None, teacher=None) -> List:
    """The task script's command line for a short run on the world's SST-2 data into ``out``."""
    return ["--task_name", "SST-2", "--data_dir", kd.sst2, "--teacher_model", teacher or kd.base.teacher_sst2,
            "--spiking_student_model", student or kd.student_cls, "--output_dir", out, "--do_lower_case",
            "--max_seq_length", SEQ, "--train_batch_size", "2", "--logging_steps", "1", "--seed", "3", *extra]
