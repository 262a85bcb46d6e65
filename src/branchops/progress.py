"""Live progress while a user waits: a heartbeat with elapsed time, and a subprocess whose output is
streamed as it happens.

Two audiences read it. A person at a terminal sees one status line, rewritten in place every second
(spinner, what is running, how many of how many are done, elapsed time), that never scrolls the real log
lines away. A CI log (not a terminal, or ``CI`` set) gets plain periodic lines instead,
``<what> … still running (2m10s)``, because a rewritten line there is one endless line of carriage
returns. ``-q`` (logging above INFO) shows neither. The status line is coloured only on a terminal and
never when ``NO_COLOR`` is set (https://no-color.org).

It is written without tqdm or rich: neither is in the base install (they come with the ``data`` and
``cpu`` extras), and a wait of unknown length needs only a spinner and a clock.

:func:`run_streaming` runs a command with its output appended, line by line and flushed, to a log file
while it runs (so ``tail -f`` on a component's log shows its tests as they go), and each line also to
the console at ``-v``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from branchops.console import QUIET, VERBOSE, colour_wanted, verbosity

log = logging.getLogger("branchops.progress")
output_log = logging.getLogger("branchops.output")

HEARTBEAT_S = 15.0  # a CI log line every 15 s: often enough to see it is alive, rare enough to read
REDRAW_S = 1.0  # the terminal's status line ticks every second
_SPINNER = "|/-\\"
_COLOUR_ON, _COLOUR_OFF = "\x1b[36m", "\x1b[0m"


def elapsed(seconds: float) -> str:
    """``7s``, ``2m10s``, ``1h04m``: what a person reads at a glance."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is a person's terminal (a CI agent's pseudo-terminal counts as a log)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def colour_allowed(stream: IO[str]) -> bool:
    """Colour on the status line: the console's rule (:func:`branchops.console.colour_wanted`, which
    reads NO_COLOR) on a stream that is a person's terminal."""
    return is_terminal(stream) and colour_wanted(stream)


