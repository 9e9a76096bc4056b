"""Bad inputs: every entry script fails early, in one line, with the right exit status, writing nothing.

Most cases run the scripts' real ``main`` in this process through `run_cli` (the same code
path as ``python script.py``), with the loading of any model and the tokenization of any
data set replaced by a tripwire: a case passes only if its error comes before those. A few
representative cases run the scripts in a subprocess. For each case: the exit status (2 =
the command line is wrong, 1 = a file, the network or the run failed), exactly one
``error:`` line with the expected content, no traceback, and no output written.

Also here: a ``.bin`` whose pickle would write a file is refused and writes nothing; a NaN
loss stops the run (or is skipped with --skip_nan_batches) and gradient norms are logged.
Write failures (a full disk, for real) are in test_real_faults.py.
"""
from __future__ import annotations

import http.server
import importlib
import json
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
from safetensors.torch import load_file, save_file

from spikingbert.cli.edge import run_cli
from spikingbert.data import glue
from spikingbert.data.pretraining import PretrainingConfig, generate_pretraining_data
from spikingbert.models.spiking_bert import (
    SpikingBertConfig,
    SpikingBertForSequenceClassification,
    SpikingBertPreTrainedModel,
)
from spikingbert.runtime import Runtime
from spikingbert.training.checkpoint import list_checkpoints
from spikingbert.training.sampling import ResumableSampler
from spikingbert.training.trainer import Stage, Trainer, TrainerConfig, TrainingDiverged
from spikingbert.transformer.modeling import BertPreTrainedModel
from spikingbert.transformer.optimization import BertAdam
from spikingbert.transformer.tokenization import BertTokenizer
from tests.helpers.stand_in import StandInObjective, regression_data
from tests.helpers.world import REPO, World, build_world, max_weight_diff, read_jsonl, script_env

TASK, GENERAL, PREPROCESS = "spiking_bert_task_distill", "spiking_bert_general_distill", "preprocess_training_data"


