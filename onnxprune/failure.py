"""How the command line ends when something goes wrong: one line on stderr and an exit code.

| what was raised                                   | exit | stderr                                   |
|---------------------------------------------------|------|------------------------------------------|
| OptionError, click usage errors                   | 2    | one line: where: what; how to fix        |
| GateError (--max-drop / --max-drift missed)       | 3    | one line: by how much; nothing written   |
| other OnnxPruneError, OSError, onnxruntime errors | 1    | one line                                 |
| Ctrl-C / SIGTERM / SIGHUP                         | 128+signal number | one line: nothing was written |
| anything else (a bug)                             | 70   | "please report" and the full traceback   |
"""

from __future__ import annotations

import signal
import sys
import traceback

import click

from . import runtime
from .atomic import Interrupted
from .errors import OnnxPruneError, OptionError
from .gate import GATE_EXIT, GateError

BUG_EXIT = 70  # EX_SOFTWARE
REPORT_URL = "the onnxprune issue tracker"


def _say(text: str) -> None:
    click.echo(f"onnxprune: {text}", err=True)


def _interruption(exc: BaseException) -> Interrupted | KeyboardInterrupt | None:
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def exit_code(exc: BaseException) -> int:
    """Print what the user needs for `exc` and return the process exit code."""
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if isinstance(exc, (KeyboardInterrupt, click.exceptions.Abort)):
        cause = _interruption(exc)
        signum = cause.signum if isinstance(cause, Interrupted) else signal.SIGINT
        written = getattr(cause, "written", ())
        done = f"{', '.join(written)} had been written completely" if written else "nothing was written"
        _say(f"interrupted by {signal.Signals(signum).name}; {done}")
        return 128 + int(signum)
    if isinstance(exc, OptionError):
        _say(f"error: {exc}")
        return 2
    if isinstance(exc, GateError):
        _say(f"quality gate: {exc}; nothing written")
        return GATE_EXIT
    if isinstance(exc, OnnxPruneError):
        _say(f"error: {exc}")
        return 1
    if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):
        click.echo(exc.format_message(), err=True)  # no command given: the help, not an "error"
        return exc.exit_code
    if isinstance(exc, click.ClickException):
        _say(f"error: {exc.format_message()}")
        return exc.exit_code
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else "file system"
        _say(f"error: {where}: {exc.strerror or exc}; check the path, the permissions and the free space")
        return 1
    if isinstance(exc, MemoryError):
        _say("error: out of memory; use fewer --calib-samples, a smaller --batch-size or a larger machine")
        return 1
    reason = runtime.explain_failure(exc)
    if reason is not None:
        _say(f"error: onnxruntime: {reason}")
        return 1
    _say(
        f"internal error ({type(exc).__name__}: {exc}): this is a bug; please report it to {REPORT_URL} "
        "with the trace below"
    )
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.flush()
    return BUG_EXIT
