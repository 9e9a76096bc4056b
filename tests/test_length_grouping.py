"""Length-sorted, trimmed evaluation and ``--group_by_length`` training.

* `predict_logits` (sorted by length, each batch trimmed) equals the plain computation on the full
  padded batches in dataset order, for a tiny spiking student and a tiny BERT teacher, also with two
  ranks (threads standing in for torchrun processes).
* A trimmed training batch gives the prediction-KD loss and gradients of the padded one.
* The grouped sampler: each index once per epoch, batches cut from length-sorted megabatches in a
  shuffled order, deterministic per seed/epoch, ``skip`` = the tail.
* CLI: ``--pred_distill --group_by_length`` killed after a checkpoint and resumed with
  ``--continue_train`` ends equal to the uninterrupted run; fine-tuning takes the flag; general
  distillation refuses it.
"""
from __future__ import annotations

import random
import signal
import threading
from typing import List

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler, TensorDataset

from spikingbert.apps.finetune import parse_finetune_args
from spikingbert.cli.flags import parse_general_args, parse_task_args
from spikingbert.core.errors import UsageError
from spikingbert.data import glue
from spikingbert.evaluation.dev import LogitsOnly, predict_logits
from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification
from spikingbert.runtime import Runtime
from spikingbert.training.objectives import PredictionDistillation
from spikingbert.training.sampling import MEGABATCH_BATCHES, ResumableSampler
from spikingbert.transformer.modeling import BertConfig, BertForSequenceClassification
from tests.helpers.crash import SAVE_STEPS, assert_same_run, finish_run, kill_at, start_run, task_argv
from tests.helpers.students import tiny_config
from tests.helpers.world import build_world, run_finetune

CPU = Runtime(device=torch.device("cpu"))
VOCAB = 120


def _mixed_lengths(n: int = 37, seq: int = 48, seed: int = 1, full=(4, 20), longest: int = 0) -> TensorDataset:
    """Examples ``[CLS] ... [SEP]`` of 3..``longest`` (default ``seq``) real tokens, those at ``full`` of
    ``seq``, zero-padded to ``seq``."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, (longest or seq) + 1, (n,), generator=g)
    lengths[list(full)] = seq
    positions = torch.arange(seq)[None]
    mask = (positions < lengths[:, None]).long()
    ids = torch.randint(5, VOCAB, (n, seq), generator=g) * mask
    ids[:, 0] = 2
    segments = ((positions >= lengths[:, None] // 2) & (mask == 1)).long()
    return TensorDataset(ids, mask, segments, torch.randint(0, 2, (n,), generator=g), lengths)


def _padded_logits(model: nn.Module, dataset: TensorDataset, batch_size: int) -> np.ndarray:
    """The plain computation: full padded batches in dataset order."""
    ids, mask, segments = dataset.tensors[:3]
    with torch.no_grad():
        return torch.cat([model(ids[i:i + batch_size], token_type_ids=segments[i:i + batch_size],
                                attention_mask=mask[i:i + batch_size]).logits
                          for i in range(0, len(dataset), batch_size)]).numpy()


def _tiny_models(seed: int):
    torch.manual_seed(seed)
    student = SpikingBertForSequenceClassification(tiny_config(vocab=VOCAB, num_labels=2)).eval()
    teacher = BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=3)).eval()
    return student, teacher


class _WidthRecorder(nn.Module):
    """`LogitsOnly` that also records the width of every batch it sees."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = LogitsOnly(model)
        self.widths: List[int] = []

    def forward(self, input_ids, token_type_ids, attention_mask):
        self.widths.append(input_ids.shape[1])
        return self.inner(input_ids, token_type_ids, attention_mask)


# ------------------------------------------------------------------------------------------ evaluation

