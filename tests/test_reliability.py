"""Every class of fault a user can meet, produced for real through the command line (a real process).

One test (or one parametrized test) per class: wrong config fields, non-finite or absurd flags, a
vocabulary without the special tokens, changed settings on ``--continue_train``, two runs into one
output dir, inputs found bad only late (nothing may be left), a real write failure in the converter,
pickles that would run code, signals in every entry point and the stale temporaries of a killed run,
and messages that name the right flag. Each case asserts the exit status, exactly one ``error:`` line
with what it must say, no traceback, and that nothing was left behind.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from spikingbert.core.files import as_write_error
from spikingbert.data.glue.features import tokenize_prefix
from spikingbert.transformer.tokenization import BertTokenizer
from tests.helpers import cli_runner
from tests.helpers.kd_world import SEQ, KDWorld, build_kd_world, task_argv
from tests.helpers.published import published_state, write_config
from tests.helpers.world import REPO, script_env

CONVERT, FINETUNE, CORPORA = "apps.convert_published", "apps.finetune", "apps.corpora"


@pytest.fixture(scope="module")
def kd(tmp_path_factory) -> KDWorld:
    return build_kd_world(tmp_path_factory.mktemp("reliability_world"))


def _general_argv(kd: KDWorld, out: Path, *extra, student=None, teacher=None, data=None):
    return ["--pregenerated_data", data or kd.pregenerated, "--teacher_model", teacher or kd.base.teacher_general,
            "--spiking_student_model", student or kd.student_general, "--output_dir", out, "--do_lower_case",
            "--train_batch_size", "2", "--seed", "3", *extra]


def _fails(script: str, argv, status: int, *fragments: str, fsize=None) -> str:
    """Run ``script``; assert ``status``, one ``error:`` line holding every fragment, no traceback."""
    result = cli_runner.run(script, argv, fsize=fsize, expect=status)
    line = result.error_line()
    for fragment in fragments:
        assert fragment in line, line
    return line


def _edited_copy(src: Path, dst: Path, name: str = "config.json", **changes) -> Path:
    shutil.copytree(src, dst)
    if changes:
        (dst / name).write_text(json.dumps({**json.loads((dst / name).read_text()), **changes}))
    return dst


def _snapshot(directory: Path):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------- 1. config fields

CONFIG_CASES = [
    ("student-layers-string", "student", {"num_hidden_layers": "1"}, ["num_hidden_layers", '(got "1")']),
    ("student-t-conv-string", "student", {"t_conv": "3"}, ["t_conv", '(got "3")']),
    ("student-heads-zero", "student", {"num_attention_heads": 0}, ["num_attention_heads", "(got 0)"]),
    ("student-vocab-terabytes", "student", {"vocab_size": 10 ** 13}, ["vocab_size", "(got 10000000000000)"]),
    ("teacher-hidden-null", "teacher", {"hidden_size": None}, ["--teacher_model", "hidden_size", "(got null)"]),
    ("teacher-layers-negative", "teacher", {"num_hidden_layers": -2}, ["num_hidden_layers", "(got -2)"]),
]


@pytest.mark.system
@pytest.mark.parametrize("name, which, changes, fragments", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_field_with_wrong_type_or_range_is_exit_2_naming_file_field_value(kd, tmp_path, name, which, changes,
                                                                                 fragments):
    src = kd.student_cls if which == "student" else kd.base.teacher_sst2
    edited = _edited_copy(src, tmp_path / which, **changes)
    out = tmp_path / "out"
    argv = task_argv(kd, out, student=edited) if which == "student" else task_argv(kd, out, teacher=edited)
    line = _fails(cli_runner.TASK, argv, 2, str(edited / "config.json"), "must be", *fragments)
    assert "must be an integer in [1, " in line, line                      # the allowed range
    assert not out.exists()


@pytest.mark.system
def test_config_that_is_not_an_object_and_converter_and_finetune_configs(kd, tmp_path):
    teacher = _edited_copy(kd.base.teacher_sst2, tmp_path / "teacher_list")
    (teacher / "config.json").write_text("[1, 2]")
    _fails(cli_runner.TASK, task_argv(kd, tmp_path / "o1", teacher=teacher), 2, "must hold a JSON object")
    config = tmp_path / "convert_config.json"
    config.write_text(json.dumps({**json.loads((kd.student_general / "config.json").read_text()),
                                  "num_hidden_layers": -1}))
    _fails(CONVERT, ["--checkpoint", kd.student_general / "model.safetensors", "--config", config,
                     "--output_dir", tmp_path / "o2"], 2, str(config), "num_hidden_layers", "(got -1)")
    bert = _edited_copy(kd.base.teacher_sst2, tmp_path / "bert", num_attention_heads="2")
    _fails(FINETUNE, ["--task_name", "SST-2", "--data_dir", kd.sst2, "--bert_model", bert, "--output_dir",
                      tmp_path / "o3", "--max_seq_length", SEQ], 2, "--bert_model", "num_attention_heads", '(got "2")')
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))


# ------------------------------------------------------------------------------ 2. non-finite flags, memory

FLAG_CASES = [
    (cli_runner.TASK, ["--temperature", "nan", "--pred_distill"], "--temperature must be a finite number (got nan)"),
    (cli_runner.TASK, ["--learning_rate", "inf"], "--learning_rate must be a finite number (got inf)"),
    (cli_runner.TASK, ["--vth", "inf"], "--vth must be a finite number (got inf)"),
    (cli_runner.GENERAL, ["--num_train_epochs", "inf"], "--num_train_epochs must be a finite number (got inf)"),
    (cli_runner.TASK, ["--num_train_epochs", "1e9"], "--num_train_epochs must be <= 10000 (got 1000000000.0)"),
]


@pytest.mark.system
@pytest.mark.parametrize("script, extra, expected", FLAG_CASES, ids=[" ".join(c[1][:2]) for c in FLAG_CASES])
def test_non_finite_or_absurd_float_flag_is_exit_2_up_front(kd, tmp_path, script, extra, expected):
    out = tmp_path / "out"
    argv = (task_argv if script == cli_runner.TASK else _general_argv)(kd, out, *extra)
    assert _fails(script, argv, 2, expected) == f"error: {expected}"
    assert not out.exists()


@pytest.mark.system
def test_run_that_cannot_fit_in_memory_is_refused_before_allocation(kd, tmp_path):
    out = tmp_path / "out"
    _fails(cli_runner.TASK, task_argv(kd, out, "--train_mode", "bptt", "--t_conv", "1000000", "--train_batch_size",
                                       "4096"), 2, "needs at least", "GiB of memory", "--train_batch_size", "--t_conv")
    assert not out.exists()


# --------------------------------------------------------------------- 3. vocabulary, settings on resume

@pytest.mark.system
def test_vocabulary_without_cls_is_exit_2_not_a_silent_shift(kd, tmp_path):
    student = _edited_copy(kd.student_cls, tmp_path / "student")
    vocab = student / "vocab.txt"
    vocab.write_text(vocab.read_text().replace("[CLS]\n", "[cls-gone]\n"))
    out = tmp_path / "eval"
    _fails(cli_runner.TASK, ["--task_name", "SST-2", "--data_dir", kd.sst2, "--spiking_student_model", student,
                             "--output_dir", out, "--do_eval", "--do_lower_case", "--max_seq_length", SEQ],
           2, "--spiking_student_model", str(vocab), "has no [CLS] token")
    assert not out.exists()


@pytest.mark.system
@pytest.mark.slow
def test_resume_with_changed_settings_is_refused_or_warned(kd, tmp_path):
    out = tmp_path / "out"
    cli_runner.run(cli_runner.TASK, task_argv(kd, out, "--t_conv", "4", "--max_steps", "1", "--save_steps", "1"))
    before = _snapshot(out)
    line = _fails(cli_runner.TASK, task_argv(kd, out, "--continue_train", "--t_conv", "5", "--temperature", "2",
                                              "--max_steps", "2"), 2,
                  "made with other settings", "t_conv 4 (now 5)", "temperature 1.0 (now 2.0)",
                  "--allow_changed_settings")
    assert "learning_rate" not in line
    assert _snapshot(out) == before
    result = cli_runner.run(cli_runner.TASK, task_argv(kd, out, "--continue_train", "--t_conv", "4",
                                                        "--learning_rate", "1e-4", "--max_steps", "2"))
    assert "learning_rate changed from 5e-05 to 0.0001" in result.output, result.output[-3000:]
    assert (out / "checkpoint-2").is_dir()
    result = cli_runner.run(cli_runner.TASK, task_argv(kd, out, "--continue_train", "--t_conv", "5",
                                                        "--allow_changed_settings", "--max_steps", "3"))
    assert "resuming with changed model settings: t_conv 4 (now 5)" in result.output, result.output[-3000:]
    assert json.loads((out / "checkpoint-3" / "config.json").read_text())["t_conv"] == 5


@pytest.mark.system
@pytest.mark.slow
def test_finetune_resume_with_another_max_seq_length_is_refused(kd, tmp_path):
    out = tmp_path / "teacher"
    argv = ["--task_name", "SST-2", "--data_dir", kd.sst2, "--bert_model", kd.base.teacher_sst2, "--output_dir", out,
            "--do_lower_case", "--train_batch_size", "4", "--max_steps", "1", "--save_steps", "1"]
    cli_runner.run(FINETUNE, [*argv, "--max_seq_length", SEQ])
    before = _snapshot(out)
    _fails(FINETUNE, [*argv, "--max_seq_length", "12", "--max_steps", "2", "--continue_train"], 2,
           f"max_seq_length_used {SEQ} (now 12)", "--allow_changed_settings")
    assert _snapshot(out) == before


# ------------------------------------------------------------------------------- 4. output dir in use

@pytest.mark.system
@pytest.mark.slow
def test_second_run_into_a_locked_output_dir_fails_at_once_naming_the_pid(kd, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
        "print('locked', flush=True)\n"
        "time.sleep(300)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = _fails(cli_runner.TASK, task_argv(kd, out, "--max_steps", "1"), 2)
        assert line.startswith(f"error: --output_dir {out} is in use by another run (pid {holder.pid});"), line
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()                                          # the kernel releases a dead process's lock
        holder.wait()
    cli_runner.run(cli_runner.TASK, task_argv(kd, out, "--max_steps", "1", "--save_steps", "1"))
    assert (out / "checkpoint-1").is_dir() and not (out / ".lock").exists()


# ------------------------------------------------------------------------ 5. nothing written on failure

@pytest.mark.system
def test_bad_inputs_found_late_leave_nothing_behind(kd, tmp_path):
    data = _edited_copy(kd.pregenerated, tmp_path / "pregenerated")
    epoch = data / "epoch_0.json"
    epoch.write_bytes(epoch.read_bytes()[: epoch.stat().st_size // 2])
    _fails(cli_runner.GENERAL, _general_argv(kd, tmp_path / "o1", data=data), 1, "epoch_0.json")
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    _fails(cli_runner.TASK, ["--task_name", "SST-2", "--data_dir", kd.sst2, "--spiking_student_model", kd.student_cls,
                             "--output_dir", a_file, "--do_eval", "--max_seq_length", SEQ], 2,
           f"--output_dir {a_file} exists and is not a directory")
    assert a_file.read_text() == "keep me"
    teacher = _edited_copy(kd.base.teacher_general, tmp_path / "teacher_nan")
    state = load_file(str(teacher / "model.safetensors"))
    key = next(k for k in state if k.endswith("layer.0.attention.self.query.weight"))
    state[key] = torch.full_like(state[key], 3e38)       # overflows float32 (NaN weights are refused on load)
    save_file(state, str(teacher / "model.safetensors"))
    out = tmp_path / "nested" / "o3"                     # fails at step 1, after the output dir was created
    _fails(cli_runner.GENERAL, _general_argv(kd, out, "--max_steps", "2", teacher=teacher), 1, "not finite")
    assert not out.exists() and not out.parent.exists()
    assert not (tmp_path / "o1").exists()


@pytest.mark.system
def test_unsafe_mirror_archive_leaves_no_data_dir(tmp_path):
    import zipfile

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "SST-2.zip", "w") as archive:
        archive.writestr("../../evil.txt", "x")
        archive.writestr("SST-2/train.tsv", "sentence\tlabel\n")
    data_dir = tmp_path / "glue" / "sub"
    _fails(cli_runner.DOWNLOAD, ["--data_dir", data_dir, "--tasks", "SST", "--mirror", mirror], 1,
           "refusing to extract", "unsafe member path '../../evil.txt'")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["SST-2.zip", "mirror"]


# ----------------------------------------------------------------------------- 6. real write failure

@pytest.mark.system
def test_converter_write_failure_for_real_is_one_line_exit_1(kd, tmp_path):
    torch.save(published_state(2, task=False), tmp_path / "published.bin")
    out = tmp_path / "converted"
    _fails(CONVERT, ["--checkpoint", tmp_path / "published.bin", "--config", write_config(tmp_path / "cfg", 2),
                     "--output_dir", out], 1, "cannot write", "the disk (or the quota, or the file-size limit) is full",
           fsize=4096)
    assert not out.exists()


# ------------------------------------------------------------------------------ 7. refused pickles

class SystemCall:
    """Unpickling this object calls ``os.system(command)`` (``posix.system``)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.system
