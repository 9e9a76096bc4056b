"""BERT pre-training instances from a plain-text corpus (logic of preprocess_training_data.py).

Corpus format: one sentence per line, a blank line between documents. The corpus
is tokenized once into a `DocumentStore` (flat token-id arrays, in memory or, with
``reduce_memory``, memory-mapped files in a temporary directory). Each epoch then
walks all documents and writes sentence-pair instances as in BERT pre-training
data generation:

* a target length of ``max_seq_len - 3`` tokens, or with probability
  ``short_seq_prob`` a random length in ``[2, max_seq_len - 3]``;
* sentences of a document are gathered into a chunk until the target length is
  reached; a random prefix of the chunk is segment A; with probability 0.5
  segment B is a random next (text from another document, picked with
  probability proportional to its number of sentences; the chunk's unused
  sentences go back to the document), otherwise the actual next: the rest of
  the chunk;
* a one-sentence chunk takes its actual next from the sentences after it (the
  document's last sentence becomes B after the sentence before it). BERT's own
  generator forces a random next there instead, which makes ~57% of the
  instances random nexts; this keeps the ratio at 50%;
* the pair is truncated to fit (a random end of the longer segment each step) and
  written as ``[CLS] A [SEP] B [SEP]`` with segment ids 0 for ``[CLS] A [SEP]``;
* with ``one_seq`` every instance is a single segment ``[CLS] A [SEP]``.

Masking (``masked_lm_prob > 0``, off by default since distillation needs no
masks) follows BERT: 80% ``[MASK]``, 10% the original token, 10% a random token.

Epoch ``i`` draws from its own generator seeded by ``(seed, i)``, so the output is
the same whatever ``reduce_memory`` and ``num_workers`` are. Files are written to
a temporary name and renamed, so an interrupted run leaves no partial epoch file.
"""
import hashlib
import json
import logging
import multiprocessing
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from spikingbert.core.errors import DataError, UsageError
from spikingbert.core.files import atomic_open
from spikingbert.core.output_dir import claim_output_dir
from spikingbert.core.progress import progress
from spikingbert.core.settings import check_setting
from spikingbert.data.documents import DocumentStore

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class PretrainingConfig:
    """How instances are built (see the module docstring)."""

    max_seq_len: int = 128
    short_seq_prob: float = 0.1
    masked_lm_prob: float = 0.0
    max_predictions_per_seq: int = 20
    whole_word_mask: bool = False
    one_seq: bool = False
    seed: int = 42

    def validate(self) -> None:
        """Raise `UsageError` naming the setting whose value cannot work (ranges: `core.settings`)."""
        for name in ("max_seq_len", "short_seq_prob", "masked_lm_prob", "max_predictions_per_seq", "seed"):
            check_setting(name, getattr(self, name))
        min_len = 4 if self.one_seq else 5
        if self.max_seq_len < min_len:
            raise UsageError(f"`max_seq_len` {self.max_seq_len} is too small: use at least {min_len}")
        if self.masked_lm_prob > 0 and self.max_predictions_per_seq < 1:
            raise UsageError(f"`max_predictions_per_seq` {self.max_predictions_per_seq} must be >= 1 "
                             f"when `masked_lm_prob` > 0")


def truncate_seq_pair(tokens_a: List[str], tokens_b: List[str], max_num_tokens: int, rng: random.Random) -> None:
    """Shorten the pair in place to `max_num_tokens`, removing from a random end of the longer segment."""
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def create_masked_lm_predictions(
    tokens: List[str], config: PretrainingConfig, vocab_list: Sequence[str], rng: random.Random
) -> Tuple[List[str], List[int], List[str]]:
    """Mask tokens for masked-LM; returns (tokens, sorted masked positions, original tokens there)."""
    candidates: List[List[int]] = []
    previous_special = True
    for i, token in enumerate(tokens):
        if token in ("[CLS]", "[SEP]"):
            previous_special = True
            continue
        if config.whole_word_mask and token.startswith("##") and not previous_special:
            candidates[-1].append(i)
        else:
            candidates.append([i])
        previous_special = False
    num_to_mask = min(config.max_predictions_per_seq, max(1, int(round(len(tokens) * config.masked_lm_prob))))
    rng.shuffle(candidates)
    masked: List[Tuple[int, str]] = []
    for group in candidates:
        if len(masked) >= num_to_mask:
            break
        if len(masked) + len(group) > num_to_mask:
            continue
        for index in group:
            draw = rng.random()
            if draw < 0.8:
                replacement = "[MASK]"
            elif draw < 0.9:
                replacement = tokens[index]
            else:
                replacement = vocab_list[rng.randrange(len(vocab_list))]
            masked.append((index, tokens[index]))
            tokens[index] = replacement
    masked.sort()
    return tokens, [i for i, _ in masked], [label for _, label in masked]