class Payload:
    """Unpickling this object calls ``exec(code)``: what a malicious checkpoint would carry."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def _payload_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')"


@dataclass
class Inputs:
    """The shared tiny world plus one broken input per case (built once per module)."""

    world: World
    root: Path
    student: Path                   # a saved classification student (H 32) with vocab.txt
    student_h16: Path               # saved, hidden 16, fit_dense to 16
    student_no_fit: Path            # saved, hidden 16, without fit_dense weights
    student_3_layers: Path          # config only, 3 layers (the teachers have 4)
    student_bad_vth: Path           # config only, vth -1
    student_other_vocab: Path       # config + a vocab.txt that differs from the teachers'
    student_no_config: Path         # weights and vocab, no config.json
    unfinished_run: Path            # a run's output dir (args.json, metrics.jsonl) without weights
    student_truncated: Path         # model.safetensors cut in half
    student_bad_header: Path        # model.safetensors with a garbage header
    student_payload: Path           # pytorch_model.bin (zip format) carrying Payload
    teacher_no_weights: Path
    teacher_no_config: Path
    teacher_truncated_bin: Path     # pytorch_model.bin cut in half
    teacher_payload: Path           # pytorch_model.bin (legacy format) carrying Payload
    teacher_nan: Path               # attention weights that overflow float32: every loss is NaN
    student_marker: Path            # written if the student's payload ever runs
    teacher_marker: Path
    no_train_tsv: Path
    no_dev_tsv: Path
    bad_columns: Path               # train.tsv row 5 has 3 columns
    bad_label: Path                 # dev.tsv row 3 has label "2"
    pregenerated: Path
    empty_dir: Path


def _config_dict(world: World, **changes) -> dict:
    return {**json.loads((world.student_config / "config.json").read_text()), **changes}


def _saved_student(directory: Path, world: World, hidden: int = 32, drop: Tuple[str, ...] = ()) -> Path:
    config = SpikingBertConfig(**{**_config_dict(world, hidden_size=hidden, intermediate_size=2 * hidden),
                                  "fit_size": hidden})
    torch.manual_seed(0)
    SpikingBertForSequenceClassification(config).save_pretrained(directory, vocab_file=world.vocab)
    if drop:
        state = load_file(str(directory / "model.safetensors"))
        save_file({k: v for k, v in state.items() if not k.startswith(drop)}, str(directory / "model.safetensors"))
    return directory


def _config_student(directory: Path, world: World, vocab: str = None, **changes) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(_config_dict(world, **changes)))
    if vocab is not None:
        (directory / "vocab.txt").write_text(vocab)
    return directory


def _copy(src: Path, dst: Path, *skip: str) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip) if skip else None)
    return dst


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _task_data(world: World, directory: Path, drop: str = None, edit: Tuple[str, int, str] = None) -> Path:
    _copy(world.sst2, directory)
    if drop:
        (directory / drop).unlink()
    if edit:
        name, line, text = edit
        lines = (directory / name).read_text().splitlines(keepends=True)
        lines[line - 1] = text
        (directory / name).write_text("".join(lines))
    return directory


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("bad_inputs")
    world = build_world(root / "world")
    student = _saved_student(root / "student", world)

    truncated = _copy(student, root / "student_truncated")
    _truncate(truncated / "model.safetensors")
    bad_header = _copy(student, root / "student_bad_header")
    data = bytearray((bad_header / "model.safetensors").read_bytes())
    data[:8] = (10 ** 12).to_bytes(8, "little")
    (bad_header / "model.safetensors").write_bytes(bytes(data))
    markers = root / "markers"
    markers.mkdir()
    student_payload = _copy(student, root / "student_payload", "model.safetensors")
    state = load_file(str(student / "model.safetensors"))
    torch.save({**state, "extra": Payload(_payload_code(markers / "student"))}, student_payload / "pytorch_model.bin")
    unfinished = _config_student(root / "unfinished_run", world)
    (unfinished / "args.json").write_text("{}")
    (unfinished / "metrics.jsonl").write_text("")

    teacher = world.teacher_sst2
    teacher_truncated = _copy(teacher, root / "teacher_truncated_bin", "model.safetensors")
    teacher_state = load_file(str(teacher / "model.safetensors"))
    torch.save(teacher_state, teacher_truncated / "pytorch_model.bin")
    _truncate(teacher_truncated / "pytorch_model.bin")
    teacher_payload = _copy(teacher, root / "teacher_payload", "model.safetensors")
    torch.save({**teacher_state, "extra": Payload(_payload_code(markers / "teacher"))},
               teacher_payload / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    teacher_nan = _copy(world.teacher_general, root / "teacher_nan")
    general_state = load_file(str(teacher_nan / "model.safetensors"))
    key = next(k for k in general_state if k.endswith("layer.0.attention.self.query.weight"))
    general_state[key] = torch.full_like(general_state[key], 3e38)     # finite (NaN weights are refused on load)
    save_file(general_state, str(teacher_nan / "model.safetensors"))

    pregenerated = root / "pregenerated"
    generate_pretraining_data(world.corpus, pregenerated, BertTokenizer.from_pretrained(world.teacher_general),
                              PretrainingConfig(max_seq_len=24), epochs_to_generate=1)
    (root / "empty").mkdir()
    other_vocab = "\n".join(reversed(world.vocab.read_text().split())) + "\n"
    return Inputs(
        world=world, root=root, student=student,
        student_h16=_saved_student(root / "student_h16", world, hidden=16),
        student_no_fit=_saved_student(root / "student_no_fit", world, hidden=16, drop=("fit_dense.",)),
        student_3_layers=_config_student(root / "student_3_layers", world, num_hidden_layers=3),
        student_bad_vth=_config_student(root / "student_bad_vth", world, vth=-1.0),
        student_other_vocab=_config_student(root / "student_other_vocab", world, vocab=other_vocab),
        student_no_config=_copy(student, root / "student_no_config", "config.json"),
        unfinished_run=unfinished, student_truncated=truncated, student_bad_header=bad_header,
        student_payload=student_payload,
        teacher_no_weights=_copy(teacher, root / "teacher_no_weights", "model.safetensors"),
        teacher_no_config=_copy(teacher, root / "teacher_no_config", "config.json"),
        teacher_truncated_bin=teacher_truncated, teacher_payload=teacher_payload, teacher_nan=teacher_nan,
        student_marker=markers / "student", teacher_marker=markers / "teacher",
        no_train_tsv=_task_data(world, root / "no_train", drop="train.tsv"),
        no_dev_tsv=_task_data(world, root / "no_dev", drop="dev.tsv"),
        bad_columns=_task_data(world, root / "bad_columns", edit=("train.tsv", 5, "w1 w2\t1\textra\n")),
        bad_label=_task_data(world, root / "bad_label", edit=("dev.tsv", 3, "w1 w2 w3\t2\n")),
        pregenerated=pregenerated, empty_dir=root / "empty",
    )


# ------------------------------------------------------------------------------------------ running the CLI

def _error_line(stderr: str) -> str:
    """The one ``error:`` line of a failed run (log lines may precede it); no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0]


