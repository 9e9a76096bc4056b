"""BERT, the knowledge-distillation teacher.

Module and parameter names follow Hugging Face ``modeling_bert`` so that checkpoints map by key.
Every forward returns all hidden states (embedding output first) and all attention scores
(before the softmax, with the additive padding mask ``(1 - mask) * -10000`` already added),
which is what intermediate-layer distillation consumes.

Shapes: B = batch, S = sequence length, H = hidden size, nh = attention heads, dh = H / nh.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import nn

from .activations import ACT2FN
from .configuration import CONFIG_NAME, BertConfig, BertFields
from .file_utils import ModelLoadError, atomic_write, cached_path, load_error_message
from .linear import Linear

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
WEIGHTS_NAME = "pytorch_model.bin"
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

    @property
    def last_hidden_state(self) -> torch.Tensor:
        return self.hidden_states[-1]


@dataclass
class SequenceClassifierOutput(BertModelOutput):
    """BertModelOutput plus ``logits`` (B, num_labels)."""

    logits: torch.Tensor


@dataclass
class PreTrainingOutput(BertModelOutput):
    """BertModelOutput plus, when the heads were asked for, ``prediction_logits`` (B, S, vocab)
    and ``seq_relationship_logits`` (B, 2)."""

    prediction_logits: Optional[torch.Tensor] = None
    seq_relationship_logits: Optional[torch.Tensor] = None


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
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class BertLMPredictionHead(nn.Module):
    """Masked-LM head; ``decoder.weight`` is tied to the word embeddings."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, S, H) -> (B, S, vocab)."""
        return self.decoder(self.transform(hidden_states)) + self.bias


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)
        self.seq_relationship = Linear(config.hidden_size, 2)

    def forward(self, sequence_output: torch.Tensor, pooled_output: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What ``from_pretrained`` did with the checkpoint keys."""

    weights_file: Path
    initialized: list[str]
    unexpected: list[str]


class BertPreTrainedModel(nn.Module):
    """Weight initialisation, checkpoint loading and saving shared by the BERT models."""

    #: parameters (by prefix) that may be absent from a checkpoint; they keep their initial values.
    optional_prefixes: tuple[str, ...] = ()
    #: checkpoint keys (by prefix) silently ignored when the model has no such parameters.
    ignored_prefixes: tuple[str, ...] = ("embeddings.position_ids", "bert.embeddings.position_ids", "cls.")

    def __init__(self, config: BertConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.load_report: Optional[LoadReport] = None

    def init_weights(self, *modules: nn.Module) -> None:
        """BERT initialisation of ``modules`` (default: the whole model): N(0, initializer_range)
        weights, zero biases, LayerNorm weight 1 and bias 0, zero padding embedding."""
        for module in modules or (self,):
            module.apply(self._init_module)

    def _init_module(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, dir_or_url: str | os.PathLike, num_labels: Optional[int] = None,
                        cache_dir: str | os.PathLike | None = None, **config_overrides: Any):
        """Build the model from a directory (or http(s) URL, s3:// path or archive of one) holding
        ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``.

        ``num_labels`` and ``config_overrides`` replace config fields. Keys may carry the ``bert.``
        prefix or not, and LayerNorm parameters may use the old ``gamma``/``beta`` names. A missing
        embedding or encoder weight is an error; missing head weights are initialised and logged.
        The model is returned in eval mode; ``model.load_report`` lists what was initialised/ignored.
        """
        model_dir = cached_path(dir_or_url, cache_dir=cache_dir)
        if not model_dir.is_dir():
            raise ModelLoadError(f"{dir_or_url} is not a model directory: pass the directory holding "
                                 f"{CONFIG_NAME} and {SAFE_WEIGHTS_NAME} or {WEIGHTS_NAME}")
        config = BertConfig.from_json_file(model_dir / CONFIG_NAME)
        if num_labels is not None:
            config_overrides["num_labels"] = num_labels
        if config_overrides:
            config = config.updated(**config_overrides)
            config.validate(f"{model_dir / CONFIG_NAME} with overrides {config_overrides}")
        model = cls(config)
        weights_file, state_dict = _read_weights(model_dir)
        model.load_report = model._load_checkpoint(state_dict, weights_file)
        return model.eval()

    def _load_checkpoint(self, checkpoint: dict[str, torch.Tensor], weights_file: Path) -> LoadReport:
        own = self.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        unexpected: list[str] = []
        ignored: list[str] = []
        for key, tensor in checkpoint.items():
            target = _match_key(_rename_legacy(key), own)
            if target is None:
                (ignored if key.startswith(self.ignored_prefixes) else unexpected).append(key)
                continue
            if tuple(tensor.shape) != tuple(own[target].shape):
                raise ModelLoadError(
                    f"{weights_file}: {key} has shape {tuple(tensor.shape)} but the model built from its config "
                    f"expects {tuple(own[target].shape)}; check config.json (num_labels for a classifier)")
            mapped[target] = tensor
        missing = [key for key in own if key not in mapped and not self._is_tied(key, mapped)]
        required = [key for key in missing if not key.startswith(self.optional_prefixes)]
        if required:
            raise ModelLoadError(f"{weights_file} has no weight for {required[0]}"
                                 + (f" (and {len(required) - 1} more)" if len(required) > 1 else "")
                                 + "; it is not a checkpoint of this BERT architecture or it is truncated")
        self.load_state_dict(mapped, strict=False)
        if missing:  # only the unused pre-training heads go without a warning
            level = logging.INFO if all(key.startswith("cls.") for key in missing) else logging.WARNING
            logger.log(level, "%s: initialised %d weights not in the checkpoint: %s", weights_file, len(missing),
                       ", ".join(missing))
        if ignored:
            logger.info("%s: skipped %d weights this model does not use: %s", weights_file, len(ignored),
                        ", ".join(ignored))
        if unexpected:
            logger.warning("%s: ignored %d unexpected weights: %s", weights_file, len(unexpected),
                           ", ".join(unexpected))
        return LoadReport(weights_file=weights_file, initialized=missing, unexpected=unexpected)

    def _is_tied(self, key: str, mapped: dict[str, torch.Tensor]) -> bool:
        """The MLM decoder weight is the word-embedding matrix."""
        return key == "cls.predictions.decoder.weight" and any(k.endswith("embeddings.word_embeddings.weight")
                                                              for k in mapped)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (each atomically) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {key: tensor.detach().contiguous().cpu() for key, tensor in self.state_dict().items()
                 if key != "cls.predictions.decoder.weight"}
        atomic_write(directory / SAFE_WEIGHTS_NAME,
                      lambda tmp: save_safetensors(state, str(tmp), metadata={"format": "pt"}))
        self.config.to_json_file(directory / CONFIG_NAME)
        return directory


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
    """Pre-trained BERT as the general-distillation teacher.

    The masked-LM / next-sentence heads (``cls.*``) are loaded when the checkpoint has them; they
    are only evaluated when ``forward(..., with_heads=True)``.
    """

    optional_prefixes = ("cls.", "bert.pooler.")
    ignored_prefixes = ("embeddings.position_ids", "bert.embeddings.position_ids")

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings)
        # Not the decoder: its weight is the (already initialised) word-embedding matrix.
        self.init_weights(self.cls.predictions.transform, self.cls.seq_relationship)

    def forward(self, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, with_heads: bool = False) -> PreTrainingOutput:
        """(B, S) inputs -> hidden states and scores (and head logits if ``with_heads``)."""
        out = self.bert(input_ids, token_type_ids, attention_mask)
        prediction_logits = seq_relationship_logits = None
        if with_heads:
            prediction_logits, seq_relationship_logits = self.cls(out.hidden_states[-1], out.pooled_output)
        return PreTrainingOutput(hidden_states=out.hidden_states, attention_scores=out.attention_scores,
                                 pooled_output=out.pooled_output, prediction_logits=prediction_logits,
                                 seq_relationship_logits=seq_relationship_logits)


# --------------------------------------------------------------------------------------------------
# Checkpoint reading
# --------------------------------------------------------------------------------------------------
def _read_weights(model_dir: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Load ``model.safetensors`` (preferred) or ``pytorch_model.bin`` from ``model_dir``."""
    for path in (model_dir / SAFE_WEIGHTS_NAME, model_dir / WEIGHTS_NAME):
        if not path.is_file():
            continue
        try:
            if path.name == SAFE_WEIGHTS_NAME:
                state = load_safetensors(str(path), device="cpu")
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
            raise ModelLoadError(load_error_message(path, err, "the file is damaged or not a weights file")) from err
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelLoadError(f"{path} does not hold a flat dict of tensors; save the model's state_dict()")
        return path, state
    raise ModelLoadError(f"{model_dir} has neither {SAFE_WEIGHTS_NAME} nor {WEIGHTS_NAME}; "
                         "pass a directory with the model weights")


def _rename_legacy(key: str) -> str:
    """Old TensorFlow-port names: LayerNorm.gamma/beta -> LayerNorm.weight/bias."""
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias"
    return key


def _match_key(key: str, own: dict[str, torch.Tensor]) -> Optional[str]:
    """The model key for a checkpoint key, allowing the ``bert.`` prefix to be present or not."""
    if key in own:
        return key
    if "bert." + key in own:
        return "bert." + key
    if key.startswith("bert.") and key[len("bert."):] in own:
        return key[len("bert."):]
    return None
