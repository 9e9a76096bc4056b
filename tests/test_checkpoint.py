"""Checkpoint directories, training state, RNG state (spikingbert/training/checkpoint.py) and the output-dir rules
(spikingbert/run/output.py)."""
import json
import logging
import random

import numpy as np
import pytest
import torch
from torch import nn

from spikingbert.core.errors import UsageError, UserError
from spikingbert.core.files import atomic_write_json
from spikingbert.run.output import OutputDir
from spikingbert.runtime import Runtime, get_rng_state, set_rng_state
from spikingbert.training.checkpoint import (
    TRAINING_STATE_NAME,
    install_model_files,
    latest_checkpoint,
    list_checkpoints,
    load_optimizer_state,
    load_training_state,
    optimizer_state_to_save,
    pack_rows,
    save_checkpoint,
    unpack_rows,
)
from spikingbert.training.sampling import ResumableSampler
from spikingbert.training.state import MetricsLog
from spikingbert.transformer.optimization import BertAdam


def _writer(tag: str):
    """A stand-in for ``student.save_pretrained``: the files of a complete student dir."""
    def write(directory):
        (directory / "config.json").write_text(json.dumps({"tag": tag}))
        (directory / "model.safetensors").write_bytes(tag.encode())
        (directory / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return write


def _no_temporaries(directory) -> bool:
    return not [p for p in directory.rglob("*") if p.name.startswith(".tmp-")]


def test_atomic_write_json_replaces_whole_file(tmp_path):
    path = tmp_path / "args.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"b": [1, 2]})
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["args.json"]


def test_save_checkpoint_writes_complete_dir_and_rotates(tmp_path):
    for step in (2, 4, 6):
        path = save_checkpoint(tmp_path, step, _writer(f"s{step}"), {"global_step": step}, save_total_limit=2)
        assert path == tmp_path / f"checkpoint-{step}"
        assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", TRAINING_STATE_NAME,
                                                          "vocab.txt"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    assert load_training_state(latest_checkpoint(tmp_path)) == {"global_step": 6}
    assert _no_temporaries(tmp_path)
    # Re-saving a step replaces the directory as a whole.
    save_checkpoint(tmp_path, 6, _writer("again"), {"global_step": 6, "x": 1})
    assert json.loads((tmp_path / "checkpoint-6" / "config.json").read_text()) == {"tag": "again"}
    assert _no_temporaries(tmp_path)


def test_failed_checkpoint_write_leaves_nothing_and_incomplete_dirs_are_ignored(tmp_path):
    save_checkpoint(tmp_path, 3, _writer("ok"), {"global_step": 3})

    def broken(directory):
        (directory / "config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 5, broken, {"global_step": 5})
    assert not (tmp_path / "checkpoint-5").exists() and _no_temporaries(tmp_path)
    # A directory without training state (e.g. copied by hand) is not a resumable checkpoint.
    (tmp_path / "checkpoint-9").mkdir()
    _writer("partial")(tmp_path / "checkpoint-9")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-3"


def test_install_model_files_puts_student_into_output_dir(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    install_model_files(tmp_path, _writer("final"))
    assert json.loads((tmp_path / "config.json").read_text()) == {"tag": "final"}
    assert (tmp_path / "model.safetensors").read_bytes() == b"final"
    assert (tmp_path / "metrics.jsonl").exists() and _no_temporaries(tmp_path)


def _prepare(out, continue_train: bool, overwrite: bool):
    """`OutputDir.prepare` of a one-process run, the directory released again."""
    with OutputDir(out, continue_train, overwrite) as output:
        return output.prepare(Runtime(device=torch.device("cpu")), debug=False)


def test_prepare_output_dir_rules(tmp_path):
    out = tmp_path / "run"
    assert _prepare(out, continue_train=False, overwrite=False) is None    # created
    assert out.is_dir()
    save_checkpoint(out, 4, _writer("a"), {"global_step": 4})
    (out / "train.log").write_text("old")
    (out / "notes.txt").write_text("mine")
    (out / ".tmp-checkpoint-8-abc").mkdir()                                              # killed mid-save

    with pytest.raises(UsageError) as err:
        _prepare(out, continue_train=False, overwrite=False)
    assert err.value.exit_code == 2
    assert "--continue_train" in str(err.value) and "--overwrite_output_dir" in str(err.value)

    assert _prepare(out, continue_train=True, overwrite=False) == out / "checkpoint-4"
    assert _no_temporaries(out)

    assert _prepare(out, continue_train=False, overwrite=True) is None
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "train.log"]   # the user's own file stays
    assert "old" not in (out / "train.log").read_text()                          # the new run's log


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()                      # leaves a cached gaussian in numpy's state
    torch.save(get_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected


class _Schedule:
    """An object in a param group, as some optimizers keep (not loadable with weights_only)."""


def _train(model, optimizer, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, generator=gen)
        loss = (model(x) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_optimizer_state_resumes_bertadam_schedule_exactly(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    twin = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    make = lambda m: BertAdam(m.parameters(), lr=0.05, warmup=0.2, t_total=10, schedule="warmup_linear")
    opt = make(model)
    opt.param_groups[0]["hook"] = _Schedule()
    _train(model, opt, 4, seed=1)
    torch.save(optimizer_state_to_save(opt), tmp_path / "opt.pt")

    twin.load_state_dict(model.state_dict())
    twin_opt = make(twin)
    twin_opt.param_groups[0]["hook"] = _Schedule()
    load_optimizer_state(twin_opt, torch.load(tmp_path / "opt.pt", weights_only=True))
    assert isinstance(twin_opt.param_groups[0]["hook"], _Schedule)   # non-plain values come from the live one
    assert twin_opt.get_lr() == opt.get_lr()

    _train(model, opt, 3, seed=2)
    _train(twin, twin_opt, 3, seed=2)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_pack_rows_keeps_every_bit_and_only_packs_mostly_zero_tensors():
    t = torch.zeros(10, 3)
    t[2, 1], t[5, 0], t[7, 2] = 1.5, -0.0, float("nan")             # -0.0 and NaN rows are not zero rows
    packed = pack_rows(t)
    assert isinstance(packed, dict) and packed["rows"].tolist() == [2, 5, 7] and packed["packed_rows"] == [10, 3]
    back = unpack_rows(packed)
    assert torch.equal(back.view(torch.int32), t.view(torch.int32))  # bit for bit, -0.0 and NaN included
    half = torch.zeros(4, 2)
    half[:2] = 1.0
    assert pack_rows(half) is half and unpack_rows(half) is half      # half the rows used: kept as it is
    for value in (torch.zeros(5), 3, "x", torch.zeros(1, 4)):
        assert pack_rows(value) is value


def test_embedding_moments_of_unseen_tokens_are_left_out_and_resume_exactly(tmp_path):
    """A model with a 200-row embedding trained on token ids below 10: the moments keep the rows of the ids seen,
    the file shrinks, and
    training continued from the reloaded state equals training continued from the live one."""
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(200, 16), nn.Linear(16, 1))

    def train(m, opt, steps, seed):
        g, seen = torch.Generator().manual_seed(seed), set()
        for _ in range(steps):
            ids = torch.randint(0, 10, (8,), generator=g)
            seen.update(ids.tolist())
            loss = (m(ids) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return seen

    make = lambda m: BertAdam(m.parameters(), lr=0.05, warmup=0.2, t_total=10, schedule="warmup_linear")
    live, twin = model(), model()
    opt = make(live)
    seen = train(live, opt, 4, seed=1)
    saved = optimizer_state_to_save(opt)
    embedding_state = saved["state"][0]
    assert {name: value["rows"].tolist() for name, value in embedding_state.items() if isinstance(value, dict)} == \
        {"next_m": sorted(seen), "next_v": sorted(seen)}
    torch.save(saved, tmp_path / "packed.pt")
    torch.save(opt.state_dict()["state"], tmp_path / "full.pt")
    assert (tmp_path / "packed.pt").stat().st_size < 0.2 * (tmp_path / "full.pt").stat().st_size
    twin.load_state_dict(live.state_dict())
    twin_opt = make(twin)
    load_optimizer_state(twin_opt, torch.load(tmp_path / "packed.pt", weights_only=True))
    train(live, opt, 3, seed=2)
    train(twin, twin_opt, 3, seed=2)
    for a, b in zip(live.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_load_training_state_reports_corrupt_file(tmp_path):
    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    (ckpt / TRAINING_STATE_NAME).write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="checkpoint-1"):
        load_training_state(ckpt)


def test_resumable_sampler_order_shards_and_skip():
    full = list(ResumableSampler(11, epoch=0, seed=5))
    assert sorted(full) == list(range(11))
    assert full == list(ResumableSampler(11, epoch=0, seed=5))              # reproducible
    assert full != list(ResumableSampler(11, epoch=1, seed=5))              # reshuffled per epoch
    assert list(ResumableSampler(11, epoch=0, seed=5, skip=4)) == full[4:]
    shards = [list(ResumableSampler(11, epoch=0, seed=5, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6                           # padded to equal length
    assert set(shards[0]) | set(shards[1]) == set(range(11))
    # The two ranks together see the single-process order, interleaved.
    assert [shards[i % 2][i // 2] for i in range(11)] == full


def test_metrics_log_drops_records_past_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in (2, 4, 6):
        log.append({"step": step, "loss": float(step)})
    resumed = MetricsLog(path, keep_until_step=4)
    resumed.append({"step": 6, "loss": 60.0})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"step": 2, "loss": 2.0}, {"step": 4, "loss": 4.0}, {"step": 6, "loss": 60.0}]


def test_metrics_log_resumes_past_a_line_cut_short(tmp_path, caplog):
    """A metrics.jsonl whose last record was cut short (a crash while an older version appended, a full disk, an edit)
    resumes with the whole records before it; each line that is not a record is named in a warning."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "loss": 2.0}\n\n[4]\n{"step": 4, "loss": 4.0}\n{"step": 6, "lo')
    with caplog.at_level(logging.WARNING):
        resumed = MetricsLog(path, keep_until_step=6)
    resumed.append({"step": 8, "loss": 8.0})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"step": 2, "loss": 2.0}, {"step": 4, "loss": 4.0}, {"step": 8, "loss": 8.0}]
    skipped = [f"{path}, line {n}: not a JSON object (cut short?); skipped" for n in (3, 5)]
    assert [m for m in caplog.messages if "skipped" in m] == skipped
