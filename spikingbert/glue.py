"""GLUE tasks: TSV readers, feature conversion, a feature cache and the metrics.

The readers expect the files that ``download_glue_data.py`` writes (the standard
GLUE TSVs), one directory per task, e.g. ``glue_data/SST-2/{train,dev}.tsv``;
``data_dir`` arguments below are that task directory.

A row with the wrong number of columns, an unknown label, an unparsable score or
an empty text field is a *bad row*. By default the first bad row stops the run
with a `DataError` naming ``file:line``; with ``skip_bad_rows=True`` bad rows are
skipped and counted instead.
"""
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef
from torch.utils.data import Dataset, TensorDataset, default_collate

from spikingbert.errors import DataError, UsageError
from transformer.file_utils import atomic_open

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
SPLITS = ("train", "dev", "dev_mm", "aug")


@dataclass(frozen=True)
class InputExample:
    """One sentence (pair) with its label as written in the TSV (a score string for STS-B)."""

    guid: str
    text_a: str
    text_b: Optional[str] = None
    label: Optional[str] = None


@dataclass
class InputFeatures:
    """One example as model inputs, each list of length ``max_seq_length``.

    `seq_length` is the number of real (non-padding) tokens.
    """

    input_ids: List[int]
    input_mask: List[int]
    segment_ids: List[int]
    label_id: Union[int, float]
    seq_length: int


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


@dataclass
class DatasetStats:
    """What `load_task_dataset` did: rows read and skipped, truncation, cache use."""

    task_name: str
    split: str
    path: str
    num_examples: int
    num_bad_rows: int
    bad_row_messages: List[str]
    num_truncated: int
    cache_hit: bool
    cache_path: Optional[str]


class GlueProcessor:
    """Reads one GLUE task's TSV files.

    Subclasses set the column layout: `text_a_col`, `text_b_col` (None for
    single-sentence tasks) and `label_col` (negative counts from the end), with the
    header names expected at those columns (`header_names`, None for headerless
    files, which then must have `num_columns` columns).
    """

    task_name: str = ""
    output_mode: str = "classification"
    labels: Tuple[Optional[str], ...] = ("0", "1")
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

    def get_train_examples(self, data_dir: Union[str, Path], skip_bad_rows: bool = False) -> List[InputExample]:
        """Examples of ``train.tsv``."""
        return self.read_split(data_dir, "train", skip_bad_rows)[0]

    def get_dev_examples(self, data_dir: Union[str, Path], skip_bad_rows: bool = False) -> List[InputExample]:
        """Examples of the dev file (``dev.tsv``; MNLI ``dev_matched.tsv``, MNLI-mm ``dev_mismatched.tsv``)."""
        return self.read_split(data_dir, "dev", skip_bad_rows)[0]

    def get_aug_examples(self, data_dir: Union[str, Path], skip_bad_rows: bool = False) -> List[InputExample]:
        """Examples of ``train_aug.tsv`` (TinyBERT-style augmented training data, same layout as train)."""
        return self.read_split(data_dir, "aug", skip_bad_rows)[0]

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
                    raise DataError(f"{message}; fix or delete that row, or skip bad rows (--skip_bad_rows)")
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

    task_name = "cola"
    text_a_col, label_col = 3, 1
    num_columns = 4


class Sst2Processor(GlueProcessor):
    """SST-2: header ``sentence  label``."""

    task_name = "sst-2"
    text_a_col, label_col = 0, 1
    header_names = ("sentence", None, "label")


class MrpcProcessor(GlueProcessor):
    """MRPC: header ``Quality  #1 ID  #2 ID  #1 String  #2 String``."""

    task_name = "mrpc"
    text_a_col, text_b_col, label_col = 3, 4, 0
    header_names = ("#1 String", "#2 String", "Quality")