@pytest.fixture
def one_thread():
    """One intra-op thread: on a loaded 2-core machine, two threads make these tiny models 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", [0, 1])
def test_sorted_trimmed_evaluation_equals_padded_batches_in_order(seed, one_thread):
    dataset = _mixed_lengths()
    student, teacher = _tiny_models(seed)
    for model in (student, teacher):
        reference = _padded_logits(model, dataset, batch_size=4)
        recorder = _WidthRecorder(model)
        model.train()
        got = predict_logits(recorder, dataset, CPU, batch_size=4)
        assert model.training                                    # the mode is left as it was
        model.eval()
        assert got.shape == reference.shape
        assert np.abs(got - reference).max() <= 1e-5, type(model).__name__
        assert (got.argmax(1) == reference.argmax(1)).all()
        # Longest batches first, and the short ones really cut (the full width is 48).
        assert recorder.widths == sorted(recorder.widths, reverse=True)
        assert recorder.widths[0] == 48 and recorder.widths[-1] < 48
        assert sum(recorder.widths) < 48 * len(recorder.widths) * 0.85


class _ThreadRank(Runtime):
    """A rank of a fake process group whose ranks are threads (all_gather_object over a barrier)."""

    def __init__(self, rank: int, world_size: int, slots: list, barrier: threading.Barrier):
        super().__init__(device=torch.device("cpu"), rank=rank, world_size=world_size)
        self._slots, self._barrier = slots, barrier

    def all_gather_object(self, obj):
        self._slots[self.rank] = obj
        self._barrier.wait()
        gathered = list(self._slots)
        self._barrier.wait()
        return gathered


def test_two_ranks_put_every_logit_back_in_dataset_order(one_thread):
    dataset = _mixed_lengths(n=37)                               # odd: rank 1's share repeats one example
    _, teacher = _tiny_models(0)
    reference = _padded_logits(teacher, dataset, batch_size=3)
    slots, barrier, results = [None, None], threading.Barrier(2), [None, None]

    def rank_main(rank: int):
        results[rank] = predict_logits(LogitsOnly(teacher), dataset, _ThreadRank(rank, 2, slots, barrier), 3)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for got in results:
        assert np.abs(got - reference).max() <= 1e-5


def test_trim_batch_cuts_padding_columns_only():
    ids = torch.tensor([[2, 7, 3, 0, 0, 0], [2, 5, 6, 8, 3, 0]])
    mask = (ids > 0).long()
    labels, lengths = torch.tensor([1, 0]), mask.sum(1)
    out = glue.trim_batch((ids, mask, ids * 0 + 1, labels, lengths))
    assert [t.shape for t in out[:3]] == [(2, 5)] * 3
    assert torch.equal(out[0], ids[:, :5]) and out[3] is labels and out[4] is lengths
    assert glue.trim_batch((ids, mask, mask), multiple_of=4)[0].shape == (2, 6)   # rounded up, capped at S
    assert glue.trim_batch((ids[:1], mask[:1], mask[:1]), multiple_of=2)[0].shape == (1, 4)
    assert torch.equal(glue.example_lengths(TensorDataset(ids, mask, mask)), torch.tensor([3, 5]))


def test_trimmed_training_batch_gives_the_same_loss_and_gradients(one_thread):
    """What makes trimming right for prediction KD (float64, so no last-bit spike flip can intervene)."""
    dataset = _mixed_lengths(n=6, seq=32, full=(), longest=20)
    batch = tuple(dataset.tensors)
    trimmed = glue.trim_batch(batch)
    assert trimmed[0].shape[1] <= 20
    torch.manual_seed(3)
    student = SpikingBertForSequenceClassification(tiny_config(vocab=VOCAB, num_labels=2, t_conv=6)).double()
    objective = PredictionDistillation(student, "classification")
    teacher_logits = torch.randn(6, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    results = []
    for b in (batch, trimmed):
        student.zero_grad()
        loss = objective(b, teacher_logits)["loss"]
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}))
    (loss_full, grads_full), (loss_trim, grads_trim) = results
    assert loss_trim == pytest.approx(loss_full, abs=1e-10)
    assert grads_full.keys() == grads_trim.keys() and len(grads_full) > 10
    for name in grads_full:
        assert torch.allclose(grads_full[name], grads_trim[name], atol=1e-9, rtol=0), name
    assert any(g.abs().max() > 1e-6 for g in grads_full.values())


# ------------------------------------------------------------------------------------------ sampler

def _batches(order: List[int], size: int) -> List[List[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


@pytest.mark.parametrize("world_size", [1, 2])
def test_grouped_sampler_batches_come_from_sorted_megabatches(world_size):
    n, batch_size, seed, epoch = 1003, 4, 7, 2
    lengths = torch.randint(3, 49, (n,), generator=torch.Generator().manual_seed(0))
    shares = []
    for rank in range(world_size):
        order = list(ResumableSampler(n, epoch, seed, rank, world_size, lengths=lengths, batch_size=batch_size))
        base = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        base.set_epoch(epoch)
        base = list(base)                                        # the ungrouped share, as before
        assert sorted(order) == sorted(base)
        shares += order
        # The expected batches, cut from each megabatch sorted longest first.
        size = MEGABATCH_BATCHES * batch_size
        expected = []
        for start in range(0, len(base), size):
            mega = sorted(base[start:start + size], key=lambda i: (-int(lengths[i]), base.index(i)))
            expected += _batches(mega, batch_size)
        batches = _batches(order, batch_size)
        assert sorted(map(tuple, batches)) == sorted(map(tuple, expected))
        assert batches[-1] == expected[-1] and len(batches[-1]) < batch_size   # the short batch stays last
        spreads = [int(lengths[b].max() - lengths[b].min()) for b in batches]
        assert np.mean(spreads) <= 1.0                           # 200 lengths of 46 values: near-equal batches
        longest = [int(lengths[b].max()) for b in batches[:-1]]
        assert longest != sorted(longest, reverse=True)          # shuffled: long and short batches mix
    if world_size == 1:
        assert sorted(shares) == list(range(n))                  # every index exactly once


def test_grouped_sampler_is_deterministic_and_skip_is_the_tail():
    n, batch_size = 230, 3
    lengths = torch.randint(3, 49, (n,), generator=torch.Generator().manual_seed(1))
    sampler = lambda seed, epoch, skip=0: list(ResumableSampler(n, epoch, seed, skip=skip, lengths=lengths,
                                                                batch_size=batch_size))
    full = sampler(5, 1)
    assert sampler(5, 1) == full
    assert sampler(5, 2) != full and sampler(6, 1) != full
    for k in (1, 17, 50, 76, 77):
        skipped = ResumableSampler(n, 1, 5, skip=k * batch_size, lengths=lengths, batch_size=batch_size)
        assert list(skipped) == full[k * batch_size:] and len(skipped) == max(n - k * batch_size, 0)


# ------------------------------------------------------------------------------------------ CLI

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("length_world"))


@pytest.mark.system
@pytest.mark.slow
def test_grouped_pred_distill_killed_and_resumed_equals_uninterrupted(world, tmp_path):
    argv = lambda out, *more: task_argv(world, out, "--group_by_length", *more)
    reference = tmp_path / "reference"
    finish_run("spiking_bert_task_distill", argv(reference), tmp_path / "reference.log")
    log = (reference / "train.log").read_text()
    assert "--group_by_length: batches of similar length" in log and "each trimmed to its longest" in log

    out = tmp_path / "killed"
    process = start_run("spiking_bert_task_distill", argv(out), tmp_path / "killed.log")
    moment = kill_at(f"after-{SAVE_STEPS}", process, out, random.Random(0))   # mid-epoch (5 steps per epoch)
    process.join(60)
    assert process.exitcode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    finish_run("spiking_bert_task_distill", argv(out, "--continue_train"), tmp_path / "resumed.log")
    assert "resumed from" in (out / "train.log").read_text()
    assert_same_run(reference, out, f"grouped run killed {moment}")


@pytest.mark.system
@pytest.mark.slow
def test_finetune_takes_group_by_length(world, tmp_path):
    out = tmp_path / "teacher"
    proc = run_finetune("--task_name", "SST-2", "--data_dir", world.sst2, "--bert_model", world.teacher_general,
                        "--output_dir", out, "--do_lower_case", "--max_seq_length", "24", "--train_batch_size", "8",
                        "--max_steps", "3", "--no_cuda", "--group_by_length")
    assert (out / "model.safetensors").is_file() and (out / "eval_results.json").is_file(), proc.stderr[-2000:]
    assert "each trimmed to its longest example" in (out / "train.log").read_text()


def test_flag_only_where_it_is_defined(world, tmp_path):
    common = ["--spiking_student_model", str(world.student_config), "--output_dir", str(tmp_path / "o"),
              "--teacher_model", str(world.teacher_general)]
    with pytest.raises(UsageError, match="--group_by_length"):
        parse_general_args(["--pregenerated_data", str(tmp_path), *common, "--group_by_length"])
    assert parse_task_args(["--task_name", "SST-2", "--data_dir", str(world.sst2), *common,
                            "--group_by_length"]).group_by_length
    assert not parse_task_args(["--task_name", "SST-2", "--data_dir", str(world.sst2), *common]).group_by_length
    assert parse_finetune_args(["--task_name", "SST-2", "--data_dir", str(world.sst2), "--bert_model",
                                str(world.teacher_general), "--output_dir", str(tmp_path / "f"),
                                "--group_by_length"]).group_by_length
