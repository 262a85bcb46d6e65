"""Stopping a run cleanly on SIGINT or SIGTERM.

While a stage runs, the runner installs :func:`handling_signals`: the first SIGINT or SIGTERM sets
:data:`requested` and raises :class:`Interrupted` in the main thread. Code that waits on something long
(a pipeline run, a rollout) polls :func:`check` so that worker threads stop too, and stops what it
started (a pipeline process group, say) before it re-raises. The runner then writes an "interrupted"
record, notifies, releases its lock and exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from branchops.errors import BranchopsError

requested = threading.Event()


class Interrupted(BranchopsError):
    """The run was stopped by a signal; what it started has been stopped."""

    exit_code = 130

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


_signal_seen: list[int] = []


def check() -> None:
    """Raise :class:`Interrupted` if a stop was requested (call it from every long wait)."""
    if requested.is_set():
        signum = _signal_seen[0] if _signal_seen else signal.SIGINT
        raise Interrupted(f"stopped by {signal.Signals(signum).name}", signum)


@contextmanager
def handling_signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into :class:`Interrupted` for the duration (main thread only; elsewhere a
    no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: object) -> None:
        if requested.is_set():
            return  # cleaning up after the first one: let it finish
        _signal_seen[:] = [signum]
        requested.set()
        raise Interrupted(f"stopped by {signal.Signals(signum).name}", signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    requested.clear()
    _signal_seen.clear()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
