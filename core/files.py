"""Writing files so that a failure never leaves a half-written one, and failed writes said plainly.

* :func:`atomic_write`, :func:`atomic_write_text`, :func:`atomic_write_json` and :func:`atomic_open` fill a
  temporary file beside the target, sync it and rename it into place; :func:`build_directory` does the same
  for a whole directory. An interrupted write leaves the target as it was.
* A file written in place (a log, a partial download) is opened without following links (`open_no_follow`).
* A write that fails (a full disk, the quota, the file-size limit), also inside torch's or safetensors'
  writers, becomes an `OSError` naming the file (:func:`as_write_error`); :func:`describe_os_error` words it.
* Reading: a small settings file within a size limit (:func:`read_capped`, :func:`read_json`), the records of a
  JSON-lines file (:func:`read_json_lines`).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional

logger = logging.getLogger(__name__)

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
    with _replacing(path, prefix) as tmp, open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
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


def open_no_follow(path: str | os.PathLike, mode: str = "w", encoding: Optional[str] = None) -> IO:
    """``open(path, mode)`` for writing (``w``, ``a``, ``wb``, ``ab``) that never writes through a symbolic link:
    a link at ``path`` is an `OSError` (ELOOP) naming it, its target is left alone."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "it is a symbolic link; remove it (nothing is written through a link)",
                          os.fspath(path)) from None
        raise
    return os.fdopen(fd, mode, encoding=None if "b" in mode else encoding or "utf-8")


#: The largest metadata file (config.json, args.json, task.json) any command reads (they are a few kB).
METADATA_LIMIT = 4 << 20


def read_capped(path: str | os.PathLike, limit: int = METADATA_LIMIT, what: str = "settings file",
                errors: str = "strict") -> str:
    """The UTF-8 text of ``path``, refused (`UsageError`) without reading it when it is larger than ``limit`` bytes:
    a file of that size is not a ``what`` (a link to a disk image, a damaged copy) and would cost minutes and GBs."""
    from .errors import UsageError

    path = Path(path)
    size = path.stat().st_size
    if size > limit:
        raise UsageError(f"{path} is {size:,} bytes, more than a {what} can be ({limit:,}): it is not one, or it is "
                         "damaged; replace it")
    return path.read_text(encoding="utf-8", errors=errors)


def read_json(path: str | os.PathLike, what: str = "settings file") -> Any:
    """The JSON value of ``path`` (`read_capped`); too deep a nesting is a `UsageError` too. A missing file
    (`OSError`) and invalid JSON (`ValueError`) are the caller's to word."""
    from .errors import UsageError

    try:
        return json.loads(read_capped(path, what=what))
    except RecursionError:
        raise UsageError(f"{path} is nested too deeply to be a {what}; fix or replace it") from None


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSON-lines file (a run's ``metrics.jsonl``), in file order. A line that is not one (a
    record cut short by a crash, an edit) is skipped with a warning naming the file and the line; blank lines are
    skipped. A missing file is the caller's `OSError`."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            logger.warning("%s, line %d: not a JSON object (cut short?); skipped", path, number)
    return records


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the quota, or the file-size limit) is full."""
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


def describe_os_error(err: OSError) -> str:
    """``cannot access <file>: <reason>`` of an `OSError`; ``cannot write <file>: <reason>`` of a failed write,
    with ``: the disk (or the quota, or the file-size limit) is full`` when that is the reason."""
    where = err.filename if err.filename is not None else "a file"
    if is_disk_full(err):
        where = err.filename2 if err.filename2 is not None else where      # a copy names its source first
        return f"cannot write {where}: {err.strerror or err}: the disk (or the quota, or the file-size limit) is full"
    verb = "write" if isinstance(err, WriteError) else "access"
    return f"cannot {verb} {where}: {err.strerror or err}"
