"""Reliability III: what a hostile or careless user does to the newest surfaces (predict, model directories, output
directories, the compiled kernels), through the command line in a child process where the behaviour is a command's:
each class ends in its exit status and one ``error:`` line, with no traceback and nothing written or replaced."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from spikingbert.cli.edge import run_cli
from tests.helpers import cli_runner
from tests.helpers.kd_world import SEQ, KDWorld, build_kd_world, task_argv
from tests.helpers.students import tiny_config
from tests.helpers.world import REPO, read_jsonl, script_env

pytestmark = pytest.mark.system

PREDICT = "apps.predict"


@pytest.fixture(scope="module")
def kd(tmp_path_factory) -> KDWorld:
    return build_kd_world(tmp_path_factory.mktemp("hostile_world"))


def _fails(script: str, argv, status: int, *fragments: str) -> str:
    line = cli_runner.run(script, argv, expect=status).error_line()
    for fragment in fragments:
        assert fragment in line, line
    return line


def _tree(directory: Path):
    return {p.relative_to(directory): (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(directory.rglob("*"))}


def _predictor(kd: KDWorld, root: Path, **recorded) -> Path:
    """A copy of the world's classification student that records ``recorded`` in its config.json."""
    directory = root / f"predictor-{len(list(root.glob('predictor-*')))}"
    shutil.copytree(kd.student_cls, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "do_lower_case": True, "max_seq_length": SEQ,
                                                       "training_stage": "prediction", **recorded}))
    return directory


# ----------------------------------------------------------------------------------- security and data loss

@pytest.mark.parametrize("kind", ["link", "directory"])
def test_a_planted_lock_is_refused_and_what_it_points_to_is_untouched(kd, tmp_path, kind):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    if kind == "link":
        (out / ".lock").symlink_to(precious)
    else:
        (out / ".lock").mkdir()
    runs = [(cli_runner.TASK, task_argv(kd, out, "--max_steps", "1")),
            (cli_runner.DOWNLOAD, ["--data_dir", out, "--tasks", "SST", "--mirror", tmp_path]),
            ("apps.finetune", ["--task_name", "SST-2", "--data_dir", kd.sst2, "--bert_model", kd.base.teacher_sst2,
                               "--output_dir", out, "--max_steps", "1"])]
    before = _tree(out)
    for script, argv in runs:
        _fails(script, argv, 2, ".lock is a", "remove")
    assert precious.read_text() == "keep me" and _tree(out) == before


def test_predict_output_is_checked_first_never_replaces_the_input_and_streams_into_pipes(kd, tmp_path):
    model = _predictor(kd, tmp_path)
    texts = tmp_path / "in.tsv"
    texts.write_text("w1 w2 good\nbad w3\n")
    _fails(PREDICT, ["--model", model, "--input", texts, "--output", texts], 2, "is the --input file")
    assert texts.read_text() == "w1 w2 good\nbad w3\n"
    for unwritable in (texts / "p.jsonl", tmp_path / "missing" / "p.jsonl"):      # (root may write anywhere else)
        _fails(PREDICT, ["--model", model, "--input", texts, "--output", unwritable], 2, "is not a directory")
    assert texts.read_text() == "w1 w2 good\nbad w3\n" and not (tmp_path / "missing").exists()
    cli_runner.run(PREDICT, ["--model", model, "--input", texts, "--output", "/dev/null"])
    assert Path("/dev/null").is_char_device()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.extend(fifo.read_text(encoding="utf-8").splitlines()))
    reader.start()
    cli_runner.run(PREDICT, ["--model", model, "--input", texts, "--output", fifo])
    reader.join(60)
    assert [json.loads(line)["text"] for line in got] == ["w1 w2 good", "bad w3"] and fifo.is_fifo()


