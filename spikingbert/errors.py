"""Errors a user can fix, and the entry-script wrapper that reports them.

Library code raises a `UserError` (or a subclass) whose message is one line that
names the file or flag at fault and says what to do. Entry scripts call their
`main` through `run_cli`, which prints that line as ``error: <message>`` on stderr
and exits with the error's `exit_code` (2: bad usage, 1: runtime problem), without
a traceback unless the debug flag is on the command line.
"""
import sys
from typing import Callable, List, Optional, Sequence


class UserError(Exception):
    """A mistake the user can fix (bad input file, missing download, wrong flag value)."""

    exit_code = 1


class UsageError(UserError):
    """A command-line flag is missing, malformed or inconsistent with another flag."""

    exit_code = 2


class DataError(UserError):
    """An input data file is missing, empty or malformed."""


class DownloadError(UserError):
    """A download failed or produced an unusable file."""


def run_cli(
    main_fn: Callable[[List[str]], Optional[int]],
    argv: Optional[Sequence[str]] = None,
    debug_flag: str = "--debug",
) -> None:
    """Run ``main_fn(argv)`` and exit the process with its status.

    A `UserError` becomes one line ``error: <message>`` on stderr and exit status
    ``err.exit_code``; with `debug_flag` among the arguments it propagates with its
    traceback instead. Ctrl-C exits with status 130. `main_fn` must accept (and
    ignore) `debug_flag` in its argument parser.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_flag in args
    try:
        status = main_fn(args)
    except UserError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
