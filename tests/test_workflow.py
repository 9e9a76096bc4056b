"""A researcher's habits: rerunning a stage from its args.json (``--args_file``), the command recorded as typed."""
from __future__ import annotations

import json
import shlex

import pytest

from apps import finetune
from core.errors import UsageError, UserError
from spikingbert.cli import flags
from spikingbert.run.plan import _flags

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
