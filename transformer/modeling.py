"""BERT, the knowledge-distillation teacher.

Module and parameter names follow Hugging Face ``modeling_bert`` so that checkpoints map by key.
Every forward returns all hidden states (embedding output first) and all attention scores
(before the softmax, with the additive padding mask ``(1 - mask) * -10000`` already added),
which is what intermediate-layer distillation consumes.

Shapes: B = batch, S = sequence length, H = hidden size, nh = attention heads, dh = H / nh.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from spikingbert.core.linear import Linear
from spikingbert.core.pretrained import PreTrainedModel

from .activations import ACT2FN
from .configuration import BertConfig, BertFields

MASK_VALUE = -10000.0


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------
@dataclass
class BertModelOutput:
    """hidden_states: L+1 tensors (B, S, H), embedding output first.
    attention_scores: L tensors (B, nh, S, S), pre-softmax, padding mask added.
    pooled_output: (B, H), tanh(dense(hidden_states[-1][:, 0])).
    """

    hidden_states: tuple[torch.Tensor, ...]
    attention_scores: tuple[torch.Tensor, ...]
    pooled_output: torch.Tensor


@dataclass
class SequenceClassifierOutput(BertModelOutput):
    """BertModelOutput plus ``logits`` (B, num_labels)."""

    logits: torch.Tensor


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------
class BertEmbeddings(nn.Module):
    """Sum of word, position and token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertFields):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) ids -> (B, S, H)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(positions)[None]
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention that also returns its pre-softmax scores."""

    def __init__(self, config: BertFields):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(config.hidden_size, config.hidden_size)
        self.value = Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, H) -> (B, nh, S, dh)."""
        b, s, _ = x.shape
        return x.view(b, s, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states (B, S, H), additive mask (B, 1, 1, S) -> context (B, S, H), scores (B, nh, S, S)."""
        q = self._heads(self.query(hidden_states))
        k = self._heads(self.key(hidden_states))
        v = self._heads(self.value(hidden_states))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.attention_head_size) + mask
        probs = self.dropout(scores.softmax(dim=-1))
        context = (probs @ v).transpose(1, 2).flatten(2)
        return context, scores


class DenseResidualNorm(nn.Module):
    """``LayerNorm(dropout(dense(x)) + residual)``: the output of the attention block (``in_size = H``,
    `BertSelfOutput`) and of the feed-forward block (``in_size = intermediate_size``, `BertOutput`)."""

    def __init__(self, in_size: int, config: BertFields):
        super().__init__()
        self.dense = Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """(B, S, in_size), (B, S, H) -> (B, S, H)."""
        return self.after_dense(self.dense(hidden_states), residual)

    def after_dense(self, product: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The rest of the block once ``product = dense(hidden_states)`` (B, S, H) is computed (by any means)."""
        return self.LayerNorm(self.dropout(product) + residual)


class BertSelfOutput(DenseResidualNorm):
    """Output projection of the attention block with residual connection and LayerNorm."""

    def __init__(self, config: BertFields):
        super().__init__(config.hidden_size, config)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, H), (B, 1, 1, S) -> (B, S, H), scores (B, nh, S, S)."""
        context, scores = self.self(hidden_states, mask)
        return self.output(context, hidden_states), scores


class BertIntermediate(nn.Module):
    def __init__(self, config: BertFields):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, S, H) -> (B, S, intermediate_size)."""
        return self.after_dense(self.dense(hidden_states))

    def after_dense(self, product: torch.Tensor) -> torch.Tensor:
        """The rest of the block once ``product = dense(hidden_states)`` (B, S, intermediate_size) is computed."""
        return self.intermediate_act_fn(product)


class BertOutput(DenseResidualNorm):
    """Output projection of the feed-forward block with residual connection and LayerNorm."""

    def __init__(self, config: BertFields):
        super().__init__(config.intermediate_size, config)


