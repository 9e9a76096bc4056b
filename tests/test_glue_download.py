"""download_glue_data.py end to end against a local HTTP server on 127.0.0.1 (spikingbert/glue/download.py)."""
import io
import random
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List

import pytest

from spikingbert.core.errors import DataError
from spikingbert.data.glue import get_processor
from spikingbert.data.glue.download import safe_extract_zip
from tests.helpers.glue_files import (
    COLA_TRAIN,
    MSR_TEST_ROWS,
    MSR_TRAIN_ROWS,
    SST_TRAIN,
    make_zip,
    standard_files,
    task_zip,
)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "download_glue_data.py"


class GlueServer:
    """Serves `files` by name; can fail with 500 or cut a response short a given number of times."""

    def __init__(self, files: Dict[str, bytes]):
        self.files = dict(files)
        self.fail_500: Dict[str, int] = {}
        self.cut_short: Dict[str, int] = {}
        self.requests: List[tuple] = []  # (name, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                if server.fail_500.get(name, 0) > 0:
                    server.fail_500[name] -= 1
                    self.send_error(500)
                    return
                body = server.files[name]
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if server.cut_short.get(name, 0) > 0:
                    server.cut_short[name] -= 1
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def names_requested(self) -> List[str]:
        return [name for name, _ in self.requests]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = GlueServer(standard_files())
    yield srv
    srv.close()


