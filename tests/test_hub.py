"""Hugging Face Hub model names wherever a model location is taken (`core.hub` through `core.remote.cached_path`),
against a local server of the Hub's download routes (tests/helpers/hub.py): what is downloaded, the cache read
without the network, the loaders on the Hub's key layouts, the command lines, and the one-line errors."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spikingbert.apps.finetune import parse_finetune_args
from spikingbert.cli.flags import parse_general_args
from spikingbert.core.errors import ModelError
from spikingbert.core.hub import HubReference, hub_reference
from spikingbert.core.remote import cached_path, is_remote
from spikingbert.models.spiking_bert import SpikingBertConfig, SpikingBertForSequenceClassification
from spikingbert.transformer.modeling import BertForPreTraining, BertForSequenceClassification
from tests.helpers import cli_runner
from tests.helpers.hub import (
    OTHER_FILES,
    FakeHub,
    bert_base_files,
    directory_files,
    fine_tuned_bert_files,
    hub_env,
    resolve_in_child,
)
from tests.helpers.world import STUDENT, build_world

BERT_BASE, FINE_TUNED, STUDENT_REPO, GATED = ("tiny-org/bert-base-uncased", "tiny-org/bert-sst2",
                                              "tiny-org/spikingbert-sst2", "tiny-org/gated-bert")
OTHER_VOCAB = "tiny-org/spikingbert-other-vocab"
TEXTS = ["w1 w2 good movie", "awful plot w7 , w9"]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """The tiny world and the Hub repositories made of it: name -> files."""
    root = tmp_path_factory.mktemp("hub")
    world = build_world(root / "world")
    vocab_size = len(world.vocab.read_text().split())
    torch.manual_seed(5)
    config = SpikingBertConfig(vocab_size=vocab_size, num_labels=2, id2label={"0": "negative", "1": "positive"},
                               do_lower_case=True, max_seq_length=16, **STUDENT)
    student = SpikingBertForSequenceClassification(config).save_pretrained(root / "student", vocab_file=world.vocab)
    files = {BERT_BASE: bert_base_files(world.teacher_general, root), FINE_TUNED: fine_tuned_bert_files(
        world.teacher_sst2), STUDENT_REPO: directory_files(student), "tiny-org/readme-only": {"README.md": b"#"},
        GATED: directory_files(world.teacher_sst2)}
    tokens = world.vocab.read_text().split("\n")
    tokens[-2], tokens[-3] = tokens[-3], tokens[-2]
    files[OTHER_VOCAB] = {**files[STUDENT_REPO], "vocab.txt": "\n".join(tokens).encode()}
    return world, student, files


@pytest.fixture()
def hub(repos):
    server = FakeHub()
    for name, files in repos[2].items():
        server.add(name, files, gated=name == GATED)
    yield server
    server.stop()


def _resolve(env, *locations):
    return [cli_runner.call(resolve_in_child, env, location) for location in locations]


def _same_weights(model, directory: Path) -> None:
    want = load_file(str(directory / "model.safetensors"))
    got = model.state_dict()
    assert set(want) <= set(got)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_names_that_read_as_hub_models(tmp_path, monkeypatch):
    assert hub_reference("bert-base-uncased") == HubReference("bert-base-uncased", "main")
    assert hub_reference("textattack/bert-base-uncased-SST-2@v1.0") == HubReference(
        "textattack/bert-base-uncased-SST-2", "v1.0")
    assert str(hub_reference("org/m@refs/pr/1")) == "org/m@refs/pr/1" and str(hub_reference("org/m@main")) == "org/m"
    for path in ("runs/demo/pred/", "runs/demo/pred", "./bert", "/abs/bert", "~/bert", "student/config.json",
                 "vocab.txt", "weights.bin", "a--b", "org/a..b", "bert@", "-bert", "bert_", "org/m@x/", "", "a b"):
        assert hub_reference(path) is None, path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bert-base-uncased").mkdir()
    assert not is_remote("bert-base-uncased")                  # a local path always wins
    assert is_remote("google-bert/bert-base-uncased") and is_remote("s3://b/k") and is_remote("https://h/m")
    assert not is_remote(tmp_path / "missing")                  # an absolute path is never a Hub name


def test_a_hub_name_without_huggingface_hub_installed_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)        # its import fails as where it is not installed
    with pytest.raises(ModelError, match="huggingface_hub is not installed: pip install -r requirements.txt"):
        cached_path("org/not-here")


def test_flags_take_hub_names_without_looking_for_a_local_directory(tmp_path):
    args = parse_finetune_args(["--task_name", "SST-2", "--data_dir", str(tmp_path), "--bert_model",
                                "bert-base-uncased", "--output_dir", str(tmp_path / "out")])
    assert args.bert_model == "bert-base-uncased"
    (tmp_path / "data").mkdir()
    args = parse_general_args(["--pregenerated_data", str(tmp_path / "data"), "--teacher_model", "org/bert@v2",
                               "--spiking_student_model", "org/student", "--output_dir", str(tmp_path / "out")])
    assert (args.teacher_model, str(args.spiking_student_model)) == ("org/bert@v2", "org/student")


@pytest.mark.system
@pytest.mark.slow
def test_downloads_what_a_model_directory_needs_then_reads_the_cache_without_network(hub, repos, tmp_path):
    world = repos[0]
    env = hub_env(hub.url, tmp_path / "hf")
    (_, base), (_, tuned) = _resolve(env, BERT_BASE, FINE_TUNED)
    base, tuned = Path(base), Path(tuned)
    assert sorted(p.name for p in base.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    assert sorted(p.name for p in tuned.iterdir()) == ["config.json", "pytorch_model.bin", "vocab.txt"]
    assert sorted(hub.fetched(BERT_BASE)) == ["config.json", "model.safetensors", "vocab.txt"]
    assert not set(hub.fetched(FINE_TUNED)) & {"model.safetensors", *OTHER_FILES}
    assert base.parent.name == "snapshots" and tmp_path / "hf" in base.parents
    # the Hub's key layouts (bert. prefix, gamma/beta, pre-training heads, a position_ids buffer) load as the originals
    _same_weights(BertForPreTraining.from_pretrained(base), world.teacher_general)
    _same_weights(BertForSequenceClassification.from_pretrained(tuned), world.teacher_sst2)

    asked = len(hub.requests)
    assert _resolve(env, BERT_BASE, FINE_TUNED) == [("path", str(base)), ("path", str(tuned))]
    assert len(hub.requests) == asked                          # the cache first: not one request
    hub.stop()
    offline = hub_env(hub.url, tmp_path / "hf", offline=True)
    assert _resolve(offline, BERT_BASE, f"{FINE_TUNED}@main") == [("path", str(base)), ("path", str(tuned))]


@pytest.mark.system
@pytest.mark.slow
def test_what_cannot_be_had_is_one_line_saying_what_to_do(hub, tmp_path):
    env = hub_env(hub.url, tmp_path / "hf")
    unknown, gated, revision, no_config = _resolve(env, "tiny-org/no-such-model", GATED, f"{FINE_TUNED}@v9",
                                                   "tiny-org/readme-only")
    assert unknown[0] == "Exit2" and "has no model of that name" in unknown[1] and hub.url in unknown[1]
    assert gated[0] == "Exit1" and "is a gated model" in gated[1] and "HF_TOKEN" in gated[1]
    assert revision[0] == "Exit2" and "has no revision 'v9'" in revision[1]
    assert no_config[0] == "Exit2" and "has no config.json" in no_config[1]
    [offline] = _resolve(hub_env(hub.url, tmp_path / "hf", offline=True), FINE_TUNED)
    assert offline[0] == "Exit1" and "HF_HUB_OFFLINE is set" in offline[1]
    assert f"hf download {FINE_TUNED} --include config.json vocab.txt model.safetensors pytorch_model.bin" in offline[1]
    hub.stop()
    [unreachable] = _resolve(env, f"{FINE_TUNED}@v2")
    assert unreachable[0] == "Exit1" and "could not be reached" in unreachable[1]
    assert "hf download tiny-org/bert-sst2 --revision v2" in unreachable[1]
    for _, message in (unknown, gated, revision, no_config, offline, unreachable):
        assert "\n" not in message and "Traceback" not in message


@pytest.mark.system
@pytest.mark.slow
def test_stages_and_predict_take_hub_names(hub, repos, tmp_path):
    world, student, _ = repos
    env = hub_env(hub.url, tmp_path / "hf")
    out = tmp_path / "pred"
    stage = lambda student_name, out: ["--pred_distill", "--task_name", "SST-2", "--data_dir", world.sst2,
                                       "--teacher_model", FINE_TUNED, "--spiking_student_model", student_name,
                                       "--output_dir", out, "--do_lower_case", "--max_seq_length", "16",
                                       "--train_batch_size", "8", "--max_steps", "1", "--save_steps", "0"]
    refused = cli_runner.run(cli_runner.TASK, stage(OTHER_VOCAB, tmp_path / "refused"), expect=2, env=env)
    assert "differ from line" in refused.error_line()          # the checks of a local student apply as they are
    cli_runner.run(cli_runner.TASK, stage(STUDENT_REPO, out), env=env)
    assert json.loads((out / "teacher_results.json").read_text())["teacher"] == FINE_TUNED
    assert json.loads((out / "args.json").read_text())["spiking_student_model"] == STUDENT_REPO
    cli_runner.run(cli_runner.PREPROCESS, ["--train_corpus", world.corpus, "--bert_model", BERT_BASE,
                                           "--do_lower_case", "--epochs_to_generate", "1", "--max_seq_len", "16",
                                           "--output_dir", tmp_path / "pregenerated"], env=env)
    assert (tmp_path / "pregenerated" / "epoch_0.json").is_file()

    texts = [arg for text in TEXTS for arg in ("--text", text)]
    local = cli_runner.run("apps.predict", ["--model", student, *texts, "--no_cuda"]).output
    want = [line for line in local.splitlines() if line.startswith(("negative", "positive"))]
    assert len(want) == 2
    hub.stop()                                                  # the student was downloaded by the stage above
    offline = hub_env(hub.url, tmp_path / "hf", offline=True)
    got = cli_runner.run_python("-m apps.predict", ["--model", STUDENT_REPO, *texts, "--no_cuda"], env=offline)
    assert [line for line in got.output.splitlines() if line.startswith(("negative", "positive"))] == want
    missing = cli_runner.run("apps.predict", ["--model", "tiny-org/not-cached", *texts], expect=1, env=offline)
    assert missing.error_line().startswith("error: --model tiny-org/not-cached: tiny-org/not-cached is no local path")
