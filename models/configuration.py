"""The spiking student's configuration: the shared BERT fields plus the spiking and training settings."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from spikingbert.core.errors import UsageError
from spikingbert.transformer.configuration import BertFields

from .migrations import MODEL_TYPE, migrate_student_config

__all__ = ["MODEL_TYPE", "SpikingBertConfig"]


@dataclass
class SpikingBertConfig(BertFields):
    """Student configuration: Hugging Face BERT fields (:class:`BertFields`) plus the spiking and training settings.

    Each field's type and range is in the settings table (`core.settings.SETTINGS`).
    """

    num_hidden_layers: int = 4
    model_type: str = MODEL_TYPE
    # spiking simulation
    t_conv: int = 100                 # simulation steps T
    vth: float = 1.0                  # firing threshold
    leak: float = 1.0                 # 1.0 = integrate-and-fire, (0, 1) = leaky
    schedule: str = "fast"            # "fast" (time folded into GEMMs) or "step" (one step at a time)
    time_chunk: Optional[int] = None  # steps per chunk of the fast schedule (None: sized automatically)
    # training
    train_mode: str = "ide"           # "ide" (implicit differentiation) or "bptt" (surrogate gradient)
    ide_point: str = "ann"            # "ann" (published) or "snn" (Jacobians at the simulated rates)
    feedback: bool = False            # Linear from the last O2 back into E
    solver: str = "broyden"           # backward solver with feedback
    solver_max_iter: int = 30
    solver_tol: float = 1e-4
    surrogate: str = "sigmoid"        # BPTT surrogate derivative
    surrogate_alpha: float = 4.0
    # heads
    fit_size: Optional[int] = None    # teacher hidden size for fit_dense (None: hidden_size)
    use_pooler: bool = False
    num_labels: int = 2
    # what the directory says about its inputs and outputs (the stages that train it write them)
    id2label: Optional[dict[str, str]] = None   # class index ("0", "1", ...) -> label name
    label2id: Optional[dict[str, int]] = None   # label name -> class index
    do_lower_case: Optional[bool] = None        # the texts were lower-cased before WordPiece
    max_seq_length: Optional[int] = None        # tokens per input in training, [CLS] and [SEP] included
    text_pairs: Optional[bool] = None           # trained on sentence pairs (True) or single texts (False)
    training_stage: Optional[str] = None        # the stage that wrote the directory: general, intermediate, prediction

    KIND = "student"

    def __post_init__(self):
        if self.fit_size is None:
            self.fit_size = self.hidden_size
        if self.id2label is not None:
            self.id2label = {str(k): str(v) for k, v in self.id2label.items()}
            self.label2id = {name: int(i) for i, name in self.id2label.items()}
        super().__post_init__()

    @classmethod
    def migrate(cls, values: Any, directory: Path) -> Any:
        """A directory written by an earlier version, brought up to date (`models.migrations`)."""
        return migrate_student_config(values, directory)

    @classmethod
    def check_consistency(cls, values: Mapping[str, Any], source: str) -> None:
        super().check_consistency(values, source)
        if values.get("hidden_act", "gelu") != "gelu":
            raise UsageError(f"{source}: hidden_act {values['hidden_act']!r} is not supported by the student "
                             "(only 'gelu', erf form)")
        labels, num_labels = values.get("id2label"), values.get("num_labels", cls.num_labels)
        if labels is not None and (not isinstance(labels, dict)
                                   or {str(k) for k in labels} != {str(i) for i in range(num_labels)}):
            raise UsageError(f"{source}: id2label must name the classes 0..{num_labels - 1} (got {labels})")

    @classmethod
    def adapt_labels(cls, values: Dict[str, Any], given: Mapping[str, Any]) -> Dict[str, Any]:
        """The label names of another head (e.g. a general-KD student's) go when ``num_labels`` is overridden."""
        labels = values.get("id2label")
        if "num_labels" in given and isinstance(labels, dict) and len(labels) != given["num_labels"]:
            values.pop("id2label")
            values.pop("label2id", None)
        return values

    @property
    def label_names(self) -> list[str]:
        """Names of the outputs in class-index order (``LABEL_i`` where the directory names none)."""
        names = self.id2label or {}
        return [names.get(str(i), f"LABEL_{i}") for i in range(self.num_labels)]
