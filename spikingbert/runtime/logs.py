"""Logging of a run: the console (through tqdm, so log lines do not break progress bars) and ``train.log``."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from spikingbert.core.files import open_no_follow

__all__ = ["LOG_FORMAT", "setup_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _TqdmHandler(logging.StreamHandler):
    """A console handler that writes through tqdm, so log lines do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


class _LogFileHandler(logging.FileHandler):
    """``train.log``, never written through a link; when the file cannot be written (e.g. a full disk), one warning
    on stderr and the file is dropped, instead of a traceback for every later record."""

    def _open(self):
        return open_no_follow(self.baseFilename, "a", encoding=self.encoding)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        logging.getLogger().removeHandler(self)
        print(f"warning: cannot write {self.baseFilename} ({err}); logging to the console only", file=sys.stderr)


def setup_logging(output_dir: Optional[Path], is_main: bool, debug: bool = False) -> None:
    """Log to the console (main process: INFO, others: WARNING) and to ``output_dir/train.log``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    level = logging.DEBUG if debug else logging.INFO
    root.setLevel(level)
    formatter = logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    console = _TqdmHandler()
    console.setLevel(level if is_main else logging.WARNING)
    console.setFormatter(formatter)
    root.addHandler(console)
    if is_main and output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        file_handler = _LogFileHandler(output_dir / "train.log", encoding="utf-8")
        file_handler.setLevel(level)
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
