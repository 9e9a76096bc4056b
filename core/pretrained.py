"""Model directories: the config and the ``from_pretrained`` / ``save_pretrained`` path the teacher and the
student share.

A model directory holds ``config.json``, ``model.safetensors`` (or a legacy ``pytorch_model.bin``, see
`core.weights`) and ``vocab.txt``; any of them may come from a URL, an ``s3://`` path, an archive or a Hugging Face
Hub name (`core.remote.cached_path`).

* `ModelConfig`: a dataclass config read from and written to ``config.json``. Every field the settings
  table knows is checked against it when the file is read (`core.settings`); unknown fields are kept in
  ``extra`` and written back unchanged; the file is written sorted and atomically.
* `PreTrainedModel`: weight initialisation, loading a directory's weights by key (`load_weights`) and
  writing a complete directory (`save_pretrained`). What a model class does differently is a class
  attribute: the keys a checkpoint may lack or may carry for other heads, how an old checkpoint key maps to
  this model's (`map_key`), whether a directory without weights is a new model, whether the padding
  embedding starts at zero, whether the model is returned in eval mode.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .errors import ModelError, UsageError
from .files import atomic_write, atomic_write_text, read_capped
from .remote import cached_path
from .settings import SETTINGS
from .weights import WEIGHTS_NAME, find_weights, read_weights

__all__ = ["CONFIG_NAME", "VOCAB_NAME", "ModelConfig", "PreTrainedModel", "model_directory"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
VOCAB_NAME = "vocab.txt"
PathLike = Union[str, os.PathLike]


def model_directory(location: PathLike) -> Path:
    """The local directory of a model ``location`` (downloaded or extracted first when remote or an archive)."""
    directory = cached_path(location)
    if not directory.is_dir():
        raise ModelError(f"{location} is not a model directory: pass the directory holding {CONFIG_NAME} and "
                         f"{WEIGHTS_NAME} (or pytorch_model.bin)")
    return directory


@dataclass
class ModelConfig:
    """A model's ``config.json`` as a dataclass; unknown fields live in ``extra`` and are written back."""

    extra: Dict[str, Any] = field(default_factory=dict, repr=False)
    #: What the model is called in messages ("BERT", "student").
    KIND: ClassVar[str] = "model"

    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def check_fields(cls, values: Any, source: str) -> None:
        """Raise `UsageError` naming ``source``, the first field whose value is not allowed (`core.settings`), the
        value and what is allowed; then the checks across fields (`check_consistency`)."""
        if not isinstance(values, Mapping):
            raise UsageError(f"{source} must hold a JSON object of settings (found a JSON {type(values).__name__})")
        for name in cls.field_names():
            problem = SETTINGS[name].config_problem(name, values[name]) if name in values and name in SETTINGS else None
            if problem is not None:
                raise UsageError(f"{source}: {problem}")
        cls.check_consistency(values, source)

    @classmethod
    def check_consistency(cls, values: Mapping[str, Any], source: str) -> None:
        """Checks across fields of ``values`` (each in its range already); raise `UsageError` naming ``source``."""

    @classmethod
    def split_known(cls, values: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """``values`` as (this class's fields, everything else)."""
        known = set(cls.field_names())
        return ({k: v for k, v in values.items() if k in known},
                {k: v for k, v in values.items() if k not in known and k != "extra"})

    @classmethod
    def from_dict(cls, values: Any, source: str = "the config", **overrides: Any) -> "ModelConfig":
        """The config of ``values`` (a config.json's fields, read from ``source``) with ``overrides`` (None: keep the
        file's value); the file's fields are checked, then the fields with the overrides."""
        unknown = set(overrides) - set(cls.field_names())
        if unknown:
            raise UsageError(f"unknown {cls.KIND} setting(s): {sorted(unknown)}")
        cls.check_fields(values, source)
        given = {k: v for k, v in overrides.items() if v is not None}
        merged = cls.adapt_labels({**values, **given}, given)
        if given:
            cls.check_fields(merged, f"{source} with the settings {given}")
        kwargs, extra = cls.split_known(merged)
        return cls(**kwargs, extra=extra)

    @classmethod
    def adapt_labels(cls, values: Dict[str, Any], given: Mapping[str, Any]) -> Dict[str, Any]:
        """Hook: reconcile the file's label names with its ``num_labels`` or with one ``given`` as an override."""
        return values

    @classmethod
    def read_json(cls, path: PathLike) -> Any:
        """The fields of the ``config.json`` at ``path`` as read (not checked yet)."""
        path = Path(path)
        try:
            return json.loads(read_capped(path, what=CONFIG_NAME))
        except FileNotFoundError:
            raise ModelError(f"{path} not found: a {cls.KIND} model directory needs a {CONFIG_NAME}") from None
        except IsADirectoryError:
            raise ModelError(f"{path} is a directory: pass a model directory holding a {CONFIG_NAME}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"{path} is not valid JSON ({err}); fix or replace the file") from None
        except RecursionError:
            raise UsageError(f"{path} is nested too deeply to be a {CONFIG_NAME}; fix or replace the file") from None

    @classmethod
    def migrate(cls, values: Any, directory: Path) -> Any:
        """Hook: the fields of a config.json written by an earlier version, brought up to date."""
        return values

    @classmethod
    def from_json_file(cls, path: PathLike, **overrides: Any) -> "ModelConfig":
        """The config of the ``config.json`` at ``path`` (migrated, checked) with ``overrides``."""
        path = Path(path)
        return cls.from_dict(cls.migrate(cls.read_json(path), path.parent), str(path), **overrides)

    @classmethod
    def from_pretrained(cls, location: PathLike, **overrides: Any) -> "ModelConfig":
        """The ``config.json`` of a model directory (or its URL, s3:// path, archive or Hugging Face Hub name), or a
        config.json path."""
        path = cached_path(location)
        return cls.from_json_file(path / CONFIG_NAME if path.is_dir() else path, **overrides)

    def to_dict(self) -> Dict[str, Any]:
        return {**self.extra, **{name: getattr(self, name) for name in self.field_names()}}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: PathLike) -> None:
        """Write ``config.json`` (keys sorted) atomically."""
        atomic_write_text(Path(path), self.to_json_string())

    def save_pretrained(self, directory: PathLike) -> None:
        self.to_json_file(Path(directory) / CONFIG_NAME)


def _usable(tensor: Tensor, key: str, source: Path) -> Tensor:
    """``tensor`` when it holds finite floating-point values; a weight of another dtype (it would be cast silently) or
    with NaN/inf (every output would be NaN) is refused naming it."""
    if not tensor.is_floating_point():
        raise UsageError(f"{source}: {key} holds {str(tensor.dtype).replace('torch.', '')} values, not floating point: "
                         "this is not a weights file of this model; use the file the model was saved with")
    if not torch.isfinite(tensor).all():
        raise ModelError(f"{source}: {key} holds NaN or infinite values: the weights are damaged (or come from a "
                         "diverged run); use an intact copy or an earlier checkpoint")
    return tensor


class PreTrainedModel(nn.Module):
    """Weight initialisation and model directories, shared by the teacher and the student (see the module
    docstring); a subclass sets ``config_class`` and the class attributes below that differ for it."""

    config_class: ClassVar[type] = ModelConfig
    #: Keys (by prefix) a checkpoint may lack; they keep their initial values and are reported.
    optional_prefixes: ClassVar[Tuple[str, ...]] = ()
    #: Checkpoint keys (by prefix) dropped with an info line when this model has no such parameter.
    ignored_prefixes: ClassVar[Tuple[str, ...]] = ()
    #: Checkpoint keys this model does not know (and does not ignore) are an error, else a warning.
    strict: ClassVar[bool] = True
    #: A directory with a config.json but no weights is a new, randomly initialised model, else an error.
    weights_optional: ClassVar[bool] = False
    #: `init_weights` zeroes the padding token's embedding (BERT's initialisation).
    zero_padding_embedding: ClassVar[bool] = False
    #: Parameters that are another one's tensor (not written by `save_pretrained`, never missing).
    tied_keys: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.source: Optional[Path] = None            # the directory `from_pretrained` read
        self.weights_file: Optional[Path] = None      # its weights file (None: a new model)
        self.vocab_file: Optional[Path] = None        # its vocab.txt, written again by `save_pretrained`
        self.initialised_keys: List[str] = []         # keys the weights file lacked (initialised, untrained)
        self.unexpected_keys: List[str] = []          # keys of the weights file this model does not use

    # ---- initialisation ---------------------------------------------------------------------------
    def init_weights(self, *modules: nn.Module) -> None:
        """BERT initialisation of ``modules`` (default: the whole model): N(0, initializer_range) weights, zero
        biases, LayerNorm weight 1 and bias 0 (and a zero padding embedding, see `zero_padding_embedding`)."""
        for module in modules or (self,):
            module.apply(self._init_module)

    def _init_module(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None and self.zero_padding_embedding:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- reading a directory ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, location: PathLike, config: Optional[ModelConfig] = None,
                        **overrides: Any) -> "PreTrainedModel":
        """The model of a directory (or its URL, s3:// path, archive or Hugging Face Hub name): its ``config.json`` with
        ``overrides`` replacing fields (None: keep), or ``config`` when the caller read it already; the weights loaded
        by key (`load_weights`). The model is returned in eval mode, as Hugging Face's: call ``.train()`` to train
        it."""
        directory = model_directory(location)
        if config is None:
            config = cls.config_class.from_json_file(directory / CONFIG_NAME, **overrides)
        model = cls(config)
        model.source = directory
        vocab = directory / VOCAB_NAME
        model.vocab_file = vocab if vocab.is_file() else None
        weights = find_weights(directory)
        if weights is None:
            if not cls.weights_optional:
                raise ModelError(f"{directory} has neither model.safetensors nor pytorch_model.bin; pass a "
                                 "directory with the model weights")
            logger.info("%s has no weights: initialised a new model", directory)
        else:
            model.load_weights(read_weights(weights), weights)
            model.weights_file = weights
        return model.eval()

    def map_key(self, key: str, own: Mapping[str, Tensor]) -> Optional[str]:
        """This model's key for a checkpoint ``key`` (None: it has none)."""
        return key if key in own else None

    def check_checkpoint(self, state: Mapping[str, Tensor], source: Path) -> None:
        """Refuse a checkpoint of another format before its keys are mapped (hook)."""

    def load_weights(self, state: Mapping[str, Tensor], source: Path) -> None:
        """Load ``state`` by key: every key this model needs, except `optional_prefixes`, must be there with its
        shape; other heads' keys (`ignored_prefixes`) are dropped; unknown keys are an error (`strict`)."""
        self.check_checkpoint(state, source)
        own = self.state_dict()
        mapped: Dict[str, Tensor] = {}
        ignored, unexpected = [], []
        for key, tensor in state.items():
            target = self.map_key(key, own)
            if target is None:
                (ignored if key.startswith(self.ignored_prefixes) else unexpected).append(key)
            elif tuple(tensor.shape) != tuple(own[target].shape):
                raise UsageError(f"{source}: {key} has shape {tuple(tensor.shape)} but the model built from its config "
                                 f"expects {tuple(own[target].shape)}; check config.json (num_labels for a classifier, "
                                 "the hidden size)")
            else:
                mapped[target] = _usable(tensor, key, source)
        missing = [k for k in own if k not in mapped and k not in self.tied_keys]
        required = [k for k in missing if not k.startswith(self.optional_prefixes)]
        if required or (unexpected and self.strict):
            raise UsageError(f"{source} does not match the model its config.json describes: missing {required[:8]}, "
                             f"unexpected {unexpected[:8]} (check that config.json belongs to these weights)")
        self.load_state_dict(mapped, strict=False)
        self.initialised_keys, self.unexpected_keys = missing, unexpected
        for what, keys in (("initialised (not in the file)", missing), ("skipped (another model's)", ignored),
                           ("ignored (unexpected)", unexpected)):
            if keys:
                logger.info("%s: %s %d weights: %s", source, what, len(keys), ", ".join(keys))

    # ---- writing a directory ----------------------------------------------------------------------
    def save_pretrained(self, directory: PathLike, vocab_file: Optional[PathLike] = None) -> Path:
        """Write ``config.json`` (naming this class in ``architectures``), ``model.safetensors`` and ``vocab.txt``
        (``vocab_file``, else the one the model was read with, when known) into ``directory``, each atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k not in self.tied_keys}
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
        self.config.extra["architectures"] = [type(self).__name__]
        self.config.save_pretrained(directory)
        vocab = Path(vocab_file) if vocab_file is not None else self.vocab_file
        if vocab is not None and vocab.resolve() != (directory / VOCAB_NAME).resolve():
            atomic_write(directory / VOCAB_NAME, lambda tmp: shutil.copyfile(vocab, tmp))
        return directory
