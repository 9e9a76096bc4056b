"""A researcher's habits: rerunning a stage from its args.json (``--args_file``), the command recorded as typed,
GLUE test predictions for a submission (``--do_predict``)."""
from __future__ import annotations

import json
import random
import shlex
import shutil
from pathlib import Path
from typing import List

import numpy as np
import pytest

from spikingbert.apps import finetune
from spikingbert.cli import flags
from spikingbert.core.errors import UsageError, UserError
from spikingbert.data import glue
from spikingbert.run.plan import _flags
from spikingbert.run.submission import _labels, write_submissions
from tests.helpers import cli_runner
from tests.helpers.kd_world import SEQ, VTH, KDWorld, build_kd_world, encode, numpy_student_logits
from tests.helpers.world import random_sentence

TASK_ARGV = ["--pred_distill", "--task_name", "SST-2", "--data_dir", "glue data/SST-2", "--teacher_model", "bert-sst2",
             "--spiking_student_model", "runs/ikd", "--output_dir", "runs/pred", "--t_conv", "8", "--vth", "0.75",
             "--learning_rate", "3e-5", "--temperature", "2", "--train_batch_size", "16", "--continue_train"]


def _recorded(tmp_path, parser, argv):
    """The args.json a run of ``argv`` writes (its flags as the stage runners record them)."""
    path = tmp_path / "args.json"
    path.write_text(json.dumps(dict(_flags(parser.parse_args(argv))), indent=2))
    return path


def test_args_file_reruns_with_the_recorded_flags_and_given_flags_override(tmp_path):
    original = flags.task_parser().parse_args(TASK_ARGV)
    assert original.command_line == shlex.join(["python", "spiking_bert_task_distill.py", *TASK_ARGV])
    path = _recorded(tmp_path, flags.task_parser(), TASK_ARGV)

    rerun = flags.task_parser().parse_args(["--args_file", str(path), "--output_dir", "runs/pred-2", "--vth", "0.5"])
    skip = {"command_line", "args_file", "output_dir", "vth", "continue_train"}
    assert {k: v for k, v in vars(rerun).items() if k not in skip} == \
           {k: v for k, v in vars(original).items() if k not in skip}
    assert rerun.vth == 0.5 and str(rerun.output_dir) == "runs/pred-2"         # the flags given win
    assert rerun.continue_train is False                                       # run control is not taken from it
    assert rerun.command_line.endswith(f"--args_file {path} --output_dir runs/pred-2 --vth 0.5")


def test_a_console_script_names_itself_and_reads_the_checkout_commands_args_file(tmp_path, monkeypatch):
    """Started as ``spikingbert-task-distill``: its help and command_line say so; an args.json of either spelling
    of the same command reruns, one of another command is refused."""
    checkout = _recorded(tmp_path, flags.task_parser(), TASK_ARGV)
    monkeypatch.setattr("sys.argv", ["/venv/bin/spikingbert-task-distill"])
    parser = flags.task_parser()
    assert parser.format_usage().startswith("usage: spikingbert-task-distill ")
    assert finetune.finetune_parser().prog == "python -m apps.finetune"        # another command keeps its name
    installed = parser.parse_args(TASK_ARGV)
    assert installed.command_line == shlex.join(["spikingbert-task-distill", *TASK_ARGV])
    rerun = flags.task_parser().parse_args(["--args_file", str(checkout), "--output_dir", "x"])
    assert (rerun.task_name, rerun.t_conv) == (installed.task_name, installed.t_conv)
    console = tmp_path / "console"
    console.mkdir()
    console_record = _recorded(console, flags.task_parser(), TASK_ARGV)
    monkeypatch.setattr("sys.argv", ["spiking_bert_task_distill.py"])
    assert flags.task_parser().parse_args(["--args_file", str(console_record), "--output_dir", "x"]).t_conv == \
        installed.t_conv
    with pytest.raises(UsageError, match="records a run of `spikingbert-task-distill`"):
        finetune.finetune_parser().parse_args(["--args_file", str(console_record), "--output_dir", "x"])


def test_console_scripts_of_the_table_are_those_of_pyproject():
    import tomllib

    from spikingbert.cli.edge import CONSOLE_SCRIPTS

    scripts = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"][
        "scripts"]
    assert set(CONSOLE_SCRIPTS) == set(scripts) - {"spikingbert-build-kernels"}


def test_args_file_keeps_the_checks_and_refuses_another_commands_file(tmp_path):
    path = _recorded(tmp_path, flags.task_parser(), TASK_ARGV)
    with pytest.raises(UsageError, match="--output_dir"):                      # not taken from the file
        flags.task_parser().parse_args(["--args_file", str(path)])
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "t_conv": 0}))
    with pytest.raises(UsageError, match="--t_conv"):                          # the settings table's range
        flags.task_parser().parse_args(["--args_file", str(path), "--output_dir", "x"])
    with pytest.raises(UsageError, match="records a run of `python spiking_bert_task_distill.py`"):
        finetune.finetune_parser().parse_args(["--args_file", str(_recorded(tmp_path, flags.task_parser(),
                                                                            TASK_ARGV)), "--output_dir", "x"])
    path.write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a run's args.json"):
        flags.task_parser().parse_args(["--args_file", str(path), "--output_dir", "x"])
    with pytest.raises(UserError, match="missing.json"):
        flags.task_parser().parse_args(["--args_file", str(tmp_path / "missing.json"), "--output_dir", "x"])


# ------------------------------------------------------------------------------------------ --do_predict

@pytest.fixture(scope="module")
def kd(tmp_path_factory) -> KDWorld:
    return build_kd_world(tmp_path_factory.mktemp("kd_world"))