def run_script(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--retry_wait", "0.01", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def leftovers(data_dir: Path) -> List[str]:
    """Hidden staging directories, partial or downloaded archives left in data_dir."""
    return sorted(p.name for p in data_dir.iterdir() if p.name.startswith("."))


@pytest.mark.system
@pytest.mark.slow
def test_download_all_kinds_of_tasks(tmp_path, server):
    data = tmp_path / "glue"
    result = run_script("--data_dir", str(data), "--tasks", "CoLA,sst-2,MNLI,MRPC,diagnostic", "--mirror", server.url)
    assert result.returncode == 0, result.stderr
    assert (data / "CoLA" / "train.tsv").read_text() == COLA_TRAIN
    assert (data / "SST-2" / "dev.tsv").read_text() == "content of SST-2/dev.tsv\n"
    assert sorted(p.name for p in (data / "MNLI").iterdir()) == [
        "dev_matched.tsv", "dev_mismatched.tsv", "test_matched.tsv", "test_mismatched.tsv", "train.tsv"]
    assert (data / "diagnostic" / "diagnostic.tsv").read_bytes() == server.files["AX.tsv"]
    assert leftovers(data) == []
    # MRPC: the pairs listed in mrpc_dev_ids.tsv go to dev, the rest stay in train, with the GLUE header.
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    assert (data / "MRPC" / "train.tsv").read_text().splitlines() == [
        header, "\t".join(MSR_TRAIN_ROWS[0]), "\t".join(MSR_TRAIN_ROWS[2])]
    assert (data / "MRPC" / "dev.tsv").read_text().splitlines() == [
        header, "\t".join(MSR_TRAIN_ROWS[1]), "\t".join(MSR_TRAIN_ROWS[3])]
    assert (data / "MRPC" / "test.tsv").read_text().splitlines()[1] == "0\t" + "\t".join(MSR_TEST_ROWS[0][1:])
    # The GLUE readers accept what was written.
    assert [e.label for e in get_processor("mrpc").read_split(data / "MRPC", "dev")[0]] == ["0", "0"]
    assert [e.label for e in get_processor("cola").read_split(data / "CoLA", "train")[0]] == ["1"]

    # A second run finds every task complete and downloads nothing.
    before = len(server.requests)
    again = run_script("--data_dir", str(data), "--tasks", "CoLA,SST,MNLI,MRPC,diagnostic", "--mirror", server.url)
    assert again.returncode == 0, again.stderr
    assert len(server.requests) == before
    assert again.stderr.count("already complete") == 5


@pytest.mark.system
@pytest.mark.slow
def test_published_defaults_every_task_into_glue_data(tmp_path, server):
    """The published command line, `python download_glue_data.py` (here with a mirror): every task into ./glue_data."""
    server.files.update({name: task_zip(top) for name, top in
                         (("QQP-clean.zip", "QQP"), ("STS-B.zip", "STS-B"), ("RTE.zip", "RTE"), ("WNLI.zip", "WNLI"))})
    result = run_script("--mirror", server.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = tmp_path / "glue_data"
    assert sorted(p.name for p in data.iterdir() if not p.name.startswith(".")) == sorted(
        ["CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI", "RTE", "WNLI", "diagnostic"])
    assert leftovers(data) == [] and (data / "MRPC" / "dev.tsv").is_file()


@pytest.mark.system
@pytest.mark.slow
def test_retry_after_transient_500(tmp_path, server):
    server.fail_500["CoLA.zip"] = 2
    result = run_script("--data_dir", str(tmp_path), "--tasks", "CoLA", "--mirror", server.url)
    assert result.returncode == 0, result.stderr
    assert server.names_requested() == ["CoLA.zip"] * 3
    assert "HTTP 500" in result.stderr
    assert (tmp_path / "CoLA" / "train.tsv").read_text() == COLA_TRAIN


@pytest.mark.system
@pytest.mark.slow
def test_resume_with_range_after_short_read(tmp_path, server):
    blob = random.Random(0).randbytes(1 << 20)  # incompressible, so the archive is ~1 MiB
    server.files["SST-2.zip"] = make_zip({"SST-2/train.tsv": SST_TRAIN, "SST-2/dev.tsv": "d\n",
                                          "SST-2/test.tsv": "t\n", "SST-2/original/blob.bin": blob.hex()[:1 << 20]})
    server.cut_short["SST-2.zip"] = 1
    result = run_script("--data_dir", str(tmp_path), "--tasks", "SST", "--mirror", server.url)
    assert result.returncode == 0, result.stderr
    (first, first_range), (second, second_range) = server.requests
    assert first == second == "SST-2.zip" and first_range is None
    resumed_at = int(second_range.removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= len(server.files["SST-2.zip"]) // 2
    assert (tmp_path / "SST-2" / "train.tsv").read_text() == SST_TRAIN
    assert (tmp_path / "SST-2" / "original" / "blob.bin").read_text() == blob.hex()[:1 << 20]


@pytest.mark.system
@pytest.mark.slow
def test_gives_up_after_retries(tmp_path, server):
    server.fail_500["CoLA.zip"] = 10
    result = run_script("--data_dir", str(tmp_path), "--tasks", "CoLA", "--mirror", server.url, "--retries", "2")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: could not download")
    assert "Traceback" not in result.stderr
    assert server.names_requested() == ["CoLA.zip"] * 3
    assert not (tmp_path / "CoLA").exists()


@pytest.mark.system
@pytest.mark.slow
def test_missing_file_is_not_retried(tmp_path, server):
    del server.files["QNLIv2.zip"]
    result = run_script("--data_dir", str(tmp_path), "--tasks", "QNLI", "--mirror", server.url)
    assert result.returncode == 1 and "HTTP 404" in result.stderr
    assert server.names_requested() == ["QNLIv2.zip"]


def corrupt(archive: bytes) -> bytes:
    """Flip one byte inside the first member's compressed data (its CRC check then fails)."""
    data = bytearray(archive)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        info = zf.infolist()[0]
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 2
    data[offset] ^= 0xFF
    return bytes(data)


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize("payload", ["crc", "html"])
def test_corrupt_archive_leaves_nothing(tmp_path, server, payload):
    good = server.files["CoLA.zip"]
    server.files["CoLA.zip"] = corrupt(good) if payload == "crc" else b"<html>Service unavailable</html>"
    result = run_script("--data_dir", str(tmp_path), "--tasks", "CoLA,SST", "--mirror", server.url)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "CoLA.zip" in last and ("corrupt" in last or "not a zip" in last)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "CoLA").exists() and leftovers(tmp_path) == []
    # Running again with a good archive works (the bad download was deleted).
    server.files["CoLA.zip"] = good
    assert run_script("--data_dir", str(tmp_path), "--tasks", "CoLA", "--mirror", server.url).returncode == 0
    assert (tmp_path / "CoLA" / "train.tsv").read_text() == COLA_TRAIN


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize("member", ["../evil.txt", "CoLA/../../evil.txt", "/tmp/evil.txt"])
def test_traversal_member_refused(tmp_path, server, member):
    files = {"CoLA/train.tsv": COLA_TRAIN, "CoLA/dev.tsv": "x\n", "CoLA/test.tsv": "x\n", member: "pwned\n"}
    server.files["CoLA.zip"] = make_zip(files)
    data = tmp_path / "a" / "b"
    result = run_script("--data_dir", str(data), "--tasks", "CoLA", "--mirror", server.url)
    assert result.returncode == 1
    assert "unsafe member path" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "a").exists()                   # created by this run: removed again
    assert not list(tmp_path.rglob("evil.txt"))


@pytest.mark.system
@pytest.mark.slow
def test_mirror_directory(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, body in standard_files().items():
        (mirror / name).write_bytes(body)
    data = tmp_path / "glue"
    result = run_script("--data_dir", str(data), "--tasks", "SST,MRPC", "--mirror", str(mirror))
    assert result.returncode == 0, result.stderr
    assert (data / "SST-2" / "train.tsv").read_text() == SST_TRAIN
    assert len((data / "MRPC" / "dev.tsv").read_text().splitlines()) == 3
    assert sorted(p.name for p in mirror.iterdir()) == sorted(standard_files())  # mirror files untouched
    missing = run_script("--data_dir", str(data), "--tasks", "RTE", "--mirror", str(mirror))
    assert missing.returncode == 1 and f"--mirror {mirror} has no RTE.zip" in missing.stderr


@pytest.mark.system
@pytest.mark.slow
def test_path_to_mrpc(tmp_path, server):
    msr = tmp_path / "msr"
    msr.mkdir()
    (msr / "msr_paraphrase_train.txt").write_bytes(server.files["msr_paraphrase_train.txt"])
    (msr / "msr_paraphrase_test.txt").write_bytes(server.files["msr_paraphrase_test.txt"])
    result = run_script("--data_dir", str(tmp_path / "glue"), "--tasks", "mrpc", "--path_to_mrpc", str(msr),
                        "--mirror", server.url)
    assert result.returncode == 0, result.stderr
    assert server.names_requested() == ["mrpc_dev_ids.tsv"]
    assert len((tmp_path / "glue" / "MRPC" / "train.tsv").read_text().splitlines()) == 3
    bad = run_script("--data_dir", str(tmp_path / "g2"), "--tasks", "MRPC", "--path_to_mrpc", str(tmp_path))
    assert bad.returncode == 2 and "has no msr_paraphrase_train.txt" in bad.stderr


@pytest.mark.system
@pytest.mark.slow
def test_usage_errors_and_incomplete_task_dir(tmp_path, server):
    result = run_script("--data_dir", str(tmp_path), "--tasks", "CoLA,SQuAD")
    assert result.returncode == 2 and result.stderr == "error: --tasks: unknown task 'SQuAD'; use 'all' or a " \
        "comma list of CoLA, SST, MRPC, QQP, STS, MNLI, QNLI, RTE, WNLI, diagnostic\n"
    debug = run_script("--data_dir", str(tmp_path), "--tasks", "SQuAD", "--debug")
    assert "Traceback" in debug.stderr and "UsageError" in debug.stderr
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "train.tsv").write_text(COLA_TRAIN)
    result = run_script("--data_dir", str(tmp_path), "--tasks", "CoLA", "--mirror", server.url)
    assert result.returncode == 1 and "lacks dev.tsv, test.tsv" in result.stderr
    assert server.requests == []


def test_safe_extract_refuses_symlinks(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("CoLA/link")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    archive = tmp_path / "a.zip"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="symbolic link"):
        safe_extract_zip(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]