def _make_instance(tokens_a: List[str], tokens_b: Optional[List[str]], is_random_next: bool,
                   config: PretrainingConfig, vocab_list: Sequence[str], rng: random.Random) -> Dict:
    tokens = ["[CLS]"] + tokens_a + ["[SEP]"]
    segment_ids = [0] * len(tokens)
    if tokens_b is not None:
        tokens += tokens_b + ["[SEP]"]
        segment_ids += [1] * (len(tokens_b) + 1)
    positions: List[int] = []
    labels: List[str] = []
    if config.masked_lm_prob > 0:
        tokens, positions, labels = create_masked_lm_predictions(tokens, config, vocab_list, rng)
    return {
        "tokens": tokens,
        "segment_ids": segment_ids,
        "is_random_next": is_random_next,
        "masked_lm_positions": positions,
        "masked_lm_labels": labels,
    }


def _to_tokens(sentences: List[List[int]], vocab_list: Sequence[str]) -> List[List[str]]:
    return [[vocab_list[i] for i in sentence] for sentence in sentences]


def _concat(sentences: Sequence[List[str]]) -> List[str]:
    return [token for sentence in sentences for token in sentence]


def _pair_instance(
    store: DocumentStore, doc_index: int, document: List[List[str]], chunk: List[List[str]], i: int,
    target_seq_length: int, config: PretrainingConfig, vocab_list: Sequence[str], rng: random.Random,
) -> Tuple[Dict, int]:
    """A sentence pair from `chunk`, the document's sentences ending at index `i`.

    Returns the instance and the index of the last sentence it consumed.
    """
    a_end = rng.randrange(1, len(chunk)) if len(chunk) >= 2 else 1
    tokens_a = _concat(chunk[:a_end])
    target_b_length = target_seq_length - len(tokens_a)
    tokens_b: List[str] = []
    is_random_next = rng.random() < 0.5
    if not is_random_next:
        if len(chunk) > 1:
            tokens_b = _concat(chunk[a_end:])
        elif i + 1 < len(document):  # one-sentence chunk: the sentences after it
            while i + 1 < len(document) and (not tokens_b or len(tokens_b) < target_b_length):
                i += 1
                tokens_b.extend(document[i])
        elif i > 0:  # the document's last sentence, after the sentence before it
            tokens_a, tokens_b = list(document[i - 1]), tokens_a
        else:  # a one-sentence document has no actual next
            is_random_next = True
    if is_random_next:
        other = _to_tokens(store.document(store.sample_other_document(rng, doc_index)), vocab_list)
        for sentence in other[rng.randrange(len(other)):]:
            tokens_b.extend(sentence)
            if len(tokens_b) >= target_b_length:
                break
        i -= len(chunk) - a_end  # the unused sentences start the next chunk
    truncate_seq_pair(tokens_a, tokens_b, config.max_seq_len - 3, rng)
    return _make_instance(tokens_a, tokens_b, is_random_next, config, vocab_list, rng), i


