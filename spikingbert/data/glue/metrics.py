"""GLUE dev-set metrics and the main metric of each task."""
from typing import Dict

import numpy as np
import torch

from spikingbert.data.glue.tasks import canonical_task_name


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
    # scipy.stats and sklearn.metrics are imported where a task needs them: together they take about a second to
    # import, which every command (even --help) paid at start-up
    if task == "cola":
        from sklearn.metrics import matthews_corrcoef
        return {"mcc": float(matthews_corrcoef(labels, preds))}
    if task == "sts-b":
        from scipy.stats import pearsonr, spearmanr
        pearson = float(pearsonr(preds, labels)[0])
        spearman = float(spearmanr(preds, labels)[0])
        return {"pearson": pearson, "spearmanr": spearman, "corr": (pearson + spearman) / 2}
    acc = float((preds == labels).mean())
    if task in ("mrpc", "qqp"):
        from sklearn.metrics import f1_score
        f1 = float(f1_score(y_true=labels, y_pred=preds))
        return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
    return {"acc": acc}


_MAIN_METRIC = {"cola": "mcc", "sts-b": "corr"}


def main_metric(task_name: str) -> str:
    """Key of `compute_metrics` used to keep the best checkpoint (as the published code: acc, corr, mcc)."""
    return _MAIN_METRIC.get(canonical_task_name(task_name), "acc")
