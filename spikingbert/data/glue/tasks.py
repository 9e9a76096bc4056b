"""GLUE tasks: names, per-task defaults and the TSV readers.

The readers expect the files that ``download_glue_data.py`` writes (the standard
GLUE TSVs), one directory per task, e.g. ``glue_data/SST-2/{train,dev}.tsv``;
``data_dir`` arguments below are that task directory.

A row with the wrong number of columns, an unknown label, an unparsable score or
an empty text field is a *bad row*. By default the first bad row stops the run
with a `DataError` naming ``file:line``; with ``skip_bad_rows=True`` bad rows are
skipped and counted instead.
"""
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from spikingbert.core.errors import DataError, UsageError

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "dev_mm", "aug")
#: The column of a test file that holds each row's id (QQP: ``id``), written back in the submission.
TEST_ID_COLUMNS = ("index", "id")


@dataclass(frozen=True)
class InputExample:
    """One sentence (pair) with its label as written in the TSV (a score string for STS-B)."""

    guid: str
    text_a: str
    text_b: Optional[str] = None
    label: Optional[str] = None


@dataclass(frozen=True)
class TaskSettings:
    """Per-task defaults for task distillation, used when the user passes no flag."""

    num_train_epochs: int
    max_seq_length: int


# MNLI..RTE as the published code intends them. CoLA 50/64 is
# TinyBERT's setting for this small single-sentence task; WNLI (635 training pairs)
# gets RTE's 20/128.
DEFAULT_TASK_SETTINGS: Dict[str, TaskSettings] = {
    "cola": TaskSettings(50, 64),
    "sst-2": TaskSettings(10, 64),
    "mrpc": TaskSettings(20, 128),
    "qqp": TaskSettings(5, 128),
    "sts-b": TaskSettings(20, 128),
    "mnli": TaskSettings(5, 128),
    "mnli-mm": TaskSettings(5, 128),
    "qnli": TaskSettings(10, 128),
    "rte": TaskSettings(20, 128),
    "wnli": TaskSettings(20, 128),
}


@dataclass
class ReadStats:
    """What reading one TSV file found."""

    path: str
    num_examples: int = 0
    num_bad_rows: int = 0
    bad_row_messages: List[str] = field(default_factory=list)  # the first few, for the log


