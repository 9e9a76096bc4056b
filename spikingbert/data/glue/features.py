"""GLUE examples as model inputs: tokenization into ``[CLS] a [SEP] b [SEP]`` features, tensor datasets,
a feature cache, and batches trimmed to their longest example."""
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

from spikingbert.core.errors import DataError, UsageError
from spikingbert.core.files import atomic_open
from spikingbert.data.glue.tasks import PROCESSORS, SPLITS, InputExample, canonical_task_name
from spikingbert.transformer.tokenization import pack_inputs

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


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


#: Characters of a text tokenized at first (a multiple of the tokens needed); doubled until enough tokens come out.
_CHARS_PER_TOKEN = 16
_WHITESPACE = re.compile(r"\s")


def tokenize_prefix(tokenizer, text: str, needed: int) -> List[str]:
    """The first tokens of ``text``, at least ``needed`` of them when it has that many, without tokenizing the
    whole of a long text: a prefix cut at a whitespace (where words, hence tokens, end) is tokenized, and made
    longer while it gives fewer than ``needed`` tokens. The tokens returned are those of the whole text up to
    the cut, so truncating them to ``needed`` or fewer gives what truncating the whole text's tokens gives."""
    size = max(needed, 1) * _CHARS_PER_TOKEN
    while size < len(text):
        space = _WHITESPACE.search(text, size)
        if space is None:
            break
        tokens = tokenizer.tokenize(text[:space.start()])
        if len(tokens) >= needed:
            return tokens
        size *= 2
    return tokenizer.tokenize(text)


def _convert(
    examples: Sequence[InputExample],
    label_list: Sequence[Optional[str]],
    max_seq_length: int,
    tokenizer,
    output_mode: str,
) -> Tuple[List[InputFeatures], int]:
    """`convert_examples_to_features`, also returning how many examples were truncated."""
    if max_seq_length < 3:
        raise UsageError(f"`max_seq_length` {max_seq_length} is too small: it must be at least 3")
    if output_mode not in ("classification", "regression"):
        raise ValueError(f"output_mode must be 'classification' or 'regression', not {output_mode!r}")
    label_map = {label: i for i, label in enumerate(label_list)}
    features: List[InputFeatures] = []
    num_truncated = 0
    needed = max_seq_length - 1                    # one more than fits: truncation is then seen
    for example in examples:
        tokens_a = tokenize_prefix(tokenizer, example.text_a, needed)
        tokens_b = tokenize_prefix(tokenizer, example.text_b, needed) if example.text_b is not None else None
        tokens, segment_ids, truncated = pack_inputs(tokens_a, tokens_b, max_seq_length)
        num_truncated += truncated
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


def load_test_dataset(task_name: str, data_dir: Union[str, Path], split: str, tokenizer,
                      max_seq_length: int) -> Tuple[TensorDataset, List[str]]:
    """A task's test split (``test``; MNLI also ``test_mm``) as a TensorDataset in file order (its label column a
    placeholder) and each row's id, for the GLUE submission (`GlueProcessor.read_test`)."""
    processor = PROCESSORS[canonical_task_name(task_name)]()
    if split not in processor.test_splits:
        raise UsageError(f"task {processor.task_name} has no test split {split!r}: {', '.join(processor.test_splits)}")
    examples = processor.read_test(data_dir, split)
    features, _ = _convert(examples, processor.get_labels(), max_seq_length, tokenizer, processor.output_mode)
    return features_to_dataset(features, processor.output_mode), [example.guid for example in examples]


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
