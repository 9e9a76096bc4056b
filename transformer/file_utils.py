"""Resolve model locations (local paths, http(s) URLs, s3:// paths, archives) to local files.

``cached_path`` is the single entry point. Remote files are downloaded once into a cache
directory (``$SPIKINGBERT_CACHE``, default ``~/.cache/spikingbert``) under a key derived from
the URL and its ETag, so a changed remote file is fetched again and an unchanged one is not.
Every cache entry is built in a temporary directory next to its final place and renamed into
place in one step: an interrupted download or extraction leaves nothing behind.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional
from urllib.parse import urlparse

import requests
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

CACHE_ENV = "SPIKINGBERT_CACHE"
HTTP_TIMEOUT = (10.0, 60.0)  # (connect, read) seconds
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
_CHUNK = 1 << 20


class ModelLoadError(ValueError):
    """A model, vocabulary or checkpoint location cannot be used; the message says which and what to do."""

    exit_code = 1


class DownloadError(ModelLoadError):
    """A remote file could not be downloaded (HTTP error, timeout, truncated body, S3 error)."""


def describe_load_error(err: BaseException) -> str:
    """A short, one-line reason why ``torch.load(..., weights_only=True)`` refused or failed to read a file.

    torch's own message for a refused global spans many lines and suggests loading with
    ``weights_only=False``, which would run whatever code the file carries; it is not repeated.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if isinstance(err, pickle.UnpicklingError) and found:
        return (f"it refers to the Python object {found.group(1)}, which only an unsafe load that can run code "
                "would create; it was refused (only plain tensors are loaded)")
    if isinstance(err, pickle.UnpicklingError):
        return "it is not a valid torch file (damaged, truncated or of another format)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return f"{type(err).__name__}: {first[:200]}"


#: errno values of a write that failed because the disk, the quota or the file-size limit (ulimit -f) is full.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

# How torch's zip writer (``PyTorchStreamWriter``) words a failed write; it carries no errno.
_TORCH_WRITER_FAILURE = re.compile(r"inline_container|PytorchStreamWriter|unexpected pos|file write failed")


class WriteError(OSError):
    """A write failed; ``errno`` says why (e.g. ENOSPC: the disk is full, EFBIG: the file-size limit)."""


def as_write_error(err: BaseException, path: str | os.PathLike | None = None) -> Optional[OSError]:
    """The `OSError` (with its errno) behind a failed write, or None when ``err`` is not a failed write.

    A write fails with ENOSPC, EDQUOT, EFBIG (the file-size limit) or EIO whatever the writer, but
    only Python's own file objects raise that `OSError`: torch's zip writer raises
    ``RuntimeError: [enforce fail at inline_container.cc:...] unexpected pos`` (with the `OSError`
    of the Python file it wrote through, if any, as its context) and safetensors raises
    ``SafetensorError: Error while serializing: I/O error: ... (os error 28)``. Those become a
    `WriteError` naming ``path``, as does an `OSError` that names no file; an `OSError` naming its
    file is returned as it is.
    """
    def located(code: int, strerror: str) -> OSError:
        return WriteError(code, strerror, None if path is None else os.fspath(path))

    if isinstance(err, OSError):
        if err.errno is not None and err.filename is None and path is not None:
            return located(err.errno, err.strerror or str(err))
        return err
    text = str(err)
    if type(err).__name__ == "SafetensorError" and "I/O error" in text:
        found = re.search(r"\(os error (\d+)\)", text)
        code = int(found.group(1)) if found else errno.EIO
        return located(code, os.strerror(code))
    if isinstance(err, RuntimeError) and _TORCH_WRITER_FAILURE.search(text):
        seen, cause = set(), err.__cause__ or err.__context__
        while cause is not None and id(cause) not in seen:   # the Python file's own OSError, if any
            if isinstance(cause, OSError) and cause.errno is not None:
                return located(cause.errno, cause.strerror or os.strerror(cause.errno))
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        return located(errno.EIO, "torch's writer failed without saying why (the disk, the quota or the file-size "
                                  "limit may be full, or the device failed)")
    return None


def raise_write_error(err: BaseException, path: str | os.PathLike) -> None:
    """Raise the `OSError` of `as_write_error` (naming ``path``) from ``err`` when ``err`` is a failed write
    that is not already an `OSError` naming its file; return otherwise (the caller re-raises ``err``)."""
    os_err = as_write_error(err, path) if isinstance(err, Exception) else None
    if os_err is not None and os_err is not err:
        raise os_err from err


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], prefix: str = ".tmp-") -> None:
    """Write ``path`` all at once: ``write(tmp)`` fills a temporary file beside it, which is synced
    and renamed into place. On any error the temporary file is removed and ``path`` is untouched; a
    failed write (a full disk, torch's or safetensors' writer included) raises an `OSError` naming
    the temporary file (see `as_write_error`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{prefix}{path.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)                       # the usual permissions, not mkstemp's 0600
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        raise_write_error(err, tmp)
        raise


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a Python file object, so that a failed write raises the
    `OSError` with its errno (torch's own file writer only says ``unexpected pos``)."""
    import torch

    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except Exception as err:
        raise_write_error(err, path)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "spikingbert").expanduser()


