"""Errors a user can fix: one root, `UserError`, carrying the process's exit status.

Every layer raises a `UserError` (or a subclass) whose message is one line that names the file or
setting at fault and says what to do. The command line's edge (`spikingbert.cli.run_cli`) prints it
as ``error: <message>`` and exits with the error's `exit_code`: 2 when the command line or a setting
is wrong (`UsageError`), 1 when a file, the network, the disk or the training failed.

A message names a setting in backquotes, as in "resume with `continue_train`": the Python name of the
setting (a config field, a keyword argument). The command line's edge shows it as the flag
``--continue_train`` (`render_settings`); no layer below the edge spells a command-line flag.
"""
from __future__ import annotations

import re
from typing import Callable

__all__ = ["UserError", "UsageError", "DataError", "ModelError", "render_settings", "one_line"]

_SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")


class UserError(Exception):
    """A mistake or condition the user can fix (a bad input file, a missing download, a full disk, ...)."""

    exit_code = 1

    def about(self, subject: str) -> "UserError":
        """The same error (same class and exit status) with ``subject: `` in front of its message."""
        err = type(self).__new__(type(self))
        Exception.__init__(err, f"{subject}: {self}")
        err.__dict__.update(self.__dict__)
        return err


class UsageError(UserError):
    """A setting (a flag, a config field) is missing, malformed, out of range or inconsistent with another."""

    exit_code = 2


class DataError(UserError):
    """An input data file is missing, empty or malformed."""


class ModelError(UserError):
    """A model directory, weights file, vocabulary or remote model location cannot be used."""


def render_settings(text: str, spell: Callable[[str], str] = lambda name: f"--{name}") -> str:
    """``text`` with every setting it names in backquotes spelled by ``spell`` (default: as a command-line flag)."""
    return _SETTING.sub(lambda match: spell(match.group(1)), text)


def one_line(text: object) -> str:
    """``text`` with its lines joined by spaces (messages of wrapped exceptions may span lines)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())
