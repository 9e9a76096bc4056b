"""Download and unpack the GLUE tasks into ``<data_dir>/<Task>/`` (logic of download_glue_data.py).

Archives come from the standard GLUE locations (or from ``--mirror``, a local
directory or base URL holding files of the same names). Downloads retry with
exponential back-off and resume a partial file with an HTTP Range request. Each
archive is checked (size, zip CRCs) and unpacked safely into a hidden staging
directory that is renamed into place at the end, so a task directory is either
complete or absent. MRPC is built from the original MSR paraphrase files with the
standard GLUE train/dev split (``mrpc_dev_ids.tsv``).
"""
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence, Set, Tuple
from urllib.parse import unquote, urlparse

import requests

from spikingbert.core.archives import safe_extract
from spikingbert.core.errors import DataError, UsageError
from spikingbert.core.files import naming_write_errors
from spikingbert.core.output_dir import TMP_PREFIX, check_output_location, claim_output_dir
from spikingbert.core.remote import DownloadError, download

logger = logging.getLogger(__name__)

GLUE_BASE_URL = "https://dl.fbaipublicfiles.com/glue/data"
SENTEVAL_BASE_URL = "https://dl.fbaipublicfiles.com/senteval/senteval_data"
MRPC_TRAIN_NAME = "msr_paraphrase_train.txt"
MRPC_TEST_NAME = "msr_paraphrase_test.txt"
MRPC_DEV_IDS_NAME = "mrpc_dev_ids.tsv"
MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
DOWNLOAD_SUBDIR = ".downloads"

_SPLIT_FILES = ("train.tsv", "dev.tsv", "test.tsv")


@dataclass(frozen=True)
class GlueTask:
    """One downloadable task: its command-line name, directory, source file and the files it must contain."""

    name: str
    dir_name: str
    source: Optional[str]  # archive (or single file) name at the GLUE location; None for MRPC
    required_files: Tuple[str, ...] = _SPLIT_FILES


TASKS: Tuple[GlueTask, ...] = (
    GlueTask("CoLA", "CoLA", "CoLA.zip"),
    GlueTask("SST", "SST-2", "SST-2.zip"),
    GlueTask("MRPC", "MRPC", None),
    GlueTask("QQP", "QQP", "QQP-clean.zip"),
    GlueTask("STS", "STS-B", "STS-B.zip"),
    GlueTask("MNLI", "MNLI", "MNLI.zip", ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv",
                                         "test_matched.tsv", "test_mismatched.tsv")),
    GlueTask("QNLI", "QNLI", "QNLIv2.zip"),
    GlueTask("RTE", "RTE", "RTE.zip"),
    GlueTask("WNLI", "WNLI", "WNLI.zip"),
    GlueTask("diagnostic", "diagnostic", "AX.tsv", ("diagnostic.tsv",)),
)
_TASK_ALIASES = {"sst-2": "SST", "sts-b": "STS", "ax": "diagnostic"}


@dataclass(frozen=True)
class DownloadConfig:
    """Retry policy: up to `retries` further tries, waiting `retry_wait` seconds, doubled after each failure."""

    retries: int = 5
    retry_wait: float = 2.0
    timeout: float = 60.0


def parse_tasks(spec: str) -> List[GlueTask]:
    """Tasks named by ``--tasks``: ``all`` or a comma list (case-insensitive; SST-2, STS-B, AX accepted)."""
    by_name = {task.name.lower(): task for task in TASKS}
    by_name.update({alias: by_name[name.lower()] for alias, name in _TASK_ALIASES.items()})
    if spec.strip().lower() == "all":
        return list(TASKS)
    chosen: List[GlueTask] = []
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        if name.lower() not in by_name:
            valid = ", ".join(task.name for task in TASKS)
            raise UsageError(f"`tasks`: unknown task {name!r}; use 'all' or a comma list of {valid}")
        if by_name[name.lower()] not in chosen:
            chosen.append(by_name[name.lower()])
    if not chosen:
        raise UsageError("`tasks` is empty; use 'all' or a comma list such as CoLA,SST,MRPC")
    return chosen


