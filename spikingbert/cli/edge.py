"""The command line's edge: parsing with the settings table's checks, help texts, and one-line errors.

* `ArgumentParser`: syntax errors (unknown or missing flags, bad values) raise `UsageError`; after parsing,
  every flag declared with `setting_flag` (and every other ``int``/``float`` flag, by its name) is checked
  against its `core.settings.FieldSpec`: a finite number in its range.
* `run_cli`: runs a command's ``main`` and turns what a user can fix into one line on stderr,
  ``error: <message>``, and the exit status the error carries (`core.errors.UserError`; an `OSError`
  such as a full disk: 1). Settings named in a message are shown as flags (`core.errors.render_settings`).
  Ctrl-C exits with 130 (``error: interrupted``), SIGTERM with 143; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from typing import Any, Callable, List, NoReturn, Optional, Sequence, Tuple

from spikingbert.core.errors import UsageError, UserError, one_line, render_settings
from spikingbert.core.files import as_write_error, describe_os_error, is_disk_full, read_json
from spikingbert.core.settings import SETTINGS

__all__ = ["ArgumentParser", "HelpFormatter", "setting_flag", "short_metavars", "run_cli", "user_error_status",
           "command_line", "Interrupted"]


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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help with every flag's default: ``(default: X)`` after the help text, ``(default: off)`` for on/off flags;
    a help text that already names its default (flags whose default is None say what happens) is left as is.
    The description and epilog keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.required or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'off' if action.default is False else 'on'})"
        if action.default is None or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def setting_flag(group: Any, *names: str, setting: Optional[str] = None, **kwargs: Any) -> argparse.Action:
    """Add a flag whose type, choices and range come from the settings table: ``setting`` (default: the flag's
    name) names its `core.settings.FieldSpec`; the parser checks the parsed value against it."""
    name = setting or names[0].lstrip("-")
    spec = SETTINGS[name]
    if spec.kind in (int, float):
        kwargs.setdefault("type", spec.kind)
    elif spec.choices:
        kwargs.setdefault("choices", spec.choices)
    action = group.add_argument(*names, **kwargs)
    action.setting = name
    return action


def short_metavars(parser: argparse.ArgumentParser) -> None:
    """``N`` for integer flags and ``X`` for real-valued ones where no metavar was chosen (short usage lines)."""
    for action in parser._actions:
        if action.metavar is None and action.choices is None and action.type in (int, float):
            action.metavar = "N" if action.type is int else "X"


#: Flags ``--args_file`` does not take from the recorded run: where this run writes and how it starts.
NOT_RECORDED = ("args_file", "output_dir", "overwrite_output_dir", "continue_train", "allow_changed_settings",
                "local_rank", "debug", "report_to", "help")


#: The console scripts of an install (pyproject.toml, ``[project.scripts]``) and the checkout commands they stand
#: for: a command started as one shows that name in its help, ``args.json`` and model card.
CONSOLE_SCRIPTS = {
    "spikingbert-preprocess": "python preprocess_training_data.py",
    "spikingbert-general-distill": "python spiking_bert_general_distill.py",
    "spikingbert-task-distill": "python spiking_bert_task_distill.py",
    "spikingbert-download-glue": "python download_glue_data.py",
    "spikingbert-predict": "python -m apps.predict",
    "spikingbert-finetune": "python -m apps.finetune",
    "spikingbert-demo": "python -m apps.demo",
    "spikingbert-paper": "python -m apps.paper",
    "spikingbert-corpora": "python -m apps.corpora",
    "spikingbert-convert-published": "python -m apps.convert_published",
}


def invoked_as(prog: str) -> str:
    """``prog`` (a checkout command), or the console script this process was started as when that script stands
    for it (``spikingbert-task-distill`` for ``python spiking_bert_task_distill.py``)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if CONSOLE_SCRIPTS.get(name) == prog else prog


