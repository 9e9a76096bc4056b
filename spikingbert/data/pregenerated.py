"""Reading the epochs written by preprocess_training_data.py (see spikingbert/pretraining_data.py).

Training epoch ``i`` reads ``epoch_{i % num_data_epochs}.json``. Its instances are
converted to fixed-width arrays once, streaming the file line by line; with
``reduce_memory`` the arrays are numpy memory maps in a temporary directory, so a
corpus larger than memory works.
"""
import json
import logging
import tempfile
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from spikingbert.core.errors import DataError
from spikingbert.core.progress import progress
from spikingbert.data.pretraining import epoch_paths

logger = logging.getLogger(__name__)

REGENERATE = "regenerate it with preprocess_training_data.py"


def count_data_epochs(pregenerated_dir: Union[str, Path]) -> int:
    """Number of consecutive epochs ``epoch_0 .. epoch_{n-1}`` (data and metrics file) in the directory."""
    directory = Path(pregenerated_dir)
    if not directory.is_dir():
        raise DataError(f"pregenerated data directory {directory} not found; "
                        "create it with preprocess_training_data.py")
    count = 0
    while True:
        data_path, metrics_path = epoch_paths(directory, count)
        if not data_path.is_file():
            break
        if not metrics_path.is_file():
            raise DataError(f"{data_path} has no {metrics_path.name} (interrupted run?); {REGENERATE}")
        count += 1
    if count == 0:
        raise DataError(f"no epoch_0.json in {directory}; generate the data with preprocess_training_data.py")
    return count