class QqpProcessor(GlueProcessor):
    """QQP: header ``id  qid1  qid2  question1  question2  is_duplicate``."""

    task_name = "qqp"
    text_a_col, text_b_col, label_col = 3, 4, 5
    header_names = ("question1", "question2", "is_duplicate")


class StsbProcessor(GlueProcessor):
    """STS-B: header with ``sentence1`` (col 7), ``sentence2`` (col 8) and the float ``score`` last."""

    task_name = "sts-b"
    output_mode = "regression"
    labels = (None,)
    text_a_col, text_b_col, label_col = 7, 8, -1
    header_names = ("sentence1", "sentence2", "score")


class MnliProcessor(GlueProcessor):
    """MNLI matched: ``sentence1`` (col 8), ``sentence2`` (col 9), ``gold_label`` last."""

    task_name = "mnli"
    labels = ("contradiction", "entailment", "neutral")
    text_a_col, text_b_col, label_col = 8, 9, -1
    header_names = ("sentence1", "sentence2", "gold_label")
    split_files = {
        "train": "train.tsv",
        "dev": "dev_matched.tsv",
        "dev_mm": "dev_mismatched.tsv",
        "aug": "train_aug.tsv",
    }


class MnliMismatchedProcessor(MnliProcessor):
    """MNLI evaluated on the mismatched dev set."""

    task_name = "mnli-mm"
    split_files = {**MnliProcessor.split_files, "dev": "dev_mismatched.tsv"}


class QnliProcessor(GlueProcessor):
    """QNLI: header ``index  question  sentence  label``."""

    task_name = "qnli"
    labels = ("entailment", "not_entailment")
    text_a_col, text_b_col, label_col = 1, 2, -1
    header_names = ("question", "sentence", "label")


class RteProcessor(GlueProcessor):
    """RTE: header ``index  sentence1  sentence2  label``."""

    task_name = "rte"
    labels = ("entailment", "not_entailment")
    text_a_col, text_b_col, label_col = 1, 2, -1
    header_names = ("sentence1", "sentence2", "label")


class WnliProcessor(GlueProcessor):
    """WNLI: header ``index  sentence1  sentence2  label`` with labels 0/1."""

    task_name = "wnli"
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
        raise UsageError(f"unknown task {task_name!r} (--task_name); valid names: {', '.join(PROCESSORS)}")
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
    hint = f" (did you mean --data_dir {nested[0]}?)" if nested else ""
    return (f"{path} not found{hint}; --data_dir must be the task directory written by "
            "download_glue_data.py, e.g. glue_data/SST-2")


def _truncate_seq_pair(tokens_a: List[str], tokens_b: List[str], max_length: int) -> bool:
    """Drop tokens from the end of the longer sequence until both fit; True if anything was dropped."""
    truncated = False
    while len(tokens_a) + len(tokens_b) > max_length:
        longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        longer.pop()
        truncated = True
    return truncated


def _convert(
    examples: Sequence[InputExample],
    label_list: Sequence[Optional[str]],
    max_seq_length: int,
    tokenizer,
    output_mode: str,
) -> Tuple[List[InputFeatures], int]:
    """`convert_examples_to_features`, also returning how many examples were truncated."""
    if max_seq_length < 3:
        raise UsageError(f"--max_seq_length {max_seq_length} is too small: it must be at least 3")
    if output_mode not in ("classification", "regression"):
        raise ValueError(f"output_mode must be 'classification' or 'regression', not {output_mode!r}")
    label_map = {label: i for i, label in enumerate(label_list)}
    features: List[InputFeatures] = []
    num_truncated = 0
    for example in examples:
        tokens_a = tokenizer.tokenize(example.text_a)
        if example.text_b is not None:
            tokens_b = tokenizer.tokenize(example.text_b)
            truncated = _truncate_seq_pair(tokens_a, tokens_b, max_seq_length - 3)
        else:
            tokens_b = None
            truncated = len(tokens_a) > max_seq_length - 2
            del tokens_a[max_seq_length - 2:]
        num_truncated += truncated
        tokens = ["[CLS]"] + tokens_a + ["[SEP]"]
        segment_ids = [0] * len(tokens)
        if tokens_b is not None:
            tokens += tokens_b + ["[SEP]"]
            segment_ids += [1] * (len(tokens_b) + 1)
        input_ids = tokenizer.convert_tokens_to_ids(tokens)
        seq_length = len(input_ids)
        padding = [0] * (max_seq_length - seq_length)
        if output_mode == "classification":
            if example.label not in label_map:
                raise DataError(f"example {example.guid}: unknown label {example.label!r} "
                                f"(expected one of {', '.join(map(str, label_list))})")
            label_id: Union[int, float] = label_map[example.label]
        else:
            label_id = float(example.label)
        features.append(InputFeatures(
            input_ids=input_ids + padding,
            input_mask=[1] * seq_length + padding,
            segment_ids=segment_ids + padding,
            label_id=label_id,
            seq_length=seq_length,
        ))
    return features, num_truncated


