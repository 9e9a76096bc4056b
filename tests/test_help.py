"""Every command-line flag of every command has a help text that shows its default, and usage lines show the
command a user types."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

import download_glue_data
import preprocess_training_data
from bench.__main__ import bench_parser
from spikingbert.apps import corpora, demo, finetune, paper, predict
from spikingbert.apps.convert_published import convert_parser
from spikingbert.cli import flags as script_args
from spikingbert.cli.edge import CONSOLE_SCRIPTS
from tests.helpers.students import REPO_ROOT

PARSERS = {
    "python spiking_bert_general_distill.py": script_args.general_parser,
    "python spiking_bert_task_distill.py": script_args.task_parser,
    "python preprocess_training_data.py": preprocess_training_data.build_parser,
    "python download_glue_data.py": download_glue_data.build_parser,
    "python -m apps.corpora": corpora.corpora_parser,
    "python -m apps.demo": demo.demo_parser,
    "python -m apps.finetune": finetune.finetune_parser,
    "python -m apps.paper": paper.paper_parser,
    "python -m apps.predict": predict.predict_parser,
    "python -m apps.convert_published": convert_parser,
    "python -m bench": bench_parser,
}


def _parsers(parser: argparse.ArgumentParser):
    """The parser and its sub-command parsers."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _shown_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text as ``--help`` prints it (with the default the formatter adds)."""
    return parser._get_formatter()._expand_help(action)


def test_each_console_script_stands_for_a_parsers_command():
    """The table of console scripts names each checkout command by its parser's ``prog`` (checked below): renaming a
    command's ``prog`` without the table would show an installed user a command that does not exist."""
    assert sorted(CONSOLE_SCRIPTS.values()) == sorted(set(PARSERS) - {"python -m bench"})


@pytest.mark.parametrize("command", PARSERS)
def test_every_flag_has_help_showing_its_default(command):
    top = PARSERS[command]()
    assert top.prog == command
    for parser in _parsers(top):
        assert parser.prog.startswith(command)
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction,
                                                                        argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"{command}: {name} has no help text"
            shown = _shown_help(parser, action)
            if action.option_strings and not action.required and action.dest not in ("debug",):
                assert re.search(r"default|\(required\)", shown, re.I), \
                    f"{command}: {name} does not show its default: {shown!r}"
        parser.format_help()                                       # formats (no bad % in a help text)


def test_flags_are_grouped_and_each_script_lists_only_its_own():
    general = script_args.general_parser()
    titles = {g.title for g in general._action_groups if g._group_actions}
    assert {"data", "model", "training", "checkpoints", "spiking", "distributed", "output"} <= titles
    text = general.format_help()
    assert "--do_eval" not in text and "prediction KD" not in text and "--pred_distill" not in text
    task_text = script_args.task_parser().format_help()
    assert "evaluation:" in task_text and "--do_eval" in task_text and "--data_url" not in task_text
    assert "SPEC" not in text + task_text
    # Published flags a script does not use are still accepted (and warned about when run).
    assert script_args.ignored_flags(general.parse_args(
        ["--pregenerated_data", "p", "--teacher_model", "t", "--spiking_student_model", "s", "--output_dir", "o",
         "--do_eval"])) == ["--do_eval"]


def test_demo_recipe_flags_document_their_choices():
    text = demo.demo_parser().format_help()
    assert "--ide_point {ann,snn}" in text and "--general_teacher {finetuned,pretrained}" in text
    assert re.search(r"--t_conv N\s+simulation steps T of the student \(default: 16", text)


@pytest.mark.system
@pytest.mark.slow
def test_help_runs_as_a_user_types_it():
    proc = subprocess.run([sys.executable, "-m", "apps.predict", "--help"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m apps.predict")
    assert "--adaptive_t MARGIN" in proc.stdout and "(default: 32)" in proc.stdout


@pytest.mark.system
def test_docs_refer_only_to_files_in_the_repository():
    """The behaviour contract is docs/DESIGN.md; nothing points to a specification outside the repository."""
    outside = ("SPEC" + ".md", "SPEC" + " §")
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    for name in files:
        path = REPO_ROOT / name
        if path.suffix in (".py", ".md", ".txt", ".json", ".sh", ".cfg", ".toml") or name == "Makefile":
            text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
            assert not any(o in text for o in outside), f"{name} refers to a file outside the repository"
    assert (REPO_ROOT / "docs" / "DESIGN.md").is_file()


@pytest.mark.parametrize("command", [c for c in PARSERS if c != "python -m bench"])
def test_every_number_or_choice_flag_takes_its_range_from_the_settings_table(command):
    """One table (core.settings) declares each setting's type and range; every command's flags derive from it."""
    from spikingbert.core.settings import SETTINGS

    for parser in _parsers(PARSERS[command]()):
        for action in parser._actions:
            if action.type in (int, float) or (action.choices and not isinstance(action, argparse._SubParsersAction)):
                name = getattr(action, "setting", None) or action.dest
                assert name in SETTINGS, f"{command}: {action.option_strings} has no entry in core.settings.SETTINGS"
                spec = SETTINGS[name]
                assert action.choices is None or tuple(action.choices) == spec.choices, f"{command}: {name} choices"
                assert action.type in (spec.kind, None) or action.choices, f"{command}: {name} type"


def test_registries_offer_exactly_the_settings_table_choices():
    from spikingbert.core.settings import SETTINGS
    from spikingbert.modules.neuron import SURROGATES
    from spikingbert.modules.solvers import SOLVERS
    from spikingbert.transformer.activations import ACT2FN

    assert sorted(SOLVERS) == sorted(SETTINGS["solver"].choices)
    assert sorted(SURROGATES) == sorted(SETTINGS["surrogate"].choices)
    assert sorted(ACT2FN) == sorted(SETTINGS["hidden_act"].choices)



@pytest.mark.parametrize("command", PARSERS)
def test_abbreviated_flags_are_refused(command):
    """``--t_con 4`` must not run as ``--t_conv 4``: every parser (and sub-command) wants its flags in full."""
    for parser in _parsers(PARSERS[command]()):
        assert parser.allow_abbrev is False, parser.prog
        if parser._subparsers is not None:
            continue                            # its sub-commands' parsers are tried
        flag = max((s for a in parser._actions for s in a.option_strings if s.startswith("--")), key=len)
        options = [arg for a in parser._actions if a.required and a.option_strings
                   for arg in (a.option_strings[0], list(a.choices)[0] if a.choices else "1")]
        positionals = ["1" for a in parser._actions if a.required and not a.option_strings]
        _, rest = parser.parse_known_args(options + [flag[:-1]] + positionals)
        assert flag[:-1] in rest, f"{parser.prog}: {flag[:-1]} was taken for {flag}"


@pytest.mark.parametrize("script", ["spiking_bert_task_distill.py", "spiking_bert_general_distill.py"])
def test_stage_commands_start_without_scipy_or_sklearn(script):
    """The stages load scipy.stats and sklearn.metrics only when a task's metric needs them (together about a
    second of start-up on every command): ``--help`` imports neither."""
    result = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time")}
    assert "torch" in imported                                        # the import trace is there
    assert not {name for name in imported if name.split(".")[0] in ("scipy", "sklearn")}