def create_instances_from_document(
    store: DocumentStore, doc_index: int, config: PretrainingConfig, vocab_list: Sequence[str], rng: random.Random
) -> List[Dict]:
    """All instances of one document for one epoch (see the module docstring)."""
    document = _to_tokens(store.document(doc_index), vocab_list)
    max_num_tokens = config.max_seq_len - (2 if config.one_seq else 3)
    target_seq_length = max_num_tokens
    if rng.random() < config.short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    instances: List[Dict] = []
    chunk: List[List[str]] = []
    chunk_length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_length += len(document[i])
        if i == len(document) - 1 or chunk_length >= target_seq_length:
            if config.one_seq:
                tokens_a = _concat(chunk)
                truncate_seq_pair(tokens_a, [], max_num_tokens, rng)
                instances.append(_make_instance(tokens_a, None, False, config, vocab_list, rng))
            else:
                instance, i = _pair_instance(store, doc_index, document, chunk, i, target_seq_length,
                                             config, vocab_list, rng)
                instances.append(instance)
            chunk = []
            chunk_length = 0
        i += 1
    return instances


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch `epoch`'s generator, derived from (seed, epoch) only."""
    digest = hashlib.sha256(f"spikingbert-pretraining:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def epoch_paths(output_dir: Union[str, Path], epoch: int) -> Tuple[Path, Path]:
    """(``epoch_{i}.json``, ``epoch_{i}_metrics.json``) in `output_dir`."""
    output_dir = Path(output_dir)
    return output_dir / f"epoch_{epoch}.json", output_dir / f"epoch_{epoch}_metrics.json"


def write_epoch(store: DocumentStore, vocab_list: Sequence[str], config: PretrainingConfig,
                epoch: int, output_dir: Path, show_progress: bool = True) -> int:
    """Write ``epoch_{epoch}.json`` and its metrics file; returns the number of instances."""
    data_path, metrics_path = epoch_paths(output_dir, epoch)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.unlink(missing_ok=True)  # never leave old metrics next to a new epoch file
    rng = random.Random(epoch_seed(config.seed, epoch))
    count = 0
    with atomic_open(data_path) as f:
        for doc_index in progress(range(len(store)), desc=f"epoch {epoch}", unit="documents",
                                  disable=not show_progress):
            for instance in create_instances_from_document(store, doc_index, config, vocab_list, rng):
                f.write(json.dumps(instance) + "\n")
                count += 1
    with atomic_open(metrics_path) as f:
        json.dump({"num_training_examples": count, "max_seq_len": config.max_seq_len}, f)
    return count


_WORKER_STATE: Dict = {}


def _init_worker(store: DocumentStore, vocab_list: List[str], config: PretrainingConfig, output_dir: str) -> None:
    _WORKER_STATE.update(store=store, vocab_list=vocab_list, config=config, output_dir=Path(output_dir))


def _worker_write_epoch(epoch: int) -> Tuple[int, int]:
    s = _WORKER_STATE
    return epoch, write_epoch(s["store"], s["vocab_list"], s["config"], epoch, s["output_dir"], show_progress=False)


def _remove_stale_epochs(output_dir: Path, first_stale: int) -> None:
    """Delete epoch files numbered from `first_stale` on, left by an earlier run with more epochs."""
    epoch = first_stale
    while any(path.exists() for path in epoch_paths(output_dir, epoch)):
        for path in epoch_paths(output_dir, epoch):
            if path.exists():
                logger.warning("removing %s left by an earlier run", path)
                path.unlink()
        epoch += 1


def _write_epochs(store: DocumentStore, vocab_list: List[str], config: PretrainingConfig, epochs: int,
                  output_dir: Path, num_workers: int) -> List[int]:
    """Write the epochs, in ``num_workers`` processes; returns the instance count of each."""
    counts = [0] * epochs
    workers = min(num_workers, epochs)
    if workers == 1:
        for epoch in range(epochs):
            counts[epoch] = write_epoch(store, vocab_list, config, epoch, output_dir)
        return counts
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(workers, initializer=_init_worker, initargs=(store, vocab_list, config, str(output_dir)))
    try:
        done = pool.imap_unordered(_worker_write_epoch, range(epochs))
        for epoch, count in progress(done, total=epochs, desc="epochs", unit="epochs"):
            counts[epoch] = count
        pool.close()
    except BaseException:
        pool.terminate()                       # the workers' half-written temporaries go with the claim's cleanup
        raise
    finally:
        pool.join()
    return counts


def vocab_list_of(tokenizer) -> List[str]:
    """Tokens in id order."""
    return [token for token, _ in sorted(tokenizer.vocab.items(), key=lambda kv: kv[1])]


def generate_pretraining_data(
    corpus_path: Union[str, Path],
    output_dir: Union[str, Path],
    tokenizer,
    config: PretrainingConfig,
    epochs_to_generate: int,
    reduce_memory: bool = False,
    num_workers: int = 1,
) -> List[int]:
    """Tokenize the corpus and write `epochs_to_generate` epochs; returns the instance count of each."""
    config.validate()
    check_setting("epochs_to_generate", epochs_to_generate)
    check_setting("num_workers", num_workers)
    output_dir = Path(output_dir)
    vocab_list = vocab_list_of(tokenizer)
    if config.masked_lm_prob > 0 and "[MASK]" not in tokenizer.vocab:
        raise UsageError(f"`masked_lm_prob` {config.masked_lm_prob} masks tokens with [MASK], but the "
                         f"vocabulary {getattr(tokenizer, 'vocab_file', '')} has no [MASK] token; use a BERT vocab.txt "
                         f"or `masked_lm_prob` 0")
    with tempfile.TemporaryDirectory(prefix="spikingbert-docs-") as tmp_dir:
        store = DocumentStore.build(Path(corpus_path), tokenizer, tmp_dir if reduce_memory else None)
        if len(store) == 0:
            raise DataError(f"`train_corpus` {corpus_path} holds no text")
        if len(store) < 2 and not config.one_seq:
            raise DataError(f"`train_corpus` {corpus_path} has a single document: random next sentences need at "
                            "least two; separate documents (or chapters, sections) with blank lines")
        with claim_output_dir(output_dir, "`output_dir`"):       # only once the corpus is known good
            _remove_stale_epochs(output_dir, epochs_to_generate)
            counts = _write_epochs(store, vocab_list, config, epochs_to_generate, output_dir, num_workers)
    logger.info("wrote %d epochs to %s (%s instances; settings %s)",
                epochs_to_generate, output_dir, counts, asdict(config))
    return counts


__all__ = [
    "DocumentStore",
    "PretrainingConfig",
    "create_instances_from_document",
    "create_masked_lm_predictions",
    "epoch_paths",
    "epoch_seed",
    "generate_pretraining_data",
    "truncate_seq_pair",
    "write_epoch",
]
