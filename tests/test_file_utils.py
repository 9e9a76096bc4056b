"""cached_path against local HTTP and S3 (moto) servers on 127.0.0.1."""
import http.server
import io
import socket
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from spikingbert.core import remote as file_utils
from spikingbert.core.errors import ModelError
from spikingbert.core.remote import DownloadError, cached_path
from spikingbert.transformer.modeling import BertConfig, BertForSequenceClassification
from spikingbert.transformer.tokenization import BertTokenizer

VOCAB = b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n"
TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
            max_position_embeddings=16, num_labels=2)


def _tar_gz(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny classifier, its files as bytes, and its logits on fixed inputs."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**TINY)).eval()
    directory = tmp_path_factory.mktemp("tiny") / "tiny-bert"
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_bytes(VOCAB)
    inputs = torch.tensor([[2, 5, 7, 3, 0]]), None, torch.tensor([[1, 1, 1, 1, 0]])
    with torch.no_grad():
        logits = model(*inputs).logits
    files = {p.name: p.read_bytes() for p in directory.iterdir()}
    return directory, files, inputs, logits


def _assert_same_model(path: Path, tiny_model_dir):
    _, _, inputs, logits = tiny_model_dir
    loaded = BertForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs).logits, logits)


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes of the test server; ``server.routes[path] = (status, body, etag)``."""

    def log_message(self, *args):
        pass

    def _respond(self, send_body: bool):
        self.server.requests.append((self.command, self.path))
        if self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.send_header("ETag", '"t1"')
            self.end_headers()
            if send_body:
                self.wfile.write(b"x" * 1000)
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.path == "/slow":
            time.sleep(1.5)
        status, body, etag = self.server.routes.get(self.path, (404, b"not found", None))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if etag:
            self.send_header("ETag", etag)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_HEAD(self):
        if self.path.startswith("/nohead/"):
            self.server.requests.append((self.command, self.path))
            self.send_error(405)
            return
        self._respond(send_body=False)

    def do_GET(self):
        self._respond(send_body=True)


@pytest.fixture()
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.routes, server.requests = {}, []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_local_paths(tmp_path):
    assert cached_path(tmp_path) == tmp_path
    (tmp_path / "f.txt").write_text("x")
    assert cached_path(str(tmp_path / "f.txt")) == tmp_path / "f.txt"
    with pytest.raises(ModelError, match=f"{tmp_path / 'nope'} does not exist"):
        cached_path(tmp_path / "nope")


def test_etag_cache_hit_and_refresh(http_server, tmp_path):
    server, base = http_server
    server.routes["/m/vocab.txt"] = (200, VOCAB, '"v1"')
    cache = tmp_path / "cache"
    first = cached_path(f"{base}/m/vocab.txt", cache_dir=cache)
    assert first.name == "vocab.txt" and first.read_bytes() == VOCAB
    second = cached_path(f"{base}/m/vocab.txt", cache_dir=cache)
    assert second == first
    assert [r for r in server.requests if r[0] == "GET"] == [("GET", "/m/vocab.txt")]
    server.routes["/m/vocab.txt"] = (200, VOCAB + b"world\n", '"v2"')
    third = cached_path(f"{base}/m/vocab.txt", cache_dir=cache)
    assert third != first and third.read_bytes() == VOCAB + b"world\n"
    assert len([r for r in server.requests if r[0] == "GET"]) == 2


def test_get_etag_when_head_is_refused(http_server, tmp_path):
    server, base = http_server
    server.routes["/nohead/vocab.txt"] = (200, VOCAB, '"g1"')
    got = cached_path(f"{base}/nohead/vocab.txt", cache_dir=tmp_path / "cache")
    assert got.read_bytes() == VOCAB and got.name == "vocab.txt"
    assert server.requests == [("HEAD", "/nohead/vocab.txt"), ("GET", "/nohead/vocab.txt")]
    assert cached_path(f"{base}/nohead/vocab.txt", cache_dir=tmp_path / "cache") == got
    assert len(_files_under(tmp_path / "cache")) == 2  # the file and its .url record


def test_offline_falls_back_to_cached_copy(http_server, tmp_path):
    server, base = http_server
    server.routes["/v.txt"] = (200, VOCAB, '"e"')
    first = cached_path(f"{base}/v.txt", cache_dir=tmp_path / "cache")
    server.shutdown()
    server.server_close()
    assert cached_path(f"{base}/v.txt", cache_dir=tmp_path / "cache") == first
    with pytest.raises(DownloadError, match=f"could not reach {base}/other.txt"):
        cached_path(f"{base}/other.txt", cache_dir=tmp_path / "cache")


def test_default_cache_dir_from_environment(http_server, tmp_path, monkeypatch):
    server, base = http_server
    server.routes["/v.txt"] = (200, VOCAB, '"e"')
    monkeypatch.setenv("SPIKINGBERT_CACHE", str(tmp_path / "envcache"))
    assert cached_path(f"{base}/v.txt").is_relative_to(tmp_path / "envcache")


@pytest.mark.parametrize("status", [404, 500])
def test_http_errors_name_the_url(http_server, tmp_path, status):
    server, base = http_server
    server.routes["/bad"] = (status, b"boom", None)
    with pytest.raises(DownloadError, match=f"{base}/bad.*HTTP {status}"):
        cached_path(f"{base}/bad", cache_dir=tmp_path / "cache")
    assert _files_under(tmp_path / "cache") == []


def test_timeout_names_the_url(http_server, tmp_path, monkeypatch):
    server, base = http_server
    server.routes["/slow"] = (200, b"late", '"s"')
    monkeypatch.setattr(file_utils, "HTTP_TIMEOUT", (2.0, 0.3))
    with pytest.raises(DownloadError, match=f"{base}/slow"):
        cached_path(f"{base}/slow", cache_dir=tmp_path / "cache")
    assert _files_under(tmp_path / "cache") == []


def test_interrupted_download_leaves_nothing(http_server, tmp_path):
    _, base = http_server
    with pytest.raises(DownloadError, match=f"{base}/truncated"):
        cached_path(f"{base}/truncated", cache_dir=tmp_path / "cache")
    assert _files_under(tmp_path / "cache") == []
    assert list((tmp_path / "cache").iterdir()) == []


def test_http_archive_loads_as_model(http_server, tmp_path, tiny_model_dir):
    server, base = http_server
    _, files, _, _ = tiny_model_dir
    server.routes["/tiny.tar.gz"] = (200, _tar_gz({f"tiny-bert/{k}": v for k, v in files.items()}), '"a"')
    server.routes["/flat.zip"] = (200, _zip(files), '"z"')
    cache = tmp_path / "cache"
    extracted = cached_path(f"{base}/tiny.tar.gz", cache_dir=cache)
    assert extracted.name == "tiny-bert" and sorted(p.name for p in extracted.iterdir()) == sorted(files)
    _assert_same_model(extracted, tiny_model_dir)
    flat = cached_path(f"{base}/flat.zip", cache_dir=cache)
    assert sorted(p.name for p in flat.iterdir()) == sorted(files)
    _assert_same_model(flat, tiny_model_dir)
    # The tokenizer resolves the same URL (already cached).
    assert BertTokenizer.from_pretrained(f"{base}/tiny.tar.gz", cache_dir=cache).vocab["hello"] == 5


@pytest.mark.parametrize("archive, name", [
    (lambda: _tar_gz({"model/config.json": b"{}", "../evil.txt": b"x"}), "bad.tar.gz"),
    (lambda: _tar_gz({"/tmp/evil-abs.txt": b"x"}), "abs.tgz"),
    (lambda: _tar_gz({"model/config.json": b"{}"}, links={"model/link": "../../../etc/passwd"}), "link.tar.gz"),
    (lambda: _zip({"model/../../evil.txt": b"x"}), "bad.zip"),
])
def test_path_traversal_archives_are_refused(tmp_path, archive, name):
    source = tmp_path / "src" / name
    source.parent.mkdir()
    source.write_bytes(archive())
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(ModelError, match=f"refusing to extract {source}"):
        cached_path(source, cache_dir=cache)
    assert _files_under(cache) == []
    assert not list(tmp_path.rglob("evil*"))


# ------------------------------------------------------------------------------------------------
# S3 (moto server)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    import boto3

    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    yield client
    for obj in client.list_objects_v2(Bucket="models").get("Contents", []):
        client.delete_object(Bucket="models", Key=obj["Key"])
    client.delete_bucket(Bucket="models")


def test_s3_model_directory(s3_env, tmp_path, tiny_model_dir):
    _, files, _, _ = tiny_model_dir
    for name, data in files.items():
        s3_env.put_object(Bucket="models", Key=f"runs/tiny/{name}", Body=data)
    s3_env.put_object(Bucket="models", Key="runs/tiny-other/config.json", Body=b"{}")
    cache = tmp_path / "cache"
    local = cached_path("s3://models/runs/tiny", cache_dir=cache)
    assert sorted(p.name for p in local.iterdir()) == sorted(files)
    _assert_same_model(local, tiny_model_dir)
    assert cached_path("s3://models/runs/tiny/", cache_dir=cache) == local
    single = cached_path("s3://models/runs/tiny/vocab.txt", cache_dir=cache)
    assert single.name == "vocab.txt" and single.read_bytes() == VOCAB


def test_s3_archive_loads_with_from_pretrained(s3_env, tmp_path, tiny_model_dir, monkeypatch):
    _, files, inputs, logits = tiny_model_dir
    s3_env.put_object(Bucket="models", Key="archives/tiny.tar.gz",
                      Body=_tar_gz({f"tiny-bert/{k}": v for k, v in files.items()}))
    monkeypatch.setenv("SPIKINGBERT_CACHE", str(tmp_path / "cache"))
    model = BertForSequenceClassification.from_pretrained("s3://models/archives/tiny.tar.gz")
    with torch.no_grad():
        assert torch.equal(model(*inputs).logits, logits)


def test_s3_missing_key_is_a_clear_error(s3_env, tmp_path):
    with pytest.raises(DownloadError, match="s3://models/nothing/here not found"):
        cached_path("s3://models/nothing/here", cache_dir=tmp_path / "cache")
    with pytest.raises(DownloadError, match="s3://no-such-bucket/x.*NoSuchBucket"):
        cached_path("s3://no-such-bucket/x", cache_dir=tmp_path / "cache")
