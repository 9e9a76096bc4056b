"""Hugging Face Hub model names as model locations.

A model location that is no local path and reads as a Hub model name — ``name`` or ``org/name``, optionally
``@revision`` (a branch, a tag or a commit; default ``main``) — is a model repository on the Hugging Face Hub
(`hub_reference`). `hub_directory` returns its local copy, a snapshot directory of the Hugging Face cache
(``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), shared with every other Hugging Face tool:

* the cache first: when the cache holds ``config.json``, ``vocab.txt`` and the weights of that revision, they are
  used as they are, without any request (a newer revision is fetched by ``hf download NAME``, or named with ``@``);
* else the files a model directory needs are downloaded with ``huggingface_hub`` (which honours ``HF_ENDPOINT``,
  ``HF_TOKEN`` and the rest of its configuration): ``config.json``, ``model.safetensors`` or, where the
  repository has none, ``pytorch_model.bin``, and ``vocab.txt`` where there is one — nothing else of the
  repository, all from one commit;
* with ``HF_HUB_OFFLINE=1``, or when the Hub cannot be reached, a name missing from the cache is one line saying how
  to fetch it; an unknown name, a gated repository or a missing revision is one line saying what to check.

The files are read from the snapshot as from any model directory (bounded reads, safetensors or ``weights_only``).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import NamedTuple, Optional

from .errors import ModelError, UsageError, one_line
from .files import describe_os_error

__all__ = ["HubReference", "hub_reference", "hub_directory"]

logger = logging.getLogger(__name__)

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_NAME = re.compile(rf"(?P<repo>(?:{_PART}/)?{_PART})(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9._/-]*))?")
#: Endings of file names: a location ending so is a path to a file, never a Hub model name.
_FILE_ENDINGS = (".json", ".txt", ".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".tar.gz", ".tgz", ".zip", ".git")


class _Files(NamedTuple):
    config: str
    vocab: str
    weights: tuple                                   # the preferred one first


def _model_files() -> _Files:
    """The files of a model directory (their names live with their readers, which import torch: read here late)."""
    from .pretrained import CONFIG_NAME, VOCAB_NAME
    from .weights import WEIGHT_FILE_NAMES

    return _Files(CONFIG_NAME, VOCAB_NAME, WEIGHT_FILE_NAMES)


class HubReference(NamedTuple):
    """A model repository on the Hugging Face Hub at one revision."""

    repo: str
    revision: str

    def __str__(self) -> str:
        return self.repo if self.revision == "main" else f"{self.repo}@{self.revision}"


def hub_reference(location: str) -> Optional[HubReference]:
    """The Hub model ``location`` names (``name`` or ``org/name``, optionally ``@revision``), None when it does not
    read as one (a path with more parts, a file name, ``--`` or ``..`` in a name). Whether a local path of that name
    exists is the caller's to check first: a local path always wins."""
    match = _NAME.fullmatch(location)
    if match is None:
        return None
    repo, revision = match["repo"], match["revision"] or "main"
    if "--" in repo or ".." in repo + revision or repo.lower().endswith(_FILE_ENDINGS) or revision.endswith("/"):
        return None
    return HubReference(repo, revision)


def hub_directory(reference: HubReference) -> Path:
    """The snapshot directory of ``reference`` in the Hugging Face cache, downloaded first where the cache lacks a file
    (see the module docstring). Raises `UsageError` for a name or revision the Hub does not have, `ModelError` when
    the model cannot be had (offline, unreachable, gated, a failed download, no ``huggingface_hub``)."""
    try:
        from huggingface_hub import constants
    except ImportError as err:
        raise ModelError(f"{reference} reads as a Hugging Face Hub model name, and huggingface_hub is not installed: "
                         "pip install -r requirements.txt (or pass a local directory)") from err
    try:
        directory = _cached(reference)
        if directory is not None:
            logger.info("Hugging Face Hub model %s: using the cached copy %s", reference, directory)
            return directory
        if constants.HF_HUB_OFFLINE:
            raise ModelError(f"{reference} is no local path, nor a model in the Hugging Face cache "
                             f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set: check the path; for the Hub "
                             f"model, unset HF_HUB_OFFLINE to download it, or {_fetch_hint(reference)}")
        directory = _download(reference)
    except (ModelError, UsageError):
        raise
    except Exception as err:  # huggingface_hub's errors, and those of its HTTP client and the disk
        raise _hub_error(err, reference, constants) from err
    logger.info("Hugging Face Hub model %s: commit %s in %s", reference, directory.name, directory)
    return directory