def cached_path(url_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a local path for ``url_or_path``.

    * local file or directory: returned as is (``ModelLoadError`` if it does not exist);
    * ``http://`` / ``https://`` URL: downloaded into the cache (re-used while its ETag is unchanged);
    * ``s3://bucket/key``: an object, or every object under the prefix ``key/`` (a model directory),
      downloaded with boto3 (which honours ``AWS_ENDPOINT_URL`` and the usual AWS configuration);
    * a ``.tar.gz`` / ``.tgz`` / ``.zip`` archive (remote or local): extracted into the cache; the
      returned path is the extracted directory, or its single top-level folder if it has one.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    location = os.fspath(url_or_path)
    scheme = urlparse(location).scheme.lower()
    if scheme in ("http", "https"):
        path = _http_get(location, cache)
    elif scheme == "s3":
        path = _s3_get(location, cache)
    else:
        path = Path(location).expanduser()
        if not path.exists():
            raise ModelLoadError(f"{location} does not exist: pass an existing file or directory, "
                                 "an http(s):// URL or an s3:// path")
    if path.is_file() and _is_archive(path.name):
        return _extract(path, cache)
    return path


# --------------------------------------------------------------------------------------------------
# Cache entries
# --------------------------------------------------------------------------------------------------
def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _build_entry(cache: Path, key: str, build: Callable[[Path], None]) -> Path:
    """Return the cache entry directory ``cache/key``, building it with ``build(tmp_dir)`` if absent."""
    entry = cache / key
    if entry.is_dir():
        return entry
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{key[:16]}.", suffix=".tmp"))
    try:
        build(tmp)
        try:
            os.replace(tmp, entry)
        except OSError:
            if not entry.is_dir():  # not a concurrent writer that got there first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _single_file(entry: Path) -> Path:
    """The one file of a single-file cache entry."""
    return next(entry.iterdir())


def _filename_from(location: str) -> str:
    name = PurePosixPath(urlparse(location).path).name
    return name or "download"


# --------------------------------------------------------------------------------------------------
# HTTP(S)
# --------------------------------------------------------------------------------------------------
def _http_get(url: str, cache: Path) -> Path:
    try:
        head = requests.head(url, allow_redirects=True, timeout=HTTP_TIMEOUT)
    except requests.RequestException as err:
        cached = _latest_cached(cache, url)
        if cached is not None:
            logger.warning("could not reach %s (%s); using the cached copy %s", url, err, cached)
            return cached
        raise DownloadError(f"could not reach {url}: {err.__class__.__name__}: {err}; "
                            "check the URL and your network connection") from err
    # A failed HEAD (405, or 403 for a URL signed for GET only) leaves the verdict to the GET.
    etag = head.headers.get("ETag") if head.ok else None
    filename = _filename_from(url)
    received_etag: list[str | None] = []

    def download(tmp: Path) -> None:
        received_etag.append(_stream_to(url, tmp / filename))

    if etag is not None:
        entry = cache / _key(url, etag)
        if entry.is_dir():
            logger.info("using cached %s from %s", url, entry)
        else:
            entry = _build_entry(cache, entry.name, download)
    else:
        # No ETag from HEAD: download first, then file the entry under the ETag of the GET (if any).
        staging = _build_entry(cache, _key(url, "staging", str(os.getpid()), os.urandom(8).hex()), download)
        etag = received_etag[0]
        entry = cache / _key(url, etag or "")
        try:
            os.replace(staging, entry)
        except OSError:
            if not entry.is_dir():
                raise
            shutil.rmtree(staging, ignore_errors=True)
    _write_meta(entry, url, etag)
    return entry / filename


def _stream_to(url: str, target: Path) -> str | None:
    """GET ``url`` into ``target``; return the response's ETag. Raises DownloadError on any failure."""
    try:
        with requests.get(url, stream=True, timeout=HTTP_TIMEOUT) as resp:
            if resp.status_code >= 400:
                raise DownloadError(f"download of {url} failed: HTTP {resp.status_code} {resp.reason}; check the URL")
            expected = resp.headers.get("Content-Length")
            total = int(expected) if expected and expected.isdigit() else None
            received = 0
            with open(target, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                                                 leave=False, disable=None) as bar:
                for chunk in resp.iter_content(chunk_size=_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total and "Content-Encoding" not in resp.headers:
                raise DownloadError(f"download of {url} was cut off: received {received} of {total} bytes; "
                                    "try again")
            return resp.headers.get("ETag")
    except requests.RequestException as err:
        raise DownloadError(f"download of {url} failed: {err.__class__.__name__}: {err}; "
                            "check the URL and your network connection, then try again") from err


def _write_meta(entry: Path, url: str, etag: str | None) -> None:
    """Record which URL an entry holds (used to fall back to it when offline)."""
    meta = entry.with_name(entry.name + ".url")
    if meta.exists():
        return
    fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name[:16]}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"{url}\n{etag or ''}\n")
    os.replace(tmp, meta)


