"""Import a checkpoint written by the authors' published SpikingBERT code.

    python -m models.convert_published --checkpoint FILE.bin --config DIR_OR_JSON --output_dir OUT \
        [--t_conv N --vth V --leak L --num_labels K]

The published files name the neuron layers ``network_x`` (embeddings) and
``network_s1 … network_s{6L+1}``; the aliases ``snn_func.*``,
``snn_ide_conv.*`` and the frozen ``*snn_func_copy.*`` are accepted and
ignored. The result is a model directory of this project (config.json,
model.safetensors, vocab.txt when found beside the config).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from torch import Tensor

from .configuration import SpikingBertConfig, SpikingConfigError
from .modeling_utils import load_state_dict_file
from .spiking_bert import SpikingBertForDistillation, SpikingBertForSequenceClassification

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
    """Rename published keys to this project's; unknown keys raise :class:`SpikingConfigError`."""
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
        raise SpikingConfigError(f"unrecognised keys in the published checkpoint: {unknown[:8]} "
                                 f"(is --config the config of this checkpoint, with {num_layers} layers?)")
    if not any(k.startswith("bert.embeddings.") for k in out):
        raise SpikingConfigError("no network_x.* (embedding) keys: this is not a published SpikingBERT checkpoint")
    return out


def convert(checkpoint: str, config: str, output_dir: str, **overrides):
    """Convert ``checkpoint`` and write a model directory to ``output_dir``; returns the model."""
    config_path = Path(config)
    config_file = config_path / "config.json" if config_path.is_dir() else config_path
    state = load_state_dict_file(checkpoint)
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
    model.load_checkpoint(converted, checkpoint)
    vocab = config_file.parent / "vocab.txt"
    model.save_pretrained(output_dir, vocab_file=vocab if vocab.is_file() else None)
    logger.info("wrote %s (%s, %d layers)", output_dir, type(model).__name__, cfg.num_hidden_layers)
    return model


def convert_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models.convert_published", description=__doc__.split("\n\n")[0],
                                     epilog="The result is a complete student directory (config.json, model.safetensors, "
                                            "vocab.txt when found beside --config).")
    p = parser.add_argument
    p("--checkpoint", required=True, metavar="FILE",
      help="the published pytorch_model.bin or step_N_pytorch_model.bin")
    p("--config", required=True, metavar="DIR_OR_JSON", help="student config dir or config.json used for that checkpoint")
    p("--output_dir", required=True, metavar="DIR", help="where the converted student directory is written")
    p("--t_conv", type=int, metavar="N",
      help="simulation steps used in training (default: the config's; the published default is 100)")
    p("--vth", type=float, metavar="X", help="threshold used in training (default: the config's; published: 1.0)")
    p("--leak", type=float, metavar="X", help="leak used in training (default: the config's; published: 1.0, IF)")
    p("--num_labels", type=int, metavar="N",
      help="classes of a task checkpoint (default: read from the classifier head when there is one)")
    p("--feedback", action="store_true", help="keep the feedback Linear (network_s{6L+1}.fc) (default: off)")
    return parser


def main(argv=None) -> int:
    args = convert_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        convert(args.checkpoint, args.config, args.output_dir, t_conv=args.t_conv, vth=args.vth, leak=args.leak,
                num_labels=args.num_labels, feedback=args.feedback or None)
    except (SpikingConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