def _fetch_hint(reference: HubReference) -> str:
    revision = "" if reference.revision == "main" else f" --revision {reference.revision}"
    files = _model_files()
    names = " ".join((files.config, files.vocab, *files.weights))
    return (f"on a machine with network run `hf download {reference.repo}{revision} --include {names} "
            "--local-dir DIR` and pass DIR (or copy the Hugging Face cache there once the same command ran online)")


def _cache_state(reference: HubReference, name: str):
    """The cached file ``name`` of ``reference`` (a path), False when the cache knows the repository lacks it, None
    when the cache does not know."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(reference.repo, name, revision=reference.revision)
    return Path(found) if isinstance(found, str) else None if found is None else False


def _cached(reference: HubReference) -> Optional[Path]:
    """The snapshot directory when the cache holds every file a model directory needs, else None."""
    files = _model_files()
    config = _cache_state(reference, files.config)
    if not config or _cache_state(reference, files.vocab) is None:
        return None
    for name in files.weights:
        state = _cache_state(reference, name)
        if state is None:
            return None
        if state:
            break
    return config.parent


def _download(reference: HubReference) -> Path:
    """Download what the cache lacks of a model directory; returns its snapshot directory."""
    files = _model_files()
    config = _fetch(reference.repo, files.config, reference.revision)
    if config is None:
        raise UsageError(f"the Hugging Face Hub model {reference} has no {files.config}: it is not a BERT model "
                         f"repository ({files.config}, {' or '.join(files.weights)}, {files.vocab})")
    commit = config.parent.name                      # the snapshot of the commit the revision pointed to
    for name in files.weights:
        if _fetch(reference.repo, name, commit) is not None:
            break
    _fetch(reference.repo, files.vocab, commit)
    return config.parent


def _fetch(repo: str, name: str, revision: str) -> Optional[Path]:
    """The file ``name`` of ``repo`` at ``revision`` from the cache, downloaded first if needed; None when the
    repository has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo, name, revision=revision))
    except LocalEntryNotFoundError:                  # not cached and the Hub unreachable (a subclass of the next)
        raise
    except EntryNotFoundError:
        return None


def _hub_error(err: Exception, reference: HubReference, constants) -> Exception:
    """One line for an error of ``huggingface_hub`` while resolving ``reference``."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"the Hugging Face Hub ({constants.ENDPOINT})"
    if isinstance(err, GatedRepoError):
        return ModelError(f"{reference.repo} is a gated model on {where}: accept its conditions on its page, log in "
                          "(`hf auth login`, or set HF_TOKEN) and run again")
    if isinstance(err, RepositoryNotFoundError):
        return UsageError(f"{reference.repo} is no local path, and {where} has no model of that name (or it is "
                          "private: log in with `hf auth login`, or set HF_TOKEN); check the path or the name")
    if isinstance(err, RevisionNotFoundError):
        return UsageError(f"the Hugging Face Hub model {reference.repo} has no revision {reference.revision!r}: name "
                          "an existing branch, tag or commit after '@'")
    if isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return ModelError(f"{reference} is no local path, nor a model in the Hugging Face cache "
                          f"({constants.HF_HUB_CACHE}), and {where} could not be reached to download it: check the "
                          f"path; for the Hub model, check your network connection, or {_fetch_hint(reference)}")
    if isinstance(err, HfHubHTTPError):
        return ModelError(f"downloading {reference} from {where} failed: {one_line(err)[:300]}; try again later")
    if isinstance(err, OSError) and err.errno is not None:
        return ModelError(f"{describe_os_error(err)} (downloading {reference} into the Hugging Face cache "
                          f"{constants.HF_HUB_CACHE}); free some space, or set HF_HUB_CACHE to another directory")
    return ModelError(f"downloading {reference} from {where} failed ({type(err).__name__}: {one_line(err)[:300]}): "
                      "check your network connection and try again")