def _latest_cached(cache: Path, url: str) -> Path | None:
    if not cache.is_dir():
        return None
    candidates = []
    for meta in cache.glob("*.url"):
        lines = meta.read_text(encoding="utf-8").splitlines()
        entry = meta.with_suffix("")
        if lines and lines[0] == url and entry.is_dir():
            candidates.append(entry)
    if not candidates:
        return None
    return _single_file(max(candidates, key=lambda p: p.stat().st_mtime))


# --------------------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------------------
def _s3_get(url: str, cache: Path) -> Path:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    parsed = urlparse(url)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket:
        raise ModelLoadError(f"{url} is not a valid s3:// path: use s3://bucket/key")
    client = boto3.client("s3")
    try:
        objects = _s3_objects(client, bucket, key)
        if not objects:
            raise DownloadError(f"{url} not found: no object s3://{bucket}/{key} and nothing under "
                                f"s3://{bucket}/{key.rstrip('/')}/; check the path")
        single = len(objects) == 1 and objects[0][0] == key
        entry_key = _key(f"s3://{bucket}/{key.rstrip('/')}", *(f"{name}:{etag}" for name, etag in objects))

        def download(tmp: Path) -> None:
            prefix = "" if single else key.rstrip("/") + "/"
            for name, _ in objects:
                relative = PurePosixPath(name).name if single else name[len(prefix):]
                target = tmp / _safe_relative(relative, url)
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, name, str(target))

        entry = _build_entry(cache, entry_key, download)
    except NoCredentialsError as err:
        raise DownloadError(f"no AWS credentials to read {url}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                            "or an AWS profile") from err
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "?")
        raise DownloadError(f"cannot read {url}: S3 error {code}: {err}; "
                            "check the bucket, key and permissions") from err
    except BotoCoreError as err:
        raise DownloadError(f"cannot read {url}: {err}; check AWS_ENDPOINT_URL and your network connection") from err
    return _single_file(entry) if single else entry


def _s3_objects(client, bucket: str, key: str) -> list[tuple[str, str]]:
    """``[(key, etag)]`` of the object ``key`` itself or, failing that, of every object under ``key/``."""
    from botocore.exceptions import ClientError

    if key and not key.endswith("/"):
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            return [(key, head.get("ETag", ""))]
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
    prefix = key.rstrip("/") + "/" if key else ""
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                objects.append((obj["Key"], obj.get("ETag", "")))
    return sorted(objects)


# --------------------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------------------
def _safe_relative(name: str, archive: str) -> PurePosixPath:
    """A member name as a relative path that stays inside the destination, else ModelLoadError."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ModelLoadError(f"refusing to extract {archive}: member {name!r} would be written outside "
                             "the extraction directory")
    return path


def _check_link(member: tarfile.TarInfo, archive: str) -> None:
    """Reject tar links whose target leaves the extraction directory."""
    target = PurePosixPath(member.linkname)
    if member.issym():
        resolved = PurePosixPath(member.name).parent / target
    else:  # hard link: relative to the archive root
        resolved = target
    depth = 0
    for part in resolved.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            break
    if target.is_absolute() or depth < 0:
        raise ModelLoadError(f"refusing to extract {archive}: link {member.name!r} -> {member.linkname!r} "
                             "points outside the extraction directory")


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _safe_relative(member.name, str(archive))
            if member.issym() or member.islnk():
                _check_link(member, str(archive))
            elif not (member.isfile() or member.isdir()):
                raise ModelLoadError(f"refusing to extract {archive}: member {member.name!r} is not a regular "
                                     "file or directory")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:
            tar.extractall(dest, members=members)


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _safe_relative(info.filename, str(archive))
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ModelLoadError(f"refusing to extract {archive}: member {info.filename!r} is a symbolic link")
        zf.extractall(dest, members=infos)


def _extract(archive: Path, cache: Path) -> Path:
    st = archive.stat()
    key = _key(str(archive.resolve()), str(st.st_size), str(st.st_mtime_ns), "extracted")

    def build(tmp: Path) -> None:
        try:
            if archive.name.lower().endswith(".zip"):
                _extract_zip(archive, tmp)
            else:
                _extract_tar(archive, tmp)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
            raise ModelLoadError(f"cannot extract {archive}: {err}; the archive is damaged or not a "
                                 ".tar.gz/.zip file") from err

    entry = _build_entry(cache, key, build)
    children = [p for p in entry.iterdir()]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return entry
