"""BERT configurations: the architecture fields every BERT of this project shares, and the teacher's config.

:class:`BertFields` holds the Hugging Face BERT fields (sizes of every module, dropout, LayerNorm
epsilon, ...) once, for the teacher (:class:`BertConfig`) and the spiking student
(``models.configuration.SpikingBertConfig``), with what both do with them: fields a class does not
know are kept in ``extra`` and written back unchanged, and ``config.json`` is written sorted and atomically.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .activations import ACT2FN
from .file_utils import ModelLoadError, atomic_write_text, cached_path

CONFIG_NAME = "config.json"
CLASSIFIER_HEADS = ("dropout", "relu")


@dataclass
class BertFields:
    """The BERT architecture fields (Hugging Face ``BertConfig`` names and defaults) and unknown ``extra`` ones."""

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

    def validate(self, source: str = "the BERT config") -> None:
        """Raise ModelLoadError if the settings cannot describe a BERT model."""
        if self.hidden_size % self.num_attention_heads:
            raise ModelLoadError(f"{source}: hidden_size {self.hidden_size} is not a multiple of "
                                 f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in ACT2FN:
            raise ModelLoadError(f"{source}: hidden_act {self.hidden_act!r} is not supported; "
                                 f"use one of {sorted(ACT2FN)}")
        if self.classifier_head not in CLASSIFIER_HEADS:
            raise ModelLoadError(f"{source}: classifier_head {self.classifier_head!r} is not supported; "
                                 f"use one of {list(CLASSIFIER_HEADS)}")
        if self.extra.get("position_embedding_type", "absolute") != "absolute":
            raise ModelLoadError(f"{source}: position_embedding_type "
                                 f"{self.extra['position_embedding_type']!r} is not supported; only 'absolute'")
        if self.num_labels < 1:
            raise ModelLoadError(f"{source}: num_labels must be >= 1, got {self.num_labels}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the BERT config") -> "BertConfig":
        kwargs, extra = cls.split_known(values)
        if "num_labels" not in kwargs and isinstance(extra.get("id2label"), dict):
            kwargs["num_labels"] = len(extra["id2label"])
        try:
            config = cls(**kwargs, extra=extra)
        except TypeError as err:
            raise ModelLoadError(f"{source}: {err}") from err
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
            raise ModelLoadError(f"{path} is not valid JSON ({err}); fix or replace the file") from err
        if not isinstance(values, dict):
            raise ModelLoadError(f"{path} must hold a JSON object of BERT settings")
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