def test_overwriting_a_directory_whose_checkpoint_is_a_link_removes_the_link_only(kd, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.safetensors").write_text("not mine to delete")
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint-5").symlink_to(elsewhere, target_is_directory=True)
    (out / "args.json").write_text("{}")
    cli_runner.run(cli_runner.TASK, task_argv(kd, out, "--max_steps", "1", "--overwrite_output_dir"))
    assert (elsewhere / "model.safetensors").read_text() == "not mine to delete"
    assert not (out / "checkpoint-5").exists() and (out / "model.safetensors").is_file()


def test_resume_without_a_readable_record_of_the_run_is_refused(kd, tmp_path):
    out = tmp_path / "out"
    cli_runner.run(cli_runner.TASK, task_argv(kd, out, "--max_steps", "1", "--save_steps", "1"))
    (out / "args.json").write_text("{not json")
    before = _tree(out)
    _fails(cli_runner.TASK, task_argv(kd, out, "--max_steps", "2", "--continue_train", "--t_conv", "5"), 2,
           "args.json is missing or unreadable", "--allow_changed_settings")
    assert _tree(out) == before
    cli_runner.run(cli_runner.TASK, task_argv(kd, out, "--max_steps", "2", "--continue_train",
                                               "--allow_changed_settings"))
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]


# ----------------------------------------------------------------------------------- silent wrong results

def test_predict_reads_glue_files_by_their_header_and_jsonl_by_its_content(kd, tmp_path):
    model = _predictor(kd, tmp_path)
    cases = {"labelled.tsv": "sentence\tlabel\nw1 w2 good\t1\nbad w3\t0\n",
             "test.tsv": "index\tsentence\n0\tw1 w2 good\n1\tbad w3\n",
             "records.txt": '{"text": "w1 w2 good"}\n{"text": "bad w3"}\n'}
    for name, body in cases.items():
        (tmp_path / name).write_text(body)
        result = cli_runner.run(PREDICT, ["--model", model, "--input", tmp_path / name,
                                          "--output", tmp_path / f"{name}.jsonl"])
        records = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert [r["text"] for r in records] == ["w1 w2 good", "bad w3"], (name, result.output)
        assert "text_pair" not in records[0]
    (tmp_path / "control.tsv").write_text("w1 good\n\x00\x01\x1b\n")
    _fails(PREDICT, ["--model", model, "--input", tmp_path / "control.tsv"], 1, "line 2: the text is empty")
    (tmp_path / "wide.tsv").write_text("a\tb\tc\n")
    _fails(PREDICT, ["--model", model, "--input", tmp_path / "wide.tsv"], 1, "a GLUE file needs its header line")


def test_predict_refuses_pairs_for_a_single_text_student_and_an_intermediate_kd_student(kd, tmp_path):
    single = _predictor(kd, tmp_path, text_pairs=False)
    _fails(PREDICT, ["--model", single, "--text", "w1 good", "--text_pair", "bad w2"], 2,
           "was trained on single texts")
    ikd = _predictor(kd, tmp_path, training_stage="intermediate")
    _fails(PREDICT, ["--model", ikd, "--text", "w1 good"], 2, "no trained classifier", "--pred_distill")


@pytest.mark.parametrize("damage, status, fragment", [("nan", 1, "holds NaN or infinite values"),
                                                      ("int", 2, "holds int64 values, not floating point")])
def test_weights_that_are_not_finite_floats_are_refused_naming_the_tensor(kd, tmp_path, damage, status, fragment):
    model = _predictor(kd, tmp_path)
    state = load_file(str(model / "model.safetensors"))
    key = "classifier.weight"
    state[key] = (torch.full_like(state[key], float("nan")) if damage == "nan"
                  else torch.ones_like(state[key], dtype=torch.int64))
    save_file(state, str(model / "model.safetensors"))
    _fails(PREDICT, ["--model", model, "--text", "w1 good"], status, key, fragment)


