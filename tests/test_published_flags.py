"""Every flag of the authors' published scripts parses here as it is spelled there, and takes the published default
unless the difference is documented: in the flag's ``--help`` and in the table of docs/DESIGN.md ("The published
code"). The lists below are the published ``add_argument`` calls (spelling, default), one per script."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import download_glue_data
import preprocess_training_data
from spikingbert.cli import flags
from tests.helpers.students import REPO_ROOT

REQUIRED = "(required)"


@dataclass(frozen=True)
class Published:
    """One published flag: its spellings (the first names the setting), default, and a value to try (None: on/off)."""

    names: Tuple[str, ...]
    default: Any
    value: Optional[str] = None

    @property
    def dest(self) -> str:
        return self.names[0].lstrip("-")


def P(*names: str, default: Any = False, value: Optional[str] = None) -> Published:
    return Published(names, default, value)


_COMMON = [P("--do_lower_case"), P("--train_batch_size", default=32, value="128"),
           P("--learning_rate", default=5e-5, value="3e-5"), P("--weight_decay", "--wd", default=1e-4, value="0.001"),
           P("--num_train_epochs", default=3.0, value="5"), P("--warmup_proportion", default=0.1, value="0.2"),
           P("--no_cuda"), P("--seed", default=42, value="0"), P("--gradient_accumulation_steps", default=1, value="2"),
           P("--do_eval"), P("--max_seq_length", default=128, value="64"), P("--t_conv", default=100, value="125"),
           P("--vth", default=1.0, value="0.5")]

PUBLISHED: Dict[str, List[Published]] = {
    "general": [  # spiking_bert_general_distill.py
        P("--pregenerated_data", default=REQUIRED, value="data/pregenerated"),
        P("--teacher_model", default=REQUIRED, value="bert-base-uncased"),
        P("--spiking_student_model", default=REQUIRED, value="spiking_student_model"),
        P("--output_dir", default=REQUIRED, value="runs/general"),
        *_COMMON, P("--reduce_memory"), P("--eval_batch_size", default=8, value="16"),
        P("--local_rank", default=-1, value="0"), P("--fp16"), P("--continue_train"),
        P("--eval_step", default=200, value="100"),
    ],
    "task": [  # spiking_bert_task_distill.py
        P("--data_dir", default=REQUIRED, value="glue_data/SST-2"), P("--teacher_model", default=None, value="ft-bert"),
        P("--spiking_student_model", default=REQUIRED, value="spiking_student_model"),
        P("--task_name", default=REQUIRED, value="SST-2"), P("--output_dir", default=REQUIRED, value="runs/task"),
        *_COMMON, P("--cache_dir", default="", value="cache"), P("--eval_batch_size", default=128, value="32"),
        P("--aug_train"), P("--eval_step", default=1000, value="100"), P("--pred_distill"), P("--train_true_labels"),
        P("--data_url", default="", value="s3://bucket/data"), P("--temperature", default=1.0, value="2.0"),
    ],
    "preprocess": [  # preprocess_training_data.py
        P("--train_corpus", default=REQUIRED, value="corpus.txt"), P("--output_dir", default=REQUIRED, value="out"),
        P("--bert_model", default=REQUIRED, value="bert-base-uncased"), P("--do_lower_case"),
        P("--do_whole_word_mask"), P("--reduce_memory"), P("--num_workers", default=1, value="2"),
        P("--epochs_to_generate", default=3, value="1"), P("--max_seq_len", default=128, value="64"),
        P("--short_seq_prob", default=0.1, value="0.2"), P("--masked_lm_prob", default=0.0, value="0.15"),
        P("--max_predictions_per_seq", default=20, value="10"), P("--data_url", default="", value="s3://b/d"),
        P("--one_seq"),
    ],
    "download": [  # download_glue_data.py
        P("--data_dir", default="glue_data", value="data/glue"), P("--tasks", default="all", value="SST,MRPC"),
        P("--path_to_mrpc", default="", value="msr"),
    ],
}

PARSERS: Dict[str, Callable[[], argparse.ArgumentParser]] = {
    "general": flags.general_parser, "task": flags.task_parser,
    "preprocess": preprocess_training_data.build_parser, "download": download_glue_data.build_parser,
}

#: Defaults deliberately not the published ones: (script, setting) -> the default here. Each flag's help says why
#: ("published"), and so does a row of the table in docs/DESIGN.md ("The published code").
DOCUMENTED: Dict[Tuple[str, str], Any] = {
    ("general", "do_lower_case"): None, ("task", "do_lower_case"): None,    # what the model directories record
    ("general", "weight_decay"): 0.01, ("task", "weight_decay"): 0.01,      # published: flag never read, 0.01 applied
    ("general", "t_conv"): None, ("task", "t_conv"): None,                  # the student's config.json (100 there)
    ("general", "vth"): None, ("task", "vth"): None,                        # the student's config.json (1.0 there)
    ("general", "eval_step"): 1000,                                          # a checkpoint holds the optimizer state
    ("task", "max_seq_length"): None, ("task", "num_train_epochs"): None,   # per task (published: table never used)
    ("task", "cache_dir"): None,                                             # '' and None: no cache
}


def _unused(script: str) -> Tuple[str, ...]:
    return flags.UNUSED_FLAGS.get(script, ())


def _base(script: str) -> List[str]:
    return [arg for flag in PUBLISHED[script] if flag.default == REQUIRED for arg in (flag.names[0], flag.value)]


def _same(got: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or expected is None or isinstance(got, bool):
        return got is expected
    if isinstance(got, (int, float)):
        return float(got) == float(expected)
    return str(got) == str(expected)


CASES = [(script, flag, name) for script, published in PUBLISHED.items() for flag in published for name in flag.names]


@pytest.mark.parametrize("script,flag,name", CASES, ids=[f"{s}{n}" for s, _, n in CASES])
def test_every_published_spelling_parses(script, flag, name):
    argv = _base(script)
    if flag.default != REQUIRED:
        argv += [name] + ([flag.value] if flag.value is not None else [])
    else:
        argv[argv.index(flag.names[0])] = name
    args = PARSERS[script]().parse_args(argv)
    assert _same(getattr(args, flag.dest), True if flag.value is None else flag.value), (script, name)


@pytest.mark.parametrize("script", PUBLISHED)
def test_published_defaults_or_documented_differences(script):
    parser = PARSERS[script]()
    args = parser.parse_args(_base(script))
    for flag in PUBLISHED[script]:
        got = getattr(args, flag.dest)
        if flag.default == REQUIRED:
            continue
        if flag.dest in _unused(script):
            assert got is None and flag.names[0] in flags.ignored_flags(parser.parse_args(
                _base(script) + [flag.names[0]] + ([flag.value] if flag.value else []))), (script, flag.dest)
        elif (script, flag.dest) in DOCUMENTED:
            assert _same(got, DOCUMENTED[script, flag.dest]), f"{script} {flag.names[0]}: default {got!r}"
            shown = [a.help for a in parser._actions if a.dest == flag.dest and a.help != argparse.SUPPRESS]
            assert shown and "published" in shown[0], f"{script} {flag.names[0]}: its help does not say why"
        else:
            assert _same(got, flag.default), f"{script} {flag.names[0]}: default {got!r}, published {flag.default!r}"


def test_documented_differences_are_in_the_design_table():
    design = (REPO_ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    section = design.split("## The published code", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    for script, dest in DOCUMENTED:
        assert any(f"`--{dest}`" in row and re.search(rf"\b{script}\b", row.split("|")[1]) for row in rows), \
            f"docs/DESIGN.md has no row for {script} --{dest}"


def test_unused_flags_are_published_ones():
    """A script accepts only published flags it does not use, and says so when they are given."""
    for script, names in flags.UNUSED_FLAGS.items():
        assert set(names) <= {flag.dest for flag in PUBLISHED[script]}, script
