"""Weight files of a model directory: which one it has, and the one reader of them.

A model directory holds ``model.safetensors`` or, from older tools, ``pytorch_model.bin``. A ``.bin`` is
read with ``weights_only=True``: its pickle may build nothing but tensors and containers, and a file that
would run code is refused, naming the object it would have called. `read_weights` returns the tensors, or
with ``header_only`` only their names and shapes (the safetensors header, checked against the file size; a
``.bin`` memory-mapped) — what the checks before a run read.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .errors import ModelError

__all__ = ["WEIGHTS_NAME", "LEGACY_WEIGHTS_NAME", "WEIGHT_FILE_NAMES", "DAMAGED_HINT", "find_weights",
           "read_weights", "load_error_message", "refused_object"]

WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
#: Weight files of a model directory, the preferred one first.
WEIGHT_FILE_NAMES = (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME)
#: What to do with a weights file that cannot be read.
DAMAGED_HINT = "it is truncated or damaged; replace it with an intact copy (or use the checkpoint before it)"


def find_weights(directory: Union[str, os.PathLike]) -> Optional[Path]:
    """``model.safetensors`` (preferred) or ``pytorch_model.bin`` of ``directory``, or None."""
    for name in WEIGHT_FILE_NAMES:
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def read_weights(path: Union[str, os.PathLike], header_only: bool = False
                 ) -> Union[Dict[str, Tensor], Dict[str, Tuple[int, ...]]]:
    """The tensors of a weights file by name, or with ``header_only`` their shapes (no tensor data is read).

    Raises `ModelError` for a missing, truncated or damaged file, one that would run code when unpickled,
    or one that is not a flat dict of tensors.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            if not header_only:
                return load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (safetensors' handle is no dict)
        state = torch.load(path, map_location="cpu", weights_only=True,
                           mmap=header_only and zipfile.is_zipfile(path))
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except Exception as err:  # refused pickles; safetensors, zip and OS errors of a truncated or damaged file
        raise ModelError(load_error_message(path, err, DAMAGED_HINT)) from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a flat dict of tensors; save the model's state_dict()")
    return {key: tuple(value.shape) for key, value in state.items()} if header_only else dict(state)


def refused_object(err: BaseException) -> Optional[str]:
    """The Python object (``posix.system``, ``builtins.exec``, a class, ...) whose use made
    ``torch.load(..., weights_only=True)`` refuse a file, or None when ``err`` is not such a refusal."""
    if not isinstance(err, pickle.UnpicklingError):
        return None
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    patterns = (r"unsupported GLOBAL ([\w.]+) whose module", r"Unsupported global: GLOBAL ([\w.]+)",
                r"call reduce for unrecognized function (.+?)(?: which belongs|$)",
                r"Can only (?:create new object|build)[^\n]* but got <class '([\w.]+)'>")
    for pattern in patterns:
        found = re.search(pattern, text, re.MULTILINE)
        if found:
            name = found.group(1).strip()
            return name if "." in name or " " in name else f"builtins.{name}"   # torch drops "builtins."
    return None


def describe_load_error(err: BaseException) -> str:
    """A short, one-line reason why ``torch.load(..., weights_only=True)`` refused or failed to read a file.

    A refusal names the object the file would have made Python import and call (`refused_object`); torch's
    own message spans many lines and suggests loading with ``weights_only=False``, which would run whatever
    code the file carries: it is not repeated.
    """
    name = refused_object(err)
    if name is not None:
        return (f"it would run code when loaded (it calls the Python object {name}), so it was refused (only plain "
                "tensors are loaded, nothing was run)")
    if isinstance(err, pickle.UnpicklingError):
        return "it is not a valid torch file (damaged, truncated or of another format)"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return f"{type(err).__name__}: {first[:200]}"


#: What to do with a weights file that `torch.load(..., weights_only=True)` refused.
REFUSED_HINT = "use weights saved as a plain state_dict (model.safetensors) from a source you trust"


def load_error_message(path: str | os.PathLike, err: BaseException, damaged: str, refused: str = REFUSED_HINT) -> str:
    """One line on why ``path`` was not loaded: refused because it would run code (then ``refused``), or unreadable
    (then ``damaged``, e.g. ``it is truncated or damaged; replace it``)."""
    if refused_object(err) is not None:
        return f"{path} was not loaded: {describe_load_error(err)}; {refused}"
    return f"{path} cannot be read ({describe_load_error(err)}): {damaged}"