class BertLayer(nn.Module):
    """One transformer encoder layer: attention block, then feed-forward block."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, H), (B, 1, 1, S) -> (B, S, H), scores (B, nh, S, S)."""
        attention_output, scores = self.attention(hidden_states, mask)
        return self.output(self.intermediate(attention_output), attention_output), scores


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor
                ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Embedding output (B, S, H) -> (L+1 hidden states (B, S, H), L scores (B, nh, S, S))."""
        all_hidden, all_scores = [hidden_states], []
        for layer in self.layer:
            hidden_states, scores = layer(hidden_states, mask)
            all_hidden.append(hidden_states)
            all_scores.append(scores)
        return tuple(all_hidden), tuple(all_scores)


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, S, H) -> (B, H), from the first ([CLS]) position."""
        return self.activation(self.dense(hidden_states[:, 0]))


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class BertLMPredictionHead(nn.Module):
    """The masked-LM head's parameters; ``decoder.weight`` is tied to the word embeddings."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))


class BertPreTrainingHeads(nn.Module):
    """The pre-training heads' parameters (``cls.*``), loaded with a pre-training checkpoint, never evaluated."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)
        self.seq_relationship = Linear(config.hidden_size, 2)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
class BertPreTrainedModel(PreTrainedModel):
    """The teacher's model directories (`core.pretrained.PreTrainedModel`): a Hugging Face BERT directory.

    Checkpoint keys may carry the ``bert.`` prefix or not and LayerNorm parameters may use the old TensorFlow
    names ``gamma``/``beta`` (`map_key`); keys the model does not know are ignored with an info line. A
    missing embedding or encoder weight is an error; missing head weights are initialised and reported. The
    padding embedding starts at zero, and the model is returned in eval mode.
    """

    config_class = BertConfig
    ignored_prefixes = ("embeddings.position_ids", "bert.embeddings.position_ids", "cls.")
    strict = False
    zero_padding_embedding = True

    def map_key(self, key: str, own: Mapping[str, torch.Tensor]) -> Optional[str]:
        if key.endswith(".gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith(".beta"):
            key = key[: -len("beta")] + "bias"
        for candidate in (key, "bert." + key, key[len("bert."):] if key.startswith("bert.") else None):
            if candidate is not None and candidate in own:
                return candidate
        return None


class BertModel(BertPreTrainedModel):
    """BERT encoder: embeddings, L transformer layers, pooler."""

    optional_prefixes = ("pooler.",)

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None) -> BertModelOutput:
        """input_ids, token_type_ids, attention_mask: (B, S); mask 1 = real token, 0 = padding."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embedding_output = self.embeddings(input_ids, token_type_ids)
        mask = (1.0 - attention_mask[:, None, None, :].to(embedding_output.dtype)) * MASK_VALUE
        hidden_states, scores = self.encoder(embedding_output, mask)
        return BertModelOutput(hidden_states=hidden_states, attention_scores=scores,
                               pooled_output=self.pooler(hidden_states[-1]))


class BertForSequenceClassification(BertPreTrainedModel):
    """BERT with a classification (or, with num_labels=1, regression) head on the pooled output."""

    optional_prefixes = ("classifier.", "bert.pooler.")

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = Linear(config.hidden_size, config.num_labels)
        self.init_weights(self.classifier)  # self.bert initialised itself

    def forward(self, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None) -> SequenceClassifierOutput:
        """(B, S) inputs -> outputs with ``logits`` (B, num_labels)."""
        out = self.bert(input_ids, token_type_ids, attention_mask)
        if self.config.classifier_head == "relu":
            features = F.relu(out.pooled_output)
        else:
            features = self.dropout(out.pooled_output)
        return SequenceClassifierOutput(hidden_states=out.hidden_states, attention_scores=out.attention_scores,
                                        pooled_output=out.pooled_output, logits=self.classifier(features))


class BertForPreTraining(BertPreTrainedModel):
    """Pre-trained BERT as the general-distillation teacher: the encoder's hidden states and attention scores.

    The checkpoint's masked-LM / next-sentence heads (``cls.*``) are loaded by key with the encoder (the MLM
    decoder is the word-embedding matrix); distillation never evaluates them.
    """

    optional_prefixes = ("cls.", "bert.pooler.")
    ignored_prefixes = ("embeddings.position_ids", "bert.embeddings.position_ids")
    tied_keys = ("cls.predictions.decoder.weight",)

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings)
        # Not the decoder: its weight is the (already initialised) word-embedding matrix.
        self.init_weights(self.cls.predictions.transform, self.cls.seq_relationship)

    def forward(self, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None) -> BertModelOutput:
        """(B, S) inputs -> hidden states and scores."""
        return self.bert(input_ids, token_type_ids, attention_mask)