def read_epoch_metrics(metrics_path: Path) -> Tuple[int, int]:
    """(num_training_examples, max_seq_len) of an ``epoch_{i}_metrics.json``."""
    if not metrics_path.is_file():
        raise DataError(f"{metrics_path} not found; {REGENERATE}")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        num_examples, max_seq_len = metrics["num_training_examples"], metrics["max_seq_len"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise DataError(f"{metrics_path} is not a valid metrics file ({err}); {REGENERATE}") from err
    if not (isinstance(num_examples, int) and isinstance(max_seq_len, int) and num_examples >= 0 and max_seq_len > 0):
        raise DataError(f"{metrics_path}: num_training_examples and max_seq_len must be non-negative integers; "
                        f"{REGENERATE}")
    return num_examples, max_seq_len


class PregeneratedDataset(Dataset):
    """One training epoch of pre-generated instances.

    Items are ``(input_ids, input_mask, segment_ids, lm_label_ids, is_next)``: four
    ``(max_seq_len,)`` long tensors (lm_label_ids is -1 where nothing is masked) and
    a long scalar (1 when segment B is a random next, as in the data's
    ``is_random_next``).
    """

    def __init__(self, training_path: Union[str, Path], epoch: int, tokenizer, num_data_epochs: int,
                 reduce_memory: bool = False):
        if num_data_epochs < 1:
            raise ValueError("num_data_epochs must be >= 1")
        self.data_epoch = epoch % num_data_epochs
        data_path, metrics_path = epoch_paths(training_path, self.data_epoch)
        if not data_path.is_file():
            raise DataError(f"{data_path} not found; {REGENERATE}")
        num_samples, seq_len = read_epoch_metrics(metrics_path)
        if epoch != self.data_epoch:
            logger.info("training epoch %d reuses data epoch %d (%s)", epoch, self.data_epoch, data_path.name)
        self.num_samples = num_samples
        self.seq_len = seq_len
        self._temp_dir: Optional[tempfile.TemporaryDirectory] = None  # owns the memory-mapped files
        self._array_dir: Optional[str] = None  # where they are (also set in copies sent to other processes)
        # reduce_memory with an empty epoch keeps (empty) in-memory arrays: numpy cannot map an empty file.
        if reduce_memory and num_samples > 0:
            self._temp_dir = tempfile.TemporaryDirectory(prefix="spikingbert-pregenerated-")
            self._array_dir = self._temp_dir.name
        arrays = {name: self._new_array(name, fill) for name, (_, _, fill) in self._specs().items()}
        self._fill(data_path, arrays, tokenizer.vocab)
        for array in arrays.values():
            if isinstance(array, np.memmap):
                array.flush()
        self.input_ids = arrays["input_ids"]
        self.input_masks = arrays["input_masks"]
        self.segment_ids = arrays["segment_ids"]
        self.lm_label_ids = arrays["lm_label_ids"]
        self.is_nexts = arrays["is_nexts"]

    def _specs(self):
        """name -> (dtype, shape, fill value) of the arrays."""
        rows = (self.num_samples, self.seq_len)
        return {
            "input_ids": (np.int32, rows, 0),
            "input_masks": (np.bool_, rows, 0),
            "segment_ids": (np.int8, rows, 0),
            "lm_label_ids": (np.int32, rows, -1),
            "is_nexts": (np.bool_, (self.num_samples,), 0),
        }

    def _memmap(self, name: str, mode: str) -> np.ndarray:
        dtype, shape, _ = self._specs()[name]
        return np.memmap(Path(self._array_dir) / f"{name}.memmap", mode=mode, dtype=dtype, shape=shape)

    def _new_array(self, name: str, fill: int) -> np.ndarray:
        dtype, shape, _ = self._specs()[name]
        if self._array_dir is None:
            return np.full(shape, fill, dtype=dtype)
        array = self._memmap(name, "w+")
        if fill:
            array[:] = fill
        return array

    def __getstate__(self):
        # Memory-mapped arrays travel to DataLoader worker processes as their files, not their data;
        # the temporary directory stays owned (and deleted) by this process.
        state = dict(self.__dict__)
        if self._array_dir is not None:
            state["_temp_dir"] = None
            for name in self._specs():
                del state[name]
        return state

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        if self._array_dir is not None:
            for name in self._specs():
                setattr(self, name, self._memmap(name, "r"))

    def _fill(self, data_path: Path, arrays, vocab) -> None:
        """Stream the JSON lines into the arrays, checking each against the metrics."""
        count = 0
        with open(data_path, encoding="utf-8") as f:
            for lineno, line in enumerate(progress(f, total=self.num_samples, desc=f"loading {data_path.name}",
                                                   unit="instances"), 1):
                if not line.strip():
                    continue
                where = f"{data_path}:{lineno}"
                if count >= self.num_samples:
                    raise DataError(f"{where}: more instances than the {self.num_samples} its metrics file "
                                    f"records; {REGENERATE}")
                try:
                    instance = json.loads(line)
                    tokens = instance["tokens"]
                    segment_ids = instance["segment_ids"]
                    positions = instance["masked_lm_positions"]
                    labels = instance["masked_lm_labels"]
                    is_random_next = bool(instance["is_random_next"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise DataError(f"{where}: not a valid instance ({err}); {REGENERATE}") from err
                if len(tokens) > self.seq_len:
                    raise DataError(f"{where}: {len(tokens)} tokens exceed max_seq_len {self.seq_len} of the "
                                    f"metrics file; {REGENERATE}")
                if len(segment_ids) != len(tokens) or len(positions) != len(labels):
                    raise DataError(f"{where}: segment_ids or masked_lm_labels do not match the tokens; {REGENERATE}")
                try:
                    ids = [vocab[token] for token in tokens]
                    label_ids = [vocab[token] for token in labels]
                except KeyError as err:
                    raise DataError(f"{where}: token {err.args[0]!r} is not in the vocabulary; the data was "
                                    "generated with another vocab.txt (use the same `bert_model`)") from err
                if positions and not all(0 <= p < len(tokens) for p in positions):
                    raise DataError(f"{where}: a masked_lm_position lies outside the tokens; {REGENERATE}")
                n = len(tokens)
                arrays["input_ids"][count, :n] = ids
                arrays["input_masks"][count, :n] = True
                arrays["segment_ids"][count, :n] = segment_ids
                arrays["lm_label_ids"][count, positions] = label_ids
                arrays["is_nexts"][count] = is_random_next
                count += 1
        if count != self.num_samples:
            raise DataError(f"{data_path} holds {count} instances but its metrics file records {self.num_samples}; "
                            f"{REGENERATE}")

    def __len__(self) -> int:
        return self.num_samples

    def close(self) -> None:
        """Delete the memory-mapped files now (reduce_memory) rather than at garbage collection."""
        if self._temp_dir is not None:
            for name in self._specs():
                setattr(self, name, None)
            self._temp_dir.cleanup()
            self._temp_dir = None

    def __getitem__(self, item: int) -> Tuple[torch.Tensor, ...]:
        return (
            torch.from_numpy(self.input_ids[item].astype(np.int64)),
            torch.from_numpy(self.input_masks[item].astype(np.int64)),
            torch.from_numpy(self.segment_ids[item].astype(np.int64)),
            torch.from_numpy(self.lm_label_ids[item].astype(np.int64)),
            torch.tensor(int(self.is_nexts[item]), dtype=torch.long),
        )


class PregeneratedEpochs:
    """The training data of general KD: training epoch ``e`` reads data epoch ``e % num_data_epochs``.

    One epoch's `PregeneratedDataset` is held at a time (the previous one is closed, which frees its
    memory maps under ``reduce_memory``); ``num_examples`` reads only the metrics file.
    """

    def __init__(self, directory: Path, tokenizer, reduce_memory: bool = False):
        self.directory = Path(directory)
        self.tokenizer = tokenizer
        self.reduce_memory = reduce_memory
        self.num_data_epochs = count_data_epochs(self.directory)
        self.seq_len = read_epoch_metrics(epoch_paths(self.directory, 0)[1])[1]
        self._cache: dict = {}

    def check(self) -> None:
        """Read the first epoch in full (kept for training) and check the others as far as is cheap: a metrics file
        with the same sequence length, and a data file that ends with a complete line (a truncated file does not)."""
        self.dataset(0)
        for epoch in range(1, self.num_data_epochs):
            data_path, metrics_path = epoch_paths(self.directory, epoch)
            num_examples, seq_len = read_epoch_metrics(metrics_path)
            if seq_len != self.seq_len:
                raise DataError(f"{metrics_path}: max_seq_len {seq_len} differs from epoch 0's {self.seq_len}: the "
                                f"epochs come from different runs; {REGENERATE}")
            with open(data_path, "rb") as f:
                size = f.seek(0, 2)
                f.seek(max(size - 1, 0))
                complete = size == 0 and num_examples == 0 or f.read(1) == b"\n"
            if not complete:
                raise DataError(f"{data_path} ends in the middle of a line (truncated?); {REGENERATE}")

    def dataset(self, epoch: int) -> PregeneratedDataset:
        data_epoch = epoch % self.num_data_epochs
        if data_epoch not in self._cache:
            for old in self._cache.values():
                old.close()
            self._cache.clear()
            self._cache[data_epoch] = PregeneratedDataset(self.directory, data_epoch, self.tokenizer,
                                                          self.num_data_epochs, reduce_memory=self.reduce_memory)
        return self._cache[data_epoch]

    def num_examples(self, epoch: int) -> int:
        return read_epoch_metrics(epoch_paths(self.directory, epoch % self.num_data_epochs)[1])[0]

    def close(self) -> None:
        """Delete the held epoch's memory-mapped files now, not at garbage collection (which a worker that ends
        with ``os._exit`` never reaches)."""
        for old in self._cache.values():
            old.close()
        self._cache.clear()

    def __enter__(self) -> "PregeneratedEpochs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
