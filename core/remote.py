"""Remote model locations: HTTP(S) downloads with retries and resume, ``s3://`` objects, and the download cache.

* :func:`download` GETs a URL into a file, retrying transient failures with exponential back-off
  and, with ``resume``, continuing a partial file with an HTTP Range request.
* :func:`cached_path` resolves model locations (local paths, http(s) URLs, s3:// paths, Hugging Face Hub
  names, archives) to local files. A Hub model lives in the Hugging Face cache (`core.hub`); other remote
  files are downloaded once into a cache directory (``$SPIKINGBERT_CACHE``, default ``~/.cache/spikingbert``)
  under a key derived from the URL and its ETag, so a changed remote file is fetched again and an unchanged
  one is not; every cache entry is built with :func:`core.files.build_directory`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Callable, Optional
from urllib.parse import urlparse

import requests
from tqdm.auto import tqdm

from .archives import extract_into, member_path
from .errors import ModelError
from .files import atomic_write_text, build_directory, naming_write_errors, open_no_follow
from .hub import hub_directory, hub_reference

__all__ = ["DownloadError", "download", "cached_path", "is_remote", "default_cache_dir", "CACHE_ENV"]

logger = logging.getLogger(__name__)

CACHE_ENV = "SPIKINGBERT_CACHE"
HTTP_TIMEOUT = (10.0, 60.0)  # (connect, read) seconds
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
#: HTTP statuses worth another try (timeout, rate limit, server errors).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_CHUNK = 1 << 16          # small enough that a cut-off body leaves most of itself to resume from


class DownloadError(ModelError):
    """A remote file could not be downloaded (HTTP error, timeout, truncated body, S3 error)."""


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
        with naming_write_errors(part), open_no_follow(part, "ab" if offset else "wb") as out, tqdm(
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



def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "spikingbert").expanduser()


def is_remote(location: str | os.PathLike) -> bool:
    """Whether `cached_path` downloads ``location`` (an http(s) URL, an s3:// path, or a Hugging Face Hub name that is
    no local path) rather than reading a local path."""
    text = os.fspath(location)
    return (urlparse(text).scheme.lower() in ("http", "https", "s3")
            or (not Path(text).expanduser().exists() and hub_reference(text) is not None))


def cached_path(url_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a local path for ``url_or_path``.

    * local file or directory: returned as is;
    * a Hugging Face Hub model name (``name`` or ``org/name``, optionally ``@revision``) that is no local path: the
      model's snapshot directory in the Hugging Face cache, downloaded first where needed (`core.hub`);
    * anything else that does not exist: ``ModelError``;
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
            reference = hub_reference(location)
            if reference is None:
                raise ModelError(f"{location} does not exist: pass an existing file or directory, a Hugging Face Hub "
                                 "model name (org/name), an http(s):// URL or an s3:// path")
            path = hub_directory(reference)
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
        raise ModelError(f"{url} is not a valid s3:// path: use s3://bucket/key")
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
                target = tmp / member_path(relative, url, ModelError)
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
