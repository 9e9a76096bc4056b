"""``--do_predict``: a trained student labels the task's GLUE test split(s) and the files GLUE's submission server
expects are written into the output directory.

One file per test split, named as GLUE wants it (``SST-2.tsv``, ``CoLA.tsv``, ..., MNLI ``MNLI-m.tsv`` and
``MNLI-mm.tsv``): a header ``index<TAB>prediction``, then each test row's id (its ``index``/``id`` column) and
the label as the task's TSVs write it (``0``/``1``, ``entailment``, ...) or, for STS-B, the score with three
decimals. The logits come from the same batching and engine as the dev evaluation
(`spikingbert.evaluation.dev.predict_logits`).
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from torch import nn

from spikingbert.core.files import atomic_open
from spikingbert.data import glue
from spikingbert.evaluation.dev import predict_logits
from spikingbert.runtime import Runtime

__all__ = ["SUBMISSION_HEADER", "check_test_data", "predict_test_splits", "write_submissions"]

logger = logging.getLogger(__name__)

SUBMISSION_HEADER = ("index", "prediction")
Rows = List[Tuple[str, str]]


def check_test_data(task: str, data_dir: Path) -> None:
    """Read every test split of ``task`` once (header, column counts) before a model is loaded."""
    processor = glue.get_processor(task)
    for split in processor.test_splits:
        processor.read_test(data_dir, split)


def predict_test_splits(model: nn.Module, task: str, data_dir: Path, tokenizer, max_seq_length: int,
                        runtime: Runtime, batch_size: int) -> Dict[str, Rows]:
    """The submission rows of each test split, by submission file name; ``model`` is a `LogitsOnly`."""
    processor = glue.get_processor(task)
    submissions: Dict[str, Rows] = {}
    for split, (_, name) in processor.test_splits.items():
        dataset, ids = glue.load_test_dataset(task, data_dir, split, tokenizer, max_seq_length)
        logits = predict_logits(model, dataset, runtime, batch_size)
        submissions[name] = list(zip(ids, _labels(processor, logits)))
    return submissions


def _labels(processor: glue.GlueProcessor, logits: np.ndarray) -> List[str]:
    """Each row's prediction as GLUE reads it: the label string of the largest logit, or the score (STS-B)."""
    if processor.output_mode == "regression":
        return [f"{score:.3f}" for score in logits.reshape(-1).tolist()]
    labels = processor.get_labels()
    return [labels[i] for i in logits.argmax(axis=1).tolist()]


def write_submissions(output_dir: Path, submissions: Dict[str, Rows], output_mode: str) -> Dict[str, Dict[str, int]]:
    """Write each submission file atomically; return, per file, how often each label was predicted (a student
    that answers one class everywhere shows here) or, for scores, the number of rows."""
    counts = {}
    for name, rows in submissions.items():
        with atomic_open(output_dir / name) as f:
            f.write("\t".join(SUBMISSION_HEADER) + "\n")
            f.writelines(f"{index}\t{label}\n" for index, label in rows)
        counts[name] = ({"rows": len(rows)} if output_mode == "regression"
                        else dict(sorted(Counter(label for _, label in rows).items())))
        logger.info("wrote %s (%d test rows: %s)", output_dir / name, len(rows), counts[name])
    return counts
