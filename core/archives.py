"""Unpacking ``.zip`` and ``.tar(.gz)`` archives safely: every member is checked before anything is written
(no absolute paths, drive letters, ``..``, links out of the destination or special files)."""
from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from .errors import ModelError
from .files import build_directory

__all__ = ["member_path", "extract_into", "safe_extract"]


def member_path(name: str, archive: str, error: type[Exception]) -> PurePosixPath:
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
            member_path(member.name, str(archive), error)
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
            member_path(info.filename, str(archive), error)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise error(f"refusing to extract {archive}: member {info.filename!r} is a symbolic link")
        zf.extractall(dest, members=infos)
    return [member_path(info.filename, str(archive), error) for info in infos if not info.is_dir()]


def extract_into(archive: Path, dest: Path, error: type[Exception] = ModelError) -> list[PurePosixPath]:
    """Unpack a ``.zip`` (by its name) or tar archive into the existing directory ``dest`` once every member
    passed the checks (see the module docstring); returns the relative paths of the files written."""
    archive = Path(archive)
    try:
        if archive.name.lower().endswith(".zip"):
            return _extract_zip(archive, dest, error)
        return _extract_tar(archive, dest, error)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise error(f"cannot extract {archive}: {err}; the archive is damaged or not a .tar.gz/.zip file") from err


def safe_extract(archive: Path, dest: Path, error: type[Exception] = ModelError) -> list[PurePosixPath]:
    """:func:`extract_into` the new directory ``dest`` (which must not exist), built with
    :func:`build_directory`: a refused or interrupted extraction leaves nothing behind."""
    written: list[PurePosixPath] = []
    build_directory(dest, lambda tmp: written.extend(extract_into(archive, tmp, error)))
    return written
