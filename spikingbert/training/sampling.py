"""The order of the training examples: a seeded permutation per epoch that a resumed run can continue exactly,
optionally grouped into batches of similar length (``--group_by_length``)."""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

__all__ = ["MEGABATCH_BATCHES", "ResumableSampler", "group_by_length"]

#: Micro-batches per megabatch of `group_by_length`.
MEGABATCH_BATCHES = 50


class ResumableSampler(Sampler[int]):
    """The indices of one epoch for this rank, seeded with ``seed + epoch``, minus the first ``skip``.

    With one process this is a seeded random permutation; under torchrun each rank
    gets its `DistributedSampler` share (padded with repeats to equal length). With
    ``lengths`` (every example's real length, (N,)) that share is reordered into batches
    of ``batch_size`` examples of similar length (`group_by_length`); ``skip`` must then
    be a multiple of ``batch_size`` (whole batches, as the trainer skips them).
    """

    def __init__(self, num_examples: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1, skip: int = 0,
                 lengths: Optional[Sequence[int]] = None, batch_size: int = 1):
        base = DistributedSampler(
            range(num_examples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        base.set_epoch(epoch)
        self._indices = list(base)
        if lengths is not None:
            self._indices = group_by_length(self._indices, lengths, batch_size, seed, epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices[self.skip:])

    def __len__(self) -> int:
        return max(len(self._indices) - self.skip, 0)


def group_by_length(indices: Sequence[int], lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                    megabatch_batches: int = MEGABATCH_BATCHES) -> List[int]:
    """``indices`` reordered so that every ``batch_size`` consecutive ones form a batch of similar lengths.

    The indices are cut into megabatches of ``megabatch_batches * batch_size``, each is sorted by
    ``lengths`` (longest first, ties in the given order) and cut into batches, and the order of the
    batches is shuffled (a generator seeded with ``seed`` and ``epoch``, the same on every rank) so
    that long and short batches mix. A short last batch stays last: the k-th run of ``batch_size``
    indices is always the k-th batch, so skipping ``k * batch_size`` indices skips k whole batches.
    """
    lengths = torch.as_tensor(lengths).tolist()
    size = megabatch_batches * batch_size
    batches: List[List[int]] = []
    for start in range(0, len(indices), size):
        megabatch = sorted(indices[start:start + size], key=lambda i: -lengths[i])
        batches += [megabatch[i:i + batch_size] for i in range(0, len(megabatch), batch_size)]
    short = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    rng = np.random.default_rng([seed % 2 ** 32, epoch])      # a stream of its own, apart from the permutation's
    shuffled = [batches[j] for j in rng.permutation(len(batches))]
    return [index for batch in shuffled + short for index in batch]