def _checkout_command(command: str) -> str:
    """``command`` with a console script's name replaced by the checkout command it stands for."""
    first, _, rest = command.partition(" ")
    return f"{CONSOLE_SCRIPTS[first]} {rest}".rstrip() if first in CONSOLE_SCRIPTS else command


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose syntax errors raise `UsageError` (see `run_cli`) and whose numeric flags are
    checked against the settings table after parsing (see the module docstring). Flags must be spelled in full
    (``allow_abbrev=False``): ``--t_con 4`` is an error, not ``--t_conv 4``. The parsed namespace records the
    command as typed, ``command_line`` (``args.json`` and the model card show it)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        if isinstance(kwargs.get("prog"), str):
            kwargs["prog"] = invoked_as(kwargs["prog"])
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        self._recorded_defaults(args)
        parsed, rest = super().parse_known_args(args, namespace)
        parsed.command_line = command_line(self.prog, args)
        for action in self._actions:
            name = getattr(action, "setting", None)
            if name is None and action.type in (int, float) and action.dest in SETTINGS:
                name = action.dest
            problem = SETTINGS[name].flag_problem(getattr(parsed, action.dest, None)) if name else None
            if problem is not None:
                raise UsageError(f"{action.option_strings[-1] if action.option_strings else action.dest} {problem}")
        return parsed, rest


    def _recorded_defaults(self, args: Sequence[str]) -> None:
        """``--args_file F``: the flags recorded in a run's ``args.json`` become this parser's defaults (the flags
        given override them); run-control flags (`NOT_RECORDED`) are not taken from it."""
        path = _option_value(args, "--args_file")
        if path is None or "args_file" not in {a.dest for a in self._actions}:
            return
        try:
            recorded = read_json(path, "args file")
        except (OSError, ValueError) as err:
            raise UsageError(f"--args_file {path}: cannot read it ({one_line(err)}); pass the args.json of an "
                             "earlier run") from None
        if not isinstance(recorded, dict):
            raise UsageError(f"--args_file {path} is not a run's args.json (a JSON object of flags)")
        typed = str(recorded.get("command_line", self.prog))
        made_by, prog = _checkout_command(typed), _checkout_command(self.prog)
        if not (made_by.startswith(prog) or prog.split()[-1] in made_by.split()[:4]):
            raise UsageError(f"--args_file {path} records a run of `{typed.split(' --')[0]}`, not of "
                             f"`{self.prog}`; pass the args.json of a {self.prog} run")
        for action in self._actions:
            if action.option_strings and action.dest in recorded and action.dest not in NOT_RECORDED:
                action.default, action.required = recorded[action.dest], False


def _option_value(args: Sequence[str], flag: str) -> Optional[str]:
    """The value given to ``flag`` (``flag V`` or ``flag=V``; the last one counts), None if absent."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1:]
    return value


def command_line(prog: str, args: Sequence[str]) -> str:
    """The command as a user types it again: ``prog`` and the arguments, quoted for a POSIX shell, behind
    ``torchrun --nproc_per_node N`` in a process that torchrun started."""
    command = shlex.join([*shlex.split(prog), *map(str, args)])
    if "TORCHELASTIC_RUN_ID" in os.environ and command.startswith("python "):
        command = f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', '1')} {command[len('python '):]}"
    return command


def user_error_status(err: BaseException) -> Optional[Tuple[str, int]]:
    """``(message, exit status)`` when ``err`` is a mistake or condition the user can fix, else None."""
    if isinstance(err, UserError):
        return render_settings(one_line(err)), err.exit_code
    os_err = as_write_error(err)
    if os_err is not None and os_err.errno is not None:
        hint = "; free some space (or write elsewhere) and run the command again" if is_disk_full(os_err) else ""
        return one_line(describe_os_error(os_err) + hint), 1
    return None


def run_cli(main_fn: Callable[[List[str]], Optional[int]], argv: Optional[Sequence[str]] = None,
            debug_flag: str = "--debug") -> None:
    """Run ``main_fn(argv)`` and exit the process with its status (see the module docstring).

    `main_fn` must accept (and ignore) `debug_flag` in its argument parser; it imports the heavy modules itself,
    so that a signal during those imports is reported the same way.
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
    finally:
        _default_signals()
    sys.exit(status or 0)


def _default_signals() -> None:
    """Once the command has finished (its status decided, its messages printed), Ctrl-C and SIGTERM act as on a
    program without handlers: one arriving while the interpreter shuts down ends the process, instead of raising
    inside the shutdown code (a traceback after the work is done)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:          # an ignored one (a background job) stays so
            signal.signal(signum, signal.SIG_DFL)