class GlueProcessor:
    """Reads one GLUE task's TSV files.

    Subclasses set the column layout: `text_a_col`, `text_b_col` (None for
    single-sentence tasks) and `label_col` (negative counts from the end), with the
    header names expected at those columns (`header_names`, None for headerless
    files, which then must have `num_columns` columns).
    """

    task_name: str = ""
    display_name: str = ""
    output_mode: str = "classification"
    labels: Tuple[Optional[str], ...] = ("0", "1")
    #: What each label means, in class-index order (the model directory's ``id2label``).
    label_names: Tuple[str, ...] = ("0", "1")
    text_a_col: int = 0
    text_b_col: Optional[int] = None
    label_col: int = -1
    header_names: Optional[Tuple[str, Optional[str], str]] = None
    num_columns: Optional[int] = None
    split_files: Dict[str, str] = {"train": "train.tsv", "dev": "dev.tsv", "aug": "train_aug.tsv"}

    def get_labels(self) -> List[Optional[str]]:
        """The label strings in class-index order (``[None]`` for regression)."""
        return list(self.labels)

    @property
    def num_labels(self) -> int:
        """Width of the model output: number of classes, 1 for regression."""
        return 1 if self.output_mode == "regression" else len(self.labels)

    def split_path(self, data_dir: Union[str, Path], split: str) -> Path:
        """Path of the TSV file holding `split` ("train", "dev", "dev_mm" or "aug")."""
        if split not in self.split_files:
            valid = ", ".join(self.split_files)
            raise UsageError(f"task {self.task_name} has no split {split!r}; valid splits: {valid}")
        return Path(data_dir) / self.split_files[split]

    @property
    def test_splits(self) -> Dict[str, Tuple[str, str]]:
        """The unlabelled test split(s): split -> (its file, the file name of GLUE's submission for it)."""
        return {"test": ("test.tsv", f"{self.display_name}.tsv")}

    @property
    def text_columns(self) -> Tuple[str, Optional[str]]:
        """The header names of the text (and pair) columns, as the test files name them."""
        return (self.header_names[0], self.header_names[1]) if self.header_names else ("sentence", None)

    def read_test(self, data_dir: Union[str, Path], split: str = "test") -> List[InputExample]:
        """Every row of a test split, in file order: ``guid`` is the row's id (`TEST_ID_COLUMNS`), the texts are read
        by their header names, and ``label`` is a placeholder (the first label; nothing reads it). A submission
        needs every row, so a row that cannot be read is a `DataError`, never skipped."""
        file = Path(data_dir) / self.test_splits[split][0]
        if not file.is_file():
            raise DataError(f"{file} not found: `do_predict` labels the task's GLUE test split; download the task "
                            "with download_glue_data.py (its files include the test split)")
        examples: List[InputExample] = []
        columns: Optional[Tuple[int, int, Optional[int]]] = None
        width = 0
        with open(file, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                fields = _split_line(raw, strip_bom=lineno == 1)
                if fields == [""]:
                    continue
                if fields is None:
                    raise DataError(f"{file}:{lineno}: the line is not valid UTF-8; fix that row")
                if columns is None:
                    columns, width = self._test_header(file, lineno, fields), len(fields)
                    continue
                if len(fields) != width:
                    raise DataError(f"{file}:{lineno}: expected {width} tab-separated columns, found {len(fields)}; "
                                    "every test row needs a prediction: fix that row")
                index, a, b = columns
                examples.append(InputExample(guid=fields[index].strip(), text_a=fields[a].strip(),
                                             text_b=fields[b].strip() if b is not None else None,
                                             label=self.labels[0] if self.output_mode == "classification" else "0"))
        if not examples:
            raise DataError(f"{file} holds no test rows; download the task again with download_glue_data.py")
        return examples

    def _test_header(self, file: Path, lineno: int, fields: List[str]) -> Tuple[int, int, Optional[int]]:
        """(id column, text column, pair column or None) of a test file's header line."""
        names = [name.strip().lower() for name in fields]
        wanted = [name.lower() for name in self.text_columns if name is not None]
        index = next((names.index(name) for name in TEST_ID_COLUMNS if name in names), None)
        if index is None or not all(name in names for name in wanted):
            found = "\t".join(fields)[:80]
            raise DataError(f"{file}:{lineno}: missing or wrong header line: expected an `index` (or `id`) column and "
                            f"{wanted} (the {self.display_name} test layout of GLUE), found {found!r}; use the files "
                            "written by download_glue_data.py")
        return index, names.index(wanted[0]), names.index(wanted[1]) if len(wanted) > 1 else None

    def read_split(
        self, data_dir: Union[str, Path], split: str, skip_bad_rows: bool = False
    ) -> Tuple[List[InputExample], ReadStats]:
        """Read one split; returns the examples and what was skipped."""
        path = self.split_path(data_dir, split)
        if not path.is_file():
            raise DataError(_missing_file_message(path, split))
        return self.read_tsv(path, split, skip_bad_rows)

    def read_tsv(self, path: Path, set_type: str, skip_bad_rows: bool = False) -> Tuple[List[InputExample], ReadStats]:
        """Parse one TSV file of this task's layout (see the module docstring for bad rows)."""
        stats = ReadStats(path=str(path))
        examples: List[InputExample] = []
        num_columns = self.num_columns  # headerless layouts fix it; otherwise the header line does
        is_empty = True
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                fields = _split_line(raw, strip_bom=lineno == 1)
                if fields == [""]:
                    continue
                is_empty = False
                if num_columns is None:
                    num_columns = self._check_header(path, lineno, fields)
                    continue
                example, problem = self._parse_row(fields, num_columns, f"{set_type}-{lineno}")
                if problem is None:
                    examples.append(example)
                    continue
                message = f"{path}:{lineno}: {problem}"
                if not skip_bad_rows:
                    raise DataError(f"{message}; fix or delete that row, or skip bad rows (`skip_bad_rows`)")
                stats.num_bad_rows += 1
                if len(stats.bad_row_messages) < 5:
                    stats.bad_row_messages.append(message)
        if is_empty:
            raise DataError(f"{path} is empty; download the task again with download_glue_data.py")
        if not examples:
            raise DataError(f"{path} holds no usable examples ({stats.num_bad_rows} bad rows); check the file")
        if stats.num_bad_rows:
            logger.warning("%s: skipped %d bad rows, e.g. %s", path, stats.num_bad_rows, stats.bad_row_messages[0])
        stats.num_examples = len(examples)
        return examples, stats

    def _check_header(self, path: Path, lineno: int, fields: Optional[List[str]]) -> int:
        """Check the header line; returns the number of columns every row must have."""
        expected = [name for name in self.header_names if name is not None]
        cols = [self.text_a_col, self.text_b_col, self.label_col]
        found = []
        if fields is not None:
            for name, col in zip(self.header_names, cols):
                if name is not None:
                    found.append(fields[col].strip() if -len(fields) <= col < len(fields) else "")
        if fields is None or [f.lower() for f in found] != [e.lower() for e in expected]:
            shown = "(not UTF-8)" if fields is None else "\t".join(fields)[:80]
            raise DataError(
                f"{path}:{lineno}: missing or wrong header line: expected columns {expected} "
                f"(the {self.task_name.upper()} layout of the GLUE TSVs), found {shown!r}; "
                "use the files written by download_glue_data.py"
            )
        return len(fields)

    def _parse_row(
        self, fields: Optional[List[str]], num_columns: int, guid: str
    ) -> Tuple[Optional[InputExample], Optional[str]]:
        """Turn one row into an example, or return the reason it is a bad row."""
        if fields is None:
            return None, "the line is not valid UTF-8"
        if len(fields) != num_columns:
            return None, f"expected {num_columns} tab-separated columns, found {len(fields)}"
        text_a = fields[self.text_a_col].strip()
        text_b = fields[self.text_b_col].strip() if self.text_b_col is not None else None
        label = fields[self.label_col].strip()
        if not text_a or (self.text_b_col is not None and not text_b):
            return None, "empty text field"
        if self.output_mode == "regression":
            try:
                score = float(label)
            except ValueError:
                score = math.nan
            if not math.isfinite(score):
                return None, f"score {label!r} is not a number"
        elif label not in self.labels:
            return None, f"unknown label {label!r} (expected one of {', '.join(self.labels)})"
        return InputExample(guid=guid, text_a=text_a, text_b=text_b, label=label), None


class ColaProcessor(GlueProcessor):
    """CoLA: no header; columns source, label, original label, sentence."""

    task_name, display_name = "cola", "CoLA"
    label_names = ("unacceptable", "acceptable")
    text_a_col, label_col = 3, 1
    num_columns = 4


class Sst2Processor(GlueProcessor):
    """SST-2: header ``sentence  label``."""

    task_name, display_name = "sst-2", "SST-2"
    label_names = ("negative", "positive")
    text_a_col, label_col = 0, 1
    header_names = ("sentence", None, "label")


class MrpcProcessor(GlueProcessor):
    """MRPC: header ``Quality  #1 ID  #2 ID  #1 String  #2 String``."""

    task_name, display_name = "mrpc", "MRPC"
    label_names = ("not_equivalent", "equivalent")
    text_a_col, text_b_col, label_col = 3, 4, 0
    header_names = ("#1 String", "#2 String", "Quality")


class QqpProcessor(GlueProcessor):
    """QQP: header ``id  qid1  qid2  question1  question2  is_duplicate``."""

    task_name, display_name = "qqp", "QQP"
    label_names = ("not_duplicate", "duplicate")
    text_a_col, text_b_col, label_col = 3, 4, 5
    header_names = ("question1", "question2", "is_duplicate")


class StsbProcessor(GlueProcessor):
    """STS-B: header with ``sentence1`` (col 7), ``sentence2`` (col 8) and the float ``score`` last."""

    task_name, display_name = "sts-b", "STS-B"
    output_mode = "regression"
    labels = (None,)
    label_names = ("similarity",)
    text_a_col, text_b_col, label_col = 7, 8, -1
    header_names = ("sentence1", "sentence2", "score")


class MnliProcessor(GlueProcessor):
    """MNLI matched: ``sentence1`` (col 8), ``sentence2`` (col 9), ``gold_label`` last."""

    task_name, display_name = "mnli", "MNLI"
    labels = label_names = ("contradiction", "entailment", "neutral")
    text_a_col, text_b_col, label_col = 8, 9, -1
    header_names = ("sentence1", "sentence2", "gold_label")
    split_files = {
        "train": "train.tsv",
        "dev": "dev_matched.tsv",
        "dev_mm": "dev_mismatched.tsv",
        "aug": "train_aug.tsv",
    }

    @property
    def test_splits(self) -> Dict[str, Tuple[str, str]]:
        return {"test": ("test_matched.tsv", "MNLI-m.tsv"), "test_mm": ("test_mismatched.tsv", "MNLI-mm.tsv")}


class MnliMismatchedProcessor(MnliProcessor):
    """MNLI evaluated on the mismatched dev set."""

    task_name, display_name = "mnli-mm", "MNLI-mm"
    split_files = {**MnliProcessor.split_files, "dev": "dev_mismatched.tsv"}

    @property
    def test_splits(self) -> Dict[str, Tuple[str, str]]:
        return {"test": ("test_mismatched.tsv", "MNLI-mm.tsv")}


class QnliProcessor(GlueProcessor):
    """QNLI: header ``index  question  sentence  label``."""

    task_name, display_name = "qnli", "QNLI"
    labels = label_names = ("entailment", "not_entailment")
    text_a_col, text_b_col, label_col = 1, 2, -1
    header_names = ("question", "sentence", "label")


class RteProcessor(GlueProcessor):
    """RTE: header ``index  sentence1  sentence2  label``."""

    task_name, display_name = "rte", "RTE"
    labels = label_names = ("entailment", "not_entailment")
    text_a_col, text_b_col, label_col = 1, 2, -1
    header_names = ("sentence1", "sentence2", "label")


class WnliProcessor(GlueProcessor):
    """WNLI: header ``index  sentence1  sentence2  label`` with labels 0/1."""

    task_name, display_name = "wnli", "WNLI"
    label_names = ("not_entailment", "entailment")
    text_a_col, text_b_col, label_col = 1, 2, -1
    header_names = ("sentence1", "sentence2", "label")


PROCESSORS = {
    cls.task_name: cls
    for cls in (
        ColaProcessor,
        Sst2Processor,
        MrpcProcessor,
        QqpProcessor,
        StsbProcessor,
        MnliProcessor,
        MnliMismatchedProcessor,
        QnliProcessor,
        RteProcessor,
        WnliProcessor,
    )
}


def canonical_task_name(task_name: str) -> str:
    """Lower-cased task name, checked against the known GLUE tasks."""
    name = task_name.strip().lower()
    if name not in PROCESSORS:
        raise UsageError(f"unknown task {task_name!r} (`task_name`); valid names: {', '.join(PROCESSORS)}")
    return name


def get_processor(task_name: str) -> GlueProcessor:
    """The processor of a GLUE task (name case-insensitive: ``SST-2``, ``sst-2``, ...)."""
    return PROCESSORS[canonical_task_name(task_name)]()


def _split_line(raw: bytes, strip_bom: bool) -> Optional[List[str]]:
    """Tab-separated fields of one raw line without its line end (``[""]`` if blank, None if not UTF-8)."""
    raw = raw.rstrip(b"\n")
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if strip_bom and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        return [""]
    try:
        return raw.decode("utf-8").split("\t")
    except UnicodeDecodeError:
        return None


def _missing_file_message(path: Path, split: str) -> str:
    if split == "aug":
        return (f"{path} not found: augmented training needs train_aug.tsv (TinyBERT-style data "
                "augmentation output) in the task's data directory")
    nested = [p.parent for p in sorted(path.parent.glob(f"*/{path.name}"))]
    hint = f" (did you mean `data_dir` {nested[0]}?)" if nested else ""
    return (f"{path} not found{hint}; `data_dir` must be the task directory written by "
            "download_glue_data.py, e.g. glue_data/SST-2")


def default_task_settings(task_name: str) -> TaskSettings:
    """`DEFAULT_TASK_SETTINGS` entry of a task (name case-insensitive)."""
    return DEFAULT_TASK_SETTINGS[canonical_task_name(task_name)]
