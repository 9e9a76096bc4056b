"""Student model directories: weight files, ``save_pretrained`` / ``from_pretrained`` and weight initialisation.

A student directory holds ``config.json`` (:class:`~models.configuration.SpikingBertConfig`),
``model.safetensors`` (or a legacy ``pytorch_model.bin``, read with ``weights_only=True``) and
``vocab.txt``; a directory with only ``config.json`` is a new, randomly initialised student.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from transformer.file_utils import ModelLoadError, atomic_write, load_error_message

from .configuration import SpikingBertConfig, SpikingConfigError, resolve_location

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
#: Weight files of a model directory, the preferred one first.
WEIGHT_FILE_NAMES = (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME)
VOCAB_NAME = "vocab.txt"


def find_weights(directory: str | os.PathLike) -> Optional[Path]:
    """``model.safetensors`` (preferred) or ``pytorch_model.bin`` of ``directory``, or None."""
    for name in WEIGHT_FILE_NAMES:
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a safetensors file, or a ``.bin`` with ``weights_only=True`` (never unpickles code)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    except Exception as e:  # truncated/corrupt files, pickled code refused by weights_only
        raise ModelLoadError(load_error_message(path, e, "it is truncated or not a plain tensor checkpoint; "
                                                         "replace it with an intact copy")) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SpikingConfigError(f"{path}: expected a flat dict of tensors")
    return dict(state)


class SpikingBertPreTrainedModel(nn.Module):
    """Weight initialisation and model directories (``save_pretrained`` / ``from_pretrained``)."""

    #: Keys a checkpoint may lack (they are initialised and reported).
    _optional_keys: tuple[str, ...] = ()
    #: Keys of other heads that are dropped (and reported) when a checkpoint has them.
    _ignored_keys: tuple[str, ...] = ("classifier.", "pooler.")

    def __init__(self, config: SpikingBertConfig):
        super().__init__()
        self.config = config
        self.vocab_file: Optional[Path] = None
        self.source: Optional[Path] = None           # the directory `from_pretrained` read
        self.weights_file: Optional[Path] = None     # its weight file (None: a new, untrained student)
        self.initialised_keys: list[str] = []        # keys the weight file lacked (initialised, untrained)

    def init_weights(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def save_pretrained(self, directory: str | os.PathLike, vocab_file: Optional[str | os.PathLike] = None) -> None:
        """Write ``config.json``, ``model.safetensors`` and ``vocab.txt`` (when known), each atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        self.config.extra["architectures"] = [type(self).__name__]
        self.config.save_pretrained(directory)
        vocab = Path(vocab_file) if vocab_file is not None else self.vocab_file
        if vocab is not None and vocab.resolve() != (directory / VOCAB_NAME).resolve():
            atomic_write(directory / VOCAB_NAME, lambda tmp: shutil.copyfile(vocab, tmp))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides):
        """Load a student directory (or URL/archive). A directory with only ``config.json`` gives a new,
        randomly initialised student. ``overrides`` replace config fields (``num_labels``, ``t_conv``, …)."""
        directory = Path(resolve_location(path))
        if not directory.is_dir():
            raise SpikingConfigError(f"{path}: not a student directory (expected config.json and weights)")
        config = SpikingBertConfig.from_pretrained(directory, **overrides)
        model = cls(config)
        vocab = directory / VOCAB_NAME
        model.vocab_file = vocab if vocab.is_file() else None
        model.source = directory
        weights = find_weights(directory)
        if weights is None:
            logger.info("%s has no weights: initialised a new student", directory)
            return model
        model.load_checkpoint(load_state_dict_file(weights), str(weights))
        model.weights_file = weights
        return model

    def load_checkpoint(self, state: dict[str, Tensor], source: str) -> None:
        """Load ``state`` strictly, except for this head's optional keys and other heads' keys."""
        if any(k.startswith("network_x.") for k in state):
            raise SpikingConfigError(
                f"{source} was written by the published SpikingBERT code; convert it first with "
                f"`python -m models.convert_published --checkpoint {source} --config CONFIG_DIR --output_dir OUT`")
        own = self.state_dict()
        ignored = sorted(k for k in state if k not in own and k.startswith(self._ignored_keys + ("bert.feedback.",)))
        unexpected = sorted(k for k in state if k not in own and k not in ignored)
        missing = sorted(k for k in own if k not in state)
        initialised = [k for k in missing if k.startswith(self._optional_keys + ("bert.feedback.",))]
        missing = [k for k in missing if k not in initialised]
        if missing or unexpected:
            raise SpikingConfigError(
                f"{source} does not match this student: missing {missing[:8]}, unexpected {unexpected[:8]} "
                f"(check that config.json belongs to these weights)")
        for k, v in state.items():
            if k in own and own[k].shape != v.shape:
                raise SpikingConfigError(
                    f"{source}: {k} has shape {tuple(v.shape)} but the config gives {tuple(own[k].shape)} "
                    f"(e.g. a different num_labels or hidden size)")
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        self.initialised_keys = initialised
        if initialised:
            logger.info("initialised %s (not in %s)", initialised, source)
        if ignored:
            logger.info("ignored %s from %s", ignored, source)
