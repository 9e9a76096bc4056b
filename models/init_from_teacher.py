"""Start a new student from its teacher's weights (``--init_from_teacher``).

The student's module names follow the teacher's (``bert.embeddings.*``,
``bert.encoder.layer.{j}.attention.self.query`` ...), so the map is by key: the
embeddings to the teacher's, student layer ``j`` to teacher layer ``j*stride + stride - 1``
(the layer whose attention the attention loss matches).
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def teacher_init_map(teacher_state: dict[str, Tensor], student_state: dict[str, Tensor], stride: int
                     ) -> dict[str, str]:
    """Student key -> teacher key of the tensors ``--init_from_teacher`` copies.

    Only tensors present in both models with the same shape are mapped; the heads (fit_dense,
    classifier, pooler) never are.
    """
    mapping = {}
    for key in student_state:
        if key.startswith("bert.embeddings."):
            source = key
        elif key.startswith("bert.encoder.layer."):
            layer, rest = key[len("bert.encoder.layer."):].split(".", 1)
            source = f"bert.encoder.layer.{int(layer) * stride + stride - 1}.{rest}"
        else:
            continue
        if source in teacher_state and teacher_state[source].shape == student_state[key].shape:
            mapping[key] = source
    return mapping


@torch.no_grad()
def init_student_from_teacher(student: nn.Module, teacher: nn.Module, stride: int) -> dict[str, str]:
    """Copy the teacher's embeddings and every ``stride``-th layer into ``student`` (see `teacher_init_map`).

    Returns the student key -> teacher key map of what was copied; logs it and what was not.
    """
    teacher_state = teacher.state_dict()
    own = student.state_dict()
    mapping = teacher_init_map(teacher_state, own, stride)
    for key, source in mapping.items():
        own[key].copy_(teacher_state[source])
    layers = sorted({(int(k.split(".")[3]), int(v.split(".")[3])) for k, v in mapping.items()
                     if k.startswith("bert.encoder.layer.")})
    skipped = sorted(k for k in own if k.startswith("bert.") and k not in mapping)
    logger.info("init from the teacher: copied %d tensors: the embeddings (%d) and student layer <- teacher layer %s",
                len(mapping), sum(k.startswith("bert.embeddings.") for k in mapping),
                ", ".join(f"{j} <- {t}" for j, t in layers) or "none")
    if skipped:
        logger.warning("init from the teacher: %d student tensors have no teacher tensor of the same name and shape "
                       "and keep their random initialisation: %s", len(skipped), ", ".join(skipped[:8]))
    return mapping
