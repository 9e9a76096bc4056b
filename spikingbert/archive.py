"""Safe file handling for the data tools: atomic writes, checking and unpacking zip archives.

`atomic_output` writes a file under a temporary name in the target directory and
renames it into place only when the writing completed.

`safe_extract_zip` refuses members with absolute paths, drive letters, ``..``
components or symbolic links, and unpacks into a temporary directory next to the
destination that is renamed into place only once everything is written, so an
interrupted or refused extraction leaves nothing half-unpacked.
"""
import contextlib
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Iterator, List

from spikingbert.errors import DataError
from transformer.file_utils import raise_write_error

CHUNK_BYTES = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: Path, binary: bool = False) -> Iterator[IO]:
    """Open a temporary file next to `path` for writing; it replaces `path` when the block completes.

    On an exception the temporary file is removed and `path` is left untouched; a failed write raises an
    `OSError` naming the temporary file. The file gets the usual permissions (0666 less the umask).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        raise_write_error(err, tmp)
        raise


def check_zip(path: Path) -> None:
    """Raise `DataError` unless `path` is a readable zip archive whose members all pass their CRC check."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a zip archive (truncated or corrupt download)")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(f"{path} is a corrupt zip archive ({err})") from err
    if bad is not None:
        raise DataError(f"{path} is a corrupt zip archive (member {bad!r} fails its CRC check)")


def safe_member_path(name: str, archive: Path) -> PurePosixPath:
    """The relative path of an archive member, refusing anything that could escape the destination."""
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if (not posix or path.is_absolute() or ".." in path.parts
            or (path.parts and ":" in path.parts[0])):
        raise DataError(f"{archive} contains the unsafe member path {name!r} (absolute or '..'); refusing to unpack it")
    return path


def _member_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def safe_extract_zip(archive: Path, dest: Path) -> List[PurePosixPath]:
    """Unpack `archive` into the new directory `dest` (which must not exist yet).

    Returns the relative paths of the files written. Everything is first unpacked
    into a hidden temporary directory in ``dest.parent`` that is renamed to `dest`
    at the end; on any error it is removed and `dest` is not created.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial"))
    os.chmod(tmp, 0o777 & ~_umask())
    written: List[PurePosixPath] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:  # check every name before writing anything
                safe_member_path(info.filename, archive)
                if _member_is_symlink(info):
                    raise DataError(f"{archive} contains the symbolic link {info.filename!r}; refusing to unpack it")
            for info in members:
                rel = safe_member_path(info.filename, archive)
                target = tmp.joinpath(*rel.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK_BYTES)
                written.append(rel)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written
