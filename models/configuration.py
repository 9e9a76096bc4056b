"""The spiking student's configuration: the shared BERT fields plus the spiking and training settings."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from modules.neuron import SURROGATES
from modules.solvers import SOLVERS
from transformer.configuration import CONFIG_NAME, BertFields, FieldSpec
from transformer.file_utils import cached_path


#: ``model_type`` of a student's config.json: Hugging Face transformers does not know it, so it refuses a
#: student directory instead of building an ordinary BERT from the spiking weights. Directories written
#: before it existed say ``"bert"`` and still load.
MODEL_TYPE = "spiking_bert"


class SpikingConfigError(ValueError):
    """A student configuration or checkpoint the user must fix; the message says what to do."""


def _choice(*values: str) -> FieldSpec:
    return FieldSpec(str, choices=values)


def resolve_location(path: str | os.PathLike) -> str:
    """Local paths as they are; URLs, ``s3://`` and archives through the shared download cache."""
    text = str(path)
    return str(cached_path(text)) if "://" in text else text


@dataclass
class SpikingBertConfig(BertFields):
    """Student configuration: Hugging Face BERT fields (:class:`BertFields`) plus the spiking and training settings."""

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

    FIELD_SPECS: ClassVar[dict] = {
        **BertFields.FIELD_SPECS,
        "hidden_act": _choice("gelu"),
        "model_type": FieldSpec(str),
        "t_conv": FieldSpec(int, 1, 1_000_000),
        "vth": FieldSpec(float, 0.0, 1e6, low_open=True),
        "leak": FieldSpec(float, 0.0, 1.0, low_open=True),
        "schedule": _choice("fast", "step"),
        "time_chunk": FieldSpec(int, 1, 1_000_000, nullable=True),
        "train_mode": _choice("ide", "bptt"),
        "ide_point": _choice("ann", "snn"),
        "feedback": FieldSpec(bool),
        "solver": _choice(*sorted(SOLVERS)),
        "solver_max_iter": FieldSpec(int, 1, 1_000_000),
        "solver_tol": FieldSpec(float, 0.0, 1.0, low_open=True),
        "surrogate": _choice(*sorted(SURROGATES)),
        "surrogate_alpha": FieldSpec(float, 0.0, 1e6, low_open=True),
        "fit_size": FieldSpec(int, 1, 1 << 16, nullable=True),
        "use_pooler": FieldSpec(bool),
        "num_labels": FieldSpec(int, 1, 1 << 16),
    }

    def __post_init__(self):
        if self.fit_size is None:
            self.fit_size = self.hidden_size
        if self.model_type == "bert":               # written before MODEL_TYPE existed
            self.model_type = MODEL_TYPE
        if self.id2label is not None:
            self.id2label = {str(k): str(v) for k, v in self.id2label.items()}
            self.label2id = {name: int(i) for i, name in self.id2label.items()}
        self.validate()

    @property
    def label_names(self) -> list[str]:
        """Names of the outputs in class-index order (``LABEL_i`` where the directory names none)."""
        names = self.id2label or {}
        return [names.get(str(i), f"LABEL_{i}") for i in range(self.num_labels)]

    def validate(self) -> None:
        """Raise :class:`SpikingConfigError` naming the first setting that cannot work."""
        checks = [
            (self.t_conv >= 1, f"t_conv must be >= 1 (got {self.t_conv})"),
            (self.vth > 0, f"vth must be > 0 (got {self.vth})"),
            (0 < self.leak <= 1, f"leak must be in (0, 1] (got {self.leak})"),
            (self.hidden_size % self.num_attention_heads == 0,
             f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"),
            (self.hidden_act == "gelu", f"hidden_act {self.hidden_act!r} is not supported (only 'gelu', erf form)"),
            (self.schedule in ("fast", "step"), f"schedule must be 'fast' or 'step' (got {self.schedule!r})"),
            (self.train_mode in ("ide", "bptt"), f"train_mode must be 'ide' or 'bptt' (got {self.train_mode!r})"),
            (self.ide_point in ("ann", "snn"), f"ide_point must be 'ann' or 'snn' (got {self.ide_point!r})"),
            (self.solver in SOLVERS, f"solver must be one of {sorted(SOLVERS)} (got {self.solver!r})"),
            (self.surrogate in SURROGATES, f"surrogate must be one of {sorted(SURROGATES)} (got {self.surrogate!r})"),
            (self.time_chunk is None or self.time_chunk >= 1, f"time_chunk must be >= 1 (got {self.time_chunk})"),
            (self.num_labels >= 1, f"num_labels must be >= 1 (got {self.num_labels})"),
            (self.id2label is None or set(self.id2label) == {str(i) for i in range(self.num_labels)},
             f"id2label must name the classes 0..{self.num_labels - 1} (got {self.id2label})"),
            (self.max_seq_length is None or self.max_seq_length >= 3,
             f"max_seq_length must be >= 3 (got {self.max_seq_length})"),
        ]
        for ok, message in checks:
            if not ok:
                raise SpikingConfigError(message)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the student config", **overrides) -> "SpikingBertConfig":
        """The config of ``data`` (the fields of a config.json, read from ``source``) with ``overrides`` (None: keep);
        every field's type and range is checked first (`BertFields.check_fields`)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown_overrides = set(overrides) - known
        if unknown_overrides:
            raise SpikingConfigError(f"unknown student setting(s): {sorted(unknown_overrides)}")
        cls.check_fields(data, source, SpikingConfigError)
        values = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        cls.check_fields(values, f"{source} with the command line's settings", SpikingConfigError)
        kwargs, extra = cls.split_known(values)
        extra.pop("extra", None)
        labels = kwargs.get("id2label")
        if overrides.get("num_labels") is not None and isinstance(labels, dict) and len(labels) != overrides["num_labels"]:
            kwargs.pop("id2label")                  # the names of another head (e.g. a general-KD student's)
            kwargs.pop("label2id", None)
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides) -> "SpikingBertConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpikingConfigError(f"{path}: no such file; a student dir needs a config.json") from None
        except IsADirectoryError:
            raise SpikingConfigError(f"{path} is a directory: pass a student dir holding a config.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SpikingConfigError(f"{path}: not valid JSON ({e}); fix or replace the config") from None
        try:
            return cls.from_dict(data, str(path), **overrides)
        except SpikingConfigError as e:
            raise SpikingConfigError(e if str(e).startswith(str(path)) else f"{path}: {e}") from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> "SpikingBertConfig":
        path = Path(resolve_location(path))
        return cls.from_json_file(path / CONFIG_NAME if path.is_dir() else path, **overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``directory/config.json`` atomically."""
        self.to_json_file(Path(directory) / CONFIG_NAME)