def _tripwire(*args, **kwargs):
    raise AssertionError("a model or a data set was loaded before the inputs were checked")


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(script, *argv) -> (exit status, stderr)``: the script's main through run_cli, in this process."""
    monkeypatch.setattr(BertPreTrainedModel, "from_pretrained", classmethod(_tripwire))
    monkeypatch.setattr(SpikingBertPreTrainedModel, "from_pretrained", classmethod(_tripwire))
    monkeypatch.setattr(glue, "load_task_dataset", _tripwire)

    def run(script: str, *argv) -> Tuple[int, str]:
        module = importlib.import_module(script)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            run_cli(module.main, [str(a) for a in argv])
        return exc.value.code, capsys.readouterr().err
    return run


def _task_argv(x: Inputs, out: Path, *extra, student=None, teacher=None, data=None, task="SST-2") -> List:
    return ["--task_name", task, "--data_dir", data or x.world.sst2, "--teacher_model", teacher or x.world.teacher_sst2,
            "--spiking_student_model", student or x.world.student_config, "--output_dir", out, "--do_lower_case",
            "--train_batch_size", "8", *extra]


def _eval_argv(x: Inputs, out: Path, student: Path, *extra) -> List:
    return ["--do_eval", "--task_name", "SST-2", "--data_dir", x.world.sst2, "--spiking_student_model", student,
            "--output_dir", out, "--do_lower_case", *extra]


def _general_argv(x: Inputs, out: Path, *extra, student=None, teacher=None, data=None) -> List:
    return ["--pregenerated_data", data or x.pregenerated, "--teacher_model", teacher or x.world.teacher_general,
            "--spiking_student_model", student or x.world.student_config, "--output_dir", out,
            "--do_lower_case", "--train_batch_size", "8", *extra]


def _without(argv: List, flag: str) -> List:
    """``argv`` less ``flag`` and its value."""
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:]


