"""A local stand-in for the Hugging Face Hub's download routes, and model repositories laid out as on the Hub.

`FakeHub` serves ``HEAD``/``GET /{repo}/resolve/{revision}/{file}`` on 127.0.0.1 with the headers
``huggingface_hub`` reads (``X-Repo-Commit``, ``ETag``, ``Content-Length``) and its error codes
(``X-Error-Code``: ``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``); it records every
request. `hub_env` points ``huggingface_hub`` at it (``HF_ENDPOINT``) with a cache of its own (``HF_HUB_CACHE``).

Repositories: `bert_base_files` (a pre-trained BERT as ``bert-base-uncased`` has it: ``bert.``-prefixed keys, the
TensorFlow LayerNorm names ``gamma``/``beta``, the pre-training heads ``cls.*``, ``model.safetensors`` and
``pytorch_model.bin``, and files for other frameworks), `fine_tuned_bert_files` (a task teacher as the
``textattack/bert-base-uncased-SST-2`` repositories have it: ``pytorch_model.bin`` only, with a ``position_ids``
buffer and a config of the transformers 2.x era), `directory_files` (a saved directory as it is).

`resolve_in_child` resolves a location with `core.remote.cached_path` in a forked child that imports
``huggingface_hub`` under the environment given (it reads it at import).
"""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote

import torch
from safetensors.torch import load_file, save_file

#: Files of a Hub repository that no model directory needs: never to be downloaded.
OTHER_FILES = {"tf_model.h5": b"\x89HDF-not-needed", "flax_model.msgpack": b"not needed", "tokenizer.json": b"{}",
               "training_args.bin": b"not needed", "special_tokens_map.json": b"{}", "README.md": b"# model card"}


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        hub: FakeHub = self.server.hub
        hub.requests.append((self.command, unquote(self.path)))
        repo, _, rest = unquote(self.path.split("?")[0]).lstrip("/").partition("/resolve/")
        revision, _, name = rest.rpartition("/")
        entry = hub.repos.get(repo)
        if entry is None or not rest:
            return self._error(404, "RepoNotFound")
        files, commit, gated = entry
        if gated:
            return self._error(401, "GatedRepo")
        if revision not in ("main", commit):
            return self._error(404, "RevisionNotFound")
        if name not in files:
            return self._error(404, "EntryNotFound", {"X-Repo-Commit": commit})
        data = files[name]
        self.send_response(200)
        for key, value in (("X-Repo-Commit", commit), ("ETag", f'"{hashlib.sha256(data).hexdigest()}"'),
                           ("Content-Length", str(len(data))), ("Content-Type", "application/octet-stream")):
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: int, code: str, headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        for key, value in {"X-Error-Code": code, "Content-Length": "0", **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()


class FakeHub:
    """The Hub's download routes on 127.0.0.1 (a random port) for the repositories `add` puts there."""

    def __init__(self) -> None:
        self.repos: Dict[str, Tuple[Dict[str, bytes], str, bool]] = {}
        self.requests: List[Tuple[str, str]] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.hub = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def add(self, repo: str, files: Dict[str, bytes], gated: bool = False) -> str:
        """Put ``files`` on the Hub as ``repo``; returns the commit its ``main`` points to."""
        commit = hashlib.sha1(repo.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[repo] = (dict(files), commit, gated)
        return commit

    def fetched(self, repo: str) -> List[str]:
        """The files of ``repo`` whose content was downloaded (GET), in order."""
        prefix = f"/{repo}/resolve/"
        return [path.rpartition("/")[2] for method, path in self.requests
                if method == "GET" and path.startswith(prefix)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def hub_env(endpoint: str, cache: Path, offline: bool = False) -> Dict[str, str]:
    """The environment that points ``huggingface_hub`` at ``endpoint`` with the cache ``cache``."""
    return {"HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1" if offline else "0",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}


def _torch_bytes(state: Dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _safetensors_bytes(state: Dict[str, torch.Tensor], scratch: Path) -> bytes:
    save_file({k: v.contiguous() for k, v in state.items()}, str(scratch))
    return scratch.read_bytes()


def _hf_config(model_dir: Path, **fields) -> bytes:
    config = json.loads((model_dir / "config.json").read_text())
    config.pop("architectures", None)
    return json.dumps({**config, **fields}, indent=2).encode()


def bert_base_files(model_dir: Path, scratch: Path) -> Dict[str, bytes]:
    """The repository of a pre-trained BERT as ``bert-base-uncased`` lays it out, from the saved
    ``BertForPreTraining`` directory ``model_dir``."""
    state = load_file(str(model_dir / "model.safetensors"))
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in state.items()}
    config = _hf_config(model_dir, architectures=["BertForMaskedLM"], gradient_checkpointing=False,
                        model_type="bert", position_embedding_type="absolute", transformers_version="4.6.0.dev0",
                        use_cache=True)
    return {"config.json": config, "vocab.txt": (model_dir / "vocab.txt").read_bytes(),
            "model.safetensors": _safetensors_bytes(state, scratch / "bert-base.safetensors"),
            "pytorch_model.bin": _torch_bytes(state), **OTHER_FILES}


def fine_tuned_bert_files(model_dir: Path) -> Dict[str, bytes]:
    """The repository of a task-fine-tuned BERT as the ``textattack/bert-base-uncased-*`` ones lay it out, from the
    saved ``BertForSequenceClassification`` directory ``model_dir``: ``pytorch_model.bin`` only."""
    state = load_file(str(model_dir / "model.safetensors"))
    positions = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    state["bert.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    config = _hf_config(model_dir, architectures=["BertForSequenceClassification"], finetuning_task="sst-2",
                        model_type="bert", output_attentions=False, output_hidden_states=False, pruned_heads={},
                        torchscript=False, id2label={"0": "LABEL_0", "1": "LABEL_1"},
                        label2id={"LABEL_0": 0, "LABEL_1": 1})
    return {"config.json": config, "vocab.txt": (model_dir / "vocab.txt").read_bytes(),
            "pytorch_model.bin": _torch_bytes(state), **OTHER_FILES}


def directory_files(model_dir: Path) -> Dict[str, bytes]:
    """The files of a saved model directory, as they are."""
    return {path.name: path.read_bytes() for path in model_dir.iterdir() if path.is_file()}


def resolve_in_child(env: Dict[str, str], location: str) -> Tuple[str, str]:
    """``("path", local path)`` of ``location`` by `core.remote.cached_path` under ``env``, or ``("ExitN", message)``
    for the `core.errors.UserError` it raised (N: its exit status). Runs in a child of `tests.helpers.cli_runner`
    that has not imported ``huggingface_hub`` yet (it reads its settings when imported)."""
    assert "huggingface_hub" not in sys.modules, "huggingface_hub was imported before its settings were made"
    os.environ.update(env)
    from spikingbert.core.errors import UserError
    from spikingbert.core.remote import cached_path

    try:
        return "path", str(cached_path(location))
    except UserError as err:
        return f"Exit{err.exit_code}", str(err)