def _copy_task(src: Path, dst: Path, test_tsv: str) -> Path:
    shutil.copytree(src, dst)
    (dst / "test.tsv").write_text(test_tsv)
    return dst


def _submission(path: Path) -> List[List[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "index\tprediction"
    return [line.split("\t") for line in lines[1:]]


@pytest.mark.system
def test_do_predict_writes_glue_submissions_labelled_as_an_independent_forward(kd, tmp_path):
    """SST-2 (with --do_eval) and STS-B: every test row, in file order, with its own id; the labels are the argmax
    (the scores) of a float64 simulation of the same student."""
    rng = random.Random(11)
    texts = [random_sentence(rng, 3, 10) for _ in range(7)]
    ids = [str(100 + 7 * i) for i in range(len(texts))]                    # not the row numbers
    data = _copy_task(kd.sst2, tmp_path / "SST-2", "index\tsentence\n" + "".join(
        f"{i}\t{t}\n" for i, t in zip(ids, texts)))
    out = tmp_path / "sst2-predict"
    result = cli_runner.run(cli_runner.TASK, ["--do_predict", "--do_eval", "--task_name", "SST-2", "--data_dir", data,
                                              "--spiking_student_model", kd.student_cls, "--output_dir", out,
                                              "--max_seq_length", SEQ, "--do_lower_case", "--eval_batch_size", "3"])
    logits = numpy_student_logits(kd.student_cls, encode(kd.vocab, texts), t_conv=4, vth=VTH)
    assert _submission(out / "SST-2.tsv") == [[i, str(y)] for i, y in zip(ids, logits.argmax(axis=1))]
    assert json.loads((out / "eval_results.json").read_text())["examples"] == 6     # the dev evaluation too
    assert "SST-2.tsv: " in result.output

    pairs = [(random_sentence(rng, 2, 5), random_sentence(rng, 2, 5)) for _ in range(5)]
    data = _copy_task(kd.stsb, tmp_path / "STS-B", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\t"
                      "sentence1\tsentence2\n" + "".join(f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{a}\t{b}\n"
                                                         for i, (a, b) in enumerate(pairs)))
    out = tmp_path / "stsb-predict"
    cli_runner.run(cli_runner.TASK, ["--do_predict", "--task_name", "STS-B", "--data_dir", data,
                                     "--spiking_student_model", kd.student_reg, "--output_dir", out,
                                     "--max_seq_length", SEQ, "--do_lower_case"])
    scores = numpy_student_logits(kd.student_reg, encode(kd.vocab, *map(list, zip(*pairs))), 4, VTH).reshape(-1)
    rows = _submission(out / "STS-B.tsv")
    assert [r[0] for r in rows] == [str(i) for i in range(len(pairs))]
    assert [float(r[1]) for r in rows] == pytest.approx(scores.tolist(), abs=6e-4)
    assert all(len(r[1].split(".")[1]) == 3 for r in rows)
    assert not (out / "eval_results.json").exists()                      # --do_predict alone: no dev evaluation


@pytest.mark.system
def test_do_predict_refuses_a_bad_test_file_before_loading_the_student(kd, tmp_path):
    data = _copy_task(kd.sst2, tmp_path / "SST-2", "index\tsentence\n0\tw1 w2\n1\tw3\textra\n")
    argv = ["--do_predict", "--task_name", "SST-2", "--data_dir", data, "--spiking_student_model", kd.student_cls,
            "--output_dir", tmp_path / "out"]
    result = cli_runner.run(cli_runner.TASK, argv, expect=1)
    assert "test.tsv:3: expected 2 tab-separated columns, found 3" in result.error_line()
    assert not (tmp_path / "out").exists()
    (data / "test.tsv").unlink()
    assert "--do_predict labels the task's GLUE test split" in cli_runner.run(cli_runner.TASK, argv,
                                                                            expect=1).error_line()


def test_mnli_labels_both_test_sets_with_its_label_names(tmp_path):
    """MNLI's two test files, GLUE's names for their submissions, the label strings; ids read by header name."""
    columns = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    for name, rows in (("test_matched.tsv", 3), ("test_mismatched.tsv", 2)):
        (tmp_path / name).write_text("\t".join(columns) + "\n" + "".join(
            "\t".join([str(9 - i), "p", "q", "fiction", "(", ")", "(", ")", f"a{i} b", f"c{i}"]) + "\n"
            for i in range(rows)))
    processor = glue.get_processor("MNLI")
    assert {split: name for split, (_, name) in processor.test_splits.items()} == {"test": "MNLI-m.tsv",
                                                                                   "test_mm": "MNLI-mm.tsv"}
    examples = processor.read_test(tmp_path, "test_mm")
    assert [(e.guid, e.text_a, e.text_b) for e in examples] == [("9", "a0 b", "c0"), ("8", "a1 b", "c1")]
    assert glue.get_processor("mnli-mm").test_splits == {"test": ("test_mismatched.tsv", "MNLI-mm.tsv")}
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 3.0]])
    counts = write_submissions(tmp_path, {"MNLI-m.tsv": list(zip("abc", _labels(processor, logits)))}, "classification")
    assert _submission(tmp_path / "MNLI-m.tsv") == [["a", "entailment"], ["b", "contradiction"], ["c", "neutral"]]
    assert counts == {"MNLI-m.tsv": {"contradiction": 1, "entailment": 1, "neutral": 1}}
    assert glue.get_processor("QQP").text_columns == ("question1", "question2")
    (tmp_path / "test.tsv").write_text("id\tquestion1\tquestion2\n5\tq a\tq b\n")
    assert [e.guid for e in glue.get_processor("QQP").read_test(tmp_path)] == ["5"]