# (id, script, argv builder (inputs, out), exit status, fragments of the error line)
CASES = [
    ("task-missing-task-name", TASK, lambda x, o: _without(_task_argv(x, o), "--task_name"), 2,
     ["the following arguments are required: --task_name", "--help"]),
    ("task-unknown-task-name", TASK, lambda x, o: _task_argv(x, o, task="SST3"), 2,
     ["unknown task 'SST3' (--task_name)", "sst-2"]),
    ("unknown-flag", TASK, lambda x, o: _task_argv(x, o, "--t_cnov", "4"), 2,
     ["unrecognized arguments: --t_cnov 4"]),
    ("flag-not-a-number", TASK, lambda x, o: _task_argv(x, o, "--t_conv", "four"), 2,
     ["argument --t_conv: invalid int value: 'four'"]),
    ("missing-data-dir", TASK, lambda x, o: _task_argv(x, o, data=x.root / "nowhere"), 2,
     ["--data_dir", "nowhere is not a directory", "download_glue_data.py"]),
    ("missing-train-tsv", TASK, lambda x, o: _task_argv(x, o, data=x.no_train_tsv), 1,
     ["train.tsv not found", "--data_dir"]),
    ("missing-dev-tsv", TASK, lambda x, o: _task_argv(x, o, data=x.no_dev_tsv), 1, ["dev.tsv not found"]),
    ("tsv-wrong-column-count", TASK, lambda x, o: _task_argv(x, o, data=x.bad_columns), 1,
     ["train.tsv:5: expected 2 tab-separated columns, found 3", "--skip_bad_rows"]),
    ("tsv-unknown-label", TASK, lambda x, o: _task_argv(x, o, data=x.bad_label), 1,
     ["dev.tsv:3: unknown label '2'", "--skip_bad_rows"]),
    ("layers-do-not-divide", TASK, lambda x, o: _task_argv(x, o, student=x.student_3_layers), 2,
     ["teacher has 4 layers and the student 3", "num_hidden_layers"]),
    ("fit-dense-width-mismatch", TASK, lambda x, o: _task_argv(x, o, student=x.student_h16), 2,
     ["projects to width 16 (fit_dense)", "teacher's hidden size is 32"]),
    ("hidden-mismatch-without-fit-dense", TASK, lambda x, o: _task_argv(x, o, student=x.student_no_fit), 2,
     ["has no fit_dense weights", "hidden size 16 differs from the teacher's 32"]),
    ("t-conv-zero", TASK, lambda x, o: _task_argv(x, o, "--t_conv", "0"), 2, ["--t_conv must be >= 1 (got 0)"]),
    ("vth-zero", TASK, lambda x, o: _task_argv(x, o, "--vth", "0"), 2, ["--vth must be > 0 (got 0.0)"]),
    ("vth-negative", GENERAL, lambda x, o: _general_argv(x, o, "--vth", "-0.5"), 2, ["--vth must be > 0 (got -0.5)"]),
    ("leak-zero", TASK, lambda x, o: _task_argv(x, o, "--leak", "0"), 2, ["--leak must be in (0, 1] (got 0.0)"]),
    ("leak-above-one", GENERAL, lambda x, o: _general_argv(x, o, "--leak", "1.5"), 2,
     ["--leak must be in (0, 1] (got 1.5)"]),
    ("vth-in-config-json", TASK, lambda x, o: _task_argv(x, o, student=x.student_bad_vth), 2,
     ["--spiking_student_model", "student_bad_vth/config.json: vth must be a finite number in (0, 1e+06] (got -1.0)"]),
    ("max-seq-length-above-positions", TASK, lambda x, o: _task_argv(x, o, "--max_seq_length", "200"), 2,
     ["sequences of 200 tokens", "max_position_embeddings 128", "--max_seq_length 128 or less"]),
    ("vocab-mismatch-task", TASK, lambda x, o: _task_argv(x, o, student=x.student_other_vocab), 2,
     ["vocab.txt", "differ from line 1", "must share one vocabulary"]),
    ("vocab-mismatch-general", GENERAL, lambda x, o: _general_argv(x, o, student=x.student_other_vocab), 2,
     ["differ from line 1", "must share one vocabulary"]),
    ("do-eval-without-trained-student", TASK, lambda x, o: _eval_argv(x, o, x.world.student_config), 2,
     ["has no model.safetensors", "--do_eval needs a trained student"]),
    ("student-missing-config-json", TASK, lambda x, o: _task_argv(x, o, student=x.student_no_config), 2,
     ["student_no_config has no config.json"]),
    ("student-unfinished-run-without-weights", TASK, lambda x, o: _task_argv(x, o, student=x.unfinished_run), 2,
     ["holds the output of a training run", "no model.safetensors", "--continue_train"]),
    ("teacher-missing-config-json", TASK, lambda x, o: _task_argv(x, o, teacher=x.teacher_no_config), 2,
     ["--teacher_model", "has no config.json"]),
    ("teacher-missing-weights", TASK, lambda x, o: _task_argv(x, o, teacher=x.teacher_no_weights), 2,
     ["has neither model.safetensors nor pytorch_model.bin"]),
    ("student-truncated-safetensors", TASK, lambda x, o: _task_argv(x, o, student=x.student_truncated), 1,
     ["--spiking_student_model", "model.safetensors cannot be read", "truncated or damaged"]),
    ("student-corrupt-safetensors-header", TASK, lambda x, o: _task_argv(x, o, student=x.student_bad_header), 1,
     ["model.safetensors cannot be read", "truncated or damaged"]),
    ("eval-truncated-safetensors", TASK, lambda x, o: _eval_argv(x, o, x.student_truncated), 1,
     ["model.safetensors cannot be read", "truncated or damaged"]),
    ("teacher-truncated-bin", TASK, lambda x, o: _task_argv(x, o, teacher=x.teacher_truncated_bin), 1,
     ["--teacher_model", "pytorch_model.bin cannot be read", "truncated or damaged"]),
    ("student-bin-with-code", TASK, lambda x, o: _task_argv(x, o, student=x.student_payload), 1,
     ["pytorch_model.bin was not loaded", "it would run code when loaded", "the Python object builtins.exec",
      "refused"]),
    ("teacher-bin-with-code", GENERAL, lambda x, o: _general_argv(x, o, teacher=x.teacher_payload), 1,
     ["--teacher_model", "pytorch_model.bin was not loaded", "refused"]),
    ("skip-nan-batches-negative", TASK, lambda x, o: _task_argv(x, o, "--skip_nan_batches", "-1"), 2,
     ["--skip_nan_batches must be >= 0 (got -1)"]),
    ("general-missing-teacher", GENERAL, lambda x, o: _without(_general_argv(x, o), "--teacher_model"), 2,
     ["--teacher_model is required"]),
    ("general-missing-pregenerated-dir", GENERAL, lambda x, o: _general_argv(x, o, data=x.root / "nowhere"), 2,
     ["--pregenerated_data", "is not a directory", "preprocess_training_data.py"]),
    ("general-empty-pregenerated-dir", GENERAL, lambda x, o: _general_argv(x, o, data=x.empty_dir), 1,
     ["no epoch_0.json", "preprocess_training_data.py"]),
    ("preprocess-missing-corpus", PREPROCESS,
     lambda x, o: ["--train_corpus", x.root / "nowhere.txt", "--bert_model", x.world.teacher_general,
                   "--output_dir", o], 1, ["--train_corpus", "nowhere.txt not found"]),
    ("preprocess-missing-flag", PREPROCESS, lambda x, o: ["--train_corpus", x.world.corpus, "--output_dir", o], 2,
     ["the following arguments are required: --bert_model"]),
]


