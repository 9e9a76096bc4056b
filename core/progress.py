"""Progress of long loops: a live tqdm bar on a terminal, plain periodic log lines anywhere else.

`progress` returns a tqdm bar when stderr is a terminal. Otherwise (output redirected to a file, a pipe,
``nohup``, the demo's stages) it returns a `LineProgress`, which logs one plain line (no carriage
returns) at most every ``SPIKINGBERT_PROGRESS_SECONDS`` seconds (default 30) and once at the end::

    progress train: 37/120 steps (31%), 0:41 elapsed, ETA 1:32, loss=0.412, lr=9.1e-05

The demo reads such lines back (`apps.demo_stages`) into one live console line per stage.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional

from tqdm import tqdm

__all__ = ["PROGRESS_SECONDS_ENV", "LineProgress", "progress"]

logger = logging.getLogger(__name__)

#: Environment variable: seconds between two progress lines of a `LineProgress`.
PROGRESS_SECONDS_ENV = "SPIKINGBERT_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(PROGRESS_SECONDS_ENV, DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


class LineProgress:
    """The part of tqdm's interface the loops use (``update``, ``set_postfix``, iteration, ``close``, context
    manager), reported as plain log lines: at most one every ``interval`` seconds, and one at the end."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[float] = None, desc: str = "",
                 unit: str = "it", initial: float = 0, unit_scale: bool = False, disable: bool = False,
                 interval: Optional[float] = None, **_ignored: Any):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.unit_scale, self.disable = unit_scale, disable
        self.interval = _interval() if interval is None else interval
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self.last >= self.interval:
            self.last = now
            logger.info("%s", self.line(now))

    def set_postfix(self, ordered_dict: Optional[dict] = None, refresh: bool = True, **kwargs: Any) -> None:
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed and not self.disable and self.n > self.initial:
            logger.info("%s", self.line(time.monotonic()))
        self.closed = True

    def line(self, now: float) -> str:
        """``progress DESC: N/TOTAL UNIT (P%), ELAPSED elapsed, ETA REMAINING[, POSTFIX]``."""
        elapsed = now - self.start
        size = tqdm.format_sizeof if self.unit_scale else _count
        text = f"progress {self.desc or 'work'}: {size(self.n)}/{size(self.total) if self.total else '?'} {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        text += f", {tqdm.format_interval(elapsed)} elapsed"
        done = self.n - self.initial
        if self.total and done > 0:
            text += f", ETA {tqdm.format_interval(max(0.0, elapsed / done * (self.total - self.n)))}"
        return text + (f", {self.postfix}" if self.postfix else "")


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def progress(iterable: Optional[Iterable] = None, **kwargs: Any):
    """A tqdm bar on a terminal, else a `LineProgress` (same arguments: ``total``, ``desc``, ``unit``, ``initial``,
    ``unit_scale``, ``disable``, ...)."""
    if sys.stderr.isatty():
        return tqdm(iterable, dynamic_ncols=True, **kwargs)
    return LineProgress(iterable, **kwargs)