def convert_examples_to_features(
    examples: Sequence[InputExample],
    label_list: Sequence[Optional[str]],
    max_seq_length: int,
    tokenizer,
    output_mode: str,
) -> List[InputFeatures]:
    """Tokenize examples into ``[CLS] a [SEP] b [SEP]`` features padded with zeros to `max_seq_length`.

    Segment ids are 0 up to and including the first [SEP], 1 after it. A pair that
    does not fit loses tokens from the end of its longer sequence first; a single
    sentence is cut at the end.
    """
    return _convert(examples, label_list, max_seq_length, tokenizer, output_mode)[0]


def _features_to_tensors(features: Sequence[InputFeatures], output_mode: str) -> Dict[str, torch.Tensor]:
    label_dtype = torch.float32 if output_mode == "regression" else torch.long
    return {
        "input_ids": torch.tensor([f.input_ids for f in features], dtype=torch.long),
        "input_mask": torch.tensor([f.input_mask for f in features], dtype=torch.long),
        "segment_ids": torch.tensor([f.segment_ids for f in features], dtype=torch.long),
        "label_ids": torch.tensor([f.label_id for f in features], dtype=label_dtype),
        "seq_lengths": torch.tensor([f.seq_length for f in features], dtype=torch.long),
    }


_TENSOR_NAMES = ("input_ids", "input_mask", "segment_ids", "label_ids", "seq_lengths")


def features_to_dataset(features: Sequence[InputFeatures], output_mode: str) -> TensorDataset:
    """TensorDataset of (input_ids, input_mask, segment_ids, label_ids, seq_lengths).

    The first three are ``B x S`` long tensors, label_ids ``B`` (long for
    classification, float for regression), seq_lengths ``B`` long.
    """
    tensors = _features_to_tensors(features, output_mode)
    return TensorDataset(*(tensors[name] for name in _TENSOR_NAMES))


def example_lengths(dataset: Dataset) -> torch.Tensor:
    """Real (non-padding) tokens of every example, the sum of its ``input_mask``: (N,) long.

    ``dataset`` holds examples ``(input_ids, input_mask, segment_ids, ...)``, e.g. a `features_to_dataset`.
    """
    if isinstance(dataset, TensorDataset):
        masks = dataset.tensors[1]
    else:
        masks = torch.stack([dataset[i][1] for i in range(len(dataset))]) if len(dataset) else torch.zeros(0, 0)
    return masks.sum(dim=1).long()


