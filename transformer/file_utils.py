"""The file floor every layer stands on: atomic writes, safe archive extraction, HTTP/S3 downloads
and the download cache.

* Writes are atomic: :func:`atomic_write`, :func:`atomic_write_text`, :func:`atomic_write_json` and
  :func:`atomic_open` fill a
  temporary file beside the target, sync it and rename it into place; :func:`build_directory` does
  the same for a whole directory. An interrupted write leaves the target as it was.
* :func:`safe_extract` unpacks a ``.zip`` / ``.tar(.gz)`` archive after checking every member (no
  absolute paths, drive letters, ``..``, links out of the destination or special files).
* :func:`download` GETs a URL into a file, retrying transient failures with exponential back-off
  and, with ``resume``, continuing a partial file with an HTTP Range request.
* :func:`cached_path` resolves model locations (local paths, http(s) URLs, s3:// paths, archives)
  to local files. Remote files are downloaded once into a cache directory (``$SPIKINGBERT_CACHE``,
  default ``~/.cache/spikingbert``) under a key derived from the URL and its ETag, so a changed
  remote file is fetched again and an unchanged one is not; every cache entry is built with
  :func:`build_directory`.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, Iterator, Optional
from urllib.parse import urlparse

import requests
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

CACHE_ENV = "SPIKINGBERT_CACHE"
HTTP_TIMEOUT = (10.0, 60.0)  # (connect, read) seconds
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
#: HTTP statuses worth another try (timeout, rate limit, server errors).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_CHUNK = 1 << 16          # small enough that a cut-off body leaves most of itself to resume from


class ModelLoadError(ValueError):
    """A model, vocabulary or checkpoint location cannot be used; the message says which and what to do."""

    exit_code = 1


class DownloadError(ModelLoadError):
    """A remote file could not be downloaded (HTTP error, timeout, truncated body, S3 error)."""


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


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------
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
    file is returned as it is. An interruption torch's writer reports as a failed write is raised again.
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
            if not isinstance(cause, Exception):             # Ctrl-C or SIGTERM stopped the writer: not a write error
                raise cause
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


@contextlib.contextmanager
def naming_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """A failed write in the block (a full disk, the file-size limit, torch's or safetensors' writer) raises an
    `OSError` naming ``path`` (Python's file objects do not say which file a failed ``write`` was for)."""
    try:
        yield
    except Exception as err:
        raise_write_error(err, path)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _replacing(path: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A temporary file beside ``path`` (``<prefix><name>.XXXX.tmp``, the usual permissions) to be filled in
    the block; then synced and renamed to ``path``. On any error it is removed and ``path`` is untouched; a
    failed write (a full disk, torch's or safetensors' writer included) raises an `OSError` naming the temporary
    file (see `as_write_error`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{prefix}{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())                     # not mkstemp's 0600
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        raise_write_error(err, tmp)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], prefix: str = ".tmp-") -> None:
    """Write ``path`` all at once: ``write(tmp)`` fills a temporary file beside it, which is synced and
    renamed into place. On any error the temporary file is removed and ``path`` is untouched."""
    with _replacing(path, prefix) as tmp:
        write(tmp)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a Python file object, so that a failed write raises the
    `OSError` with its errno (torch's own file writer only says ``unexpected pos``)."""
    import torch

    with naming_write_errors(path), open(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as JSON (indented, keys sorted)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, binary: bool = False, prefix: str = ".tmp-") -> Iterator[IO]:
    """:func:`atomic_write` as a file opened for writing (text: UTF-8): ``path`` is replaced when the
    block completes, and left untouched when it raises."""
    with _replacing(path, prefix) as tmp:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
            yield f


def build_directory(final: Path, build: Callable[[Path], object], keep_existing: bool = False) -> Path:
    """Create the directory ``final`` all at once: ``build(tmp)`` fills a hidden temporary directory beside
    it, which is renamed to ``final``. On any error it is removed and ``final`` is not created.

    ``final`` must not exist; with ``keep_existing`` one that appeared meanwhile (a concurrent builder
    that got there first) is kept and this build dropped.
    """
    final = Path(final)
    if final.exists() and not keep_existing:
        raise FileExistsError(f"{final} already exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name[:32]}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        with naming_write_errors(tmp):
            build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (keep_existing and final.is_dir()):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------------------
def _member_path(name: str, archive: str, error: type[Exception]) -> PurePosixPath:
    """A member name as a relative path that stays inside the destination, else ``error``."""
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if not posix or path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise error(f"refusing to extract {archive}: unsafe member path {name!r} (empty, absolute, with '..' or a "
                    "drive) would be written outside the extraction directory")
    return path


def _check_link(member: tarfile.TarInfo, archive: str, error: type[Exception]) -> None:
    """Reject tar links whose target leaves the extraction directory."""
    target = PurePosixPath(member.linkname)
    resolved = PurePosixPath(member.name).parent / target if member.issym() else target  # hard links: from the root
    depth = 0
    for part in resolved.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            break
    if target.is_absolute() or depth < 0:
        raise error(f"refusing to extract {archive}: link {member.name!r} -> {member.linkname!r} points outside "
                    "the extraction directory")


def _extract_tar(archive: Path, dest: Path, error: type[Exception]) -> list[PurePosixPath]:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:                               # every member is checked before anything is written
            _member_path(member.name, str(archive), error)
            if member.issym() or member.islnk():
                _check_link(member, str(archive), error)
            elif not (member.isfile() or member.isdir()):
                raise error(f"refusing to extract {archive}: member {member.name!r} is not a regular file or "
                            "directory")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:
            tar.extractall(dest, members=members)
    return [PurePosixPath(m.name) for m in members if m.isfile()]


def _extract_zip(archive: Path, dest: Path, error: type[Exception]) -> list[PurePosixPath]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:                                   # every member is checked before anything is written
            _member_path(info.filename, str(archive), error)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise error(f"refusing to extract {archive}: member {info.filename!r} is a symbolic link")
        zf.extractall(dest, members=infos)
    return [_member_path(info.filename, str(archive), error) for info in infos if not info.is_dir()]


def extract_into(archive: Path, dest: Path, error: type[Exception] = ModelLoadError) -> list[PurePosixPath]:
    """Unpack a ``.zip`` (by its name) or tar archive into the existing directory ``dest`` once every member
    passed the checks (see the module docstring); returns the relative paths of the files written."""
    archive = Path(archive)
    try:
        if archive.name.lower().endswith(".zip"):
            return _extract_zip(archive, dest, error)
        return _extract_tar(archive, dest, error)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise error(f"cannot extract {archive}: {err}; the archive is damaged or not a .tar.gz/.zip file") from err


def safe_extract(archive: Path, dest: Path, error: type[Exception] = ModelLoadError) -> list[PurePosixPath]:
    """:func:`extract_into` the new directory ``dest`` (which must not exist), built with
    :func:`build_directory`: a refused or interrupted extraction leaves nothing behind."""
    written: list[PurePosixPath] = []
    build_directory(dest, lambda tmp: written.extend(extract_into(archive, tmp, error)))
    return written


# --------------------------------------------------------------------------------------------------
# HTTP downloads
# --------------------------------------------------------------------------------------------------
class _Retryable(Exception):
    """A failure worth another try (a busy or failing server, a body cut short)."""


def download(url: str, target: Path, *, retries: int = 0, retry_wait: float = 2.0,
             timeout: float | tuple[float, float] | None = None, resume: bool = False,
             session: Optional[requests.Session] = None, hint: str = "") -> Optional[str]:
    """GET ``url`` into the file ``target``; returns the response's ETag (or None). Raises `DownloadError`.

    Transient failures (connection errors, timeouts, HTTP 408/429/5xx, a body shorter than its
    Content-Length) are tried again up to ``retries`` times, after ``retry_wait`` seconds doubled after
    each failure; other HTTP errors fail at once. With ``resume`` the body goes to ``<target>.part``,
    which is kept on failure, continued with an HTTP Range request by the next try (or call) and
    renamed to ``target`` when complete. ``hint`` names an alternative source in the messages (e.g.
    " or use --mirror"). ``timeout``: seconds (default `HTTP_TIMEOUT`).
    """
    part = target.with_name(target.name + ".part") if resume else target
    tries, problem = retries + 1, ""
    for attempt in range(tries):
        try:
            etag = _get_once(url, part, resume, HTTP_TIMEOUT if timeout is None else timeout, session or requests,
                             hint)
            if resume:
                os.replace(part, target)
            return etag
        except _Retryable as err:
            problem = str(err)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
            problem = f"{type(err).__name__}: {err}"
        except requests.RequestException as err:
            raise DownloadError(f"download of {url} failed: {type(err).__name__}: {err}; check the URL{hint}") from err
        if attempt + 1 < tries:
            wait = retry_wait * 2 ** attempt
            logger.warning("download of %s failed (%s); retry %d/%d in %.1f s", url, problem, attempt + 1, tries - 1,
                           wait)
            time.sleep(wait)
    if tries == 1:
        raise DownloadError(f"download of {url} failed: {problem}; check the URL and your network connection"
                            f"{hint}, then try again")
    raise DownloadError(f"could not download {url} after {tries} tries ({problem}); check the network{hint}"
                        + ("; running again resumes the partial file" if resume else ""))


def _get_once(url: str, part: Path, resume: bool, timeout, http, hint: str) -> Optional[str]:
    """One GET of ``url`` into ``part`` (continued from its current size with ``resume``)."""
    offset = part.stat().st_size if resume and part.exists() else 0
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    with http.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416 and offset:
            part.unlink()
            raise _Retryable("server refused to resume the partial file; starting over")
        if resp.status_code in RETRY_STATUSES:
            raise _Retryable(f"HTTP {resp.status_code} {resp.reason}")
        if resp.status_code >= 400:
            raise DownloadError(f"download of {url} failed: HTTP {resp.status_code} {resp.reason}; check the URL{hint}")
        if not (resp.status_code == 206 and _range_start(resp) == offset):
            offset = 0                                       # the server sent the whole file
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None and length.isdigit() else None
        with naming_write_errors(part), open(part, "ab" if offset else "wb") as out, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=Path(urlparse(url).path).name,
                leave=False, disable=None) as bar:
            for chunk in resp.iter_content(chunk_size=_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        size = part.stat().st_size
        if total is not None and size != total and "Content-Encoding" not in resp.headers:
            raise _Retryable(f"received {size} of {total} bytes")
        return resp.headers.get("ETag")


def _range_start(resp: requests.Response) -> Optional[int]:
    """First byte position of a ``Content-Range: bytes a-b/n`` header."""
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# The download cache
# --------------------------------------------------------------------------------------------------
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
    if path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return _extracted(path, cache)
    return path


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def _build_entry(cache: Path, key: str, build: Callable[[Path], None]) -> Path:
    """Return the cache entry directory ``cache/key``, building it with ``build(tmp_dir)`` if absent."""
    entry = cache / key
    if entry.is_dir():
        return entry
    return build_directory(entry, build, keep_existing=True)


def _single_file(entry: Path) -> Path:
    """The one file of a single-file cache entry."""
    return next(entry.iterdir())


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
    filename = PurePosixPath(urlparse(url).path).name or "download"
    received_etag: list[Optional[str]] = []

    def fetch(tmp: Path) -> None:
        received_etag.append(download(url, tmp / filename))

    if etag is not None:
        entry = cache / _key(url, etag)
        if entry.is_dir():
            logger.info("using cached %s from %s", url, entry)
        else:
            entry = _build_entry(cache, entry.name, fetch)
    else:
        # No ETag from HEAD: download first, then file the entry under the ETag of the GET (if any).
        staging = _build_entry(cache, _key(url, "staging", str(os.getpid()), os.urandom(8).hex()), fetch)
        etag = received_etag[0]
        entry = cache / _key(url, etag or "")
        try:
            os.replace(staging, entry)
        except OSError:
            if not entry.is_dir():
                raise
            shutil.rmtree(staging, ignore_errors=True)
    meta = entry.with_name(entry.name + ".url")             # which URL the entry holds (the offline fallback)
    if not meta.exists():
        atomic_write_text(meta, f"{url}\n{etag or ''}\n")
    return entry / filename


def _latest_cached(cache: Path, url: str) -> Optional[Path]:
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

        def fetch(tmp: Path) -> None:
            prefix = "" if single else key.rstrip("/") + "/"
            for name, _ in objects:
                relative = PurePosixPath(name).name if single else name[len(prefix):]
                target = tmp / _member_path(relative, url, ModelLoadError)
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, name, str(target))

        entry = _build_entry(cache, entry_key, fetch)
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


def _extracted(archive: Path, cache: Path) -> Path:
    """The cache entry holding ``archive`` unpacked (or its single top-level folder)."""
    st = archive.stat()
    key = _key(str(archive.resolve()), str(st.st_size), str(st.st_mtime_ns), "extracted")
    entry = _build_entry(cache, key, lambda tmp: extract_into(archive, tmp))
    children = list(entry.iterdir())
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return entry
