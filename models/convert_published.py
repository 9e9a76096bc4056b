"""Import a checkpoint written by the authors' published SpikingBERT code (the command line is
``python -m apps.convert_published``).

The published files name the neuron layers ``network_x`` (embeddings) and
``network_s1 … network_s{6L+1}``; the aliases ``snn_func.*``,
``snn_ide_conv.*`` and the frozen ``*snn_func_copy.*`` are accepted and
ignored. The result is a model directory of this project (config.json,
model.safetensors, vocab.txt when found beside the config).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

if TYPE_CHECKING:                       # imported in the functions: the command line starts without torch
    from torch import Tensor

    from .spiking_bert import SpikingBertPreTrainedModel

logger = logging.getLogger(__name__)

#: Neuron-layer offset within an encoder (n = 6k) -> (published sub-module, our module path).
_LAYER_MAP = {
    1: [("dense", "attention.self.key")],
    2: [("dense", "attention.self.value")],
    3: [("query", "attention.self.query")],
    4: [("dense", "attention.output.dense"), ("LayerNorm", "attention.output.LayerNorm")],
    5: [("dense", "intermediate.dense")],
    6: [("dense", "output.dense"), ("LayerNorm", "output.LayerNorm")],
}
_ALIAS_PREFIXES = ("snn_func.", "snn_func_copy.", "snn_ide_conv.")
_HEADS = {
    "fit_dense.": "fit_dense.",
    "pooler_layer.dense.": "pooler.",
    "classification.": "classifier.",
}


def convert_state_dict(state: dict[str, Tensor], num_layers: int, feedback: bool = False) -> dict[str, Tensor]:
    """Rename published keys to this project's; unknown keys raise `UsageError`."""
    from spikingbert.core.errors import UsageError

    out: dict[str, Tensor] = {}
    unknown = []
    feedback_index = 6 * num_layers + 1
    for key, value in state.items():
        if key.startswith(_ALIAS_PREFIXES):
            continue
        if key.startswith("network_x."):
            out["bert.embeddings." + key[len("network_x."):]] = value
            continue
        m = re.fullmatch(r"network_s(\d+)\.(\w+)\.(weight|bias)", key)
        if m:
            index, sub, kind = int(m.group(1)), m.group(2), m.group(3)
            if index == feedback_index and sub == "fc":
                if feedback:
                    out[f"bert.feedback.{kind}"] = value
                continue
            k, offset = divmod(index - 1, 6)
            target = dict(_LAYER_MAP.get(offset + 1, [])).get(sub)
            if k < num_layers and target is not None:
                out[f"bert.encoder.layer.{k}.{target}.{kind}"] = value
                continue
        for prefix, ours in _HEADS.items():
            if key.startswith(prefix):
                out[ours + key[len(prefix):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise UsageError(f"unrecognised keys in the published checkpoint: {unknown[:8]} "
                                 f"(is `config` the config of this checkpoint, with {num_layers} layers?)")
    if not any(k.startswith("bert.embeddings.") for k in out):
        raise UsageError("no network_x.* (embedding) keys: this is not a published SpikingBERT checkpoint")
    return out


def build_converted(checkpoint: str, config: str, **overrides) -> Tuple["SpikingBertPreTrainedModel", Optional[Path]]:
    """The model of a published ``checkpoint`` with the student config ``config`` (a directory or its config.json),
    and the vocab.txt beside that config (or None); nothing is written."""
    from spikingbert.core.weights import read_weights

    from .configuration import SpikingBertConfig
    from .spiking_bert import SpikingBertForDistillation, SpikingBertForSequenceClassification

    config_path = Path(config)
    config_file = config_path / "config.json" if config_path.is_dir() else config_path
    state = read_weights(checkpoint)
    has_head = any(k.startswith("classification.") for k in state)
    if has_head and overrides.get("num_labels") is None:
        overrides["num_labels"] = state["classification.weight"].shape[0]
    if overrides.get("fit_size") is None and "fit_dense.weight" in state:
        overrides["fit_size"] = state["fit_dense.weight"].shape[0]
    if overrides.get("use_pooler") is None and any(k.startswith("pooler_layer.") for k in state):
        overrides["use_pooler"] = False   # published default: pooler present but unused
    cfg = SpikingBertConfig.from_json_file(config_file, **overrides)
    converted = convert_state_dict(state, cfg.num_hidden_layers, cfg.feedback)
    if not cfg.use_pooler:
        converted = {k: v for k, v in converted.items() if not k.startswith("pooler.")}
    model = (SpikingBertForSequenceClassification if has_head else SpikingBertForDistillation)(cfg)
    model.load_weights(converted, Path(checkpoint))
    vocab = config_file.parent / "vocab.txt"
    return model, vocab if vocab.is_file() else None
