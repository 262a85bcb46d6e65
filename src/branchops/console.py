"""What the command line prints, and where (docs/cli.md).

* A command's result goes to stdout: text, or with ``--json`` exactly one JSON document and nothing else,
  so ``branchops ... --json | jq`` always parses.
* Everything else goes to stderr: log lines while a command works, and its error (with ``--json``, the
  error too is one JSON document, ``{"error": ..., "code": ...}``).
* Verbosity is about branchops' own loggers: ``-q`` warnings and errors; the default adds what a run
  tells a user (``NARRATIVE``: the runner, the stages, notifications, heartbeats); ``-v`` adds what every
  branchops module does (volumes, snapshots, uploads, pushes); ``-vv`` adds debug records with the seconds
  since start.
  Other libraries log to the console only when asked (``--log-libs`` or ``BRANCHOPS_LOG_LIBS=1``): their
  INFO and DEBUG lines (GitPython's every git call) drown what branchops says.
* Lines carry no logger names; ``warning:`` and ``error:`` say what they are, in colour only on a
  terminal and never when ``NO_COLOR`` is set (https://no-color.org).

Only light modules are imported here: the CLI imports this before ``--help``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import click

QUIET, NORMAL, VERBOSE, DEBUG = -1, 0, 1, 2

# The loggers whose INFO lines tell a user how a command is going; every other branchops logger tells
# how a part of it did its work, which -v shows.
NARRATIVE = (
    "branchops.runner",
    "branchops.stage",
    "branchops.notify",
    "branchops.demo",
    "branchops.progress",  # a wait's heartbeat: "<what> … still running (2m10s)"
    "branchops.component",  # `branchops component NAME` running one component
)

LIBRARY_LOGS_ENV = "BRANCHOPS_LOG_LIBS"

# The running command's verbosity, QUIET..DEBUG: what the console filter prints and what progress reads
# (its status line, a streamed command's lines at -v), on every thread; NORMAL outside a command.
_verbosity = NORMAL

_LEVEL_COLOURS = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "red"}


def colour_wanted(stream: Any) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set to anything but the empty string."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def set_verbosity(level: int | None) -> None:
    """Set the verbosity (QUIET..DEBUG); None to go back to NORMAL, as when a command ends."""
    global _verbosity
    _verbosity = NORMAL if level is None else level


def verbosity() -> int:
    """The running command's ``-q``/``-v``/``-vv`` as QUIET..DEBUG, else NORMAL."""
    return _verbosity


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


class ConsoleFilter(logging.Filter):
    """Which records reach the console for a verbosity (the run log, a file handler, is not filtered)."""

    def __init__(self, verbosity: int, libraries: bool):
        super().__init__()
        self.verbosity = verbosity
        self.libraries = libraries

    def filter(self, record: logging.LogRecord) -> bool:
        ours = _within(record.name, ("branchops",))
        if not ours and not self.libraries:
            return False
        if record.levelno >= logging.WARNING:
            return True
        if self.verbosity <= QUIET:
            return False
        if self.verbosity >= DEBUG:
            return True
        if record.levelno < logging.INFO:
            return False
        if self.verbosity == VERBOSE:
            return True
        return ours and _within(record.name, NARRATIVE)


def _label(levelno: int, colour: bool) -> str:
    """``warning:`` or ``error:`` for a level at WARNING or above, in its colour when ``colour``."""
    label = "error:" if levelno >= logging.ERROR else "warning:"
    if colour:
        return click.style(label, fg=_LEVEL_COLOURS[min(levelno, logging.CRITICAL)], bold=True)
    return label


class ConsoleFormatter(logging.Formatter):
    """``message``; ``warning: message`` / ``error: message``; with -vv the seconds since start first."""

    def __init__(self, colour: bool, elapsed: bool):
        super().__init__("%(message)s")
        self.colour = colour
        self.elapsed = elapsed
        self.started = time.monotonic()

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            text = f"{_label(record.levelno, self.colour)} {text}"
        elif record.levelno < logging.INFO and self.colour:
            text = click.style(text, dim=True)
        if self.elapsed:
            text = f"{time.monotonic() - self.started:7.2f}s {text}"
        return text


class ConsoleHandler(logging.Handler):
    """Writes to the stderr of the moment, through click (which a test's CliRunner captures)."""

    def __init__(self, colour: bool):
        super().__init__()
        self.colour = colour

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True, color=self.colour)
        except Exception:
            self.handleError(record)


def setup_console(verbosity: int, libraries: bool = False) -> ConsoleHandler | None:
    """Send log records to the console for ``verbosity`` (QUIET..DEBUG).

    Called once per command. A handler this function installed before (an earlier command in the same
    process) is replaced, never added to, so each line is printed once. A process whose root logger
    already has other handlers (an application embedding branchops, pytest's capture) configured logging
    itself and keeps it, as with ``logging.basicConfig``: nothing is installed and None is returned.
    """
    set_verbosity(verbosity)
    libraries = libraries or os.environ.get(LIBRARY_LOGS_ENV, "") not in ("", "0")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, ConsoleHandler)]:
        root.removeHandler(handler)
    # A stage's run log (a file handler the runner adds) records INFO whatever the console shows, so the
    # levels below are about which records exist; the console's filter decides what it prints.
    logging.getLogger("branchops").setLevel(logging.DEBUG if verbosity >= DEBUG else logging.NOTSET)
    if root.handlers:
        return None
    root.setLevel(logging.DEBUG if verbosity >= DEBUG and libraries else logging.INFO)
    colour = colour_wanted(sys.stderr)
    handler = ConsoleHandler(colour)
    handler.setFormatter(ConsoleFormatter(colour, elapsed=verbosity >= DEBUG))
    handler.addFilter(ConsoleFilter(verbosity, libraries))
    root.addHandler(handler)
    return handler


# -- results and errors -------------------------------------------------------------------------------


def emit_json(data: Any) -> None:
    """The one JSON document of a command's result, on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def emit_error(message: str, code: int, as_json: bool) -> None:
    """A command's error on stderr: ``error: message``, or with --json ``{"error": ..., "code": ...}``."""
    if as_json:
        click.echo(json.dumps({"error": message, "code": code}), err=True)
        return
    colour = colour_wanted(sys.stderr)
    click.echo(f"{_label(logging.ERROR, colour)} {message}", err=True, color=colour)