class Progress:
    """One wait: what it is, when it started, how many of how many are done, and what is running now."""

    def __init__(self, what: str, total: int | None = None):
        self.what = what
        self.total = total
        self.done = 0
        self.detail = ""
        self.started = time.monotonic()
        self._lock = threading.Lock()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def advance(self, count: int = 1) -> None:
        with self._lock:
            self.done += count

    def describe(self, detail: str) -> None:
        """What is running now (``train, features``), shown after the counts."""
        self.detail = detail

    def counts(self) -> str:
        parts = []
        if self.total is not None:
            parts.append(f"{self.done}/{self.total} done")
        if self.detail:
            parts.append(self.detail)
        return ", ".join(parts)

    def line(self) -> str:
        """The plain line a CI log gets: ``testing 3 components … still running (45s): 1/3 done``."""
        counts = self.counts()
        return f"{self.what} … still running ({elapsed(self.seconds)})" + (f": {counts}" if counts else "")

    def status(self, tick: int, colour: bool, width: int = 80) -> str:
        """The terminal's status line: spinner, what, a bar when the total is known, elapsed time; cut to
        ``width`` characters (a line that wraps cannot be wiped with one carriage return)."""
        spinner = _SPINNER[tick % len(_SPINNER)]
        if colour:
            spinner = f"{_COLOUR_ON}{spinner}{_COLOUR_OFF}"
        bar = ""
        if self.total:
            filled = min(20, 20 * self.done // self.total)
            bar = f" [{'#' * filled}{'.' * (20 - filled)}]"
        counts = self.counts()
        rest = f"{self.what}{bar} {elapsed(self.seconds)}" + (f" ({counts})" if counts else "")
        if len(rest) > width - 2:
            rest = rest[: max(width - 3, 0)] + "…"
        return f"{spinner} {rest}"


class _ClearStatusLine(logging.Filter):
    """Wipes the status line before a log line is written under it, so the two never share a line; the
    next tick draws the status again below the log line."""

    def __init__(self, stream: IO[str], lock: threading.Lock):
        super().__init__()
        self.stream, self.lock = stream, lock

    def filter(self, record: logging.LogRecord) -> bool:
        with self.lock:
            self.stream.write("\r\x1b[K")
        return True


def _console_handlers(stream: IO[str]) -> list[logging.Handler]:
    """The root handlers that print on the console: every one but the files (a run log) and streams to
    somewhere else."""
    handlers = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            continue
        if isinstance(handler, logging.StreamHandler) and handler.stream is not stream:
            continue
        handlers.append(handler)
    return handlers


# Whoever writes to the terminal while a status line may be on it (a heartbeat's redraw, a log line, a
# child's output passed through) holds this lock, so a line is never written into the middle of another.
_terminal_lock = threading.Lock()

# The heartbeats open now, outermost first. Only the innermost speaks: the demo's "training" wait holds
# the stage's "component tests", and one status line (or one periodic line) is enough.
_open: list[Progress] = []
_open_lock = threading.Lock()


def _innermost(progress: Progress) -> bool:
    with _open_lock:
        return bool(_open) and _open[-1] is progress


@contextmanager
def heartbeat(
    what: str,
    interval_s: float | None = None,
    *,
    total: int | None = None,
    logger: logging.Logger | None = None,
    stream: IO[str] | None = None,
) -> Iterator[Progress]:
    """Show that ``what`` is still running until the block ends.

    On a terminal: a status line redrawn every second and wiped at the end (none at ``-q``). Elsewhere: a
    line ``<what> … still running (<elapsed>)`` logged every ``interval_s`` seconds with ``logger``, which
    should be one the console shows at the default verbosity (a stage's, the demo's). A heartbeat inside
    another one stands in for it until it ends. Callers log their own start and result lines; the
    heartbeat only fills the silence between them.
    """
    logger = logger or log
    stream = stream if stream is not None else sys.stderr
    progress = Progress(what, total)
    terminal = is_terminal(stream)
    if not logger.isEnabledFor(logging.INFO) or (terminal and verbosity() <= QUIET):
        yield progress
        return
    stop = threading.Event()
    lock = _terminal_lock
    clearing = _ClearStatusLine(stream, lock)
    handlers = _console_handlers(stream) if terminal else []

    def draw() -> None:
        colour = colour_allowed(stream)
        tick = 0
        while not stop.wait(REDRAW_S):
            tick += 1
            if _innermost(progress):
                line = progress.status(tick, colour, width=_columns(stream) - 1)
                with lock:
                    stream.write("\r\x1b[K" + line)
                    stream.flush()

    def beat() -> None:
        while not stop.wait(interval_s or HEARTBEAT_S):
            if _innermost(progress):
                logger.info("%s", progress.line())

    for handler in handlers:
        handler.addFilter(clearing)
    with _open_lock:
        _open.append(progress)
    thread = threading.Thread(target=draw if terminal else beat, name=f"heartbeat: {what}", daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join()
        with _open_lock:
            _open.remove(progress)
        for handler in handlers:
            handler.removeFilter(clearing)
        if terminal:
            with lock:
                stream.write("\r\x1b[K")
                stream.flush()


def _columns(stream: IO[str]) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # not a real terminal (a test's stream)
        return shutil.get_terminal_size().columns


def print_line(text: str, stream: IO[str] | None = None) -> None:
    """Write a line of someone else's output (a child process's stderr) to the console, wiping the status
    line first so the two never share a line."""
    stream = stream if stream is not None else sys.stderr
    with _terminal_lock:
        if is_terminal(stream):
            stream.write("\r\x1b[K")
        stream.write(text if text.endswith("\n") else text + "\n")
        stream.flush()


# -- streaming a command -------------------------------------------------------------------------------


@dataclass
class Streamed:
    """How a streamed command ended."""

    argv: list[str]
    returncode: int | None  # None when it was stopped for running past its timeout
    seconds: float
    tail: list[str] = field(default_factory=list)  # its last non-empty output lines, for messages

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def run_streaming(
    argv: Sequence[str],
    log_file: IO[str],
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    label: str = "",
    transform: Callable[[str], str] = lambda line: line,
    tail_lines: int = 20,
) -> Streamed:
    """Run ``argv`` (stdin closed, stderr merged into stdout) and copy each output line, as it comes,
    through ``transform`` (secret masking) to ``log_file`` (flushed) and, at ``-v``, to the console as
    ``[label] line``; otherwise at DEBUG, which ``-vv`` shows (on any thread: the verbosity is the
    process's, :func:`branchops.console.verbosity`).

    A command still running after ``timeout_s`` is killed with everything it started (it runs in a
    session of its own, so its children cannot keep the output pipe open) and its result has
    ``returncode`` None. Interrupted (Ctrl-C, a stage stop), the command is killed the same way and the
    exception goes on. FileNotFoundError when the program is not installed.
    """
    prefix = f"[{label}] " if label else ""
    level = logging.INFO if verbosity() >= VERBOSE else logging.DEBUG
    started = time.monotonic()
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        kill_group(process)

    timer = threading.Timer(timeout_s, kill) if timeout_s else None
    if timer:
        timer.daemon = True
        timer.start()
    tail: deque[str] = deque(maxlen=tail_lines)
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = transform(raw.rstrip("\n"))
            log_file.write(line + "\n")
            log_file.flush()
            if line.strip():
                tail.append(line)
            output_log.log(level, "%s%s", prefix, line)
        process.wait()
    finally:
        if timer:
            timer.cancel()
        if process.poll() is None:  # interrupted while reading: the command must not outlive us
            kill_group(process)
            process.wait()
        if process.stdout:
            process.stdout.close()
    return Streamed(
        argv=list(argv),
        returncode=None if timed_out.is_set() else process.returncode,
        seconds=time.monotonic() - started,
        tail=list(tail),
    )


def kill_group(process: subprocess.Popen) -> None:
    """Kill ``process`` and everything it started (it must run in a session of its own)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