@pytest.mark.parametrize("consumer", ["student", "teacher", "finetune", "converter"])
def test_pickle_that_would_run_code_is_refused_and_named(kd, tmp_path, consumer):
    marker = tmp_path / "ran"
    src = {"student": kd.student_cls, "converter": kd.student_general}.get(consumer, kd.base.teacher_sst2)
    model = _edited_copy(src, tmp_path / "model")
    (model / "model.safetensors").unlink()
    bin_file = model / "pytorch_model.bin"
    torch.save({"weight": SystemCall(f"touch {marker}")}, bin_file)
    out = tmp_path / "out"
    argv = {"student": lambda: task_argv(kd, out, student=model),
            "teacher": lambda: task_argv(kd, out, teacher=model),
            "finetune": lambda: ["--task_name", "SST-2", "--data_dir", kd.sst2, "--bert_model", model,
                                 "--output_dir", out, "--max_seq_length", SEQ],
            "converter": lambda: ["--checkpoint", bin_file, "--config", kd.student_general, "--output_dir", out]}
    script = {"finetune": FINETUNE, "converter": CONVERT}.get(consumer, cli_runner.TASK)
    _fails(script, argv[consumer](), 1, str(bin_file), "would run code when loaded",
           "calls the Python object posix.system", "refused")
    assert not marker.exists() and not out.exists()


