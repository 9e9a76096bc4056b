"""BERT configurations: the architecture fields every BERT of this project shares, and the teacher's config.

:class:`BertFields` holds the Hugging Face BERT fields (sizes of every module, dropout, LayerNorm
epsilon, ...) once, for the teacher (:class:`BertConfig`) and the spiking student
(``models.configuration.SpikingBertConfig``), with what both do with them: fields a class does not
know are kept in ``extra`` and written back unchanged, and ``config.json`` is written sorted and atomically.

Every field has a :class:`FieldSpec` (type and allowed range) in ``FIELD_SPECS``, which subclasses extend
with their own fields; :meth:`BertFields.check_fields` checks a config file's values against them when the
file is read, so that a string, null, float or out-of-range value where a size belongs is one clear error
naming the file, the field, the value and the allowed range, before anything is built from it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional

from .activations import ACT2FN
from .file_utils import ModelLoadError, atomic_write_text, cached_path

CONFIG_NAME = "config.json"
CLASSIFIER_HEADS = ("dropout", "relu")


class ConfigError(ModelLoadError):
    """A config file's field has the wrong type or a value out of its range (exit status 2: a wrong input)."""

    exit_code = 2


@dataclass(frozen=True)
class FieldSpec:
    """The type and range a config field must have: ``kind`` int, float, str or bool; numbers in ``[low, high]``
    (``low_open``: ``(low, ...``); strings among ``choices`` (when given); ``nullable``: null is allowed."""

    kind: type
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    choices: tuple = ()
    nullable: bool = False

    def allowed(self) -> str:
        """The allowed values in words, e.g. ``an integer in [1, 4096]``."""
        if self.kind is bool:
            text = "true or false"
        elif self.kind is str:
            text = "one of " + ", ".join(repr(c) for c in self.choices) if self.choices else "a string"
        else:
            low = "-inf" if self.low is None else f"{self.low:{'d' if self.kind is int else 'g'}}"
            high = "inf" if self.high is None else f"{self.high:{'d' if self.kind is int else 'g'}}"
            bounds = f"{'(' if self.low_open or self.low is None else '['}{low}, {high}{']' if self.high is not None else ')'}"
            text = f"{'an integer' if self.kind is int else 'a finite number'} in {bounds}"
        return text + (" or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.kind is bool or isinstance(value, bool):
            return self.kind is bool and isinstance(value, bool)
        if self.kind is str:
            return isinstance(value, str) and (not self.choices or value in self.choices)
        if not isinstance(value, int if self.kind is int else (int, float)):
            return False
        if self.kind is float and not math.isfinite(value):
            return False
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        return not below and (self.high is None or value <= self.high)


def _size(high: int, low: int = 1) -> FieldSpec:
    return FieldSpec(int, low, high)


def _probability() -> FieldSpec:
    return FieldSpec(float, 0.0, 1.0)


@dataclass
class BertFields:
    """The BERT architecture fields (Hugging Face ``BertConfig`` names and defaults) and unknown ``extra`` ones."""

    FIELD_SPECS: ClassVar[dict] = {
        "vocab_size": _size(1 << 24),
        "hidden_size": _size(1 << 16),
        "num_hidden_layers": _size(1024),
        "num_attention_heads": _size(1 << 16),
        "intermediate_size": _size(1 << 18),
        "hidden_act": FieldSpec(str),
        "hidden_dropout_prob": _probability(),
        "attention_probs_dropout_prob": _probability(),
        "max_position_embeddings": _size(1 << 20),
        "type_vocab_size": _size(1 << 16),
        "initializer_range": FieldSpec(float, 0.0, 1e3),
        "layer_norm_eps": FieldSpec(float, 0.0, 1.0, low_open=True),
        "pad_token_id": FieldSpec(int, 0, None, nullable=True),
    }

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # unknown config.json fields, kept on save

    @classmethod
    def check_fields(cls, values: Any, source: str, error: type[Exception] = ConfigError) -> None:
        """Raise ``error`` naming ``source`` (the file), the first field whose value has the wrong type or is out of
        its range, the value and what is allowed; ``values`` must be a JSON object."""
        if not isinstance(values, Mapping):
            raise error(f"{source} must hold a JSON object of settings (found a JSON {type(values).__name__})")
        for name, spec in cls.FIELD_SPECS.items():
            if name in values and not spec.accepts(values[name]):
                raise error(f"{source}: {name} must be {spec.allowed()} (got {json.dumps(values[name])})")
        vocab, pad = values.get("vocab_size", cls.vocab_size), values.get("pad_token_id", 0)
        if pad is not None and pad >= vocab:
            raise error(f"{source}: pad_token_id must be below vocab_size {vocab} (got {pad})")
        hidden, heads = values.get("hidden_size", cls.hidden_size), values.get("num_attention_heads",
                                                                                cls.num_attention_heads)
        if hidden % heads:
            raise error(f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")

    @classmethod
    def split_known(cls, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``values`` as (this class's fields, everything else)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return ({k: v for k, v in values.items() if k in known}, {k: v for k, v in values.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **values}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` (keys sorted) atomically."""
        atomic_write_text(Path(path), self.to_json_string())


@dataclass
class BertConfig(BertFields):
    """The teacher's hyper-parameters, read from / written to a Hugging Face ``config.json``.

    ``classifier_head`` selects ``classifier(dropout(pooled))`` ("dropout", the usual BERT
    fine-tuning head) or ``classifier(relu(pooled))`` ("relu", TinyBERT style).
    """

    num_labels: int = 2
    classifier_head: str = "dropout"

    FIELD_SPECS: ClassVar[dict] = {
        **BertFields.FIELD_SPECS,
        "hidden_act": FieldSpec(str, choices=tuple(sorted(ACT2FN))),
        "num_labels": _size(1 << 16),
        "classifier_head": FieldSpec(str, choices=CLASSIFIER_HEADS),
    }

    def validate(self, source: str = "the BERT config") -> None:
        """Raise `ConfigError` if the settings cannot describe a BERT model."""
        self.check_fields(self.to_dict(), source)
        if self.extra.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"{source}: position_embedding_type "
                              f"{self.extra['position_embedding_type']!r} is not supported; only 'absolute'")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the BERT config") -> "BertConfig":
        cls.check_fields(values, source)
        kwargs, extra = cls.split_known(values)
        if "num_labels" not in kwargs and isinstance(extra.get("id2label"), dict):
            kwargs["num_labels"] = len(extra["id2label"])
        config = cls(**kwargs, extra=extra)
        config.validate(source)
        return config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BertConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ModelLoadError(f"{path} not found: a BERT model directory needs a {CONFIG_NAME}") from err
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not valid JSON ({err}); fix or replace the file") from err
        return cls.from_dict(values, source=str(path))

    @classmethod
    def from_pretrained(cls, dir_or_url: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> "BertConfig":
        """Read ``config.json`` from a model directory (or URL / s3:// path / archive of one)."""
        resolved = cached_path(dir_or_url, cache_dir=cache_dir)
        return cls.from_json_file(resolved / CONFIG_NAME if resolved.is_dir() else resolved)

    def updated(self, **overrides: Any) -> "BertConfig":
        """A copy with some fields replaced (unknown names are a TypeError)."""
        config = dataclasses.replace(self, extra=dict(self.extra), **overrides)
        labels = config.extra.get("id2label")
        if isinstance(labels, dict) and len(labels) != config.num_labels:
            config.extra.pop("id2label")
            config.extra.pop("label2id", None)
        return config
