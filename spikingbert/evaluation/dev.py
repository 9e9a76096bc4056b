"""Dev-set evaluation shared by every stage: logits in dataset order, GLUE metrics, the chance level, the results table.

Evaluation runs with the model in eval mode (`eval_mode` restores every submodule's training flag
afterwards), the examples sorted longest first and each batch cut to its longest example (see
`predict_logits`); under torchrun each rank evaluates its share and the logits are gathered.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from spikingbert.data import glue
from spikingbert.runtime import Runtime

__all__ = [
    "EVAL_WIDTH_MULTIPLE",
    "LogitsOnly",
    "eval_mode",
    "predict_logits",
    "evaluate_task",
    "dev_splits",
    "labels_of",
    "chance_level",
    "chance_name",
    "LEARNED_MARGIN",
    "has_learned",
    "print_table",
    "flatten",
]

#: Evaluation batches are trimmed to a multiple of this many columns (see `predict_logits`).
EVAL_WIDTH_MULTIPLE = 16


class LogitsOnly(nn.Module):
    """``model(...).logits`` of a student or teacher, for evaluation."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask).logits


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; every submodule's training flag is restored afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in saved:
            module.training = training


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: Dataset, runtime: Runtime, batch_size: int) -> np.ndarray:
    """Logits (N, K) of ``model`` (a `LogitsOnly`) on ``dataset``, in dataset order.

    The examples run longest first (by the sum of their ``input_mask``), each batch cut to
    its longest example rounded up to `EVAL_WIDTH_MULTIPLE` columns (`glue.trim_batch`):
    padded keys get -10000 in the attention, so the logits are those of the full padded
    batches, with less padding to compute. The rounding keeps them bit-equal on the CPU (in
    every check so far; cut to any width, vectorised softmax/matmul kernels sum a ragged
    tail in another order, and a spiking threshold can turn that last-bit change into
    another spike).
    Under torchrun each rank predicts its `DistributedSampler` share; the shares are
    gathered and every logit is put back at its example's index (the sampler's padding
    repeats are written twice, so every example counts once).
    """
    indices = list(range(len(dataset)))
    if runtime.distributed:
        indices = list(DistributedSampler(dataset, num_replicas=runtime.world_size, rank=runtime.rank,
                                          shuffle=False, drop_last=False))
    lengths = glue.example_lengths(dataset).tolist()
    indices.sort(key=lambda i: -lengths[i])                      # stable: equal lengths keep their order
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        collate_fn=functools.partial(glue.collate_trimmed, multiple_of=EVAL_WIDTH_MULTIPLE),
                        generator=torch.Generator())  # keeps the global RNG untouched
    chunks: List[Tensor] = []
    with eval_mode(model):
        for batch in loader:
            input_ids, input_mask, segment_ids = (t.to(runtime.device) for t in batch[:3])
            with runtime.autocast():
                logits = model(input_ids, segment_ids, input_mask)
            chunks.append(logits.float().cpu())
    logits = torch.cat(chunks).numpy() if chunks else np.zeros((0, 1), dtype=np.float32)
    full: Optional[np.ndarray] = None
    for rank_indices, rank_logits in runtime.all_gather_object((indices, logits)):
        if full is None:
            full = np.zeros((len(dataset), rank_logits.shape[1]), dtype=rank_logits.dtype)
        full[rank_indices] = rank_logits
    return full


def labels_of(dataset: Dataset) -> np.ndarray:
    """The gold labels ``(N,)`` of a `glue.load_task_dataset` dataset."""
    return dataset.tensors[3].numpy()


def evaluate_task(model: nn.Module, task: str, output_mode: str, dev_sets: Dict[str, Dataset],
                  runtime: Runtime, batch_size: int) -> Dict[str, float]:
    """Metrics of ``model`` on each dev set; the mismatched MNLI set's keys get an ``mm_`` prefix."""
    metrics: Dict[str, float] = {}
    for split, dataset in dev_sets.items():
        logits = predict_logits(model, dataset, runtime, batch_size)
        preds = logits.reshape(-1) if output_mode == "regression" else logits.argmax(axis=1)
        split_metrics = glue.compute_metrics(task, preds, labels_of(dataset))
        prefix = "mm_" if split == "dev_mm" else ""
        metrics.update({prefix + k: v for k, v in split_metrics.items()})
    return metrics


def dev_splits(task: str) -> List[str]:
    """The dev splits a task is evaluated on (MNLI: matched and mismatched)."""
    return ["dev", "dev_mm"] if task == "mnli" else ["dev"]


def chance_level(metric: str, labels: np.ndarray) -> float:
    """Score of a constant predictor: the majority-class rate for accuracy, 0 for correlations."""
    if metric == "acc" and labels.size:
        return float(np.bincount(labels.astype(np.int64)).max() / labels.size)
    return 0.0


def chance_name(metric: str) -> str:
    """What `chance_level` is called beside a score: the majority class for accuracy, else a constant prediction."""
    return "majority class" if metric == "acc" else "constant prediction"


#: A student whose dev score is not this far above `chance_level` (one point) has not learned the task.
LEARNED_MARGIN = 0.01


def has_learned(score: float, chance: float) -> bool:
    """Whether a dev ``score`` is clearly (`LEARNED_MARGIN`) above the ``chance`` score of a constant predictor."""
    return score > chance + LEARNED_MARGIN


def print_table(title: str, rows: Dict[str, Any]) -> None:
    """``rows`` as a two-column table on stdout (floats with 4 decimals)."""
    width = max(len(k) for k in rows)
    lines = [title, "-" * max(len(title), width + 12)]
    for key, value in rows.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    print("\n".join(lines), flush=True)


def flatten(record: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested dicts as ``outer.inner`` keys (for the printed table)."""
    flat: Dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