@pytest.mark.parametrize("name, script, argv, status, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_early_in_one_line(inputs, cli, tmp_path, name, script, argv, status, fragments):
    out = tmp_path / "out"
    code, stderr = cli(script, *argv(inputs, out))
    line = _error_line(stderr)
    assert code == status, stderr
    for fragment in fragments:
        assert fragment in line, line
    assert not out.exists()                                      # nothing written


def test_payload_bins_are_refused_without_running_their_code(inputs, cli, tmp_path):
    """The crafted .bin files really carry code (an unsafe load runs it); the scripts never run it."""
    for path, marker in ((inputs.student_payload, inputs.student_marker),
                         (inputs.teacher_payload, inputs.teacher_marker)):
        assert not marker.exists()
        torch.load(path / "pytorch_model.bin", weights_only=False)     # the control: what an unsafe load does
        assert marker.read_text() == "pwned"
        marker.unlink()
    for script, argv in ((TASK, _task_argv(inputs, tmp_path / "a", student=inputs.student_payload)),
                         (TASK, _eval_argv(inputs, tmp_path / "b", inputs.student_payload)),
                         (GENERAL, _general_argv(inputs, tmp_path / "c", teacher=inputs.teacher_payload))):
        code, stderr = cli(script, *argv)
        assert code == 1 and "refused" in _error_line(stderr)
    assert not inputs.student_marker.exists() and not inputs.teacher_marker.exists()


def test_non_empty_output_dir_is_left_as_it_was(inputs, cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, stderr = cli(TASK, *_task_argv(inputs, out))
    line = _error_line(stderr)
    assert code == 2 and f"--output_dir {out} is not empty" in line
    assert "--continue_train" in line and "--overwrite_output_dir" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_output_dir_that_is_the_input_is_refused(inputs, cli, tmp_path):
    student = _copy(inputs.student, tmp_path / "student")
    before = {p.name: p.read_bytes() for p in student.iterdir()}
    code, stderr = cli(TASK, *_task_argv(inputs, student, "--overwrite_output_dir", student=student))
    assert code == 2 and "would overwrite its own input" in _error_line(stderr)
    assert {p.name: p.read_bytes() for p in student.iterdir()} == before   # --overwrite_output_dir deleted nothing


def test_corrupt_training_state_of_the_checkpoint_to_resume(inputs, cli, tmp_path):
    out = tmp_path / "out"
    checkpoint = _copy(inputs.student, out / "checkpoint-2")
    (checkpoint / "training_state.pt").write_bytes(b"\x80\x02garbage")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code, stderr = cli(TASK, *_task_argv(inputs, out, "--continue_train"))
    line = _error_line(stderr)
    assert code == 1 and "the training state" in line and "cannot be read" in line and "checkpoint-2" in line
    assert "delete that checkpoint directory" in line
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.send_error(404)

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


@pytest.fixture
def not_found_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_teacher_url_errors(inputs, cli, tmp_path, monkeypatch, not_found_server):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPIKINGBERT_CACHE", str(cache))
    for url, fragments in ((f"{not_found_server}/bert.tar.gz", ["--teacher_model", "HTTP 404", "check the URL"]),
                           (f"http://127.0.0.1:{_closed_port()}/bert.tar.gz", ["--teacher_model", "could not reach"])):
        out = tmp_path / "out"
        code, stderr = cli(TASK, *_task_argv(inputs, out, teacher=url))
        line = _error_line(stderr)
        assert code == 1, stderr
        for fragment in fragments:
            assert fragment in line, line
        assert not out.exists()
        assert not [p for p in cache.rglob("*") if p.is_file()]       # no half-downloaded cache entry


# ------------------------------------------------------------------------------------------ real subprocesses

def _subprocess(script: str, *argv, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / f"{script}.py"), *map(str, argv)], cwd=REPO,
                          env=env or script_env(), capture_output=True, text=True, timeout=120)


