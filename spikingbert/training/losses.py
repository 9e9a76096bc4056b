"""Knowledge-distillation and supervised losses, as plain functions of tensors.

Layer map: with ``L_T`` teacher and ``L_S`` student encoder layers, ``k = L_T / L_S``
(a whole number, checked before a run: `spikingbert.run.model_dirs.layer_stride`). Student hidden state ``j``
(0 = embeddings) is matched with
teacher hidden state ``j * k``; student attention ``j`` (0-based) with teacher
attention ``j * k + k - 1``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MASKED_SCORE_THRESHOLD",
    "rep_loss",
    "att_loss",
    "soft_cross_entropy",
    "gold_label_loss",
]

# Attention scores at or below this value are masked positions (the additive mask is -10000).
MASKED_SCORE_THRESHOLD = -100.0


def rep_loss(student_reps: Sequence[Tensor], teacher_hidden: Sequence[Tensor], stride: int) -> Tensor:
    """Hidden-state loss ``sum_{j=0..L_S} MSE(student_reps[j], teacher_hidden[j * stride])``.

    Args:
        student_reps: ``L_S + 1`` tensors of shape (B, S, H_T), embeddings first.
        teacher_hidden: ``L_T + 1`` tensors of shape (B, S, H_T), embeddings first.
        stride: ``k = L_T / L_S``.
    """
    _check_lengths("hidden states", len(student_reps) - 1, len(teacher_hidden) - 1, stride)
    total = student_reps[0].new_zeros((), dtype=torch.float32)
    for j, rep in enumerate(student_reps):
        total = total + F.mse_loss(rep.float(), teacher_hidden[j * stride].float())
    return total


def att_loss(student_atts: Sequence[Tensor], teacher_atts: Sequence[Tensor], stride: int) -> Tensor:
    """Attention loss ``sum_{j<L_S} MSE(student_atts[j], teacher_atts[j * stride + stride - 1])``.

    Entries ``<= -100`` (masked positions) are replaced by 0 on both sides first.

    Args:
        student_atts: ``L_S`` pre-softmax score tensors of shape (B, nh, S, S).
        teacher_atts: ``L_T`` pre-softmax score tensors of shape (B, nh, S, S).
        stride: ``k = L_T / L_S``.
    """
    _check_lengths("attention scores", len(student_atts), len(teacher_atts), stride)
    total = student_atts[0].new_zeros((), dtype=torch.float32)
    for j, s_att in enumerate(student_atts):
        t_att = teacher_atts[j * stride + stride - 1]
        total = total + F.mse_loss(_unmask(s_att.float()), _unmask(t_att.float()))
    return total


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Prediction-layer loss ``mean(-softmax(z_T / tau) * log_softmax(z_S / tau))``.

    The mean runs over the batch *and* the classes, as in the published code.

    Args:
        student_logits, teacher_logits: (B, num_labels).
        temperature: ``tau`` > 0.
    """
    targets = F.softmax(teacher_logits.float() / temperature, dim=-1)
    log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (-targets * log_probs).mean()


def gold_label_loss(logits: Tensor, labels: Tensor, output_mode: str) -> Tensor:
    """Loss to the gold labels: cross-entropy of ``logits`` (B, K) to class ids (B,), or, for
    ``output_mode="regression"``, MSE of the single output (B, 1) to the scores (B,)."""
    if output_mode == "regression":
        return F.mse_loss(logits.view(-1), labels.view(-1).float())
    return F.cross_entropy(logits, labels.view(-1))


def _unmask(scores: Tensor) -> Tensor:
    return torch.where(scores <= MASKED_SCORE_THRESHOLD, torch.zeros_like(scores), scores)


def _check_lengths(what: str, student_layers: int, teacher_layers: int, stride: int) -> None:
    if student_layers * stride != teacher_layers:
        raise ValueError(
            f"{what}: {student_layers} student layers with stride {stride} do not map onto "
            f"{teacher_layers} teacher layers"
        )
