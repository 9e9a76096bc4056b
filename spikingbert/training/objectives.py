"""What a training stage minimises: the student forward plus its loss, and the optimizer.

* `IntermediateDistillation`: ``att_loss + rep_loss`` (general KD and task IKD).
* `PredictionDistillation`: soft cross-entropy to the teacher's logits (or the gold-label loss).
* `ClassificationObjective`: a plain fine-tune of a classifier on the gold labels (the task teacher).
* `TeacherOutputs` / `teacher_forward`: the teacher's side of a batch, as plain tuples.
* `build_optimizer`: BertAdam with decoupled weight decay.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

from torch import Tensor, nn

from spikingbert.training.losses import att_loss, gold_label_loss, rep_loss, soft_cross_entropy

__all__ = [
    "IntermediateDistillation",
    "PredictionDistillation",
    "ClassificationObjective",
    "TeacherOutputs",
    "teacher_forward",
    "build_optimizer",
]


class IntermediateDistillation(nn.Module):
    """Student forward + intermediate KD loss ``att_loss + rep_loss`` (general KD and task IKD).

    ``forward(batch, teacher_out)`` with ``batch = (input_ids, input_mask, segment_ids, ...)``
    (each (B, S)) and ``teacher_out = (hidden_states, attention_scores)`` of the teacher.
    """

    def __init__(self, student: nn.Module, stride: int):
        super().__init__()
        self.student = student
        self.stride = stride

    def forward(self, batch: Sequence[Tensor], teacher_out: Tuple[Sequence[Tensor], Sequence[Tensor]]
                ) -> Dict[str, Tensor]:
        input_ids, input_mask, segment_ids = batch[:3]
        out = self.student(input_ids, token_type_ids=segment_ids, attention_mask=input_mask, output_attentions=True)
        teacher_hidden, teacher_atts = teacher_out
        a = att_loss(out.attention_scores, teacher_atts, self.stride)
        r = rep_loss(out.reps, teacher_hidden, self.stride)
        return {"loss": a + r, "att_loss": a, "rep_loss": r}


class PredictionDistillation(nn.Module):
    """Student forward + prediction-layer loss.

    Soft cross-entropy to the teacher's logits at ``temperature``; for regression, MSE to
    the gold labels; with ``true_labels``, cross-entropy (MSE for regression) to the gold labels.
    ``forward(batch, teacher_logits)``, ``batch[3]`` = gold labels (B,).
    """

    def __init__(self, student: nn.Module, output_mode: str, temperature: float = 1.0, true_labels: bool = False):
        super().__init__()
        self.student = student
        self.output_mode = output_mode
        self.temperature = temperature
        self.true_labels = true_labels

    @property
    def needs_teacher(self) -> bool:
        return self.output_mode == "classification" and not self.true_labels

    def forward(self, batch: Sequence[Tensor], teacher_logits: Optional[Tensor]) -> Dict[str, Tensor]:
        input_ids, input_mask, segment_ids, labels = batch[:4]
        logits = self.student(input_ids, token_type_ids=segment_ids, attention_mask=input_mask).logits.float()
        if self.needs_teacher:
            loss = soft_cross_entropy(logits, teacher_logits, self.temperature)
        else:
            loss = gold_label_loss(logits, labels, self.output_mode)
        return {"loss": loss, "cls_loss": loss.detach()}


class ClassificationObjective(nn.Module):
    """Forward + loss of a plain fine-tune: cross-entropy to the gold labels (MSE for regression).

    ``forward(batch, teacher_out)`` with ``batch = (input_ids, input_mask, segment_ids, label_ids, ...)``
    (each (B, S), labels (B,)); ``teacher_out`` is unused (there is no teacher).
    """

    def __init__(self, model: nn.Module, output_mode: str):
        super().__init__()
        self.model = model
        self.output_mode = output_mode

    def forward(self, batch: Sequence[Tensor], teacher_out=None) -> Dict[str, Tensor]:
        input_ids, input_mask, segment_ids, labels = batch[:4]
        logits = self.model(input_ids, token_type_ids=segment_ids, attention_mask=input_mask).logits.float()
        return {"loss": gold_label_loss(logits, labels, self.output_mode)}


class TeacherOutputs(nn.Module):
    """The teacher's outputs as plain tuples (what DataParallel can gather).

    ``kind="intermediate"``: ``(hidden_states, attention_scores)``; ``kind="logits"``: ``logits`` (B, K).
    """

    def __init__(self, teacher: nn.Module, kind: str):
        super().__init__()
        self.teacher = teacher
        self.kind = kind

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor):
        out = self.teacher(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        if self.kind == "logits":
            return out.logits
        return tuple(out.hidden_states), tuple(out.attention_scores)


def teacher_forward(teacher: nn.Module) -> Callable[[Sequence[Tensor]], object]:
    """`spikingbert.training.stage.Stage.teacher_forward` of a (wrapped) `TeacherOutputs`: the batch's first three
    tensors in."""
    def forward(batch: Sequence[Tensor]):
        input_ids, input_mask, segment_ids = batch[:3]
        return teacher(input_ids, segment_ids, input_mask)
    return forward


def build_optimizer(model: nn.Module, learning_rate: float, warmup_proportion: float, weight_decay: float,
                    schedule: str, total_steps: int):
    """BertAdam with decoupled weight decay on all weights except biases and LayerNorm parameters; CPU float32
    parameters are updated by the compiled kernel where the event engine runs (the same bits, one pass)."""
    from spikingbert.modules.event_engine import fused_bert_adam_update
    from spikingbert.transformer.optimization import BertAdam

    no_decay = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.LayerNorm) or name == "bias":
                no_decay.add(id(param))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return BertAdam(groups, lr=learning_rate, warmup=warmup_proportion, t_total=total_steps,
                    schedule=schedule, weight_decay=weight_decay, max_grad_norm=1.0,
                    update_kernel=fused_bert_adam_update)