def trim_batch(batch: Sequence[torch.Tensor], multiple_of: int = 1) -> Tuple[torch.Tensor, ...]:
    """A batch without its trailing padding columns.

    ``batch = (input_ids, input_mask, segment_ids, *rest)``: the first three (B, S) become (B, S'),
    S' = one past the last column in which some example has a real token (``input_mask`` 1), rounded
    up to a multiple of ``multiple_of`` (at most S); ``rest`` (labels, seq_lengths) is returned as it
    is. A model that masks padded keys out of its attention (the additive -10000 mask) gives every
    real token the same output on either batch, up to float rounding.
    """
    input_ids, input_mask, segment_ids, *rest = batch
    used = input_mask.any(dim=0).nonzero()
    longest = int(used.max()) + 1 if used.numel() else 1
    width = min(-(-longest // multiple_of) * multiple_of, input_ids.shape[1])
    return (input_ids[:, :width], input_mask[:, :width], segment_ids[:, :width], *rest)


def collate_trimmed(examples: Sequence[Sequence[torch.Tensor]], multiple_of: int = 1) -> Tuple[torch.Tensor, ...]:
    """DataLoader ``collate_fn``: examples stacked into a batch (`default_collate`), then `trim_batch`."""
    return trim_batch(default_collate(examples), multiple_of)


def vocab_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's vocabulary (tokens in id order)."""
    items = sorted(tokenizer.vocab.items(), key=lambda kv: kv[1])
    text = "\n".join(f"{token}\t{index}" for token, index in items)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _cache_key(task: str, split: str, path: Path, tokenizer, max_seq_length: int, skip_bad_rows: bool) -> Dict:
    stat = path.stat()
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "task": task,
        "split": split,
        "max_seq_length": max_seq_length,
        "vocab_sha256": vocab_fingerprint(tokenizer),
        "do_lower_case": bool(getattr(tokenizer, "do_lower_case", True)),
        "source_name": path.name,
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "skip_bad_rows": skip_bad_rows,
    }


def _load_cache(cache_path: Path, key: Dict, num_examples: int) -> Optional[Dict]:
    """The cached tensors if the file exists and matches `key`, else None."""
    if not cache_path.is_file():
        return None
    try:
        blob = torch.load(cache_path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: rebuild it
        logger.warning("ignoring unreadable feature cache %s (%s); rebuilding it", cache_path, err)
        return None
    meta = blob.get("meta", {}) if isinstance(blob, dict) else {}
    stale = [k for k in key if meta.get(k) != key[k]]
    if not stale and meta.get("num_examples") != num_examples:
        stale = ["num_examples"]
    if stale:
        logger.info("feature cache %s is stale (%s changed); rebuilding it", cache_path, ", ".join(stale))
        return None
    return blob


def _save_cache(cache_path: Path, blob: Dict) -> None:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(cache_path, binary=True) as f:
        torch.save(blob, f)


def load_task_dataset(
    task_name: str,
    data_dir: Union[str, Path],
    split: str,
    tokenizer,
    max_seq_length: int,
    cache_dir: Optional[Union[str, Path]] = None,
    skip_bad_rows: bool = False,
) -> Tuple[TensorDataset, List[InputExample], DatasetStats]:
    """Read a split of a task and turn it into a TensorDataset (see `features_to_dataset`).

    With `cache_dir`, features are cached in ``<cache_dir>/<task>-<split>-len<S>.pt``
    and reused only while task, split, max_seq_length, vocabulary, do_lower_case,
    the source file (name, size, mtime) and skip_bad_rows are unchanged. The TSV is
    read (and validated) every time; only tokenization is skipped on a cache hit.
    """
    task = canonical_task_name(task_name)
    processor = PROCESSORS[task]()
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    examples, read_stats = processor.read_split(data_dir, split, skip_bad_rows)
    path = processor.split_path(data_dir, split)

    cache_path = Path(cache_dir) / f"{task}-{split}-len{max_seq_length}.pt" if cache_dir is not None else None
    blob = None
    if cache_path is not None:
        key = _cache_key(task, split, path, tokenizer, max_seq_length, skip_bad_rows)
        blob = _load_cache(cache_path, key, len(examples))
    cache_hit = blob is not None
    if cache_hit:
        logger.info("loaded features of %s %s from cache %s", task, split, cache_path)
        num_truncated = int(blob["meta"]["num_truncated"])
        tensors = {name: blob[name] for name in _TENSOR_NAMES}
        tensors = {name: t if t.is_floating_point() else t.long() for name, t in tensors.items()}
    else:
        features, num_truncated = _convert(
            examples, processor.get_labels(), max_seq_length, tokenizer, processor.output_mode)
        tensors = _features_to_tensors(features, processor.output_mode)
        if cache_path is not None:
            meta = {**key, "num_examples": len(examples), "num_truncated": num_truncated}
            stored = {name: t if t.is_floating_point() else t.int() for name, t in tensors.items()}
            _save_cache(cache_path, {"meta": meta, **stored})
    if num_truncated:
        logger.info("%s %s: %d of %d examples truncated to %d tokens",
                    task, split, num_truncated, len(examples), max_seq_length)
    dataset = TensorDataset(*(tensors[name] for name in _TENSOR_NAMES))
    stats = DatasetStats(
        task_name=task,
        split=split,
        path=str(path),
        num_examples=len(examples),
        num_bad_rows=read_stats.num_bad_rows,
        bad_row_messages=read_stats.bad_row_messages,
        num_truncated=num_truncated,
        cache_hit=cache_hit,
        cache_path=str(cache_path) if cache_path is not None else None,
    )
    return dataset, examples, stats


def _as_array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def compute_metrics(task_name: str, preds, labels) -> Dict[str, float]:
    """Dev-set metrics of a task from predicted class ids (scores for STS-B) and gold labels.

    Keys: CoLA ``mcc`` (Matthews correlation); SST-2, MNLI(-mm), QNLI, RTE, WNLI
    ``acc``; MRPC, QQP ``acc``, ``f1`` (positive class 1) and ``acc_and_f1`` (their
    mean); STS-B ``pearson``, ``spearmanr`` and ``corr`` (their mean).
    """
    task = canonical_task_name(task_name)
    preds, labels = _as_array(preds), _as_array(labels)
    if task == "sts-b":
        preds, labels = preds.reshape(-1).astype(np.float64), labels.reshape(-1).astype(np.float64)
    if preds.shape != labels.shape:
        raise ValueError(f"preds {preds.shape} and labels {labels.shape} differ in shape")
    if task == "cola":
        return {"mcc": float(matthews_corrcoef(labels, preds))}
    if task == "sts-b":
        pearson = float(pearsonr(preds, labels)[0])
        spearman = float(spearmanr(preds, labels)[0])
        return {"pearson": pearson, "spearmanr": spearman, "corr": (pearson + spearman) / 2}
    acc = float((preds == labels).mean())
    if task in ("mrpc", "qqp"):
        f1 = float(f1_score(y_true=labels, y_pred=preds))
        return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
    return {"acc": acc}


_MAIN_METRIC = {"cola": "mcc", "sts-b": "corr"}


def main_metric(task_name: str) -> str:
    """Key of `compute_metrics` used to keep the best checkpoint (as the published code: acc, corr, mcc)."""
    return _MAIN_METRIC.get(canonical_task_name(task_name), "acc")


def default_task_settings(task_name: str) -> TaskSettings:
    """`DEFAULT_TASK_SETTINGS` entry of a task (name case-insensitive)."""
    return DEFAULT_TASK_SETTINGS[canonical_task_name(task_name)]


__all__ = [
    "DEFAULT_TASK_SETTINGS",
    "DatasetStats",
    "GlueProcessor",
    "InputExample",
    "InputFeatures",
    "ReadStats",
    "TaskSettings",
    "canonical_task_name",
    "compute_metrics",
    "convert_examples_to_features",
    "default_task_settings",
    "features_to_dataset",
    "get_processor",
    "load_task_dataset",
    "main_metric",
    "vocab_fingerprint",
]
