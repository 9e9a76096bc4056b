"""An output directory owned by one run: an OS lock, the stale temporaries of killed runs, and cleanup on failure.

`claim_output_dir` is what every command that writes into a directory goes through:

* the directory (and any missing parent) is created only now, after the command checked its inputs;
* a lock file in it (``.lock``, holding the owner's pid) is locked with ``flock``: a second run into the
  same directory fails at once (`DirectoryInUse`); the kernel releases the lock when its process dies,
  however it dies, so a killed run never blocks the next one;
* temporaries a killed run left (``.tmp-*``: half-written files and checkpoint directories) are removed;
* when the command fails (an error, Ctrl-C, SIGTERM) before it wrote anything worth keeping (a checkpoint or
  a model; see ``keep``), what it created is removed again, the directory itself included if it created it.

`check_output_location` makes the checks of a directory that is not created yet (a file in the way, a
parent that is not writable, a run holding it), so that they come before any long work.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Set

from spikingbert.core.errors import UsageError

__all__ = ["LOCK_NAME", "TMP_PREFIX", "DirectoryInUse", "DirectoryLock", "Claim", "claim_output_dir",
           "check_output_location", "remove_temporaries"]

LOCK_NAME = ".lock"
#: Prefix of every temporary file or directory the project writes into an output directory.
TMP_PREFIX = ".tmp-"


#: Lock files this process holds (flock conflicts between two descriptors of one process too).
_HELD: Set[Path] = set()


class DirectoryInUse(UsageError):
    """Another live process holds the directory's lock."""


def _holder_pid(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _in_use(directory: Path, flag: str, path: Path) -> DirectoryInUse:
    return DirectoryInUse(f"{flag} {directory} is in use by another run (pid {_holder_pid(path)}); wait for it to "
                          f"finish or stop it, or choose another {flag}")


def _not_a_lock_file(path: Path, flag: str) -> Optional[UsageError]:
    """The error for a lock path that exists but is not a regular file (a link, a directory, a device), else None:
    such a path is never opened, so a planted link cannot make a run write through it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return None
    kind = "a symbolic link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode) else "not a regular file"
    return UsageError(f"{flag} {path.parent}: its lock file {path.name} is {kind}; a run never writes through it: "
                      f"remove {path}, or choose another {flag}")


class DirectoryLock:
    """An exclusive ``flock`` on ``directory/name``; `acquire` raises `DirectoryInUse` when another process holds it.
    The lock file is opened without following links (``O_NOFOLLOW``); a lock path that is not a regular file is
    refused (`UsageError`)."""

    def __init__(self, directory: Path, flag: str, name: str = LOCK_NAME):
        self.directory = Path(directory)
        self.flag = flag
        self.path = self.directory / name
        self._fd: Optional[int] = None

    def probe(self) -> None:
        """Raise `DirectoryInUse` if another live process holds the lock; creates nothing."""
        if self.path.resolve() in _HELD:
            return
        refused = _not_a_lock_file(self.path, self.flag)
        if refused is not None:
            raise refused
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return                                  # no lock file (or unreadable): nobody to wait for
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(self.directory, self.flag, self.path) from None
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Take the lock (the directory must exist) and write this process's pid into the lock file."""
        while True:
            refused = _not_a_lock_file(self.path, self.flag)
            if refused is not None:
                raise refused
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as err:                  # a link planted between the check and the open: ELOOP
                raise _not_a_lock_file(self.path, self.flag) or err from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _in_use(self.directory, self.flag, self.path) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:                                # not a file its previous owner unlinked meanwhile
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _HELD.add(self.path.resolve())

    def release(self) -> None:
        if self._fd is None:
            return
        _HELD.discard(self.path.resolve())
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def remove_temporaries(directory: Path, prefixes: tuple = (TMP_PREFIX,)) -> List[str]:
    """Remove the entries of ``directory`` whose names start with one of ``prefixes``; returns their names."""
    removed = []
    for path in Path(directory).iterdir():
        if path.name.startswith(prefixes):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path.name)
    return removed


def check_output_location(directory: Path, flag: str) -> None:
    """``directory`` is (or can be created as) a writable directory that no other run holds; nothing is created."""
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise UsageError(f"{flag} {directory} exists and is not a directory: choose another {flag}")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {directory} is not writable: choose another {flag}")
        DirectoryLock(directory, flag).probe()
        return
    parent = directory.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {directory} cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {directory} cannot be created: {parent} is not writable")


class Claim:
    """What `claim_output_dir` knows about the directory: its entries before the run, and whether to keep the
    run's files on failure."""

    def __init__(self, directory: Path, before: Set[str], keep: Callable[[Set[str]], bool]):
        self.directory = directory
        self.before = before
        self._keep = keep

    def mark(self) -> None:
        """From now on, count only entries created after this call as the run's own."""
        self.before = {p.name for p in self.directory.iterdir()} - {LOCK_NAME}

    def new_entries(self) -> Set[str]:
        return {p.name for p in self.directory.iterdir()} - self.before - {LOCK_NAME}

    def undo(self) -> None:
        """Remove what the run created, unless ``keep`` says it wrote something worth resuming from."""
        new = self.new_entries()
        if self._keep(new):
            return
        for name in new:
            path = self.directory / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _missing_ancestors(directory: Path) -> List[Path]:
    """``directory`` and its parents that do not exist yet, the outermost last."""
    missing = []
    path = directory
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


@contextlib.contextmanager
def claim_output_dir(directory: Path, flag: str = "--output_dir", keep: Callable[[Set[str]], bool] = lambda new: False,
                     lock_name: str = LOCK_NAME) -> Iterator[Claim]:
    """Create (if needed) and lock ``directory`` for this run, remove stale temporaries; on failure remove what
    the run created (see the module docstring). ``keep(new entry names)``: whether a failed run's files stay."""
    directory = Path(directory)
    check_output_location(directory, flag)
    created = _missing_ancestors(directory)
    before = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    directory.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(directory, flag, lock_name)
    try:
        lock.acquire()
    except BaseException:
        _remove_empty(created)
        raise
    claim = Claim(directory, before - {lock_name}, keep)
    try:
        remove_temporaries(directory)
        yield claim
    except BaseException:
        claim.undo()
        lock.release()
        _remove_empty(created)
        raise
    finally:
        lock.release()


def _remove_empty(directories: List[Path]) -> None:
    for path in directories:
        try:
            path.rmdir()
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise
            return
