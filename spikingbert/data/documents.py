"""A tokenized corpus: the documents of a plain-text corpus (one sentence a line, a blank line between
documents) as flat token-id arrays, in memory or memory-mapped (``reduce_memory``), shared with the worker
processes that write pre-training epochs (`spikingbert.data.pretraining`)."""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from spikingbert.core.errors import DataError
from spikingbert.core.files import naming_write_errors
from spikingbert.core.progress import progress

__all__ = ["DocumentStore"]

logger = logging.getLogger(__name__)

TOKENIZE_BATCH_LINES = 4096


class DocumentStore:
    """A tokenized corpus as three flat integer arrays.

    Attributes:
        token_ids: ``(num_tokens,)`` int32, all sentences back to back.
        sent_starts: ``(num_sentences + 1,)`` int64, offset of each sentence in `token_ids`.
        doc_starts: ``(num_documents + 1,)`` int64, index of each document's first sentence.
    The arrays are either in memory or read-only memory maps of files in `directory`.
    """

    FILES = {"token_ids": np.int32, "sent_starts": np.int64, "doc_starts": np.int64}

    def __init__(self, token_ids: np.ndarray, sent_starts: np.ndarray, doc_starts: np.ndarray,
                 directory: Optional[str] = None):
        self.token_ids = token_ids
        self.sent_starts = sent_starts
        self.doc_starts = doc_starts
        self.directory = directory

    def __len__(self) -> int:
        return len(self.doc_starts) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sent_starts) - 1

    def document(self, index: int) -> List[List[int]]:
        """The sentences (token-id lists) of document `index`."""
        first, last = int(self.doc_starts[index]), int(self.doc_starts[index + 1])
        offsets = self.sent_starts[first:last + 1].tolist()
        base = offsets[0]
        ids = self.token_ids[base:offsets[-1]].tolist()
        return [ids[a - base:b - base] for a, b in zip(offsets[:-1], offsets[1:])]

    def sample_other_document(self, rng: random.Random, exclude: int) -> int:
        """A random document other than `exclude`, chosen with probability proportional to its sentences."""
        first, last = int(self.doc_starts[exclude]), int(self.doc_starts[exclude + 1])
        r = rng.randrange(self.num_sentences - (last - first))
        if r >= first:
            r += last - first
        return int(np.searchsorted(self.doc_starts, r, side="right")) - 1

    @classmethod
    def open(cls, directory: str) -> "DocumentStore":
        """Memory-map a store written by `build` with a directory."""
        arrays = {name: _map_raw(os.path.join(directory, f"{name}.bin"), dtype) for name, dtype in cls.FILES.items()}
        return cls(directory=directory, **arrays)

    def __getstate__(self) -> Dict:
        # A file-backed store travels to worker processes as its directory, not its data.
        if self.directory is not None:
            return {"directory": self.directory}
        return {"arrays": (self.token_ids, self.sent_starts, self.doc_starts)}

    def __setstate__(self, state: Dict) -> None:
        if "directory" in state:
            other = DocumentStore.open(state["directory"])
            self.__dict__.update(other.__dict__)
        else:
            self.token_ids, self.sent_starts, self.doc_starts = state["arrays"]
            self.directory = None

    @classmethod
    def build(cls, corpus_path: Path, tokenizer, directory: Optional[str] = None) -> "DocumentStore":
        """Tokenize a corpus (one sentence a line, blank line between documents).

        With `directory`, the arrays are streamed to raw ``.bin`` files there and memory-mapped,
        so the corpus never has to fit in memory.
        """
        corpus_path = Path(corpus_path)
        if not corpus_path.is_file():
            raise DataError(f"`train_corpus` {corpus_path} not found")
        writers = {name: _ArrayWriter(dtype, directory, name) for name, dtype in cls.FILES.items()}
        writers["sent_starts"].append([0])
        writers["doc_starts"].append([0])
        num_tokens = 0
        num_sentences = 0
        doc_sentences = 0
        with progress(total=corpus_path.stat().st_size, unit="B", unit_scale=True, desc="tokenizing") as bar:
            for block in _read_line_blocks(corpus_path, bar):
                texts = [text for text in block if text is not None]
                encoded = iter(_encode_batch(tokenizer, texts))
                block_ids: List[int] = []
                sent_lengths: List[int] = []
                doc_ends: List[int] = []
                for text in block:
                    if text is None:  # document break
                        if doc_sentences:
                            doc_ends.append(num_sentences + len(sent_lengths))
                            doc_sentences = 0
                        continue
                    ids = next(encoded)
                    if ids:
                        block_ids.extend(ids)
                        sent_lengths.append(len(ids))
                        doc_sentences += 1
                starts = num_tokens + np.cumsum(sent_lengths, dtype=np.int64)
                writers["token_ids"].append(block_ids)
                writers["sent_starts"].append(starts)
                writers["doc_starts"].append(doc_ends)
                num_tokens = int(starts[-1]) if len(starts) else num_tokens
                num_sentences += len(sent_lengths)
        if doc_sentences:
            writers["doc_starts"].append([num_sentences])
        arrays = {name: writer.finish() for name, writer in writers.items()}
        store = cls(directory=directory, **arrays)
        logger.info("corpus %s: %d documents, %d sentences, %d tokens",
                    corpus_path, len(store), store.num_sentences, num_tokens)
        return store


class _ArrayWriter:
    """Collects a 1-D integer array in memory, or streams it to the raw file ``<directory>/<name>.bin``."""

    def __init__(self, dtype, directory: Optional[str], name: str):
        self.dtype = np.dtype(dtype)
        self.parts: List[np.ndarray] = []
        self.path = os.path.join(directory, f"{name}.bin") if directory is not None else None
        self.raw = open(self.path, "wb") if self.path is not None else None  # noqa: SIM115 (closed by finish)

    def append(self, values: Sequence[int]) -> None:
        array = np.asarray(values, dtype=self.dtype)
        if self.raw is not None:
            with naming_write_errors(self.path):
                self.raw.write(array.tobytes())
        else:
            self.parts.append(array)

    def finish(self) -> np.ndarray:
        if self.raw is None:
            return np.concatenate(self.parts) if self.parts else np.zeros(0, self.dtype)
        self.raw.close()
        return _map_raw(self.path, self.dtype)


def _map_raw(path: str, dtype) -> np.ndarray:
    """Read-only memory map of a raw array file (numpy cannot map an empty file: that one is read)."""
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _read_line_blocks(path: Path, bar: Any) -> Iterator[List[Optional[str]]]:
    """Blocks of stripped lines of the corpus, None standing for a blank line (document break)."""
    block: List[Optional[str]] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            bar.update(len(raw))
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({err.reason}); "
                                "convert the corpus to UTF-8") from err
            block.append(text or None)
            if len(block) >= TOKENIZE_BATCH_LINES:
                yield block
                block = []
    if block:
        yield block


def _encode_batch(tokenizer, texts: List[str]) -> List[List[int]]:
    """Token ids of each text; uses the tokenizer's batch encoder when it has one."""
    if hasattr(tokenizer, "encode_batch"):
        return tokenizer.encode_batch(texts)
    return [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) for text in texts]