class Fetcher:
    """Gets files by name from the mirror (local directory or base URL) or the default base URL.

    Downloaded files land in `download_dir`; partial downloads are kept there
    (``<name>.part``) and resumed on the next try or run (`core.remote.download`).
    """

    def __init__(self, download_dir: Path, mirror: Optional[str] = None, config: DownloadConfig = DownloadConfig()):
        self.download_dir = download_dir
        self.config = config
        self.mirror_dir: Optional[Path] = None
        self.mirror_url: Optional[str] = None
        if mirror:
            parsed = urlparse(mirror)
            if parsed.scheme in ("http", "https"):
                self.mirror_url = mirror.rstrip("/")
            else:
                local = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(mirror)
                if not local.is_dir():
                    raise UsageError(f"`mirror` {mirror}: not an existing directory nor an http(s) URL")
                self.mirror_dir = local
        self.session = requests.Session()

    def fetch(self, name: str, default_base: str) -> Tuple[Path, bool]:
        """Return a local path of file `name` and whether it is a download this fetcher owns."""
        if self.mirror_dir is not None:
            path = self.mirror_dir / name
            if not path.is_file():
                raise DownloadError(f"`mirror` {self.mirror_dir} has no {name}; put the file there or drop `mirror`")
            return path, False
        base = self.mirror_url or default_base
        dest = self.download_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        download(f"{base}/{name}", dest, retries=self.config.retries, retry_wait=self.config.retry_wait,
                 timeout=self.config.timeout, resume=True, session=self.session, hint=" or use `mirror`")
        return dest, True


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


def safe_extract_zip(archive: Path, dest: Path) -> List[PurePosixPath]:
    """`core.archives.safe_extract` with the data tools' error (`DataError`)."""
    return safe_extract(archive, dest, error=DataError)


def task_status(data_dir: Path, task: GlueTask) -> Tuple[bool, List[str]]:
    """(whether ``data_dir/<Task>`` exists, the required files it lacks)."""
    task_dir = data_dir / task.dir_name
    missing = [name for name in task.required_files
               if not (task_dir / name).is_file() or (task_dir / name).stat().st_size == 0]
    return task_dir.exists(), missing


def _find_task_root(unpacked: Path, task: GlueTask) -> Optional[Path]:
    """The directory inside an unpacked archive that holds the task's files."""
    candidates = [unpacked / task.dir_name, unpacked]
    candidates += sorted(p for p in unpacked.iterdir() if p.is_dir() and not p.name.startswith(("__MACOSX", ".")))
    for cand in candidates:
        if cand.is_dir() and all((cand / name).is_file() for name in task.required_files):
            return cand
    return None


def _unpack_task(archive: Path, staging: Path, task: GlueTask) -> Path:
    """Unpack a task archive under `staging`; returns the directory with the task's files."""
    unpacked = staging / "unpacked"
    safe_extract_zip(archive, unpacked)
    root = _find_task_root(unpacked, task)
    if root is None:
        raise DataError(f"{archive} does not contain the {task.name} files "
                        f"{', '.join(task.required_files)}; is it the right archive?")
    return root


def _read_msr(path: Path) -> List[Tuple[str, str, str, str, str]]:
    """Rows (label, id1, id2, sentence1, sentence2) of an MSR paraphrase file, header skipped."""
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if lineno == 1 or not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 5:
                raise DataError(f"{path}:{lineno}: expected 5 tab-separated fields, found {len(fields)}; "
                                "is this an original MSR paraphrase file?")
            rows.append(tuple(fields))
    if not rows:
        raise DataError(f"{path} holds no MRPC rows; is this an original MSR paraphrase file?")
    return rows