# ------------------------------------------------------------------------------------ 8. signals

def _wait_for(found, what: str, run, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        assert time.monotonic() < deadline and run.alive(), f"never saw {what}:\n{run.output_so_far()[-3000:]}"
        time.sleep(0.02)


@pytest.mark.system
def test_sigterm_during_preprocessing_leaves_no_temporaries(kd, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(("\n".join(kd.base.corpus.read_text().split("\n")[:40]) + "\n\n") * 400)
    out = tmp_path / "out"
    run = cli_runner.start(cli_runner.PREPROCESS, ["--train_corpus", corpus, "--bert_model", kd.base.teacher_general,
                                                   "--output_dir", out, "--do_lower_case", "--epochs_to_generate", "50",
                                                   "--max_seq_len", SEQ])
    _wait_for(lambda: out.is_dir() and any(p.name.startswith(".tmp-") for p in out.iterdir()), "a temporary", run)
    os.kill(run.pid, signal.SIGTERM)
    result = run.wait(120)
    assert result.returncode == 143 and result.error_line() == "error: interrupted (SIGTERM)", result.output[-3000:]
    assert not out.exists()                              # created by this run: removed with its temporaries


@pytest.mark.system
def test_stale_temporaries_of_a_killed_run_are_removed_by_the_next(kd, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".tmp-epoch_0.json.k1ll3d.tmp").write_bytes(b"x" * 1000)
    (out / ".tmp-stale-dir").mkdir()
    cli_runner.run(cli_runner.PREPROCESS, ["--train_corpus", kd.base.corpus, "--bert_model", kd.base.teacher_general,
                                           "--output_dir", out, "--do_lower_case", "--epochs_to_generate", "1",
                                           "--max_seq_len", SEQ])
    assert sorted(p.name for p in out.iterdir()) == ["epoch_0.json", "epoch_0_metrics.json"]


STAGE = """
import pathlib, signal, sys, time
def stop(signum, frame):
    pathlib.Path(sys.argv[1], "stage-stopped").write_text(signal.Signals(signum).name)
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
pathlib.Path(sys.argv[1], "stage-ready").write_text("")
time.sleep(120)
"""


def main(argv):
    """What `test_sigterm_to_the_demo_is_passed_to_its_stage` runs through `run_cli`: the demo's stage runner."""
    from spikingbert.apps import demo

    root = Path(argv[0])
    demo.run_stages([demo.DemoStage("slow", "a stage that waits", ["-c", STAGE, str(root)], [root / "never"])], root)
    return 0


@pytest.mark.system
def test_sigterm_to_the_demo_is_passed_to_its_stage(tmp_path):
    run = cli_runner.start("tests.test_reliability", [tmp_path])
    _wait_for(lambda: (tmp_path / "stage-ready").exists(), "the stage", run)
    os.kill(run.pid, signal.SIGTERM)
    result = run.wait(60)
    assert result.returncode == 143 and result.error_line() == "error: interrupted (SIGTERM)", result.output[-3000:]
    assert (tmp_path / "stage-stopped").read_text() == "SIGTERM"          # the stage stopped itself
    assert not (tmp_path / "stages" / "slow.json").exists()                 # not marked as finished


class _InterruptedWrites(io.BytesIO):
    """A file whose third write is interrupted (as a signal handler raising in Python's ``write`` does)."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, data):
        self.writes += 1
        if self.writes == 3:
            raise KeyboardInterrupt("SIGTERM")
        return super().write(data)


def test_an_interrupted_torch_writer_is_an_interruption_not_a_disk_error():
    with pytest.raises(RuntimeError, match="unexpected pos") as caught:      # how torch's zip writer words it
        torch.save({"weight": torch.zeros(10_000)}, _InterruptedWrites())
    with pytest.raises(KeyboardInterrupt):
        as_write_error(caught.value, "checkpoint-2/training_state.pt")


@pytest.mark.system
def test_ctrl_c_while_an_entry_script_imports_is_one_line(tmp_path):
    statuses = {}
    for script in ("spiking_bert_task_distill.py", "preprocess_training_data.py", "download_glue_data.py"):
        proc = subprocess.Popen([sys.executable, str(REPO / script), "--help"], cwd=REPO, env=script_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while not cli_runner.catches_signal(proc.pid, signal.SIGTERM):      # run_cli took over: main() imports
            if proc.poll() is not None:             # done before it was seen (preprocessing's --help imports little)
                break
            assert time.monotonic() < deadline, proc.communicate()
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        statuses[script] = proc.returncode
        assert "Traceback" not in stderr, stderr
        if proc.returncode == -signal.SIGINT:                      # done, ended by the signal while shutting down
            assert stderr == "", stderr
        elif proc.returncode != 0:                                 # interrupted (not already done)
            assert proc.returncode == 130 and stderr.strip().splitlines() == ["error: interrupted"], stderr
    assert statuses["spiking_bert_task_distill.py"] == 130         # its --help imports torch: caught in the middle


@pytest.mark.system
def test_sigterm_during_a_glue_download_leaves_nothing(tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)                                   # accepts connections, never answers
    data_dir = tmp_path / "glue"
    try:
        run = cli_runner.start(cli_runner.DOWNLOAD, ["--data_dir", data_dir, "--tasks", "SST",
                                                     "--mirror", f"http://127.0.0.1:{listener.getsockname()[1]}/",
                                                     "--retries", "0"])
        _wait_for(lambda: data_dir.is_dir() and any(p.name.endswith(".staging") for p in data_dir.iterdir()),
                  "the staging dir", run)
        os.kill(run.pid, signal.SIGTERM)
        result = run.wait(60)
    finally:
        listener.close()
    assert result.returncode == 143 and result.error_line() == "error: interrupted (SIGTERM)", result.output[-3000:]
    assert not data_dir.exists()


# --------------------------------------------------------------------- 9. the right flag and path, long rows

@pytest.mark.system
def test_messages_name_the_right_flag(kd, tmp_path):
    student = _edited_copy(kd.student_general, tmp_path / "short_student", max_position_embeddings=8)
    line = _fails(cli_runner.GENERAL, _general_argv(kd, tmp_path / "o1", student=student), 2,
                  f"--pregenerated_data {kd.pregenerated} has sequences of {SEQ} tokens",
                  "preprocess_training_data.py --max_seq_len 8 or less")
    assert "pass --max_seq_length" not in line
    existing = tmp_path / "existing"
    existing.mkdir()
    _fails(CORPORA, ["bbc", "--output", existing], 2, f"--output {existing} is a directory")
    assert not (tmp_path / "o1").exists() and list(existing.iterdir()) == []


class _Counting:
    """A tokenizer that counts the characters it was given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.chars = tokenizer, 0

    def tokenize(self, text):
        self.chars += len(text)
        return self.tokenizer.tokenize(text)


def test_a_huge_row_is_cut_before_it_is_tokenized(kd):
    tokenizer = BertTokenizer(str(kd.base.vocab), do_lower_case=True)
    words = [w for w in kd.vocab if not w.startswith("[")]
    rng = __import__("random").Random(0)
    for needed in (1, 5, 15, 63):
        text = "  ".join(rng.choice(words) + rng.choice(["", ",", "."]) for _ in range(rng.randint(0, 400)))
        assert tokenize_prefix(tokenizer, text, needed)[:needed] == tokenizer.tokenize(text)[:needed]
    huge = " ".join(rng.choice(words) for _ in range(2_000_000))          # ~10 MB
    counting = _Counting(tokenizer)
    assert tokenize_prefix(counting, huge, 63)[:63] == tokenizer.tokenize(huge[:10_000])[:63]
    assert counting.chars < 64 * 64, counting.chars