@pytest.mark.system
@pytest.mark.slow
def test_representative_cases_in_a_subprocess(inputs, tmp_path):
    """The same failures through ``python script.py``: the last line on stderr is the one error line; no traceback."""
    out = tmp_path / "out"
    cases = [
        (TASK, _without(_task_argv(inputs, out), "--task_name"), 2, "--task_name"),
        (TASK, _task_argv(inputs, out, student=inputs.student_truncated), 1, "truncated or damaged"),
        (GENERAL, _general_argv(inputs, out, teacher=inputs.teacher_payload), 1, "refused"),
    ]
    for script, argv, status, fragment in cases:
        proc = _subprocess(script, *argv)
        assert proc.returncode == status, proc.stderr
        assert fragment in _error_line(proc.stderr)
        assert not out.exists()
    assert not inputs.teacher_marker.exists()
    # --debug shows the traceback instead
    proc = _subprocess(TASK, *_task_argv(inputs, out, data=inputs.bad_columns), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "DataError" in proc.stderr


# ------------------------------------------------------------------------------------------ training faults

def _general_run(x: Inputs, out: Path, *extra, teacher=None) -> List:
    return _general_argv(x, out, "--train_batch_size", "4", "--num_train_epochs", "1", "--t_conv", "3",
                         "--max_seq_length", "24", "--seed", "5", *extra, teacher=teacher)


def _run_inprocess(script: str, argv, capsys) -> Tuple[int, str]:
    module = importlib.import_module(script)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(module.main, [str(a) for a in argv])
    return exc.value.code, capsys.readouterr().err


@pytest.mark.slow
def test_nan_loss_stops_the_cli_run_or_is_skipped(inputs, tmp_path, capsys):
    """A teacher with NaN weights: every loss is NaN."""
    out = tmp_path / "stop"
    code, stderr = _run_inprocess(GENERAL, _general_run(inputs, out, "--max_steps", "4", "--save_steps", "2",
                                                        teacher=inputs.teacher_nan), capsys)
    line = _error_line(stderr)
    assert code == 1, line
    assert "the loss is not finite at optimizer step 1 (loss=nan, att_loss=nan, rep_loss=nan, grad_norm=nan)" in line
    assert "no checkpoint was written yet" in line and "--skip_nan_batches" in line
    assert list_checkpoints(out) == []

    out = tmp_path / "skip"
    code, stderr = _run_inprocess(GENERAL, _general_run(inputs, out, "--max_steps", "4", "--skip_nan_batches", "2",
                                                        teacher=inputs.teacher_nan), capsys)
    line = _error_line(stderr)
    assert code == 1
    assert "optimizer step 3" in line and "3 such steps, more than --skip_nan_batches 2" in line
    assert stderr.count("step skipped, no update") == 2


CPU = Runtime(device=torch.device("cpu"))


def _trainer_run(out: Path, skip: int, poison: int, micro: int = 2, accum: int = 1):
    torch.manual_seed(0)
    objective = StandInObjective(dropout=0.0)
    data = regression_data(23, poison)

    def save(directory: Path):
        (directory / "config.json").write_text("{}")
        save_file({k: v.contiguous() for k, v in objective.state_dict().items()}, str(directory / "model.safetensors"))

    stage = Stage(student=objective, objective=objective,
                  make_optimizer=lambda total: BertAdam(objective.parameters(), lr=0.01, schedule="none"),
                  train_dataset=lambda epoch: data, num_train_examples=lambda epoch: len(data), save_student=save)
    config = TrainerConfig(output_dir=out, train_batch_size=micro * accum, gradient_accumulation_steps=accum,
                           num_train_epochs=2, save_steps=1, logging_steps=1, seed=7, skip_nan_batches=skip)
    out.mkdir(parents=True, exist_ok=True)
    return Trainer(config, CPU, stage).train(), objective


@pytest.mark.slow
def test_skip_nan_batches_skips_exactly_the_poisoned_steps(tmp_path):
    poison, micro = 7, 2
    # 23 examples, micro-batch 2: 12 steps per epoch; the poisoned example falls in one step of each epoch.
    bad_steps = [epoch * 12 + list(ResumableSampler(23, epoch=epoch, seed=7)).index(poison) // micro + 1
                 for epoch in (0, 1)]
    progress, objective = _trainer_run(tmp_path / "run", skip=2, poison=poison)
    assert progress.global_step == 24 and progress.skipped_steps == 2
    assert all(torch.isfinite(p).all() for p in objective.parameters())
    for step in range(2, 25):
        diff = max_weight_diff(tmp_path / "run" / f"checkpoint-{step - 1}", tmp_path / "run" / f"checkpoint-{step}")
        assert (diff == 0.0) == (step in bad_steps), step                   # no update exactly there
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [s for s in range(1, 25) if s not in bad_steps]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert records[-1]["skipped_steps"] == 2

    with pytest.raises(TrainingDiverged, match=f"optimizer step {bad_steps[1]} .*2 such steps, more than "
                                               r"`skip_nan_batches` 1"):
        _trainer_run(tmp_path / "limit", skip=1, poison=poison)


@pytest.mark.slow
def test_gradient_norm_is_logged(tmp_path):
    """The logged grad_norm of step 1 equals the norm of an independent backward pass over the same batches."""
    micro, accum = 2, 3
    _trainer_run(tmp_path / "run", skip=0, poison=-1, micro=micro, accum=accum)
    logged = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert logged["step"] == 1
    torch.manual_seed(0)
    model = StandInObjective(dropout=0.0)
    x, y = regression_data(23).tensors
    order = list(ResumableSampler(23, epoch=0, seed=7))
    for i in range(accum):
        index = order[i * micro:(i + 1) * micro]
        (model((x[index], y[index]), None)["loss"] / accum).backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
    assert logged["grad_norm"] == pytest.approx(expected, rel=1e-5)