def _read_dev_ids(path: Path) -> Set[Tuple[str, str]]:
    ids = set()
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.strip().split("\t")
            if len(fields) != 2:
                raise DataError(f"{path}:{lineno}: expected two tab-separated sentence ids, found {len(fields)} fields")
            ids.add((fields[0], fields[1]))
    if not ids:
        raise DataError(f"{path} is empty; it should list the MRPC dev pairs")
    return ids


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    with naming_write_errors(path), open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def build_mrpc(out_dir: Path, train_file: Path, test_file: Path, dev_ids_file: Path) -> Dict[str, int]:
    """Write MRPC train/dev/test.tsv from the MSR files: the dev pairs listed in `dev_ids_file` leave train."""
    dev_ids = _read_dev_ids(dev_ids_file)
    train_rows = _read_msr(train_file)
    test_rows = _read_msr(test_file)
    train = [MRPC_HEADER]
    dev = [MRPC_HEADER]
    for row in train_rows:
        (dev if (row[1], row[2]) in dev_ids else train).append("\t".join(row))
    if len(dev) == 1:
        raise DataError(f"none of the pairs in {dev_ids_file} occurs in {train_file}; are these the matching files?")
    test = ["index\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    test += [f"{i}\t{id1}\t{id2}\t{s1}\t{s2}" for i, (_, id1, id2, s1, s2) in enumerate(test_rows)]
    out_dir.mkdir(parents=True)
    _write_lines(out_dir / "train.tsv", train)
    _write_lines(out_dir / "dev.tsv", dev)
    _write_lines(out_dir / "test.tsv", test)
    return {"train": len(train) - 1, "dev": len(dev) - 1, "test": len(test) - 1}


def _mrpc_sources(fetcher: Fetcher, path_to_mrpc: Optional[Path],
                  fetched: List[Tuple[Path, bool]]) -> Tuple[Path, Path, Path]:
    """Local paths of the MSR train and test files and the dev ids; appends what it fetches to `fetched`."""
    if path_to_mrpc is not None:
        train, test = path_to_mrpc / MRPC_TRAIN_NAME, path_to_mrpc / MRPC_TEST_NAME
        for path in (train, test):
            if not path.is_file():
                raise UsageError(f"`path_to_mrpc` {path_to_mrpc} has no {path.name}; "
                                 "it must hold the original MSR paraphrase corpus files")
    else:
        fetched.append(fetcher.fetch(MRPC_TRAIN_NAME, SENTEVAL_BASE_URL))
        fetched.append(fetcher.fetch(MRPC_TEST_NAME, SENTEVAL_BASE_URL))
        train, test = fetched[-2][0], fetched[-1][0]
    fetched.append(fetcher.fetch(MRPC_DEV_IDS_NAME, GLUE_BASE_URL))
    return train, test, fetched[-1][0]


def download_task(data_dir: Path, task: GlueTask, fetcher: Fetcher, path_to_mrpc: Optional[Path] = None) -> bool:
    """Download and install one task; returns False if it was already complete (nothing done)."""
    exists, missing = task_status(data_dir, task)
    if exists and not missing:
        logger.info("%s is already complete in %s; skipping it", task.name, data_dir / task.dir_name)
        return False
    if exists:
        raise DataError(f"{data_dir / task.dir_name} exists but lacks {', '.join(missing)}; "
                        "move or delete it and run again")
    logger.info("downloading %s", task.name)
    staging = Path(tempfile.mkdtemp(dir=data_dir, prefix=f"{TMP_PREFIX}{task.dir_name}.", suffix=".staging"))
    fetched: List[Tuple[Path, bool]] = []
    try:
        if task.name == "MRPC":
            train, test, dev_ids = _mrpc_sources(fetcher, path_to_mrpc, fetched)
            root = staging / task.dir_name
            counts = build_mrpc(root, train, test, dev_ids)
            logger.info("MRPC split: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
        elif task.source.endswith(".zip"):
            fetched.append(fetcher.fetch(task.source, GLUE_BASE_URL))
            archive, owned = fetched[-1]
            try:
                check_zip(archive)
            except DataError as err:
                if owned:
                    raise DownloadError(f"{err}; the download was deleted: run again to fetch it afresh") from err
                raise
            root = _unpack_task(archive, staging, task)
        else:
            fetched.append(fetcher.fetch(task.source, GLUE_BASE_URL))
            root = staging / task.dir_name
            root.mkdir()
            with naming_write_errors(root / task.required_files[0]):
                shutil.copyfile(fetched[-1][0], root / task.required_files[0])
        os.replace(root, data_dir / task.dir_name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for path, owned in fetched:
            if owned:
                path.unlink(missing_ok=True)
    logger.info("%s installed in %s", task.name, data_dir / task.dir_name)
    return True


def download_glue(
    data_dir: Path,
    tasks: Sequence[GlueTask],
    path_to_mrpc: Optional[Path] = None,
    mirror: Optional[str] = None,
    config: DownloadConfig = DownloadConfig(),
) -> List[str]:
    """Download `tasks` into `data_dir`; returns the names of the tasks installed by this call.

    ``data_dir`` is created (and locked, its stale staging directories removed) only once the flags are checked;
    when nothing could be installed, what the call created there is removed again (partial downloads are kept
    in ``.downloads`` for the next run to resume).
    """
    data_dir = Path(data_dir)
    if path_to_mrpc is not None and not Path(path_to_mrpc).is_dir():
        raise UsageError(f"`path_to_mrpc` {path_to_mrpc} is not a directory")
    check_output_location(data_dir, "`data_dir`")
    download_dir = data_dir / DOWNLOAD_SUBDIR
    fetcher = Fetcher(download_dir, mirror, config)
    with claim_output_dir(data_dir, "`data_dir`", keep=lambda new: bool(new)):
        try:
            return [task.name for task in tasks
                    if download_task(data_dir, task, fetcher, Path(path_to_mrpc) if path_to_mrpc else None)]
        finally:
            if download_dir.is_dir() and not any(download_dir.iterdir()):  # keep partial files for resuming
                download_dir.rmdir()
