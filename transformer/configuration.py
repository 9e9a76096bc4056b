"""BERT configurations: the architecture fields every BERT of this project shares, and the teacher's config.

:class:`BertFields` holds the Hugging Face BERT fields (sizes of every module, dropout, LayerNorm
epsilon, ...) once, for the teacher (:class:`BertConfig`) and the spiking student
(``models.configuration.SpikingBertConfig``). Reading, checking and writing ``config.json`` is
`core.pretrained.ModelConfig`'s; each field's type and range is in the settings table (`core.settings`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping

from spikingbert.core.errors import UsageError
from spikingbert.core.pretrained import CONFIG_NAME, ModelConfig

__all__ = ["CONFIG_NAME", "BertFields", "BertConfig"]


@dataclass
class BertFields(ModelConfig):
    """The BERT architecture fields (Hugging Face ``BertConfig`` names and defaults)."""

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

    KIND = "BERT"

    def __post_init__(self):
        self.check_fields(self.to_dict(), f"the {self.KIND} config")

    @classmethod
    def check_consistency(cls, values: Mapping[str, Any], source: str) -> None:
        vocab, pad = values.get("vocab_size", cls.vocab_size), values.get("pad_token_id", 0)
        if pad is not None and pad >= vocab:
            raise UsageError(f"{source}: pad_token_id must be below vocab_size {vocab} (got {pad})")
        hidden = values.get("hidden_size", cls.hidden_size)
        heads = values.get("num_attention_heads", cls.num_attention_heads)
        if hidden % heads:
            raise UsageError(f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
        length, positions = values.get("max_seq_length"), values.get("max_position_embeddings", 512)
        if isinstance(length, int) and not isinstance(length, bool) and length > positions:
            raise UsageError(f"{source}: max_seq_length {length} is more than max_position_embeddings {positions}: the "
                             "model has no position for the tokens beyond; fix config.json")


@dataclass
class BertConfig(BertFields):
    """The teacher's hyper-parameters, read from / written to a Hugging Face ``config.json``.

    ``classifier_head`` selects ``classifier(dropout(pooled))`` ("dropout", the usual BERT
    fine-tuning head) or ``classifier(relu(pooled))`` ("relu", TinyBERT style). The label names
    (``id2label`` / ``label2id``) stay in ``extra``, as Hugging Face writes them.
    """

    num_labels: int = 2
    classifier_head: str = "dropout"

    @classmethod
    def check_consistency(cls, values: Mapping[str, Any], source: str) -> None:
        super().check_consistency(values, source)
        embedding = values.get("position_embedding_type", "absolute")
        if embedding != "absolute":
            raise UsageError(f"{source}: position_embedding_type {embedding!r} is not supported; only 'absolute'")

    @classmethod
    def adapt_labels(cls, values: Dict[str, Any], given: Mapping[str, Any]) -> Dict[str, Any]:
        """``num_labels`` from ``id2label`` when the file gives only the names; names of another head dropped."""
        labels = values.get("id2label")
        if "num_labels" not in values and isinstance(labels, dict):
            values["num_labels"] = len(labels)
        if "num_labels" in given and isinstance(labels, dict) and len(labels) != given["num_labels"]:
            values.pop("id2label")
            values.pop("label2id", None)
        return values