@pytest.mark.slow
def test_a_changed_learning_rate_takes_effect_on_resume(kd, tmp_path):
    out = tmp_path / "out"
    cli_runner.run(cli_runner.TASK, task_argv(kd, out, "--max_steps", "2", "--save_steps", "1",
                                               "--save_total_limit", "2", "--learning_rate", "1e-4"))
    shutil.rmtree(out / "checkpoint-2")                           # resume from checkpoint-1
    result = cli_runner.run(cli_runner.TASK, task_argv(kd, out, "--max_steps", "4", "--save_steps", "1",
                                                        "--learning_rate", "3e-4", "--continue_train"))
    assert "learning_rate changed from 0.0001 to 0.0003; the new value applies" in result.output
    logged = {r["step"]: r["lr"] for r in read_jsonl(out / "metrics.jsonl")}
    assert logged[1] == pytest.approx(1e-4) and logged[2] == logged[3] == logged[4] == pytest.approx(3e-4)


# ----------------------------------------------------------------------------------- tracebacks, unbounded work

def test_model_directories_that_cannot_work_are_refused_before_anything_runs(kd, tmp_path):
    long = _predictor(kd, tmp_path, max_seq_length=10_000)
    _fails(PREDICT, ["--model", long, "--text", "w1"], 2, "max_seq_length 10000 is more than max_position_embeddings")
    deep = _predictor(kd, tmp_path)
    (deep / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    _fails(PREDICT, ["--model", deep, "--text", "w1"], 2, "nested too deeply")
    huge = _predictor(kd, tmp_path)
    with open(huge / "config.json", "r+b") as f:
        f.truncate(2 << 30)                                  # a sparse 2 GB file: refused without reading it
    started = time.monotonic()
    _fails(PREDICT, ["--model", huge, "--text", "w1"], 2, "more than a config.json can be")
    assert time.monotonic() - started < 60
    wordy = _predictor(kd, tmp_path)
    (wordy / "vocab.txt").write_text((wordy / "vocab.txt").read_text() + "".join(f"x{i}\n" for i in range(50)))
    _fails(PREDICT, ["--model", wordy, "--text", "w1"], 2, "tokens but config.json has vocab_size")
    endless = _predictor(kd, tmp_path)
    (endless / "vocab.txt").write_bytes((endless / "vocab.txt").read_bytes() + b"y\n" * 2_000_000)
    _fails(PREDICT, ["--model", endless, "--text", "w1"], 2, "more than any vocabulary")
    odd = _predictor(kd, tmp_path, max_seq_length=None, do_lower_case=None)
    (odd / "args.json").write_text(json.dumps({"max_seq_length": "twelve", "do_lower_case": "yes"}))
    cli_runner.run(PREDICT, ["--model", odd, "--text", "w1 good"])     # the strings are not used as settings


def test_intermediate_kd_with_other_attention_heads_is_refused_before_anything_is_written(kd, tmp_path):
    student = tmp_path / "student"
    shutil.copytree(kd.student_cls, student)
    (student / "model.safetensors").unlink()
    config = json.loads((student / "config.json").read_text())
    (student / "config.json").write_text(json.dumps({**config, "num_attention_heads": 4}))
    out = tmp_path / "out"
    _fails(cli_runner.TASK, task_argv(kd, out, "--max_steps", "1", student=student), 2,
           "attention heads", "num_attention_heads")
    assert not out.exists()


def test_predict_ranges_and_memory_are_those_of_the_stages(kd, tmp_path):
    model = _predictor(kd, tmp_path)
    _fails(PREDICT, ["--model", model, "--text", "w1", "--t_conv", "1000000000"], 2, "--t_conv must be <= 1000000")
    _fails(PREDICT, ["--model", model, "--text", "w1", "--batch_size", str(10 ** 12)], 2, "lower --batch_size")


def test_a_damaged_or_foreign_kernel_library_falls_back_to_dense(tmp_path):
    from spikingbert.modules import event_ops

    built = event_ops.library_path()
    if not built.is_file():
        pytest.skip("the kernels are not built here")
    code = ("import sys; from pathlib import Path; from spikingbert.modules import event_ops; "
            "event_ops.BUILD_ROOT = Path(sys.argv[1]); print(event_ops.load())")
    target = tmp_path / built.parent.name / built.name
    target.parent.mkdir()
    target.write_bytes(built.read_bytes()[: built.stat().st_size // 2])             # an interrupted build
    (target.with_suffix(".sha256")).write_text(built.with_suffix(".sha256").read_text())
    run = lambda: subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=script_env(),
                                 capture_output=True, text=True, timeout=120)
    result = run()
    assert result.returncode == 0 and "does not match the checksum" in result.stdout, result.stderr
    foreign = Path(torch.__file__).parent / "lib" / "libshm.so"                      # loads, registers nothing of ours
    target.write_bytes(foreign.read_bytes())
    target.with_suffix(".sha256").write_text(event_ops._digest(target))
    result = run()
    assert result.returncode == 0 and "has no op" in result.stdout, result.stderr


def test_a_kernel_build_that_fails_on_an_avx2_cpu_fails_make_install(tmp_path):
    from spikingbert.modules import event_ops

    if not event_ops.kernels_expected():
        pytest.skip("this CPU runs the dense engine: a failed build is only a warning here")
    code = ("import sys; from pathlib import Path; from spikingbert.modules import event_ops; "
            "event_ops.BUILD_ROOT = Path(sys.argv[1]); sys.exit(event_ops.main([]))")
    env = {**script_env(), "CXX": "/bin/false"}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 1 and "error: the event engine's CPU kernels were not built" in result.stderr


@pytest.mark.parametrize("module, signum", [("apps.predict", signal.SIGINT), ("apps.predict", signal.SIGTERM),
                                            ("apps.demo", signal.SIGTERM)])
def test_a_signal_while_predict_or_the_demo_starts_is_one_line(kd, tmp_path, module, signum):
    argv = (["--model", kd.student_cls, "--text", "w1"] if module == "apps.predict"
            else ["--output_dir", tmp_path / "demo", "--fast"])
    proc = subprocess.Popen([sys.executable, "-m", module, *map(str, argv)], cwd=REPO, env=script_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not cli_runner.catches_signal(proc.pid, signal.SIGTERM):      # run_cli took over: main() imports
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.002)
    os.kill(proc.pid, signum)
    stdout, stderr = proc.communicate(timeout=300)
    assert "Traceback" not in stderr, stderr
    name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
    assert proc.returncode == 128 + signum and stderr.strip().splitlines()[-1] == f"error: interrupted{name}", stderr


@pytest.mark.slow
def test_predict_streams_100k_lines_in_bounded_memory(kd, tmp_path):
    model = _predictor(kd, tmp_path, t_conv=1)
    words = list(kd.vocab)[5:25]
    for n in (2_000, 100_000):
        (tmp_path / f"{n}.tsv").write_text("".join(f"{words[i % 20]} {words[(i * 7) % 20]}\n" for i in range(n)))
    peaks, first_line_at = {}, {}
    for n in (2_000, 100_000):
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", PREDICT, "--model", str(model), "--input",
                                 str(tmp_path / f"{n}.tsv"), "--batch_size", "256", "--output",
                                 str(tmp_path / f"{n}.jsonl")], cwd=REPO, env=script_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdout.readline()
        first_line_at[n] = time.monotonic() - started
        rest = proc.stdout.read()
        assert proc.wait(timeout=1200) == 0, proc.stderr.read()
        assert rest.count("\n") == n - 1 and (tmp_path / f"{n}.jsonl").read_text().count("\n") == n
        peaks[n] = _child_peak_rss()
    assert peaks[100_000] - peaks[2_000] < 150 << 20, peaks            # memory does not follow the input's length
    assert first_line_at[100_000] < 3 * first_line_at[2_000] + 30       # the first results come before the end


def _child_peak_rss() -> int:
    """Peak RSS (bytes) of the largest child this process waited for so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


# ----------------------------------------------------------------------------------- properties nobody tested

def test_predict_tokenizes_with_the_casing_its_directory_records(kd, tmp_path, capsys):
    from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification
    from tests.helpers.students import by_hand_logits

    vocab = tmp_path / "cased-vocab.txt"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Good", "good", "Film", "film"]
    vocab.write_text("\n".join(tokens) + "\n")
    torch.manual_seed(0)
    student = SpikingBertForSequenceClassification(tiny_config(vocab=len(tokens), do_lower_case=False,
                                                               max_seq_length=8, t_conv=5)).double()
    student.save_pretrained(tmp_path / "cased", vocab_file=vocab)
    model = SpikingBertForSequenceClassification.from_pretrained(tmp_path / "cased").double().eval()
    (p,) = model.predict(["Good Film"])
    want = torch.softmax(by_hand_logits(model, [tokens.index("Good"), tokens.index("Film")]), 0)
    assert list(p.probabilities.values()) == pytest.approx(want.tolist(), abs=1e-6)
    lower = torch.softmax(by_hand_logits(model, [tokens.index("good"), tokens.index("film")]), 0)
    assert not torch.allclose(want, lower)                         # the casing makes a difference here
    with pytest.raises(SystemExit):
        run_cli(__import__("apps.predict", fromlist=["main"]).main,
                ["--model", str(tmp_path / "cased"), "--text", "Good Film", "--output", str(tmp_path / "p.jsonl")])
    (api,) = SpikingBertForSequenceClassification.from_pretrained(tmp_path / "cased").predict(["Good Film"])
    assert json.loads((tmp_path / "p.jsonl").read_text()) == api.to_dict()        # the command, same float32 run


def test_biases_and_layer_norms_get_no_weight_decay_and_every_other_weight_does():
    from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification
    from spikingbert.training.objectives import build_optimizer

    torch.manual_seed(0)
    model = SpikingBertForSequenceClassification(tiny_config())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    lr, decay = 0.1, 0.5
    optimizer = build_optimizer(model, lr, 0.0, decay, "none", 10)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        exempt = name.endswith(".bias") or ".LayerNorm." in name
        want = before[name] if exempt else before[name] * (1 - lr * decay)
        assert torch.allclose(p.detach(), want, atol=1e-7), name


@pytest.mark.slow
def test_the_output_lock_is_held_for_the_whole_run(kd, tmp_path):
    out = tmp_path / "out"
    first = cli_runner.start(cli_runner.TASK, task_argv(kd, out, "--max_steps", "400", "--save_steps", "0"))
    deadline = time.monotonic() + 240
    while "training:" not in first.output_so_far():
        assert first.alive() and time.monotonic() < deadline, first.output_so_far()[-3000:]
        time.sleep(0.05)
    line = _fails(cli_runner.TASK, task_argv(kd, out, "--max_steps", "1", "--continue_train"), 2,
                  "is in use by another run", f"pid {first.pid}")
    assert first.alive(), line
    os.kill(first.pid, signal.SIGTERM)
    first.wait()


def test_a_sparse_chunk_goes_through_the_kernel_by_default(monkeypatch):
    from spikingbert.modules import event_engine, event_ops

    if event_ops.load() is not None or torch.ops.spikingbert.event_isa() == 0:
        pytest.skip("no event engine on this CPU")
    isa = int(torch.ops.spikingbert.event_isa())
    dense_calls = []
    dense = event_engine.linear
    monkeypatch.setattr(event_engine, "linear", lambda *a: dense_calls.append(1) or dense(*a))
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(64, 384, generator=generator), torch.randn(64, generator=generator)
    crossover = event_engine.max_density(384, isa)
    for density, dense_expected in ((crossover - 0.05, False), (min(crossover + 0.05, 1.0), True)):
        spikes = (torch.rand(256, 384, generator=generator) < density).float()
        dense_calls.clear()
        out = event_engine.spike_linear(spikes, weight, bias)
        assert bool(dense_calls) == dense_expected, density
        torch.testing.assert_close(out, spikes @ weight.T + bias, rtol=1e-5, atol=1e-4)
