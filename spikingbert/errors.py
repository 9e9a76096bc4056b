"""Errors a user can fix, and the entry-script wrapper that reports them.

Library code raises a `UserError` (or a subclass) whose message is one line that
names the file or flag at fault and says what to do. Entry scripts call their
`main` through `run_cli`, which prints that line as ``error: <message>`` on stderr
and exits with the error's `exit_code` (2: bad usage, 1: runtime problem), without
a traceback unless the debug flag is on the command line.

Errors of the same kind raised by code that cannot depend on this package (the
student's `models.configuration.SpikingConfigError`, the file floor's
`transformer.file_utils.ModelLoadError` and its `DownloadError`), command-line syntax errors (through
`ArgumentParser`) and operating-system errors such as a full disk are reported
the same way, also where the writer that failed was torch's or safetensors' (see
`transformer.file_utils.as_write_error`).
"""
import argparse
import math
import signal
import sys
from typing import Callable, List, NoReturn, Optional, Sequence, Tuple


class UserError(Exception):
    """A mistake the user can fix (bad input file, missing download, wrong flag value)."""

    exit_code = 1


class UsageError(UserError):
    """A command-line flag is missing, malformed or inconsistent with another flag."""

    exit_code = 2


class DataError(UserError):
    """An input data file is missing, empty or malformed."""


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGTERM) arrived; raised where the program is, like Ctrl-C's KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def handle_termination() -> None:
    """SIGTERM raises `Interrupted` (Ctrl-C raises KeyboardInterrupt already), unless it is ignored."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _raise_interrupted)


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose syntax errors (unknown or missing flags, bad values) raise
    `UsageError`, so that `run_cli` reports them in its one-line format with exit status 2.

    Every ``type=float`` flag must be a finite number (``inf`` and ``nan`` parse as floats, and then
    overflow, never stop, or make every loss NaN); its range is checked by the command's own checks.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        check_finite_floats(self, parsed)
        return parsed, rest


def check_finite_floats(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Raise `UsageError` naming the first ``type=float`` flag of ``parser`` whose value is inf or nan."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.type is float and isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{action.option_strings[-1] if action.option_strings else action.dest} must be a "
                             f"finite number (got {value})")


#: Errors of packages that do not import this one: (module, class name, exit status).
FOREIGN_USER_ERRORS: Tuple[Tuple[str, str, int], ...] = (
    ("transformer.file_utils", "ModelLoadError", 1),
    ("models.configuration", "SpikingConfigError", 2),
)


def one_line(text: str) -> str:
    """``text`` with its lines joined by spaces (messages of wrapped exceptions may span lines)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the quota, or the file-size limit) is full."""
    from transformer.file_utils import DISK_FULL_ERRNOS

    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


def describe_os_error(err: OSError) -> str:
    """``cannot access <file>: <reason>`` of an `OSError`; ``cannot write <file>: <reason>`` of a failed write,
    with ``: the disk (or the quota, or the file-size limit) is full`` when that is the reason."""
    from transformer.file_utils import WriteError

    where = err.filename if err.filename is not None else "a file"
    if is_disk_full(err):
        where = err.filename2 if err.filename2 is not None else where      # a copy names its source first
        return f"cannot write {where}: {err.strerror or err}: the disk (or the quota, or the file-size limit) is full"
    verb = "write" if isinstance(err, WriteError) else "access"
    return f"cannot {verb} {where}: {err.strerror or err}"


def as_os_error(err: BaseException) -> Optional[OSError]:
    """``err`` itself if it is an `OSError`; the `OSError` behind a write that failed in torch's or
    safetensors' writer; else None."""
    if isinstance(err, OSError):
        return err
    from transformer.file_utils import as_write_error

    return as_write_error(err)


def user_error_status(err: BaseException) -> Optional[Tuple[str, int]]:
    """``(message, exit status)`` when ``err`` is a mistake or condition the user can fix, else None."""
    if isinstance(err, UserError):
        return one_line(err), err.exit_code
    for module_name, class_name, status in FOREIGN_USER_ERRORS:
        module = sys.modules.get(module_name)   # not imported: ``err`` cannot be one of its errors
        cls = getattr(module, class_name, None) if module is not None else None
        if cls is not None and isinstance(err, cls):
            return one_line(err), int(getattr(err, "exit_code", status))
    os_err = as_os_error(err)
    if os_err is not None and os_err.errno is not None:
        hint = "; free some space (or write elsewhere) and run the command again" if is_disk_full(os_err) else ""
        return one_line(describe_os_error(os_err) + hint), 1
    return None


def run_cli(
    main_fn: Callable[[List[str]], Optional[int]],
    argv: Optional[Sequence[str]] = None,
    debug_flag: str = "--debug",
) -> None:
    """Run ``main_fn(argv)`` and exit the process with its status.

    A user error (see `user_error_status`) becomes one line ``<prefix>: <message>`` on
    stderr (prefix ``error``, or the error's ``prefix``) and its exit status; with
    `debug_flag` among the arguments it propagates with its traceback instead. Ctrl-C
    exits with status 130 (``error: interrupted``), SIGTERM with 143 (``error: interrupted
    (SIGTERM)``): both unwind the program, so every temporary file is removed on the way.
    `main_fn` must accept (and ignore) `debug_flag` in its argument parser; it imports the
    heavy modules itself, so that a signal during those imports is reported the same way.
    """
    handle_termination()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_flag in args
    try:
        status = main_fn(args)
    except KeyboardInterrupt as err:
        if debug:
            raise
        signum = getattr(err, "signum", signal.SIGINT)
        print("error: interrupted" + ("" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"),
              file=sys.stderr)
        sys.exit(128 + signum)
    except Exception as err:
        reported = user_error_status(err)
        if reported is None or debug:
            raise
        message, exit_code = reported
        print(f"{getattr(err, 'prefix', 'error')}: {message}", file=sys.stderr)
        sys.exit(exit_code)
    sys.exit(status or 0)
