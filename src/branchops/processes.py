"""Which process is which: a pid alone is reused by the system, so a process is named by its pid and its
start time (from /proc), and a lock or state file that names a process that is gone, or a new process
under the old pid, is known to be stale."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: fields after it follow the last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True)
class ProcessId:
    pid: int
    started: int | None  # start_time(pid) when recorded

    @classmethod
    def current(cls) -> ProcessId:
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> ProcessId:
        return cls(pid, start_time(pid))

    @classmethod
    def from_dict(cls, data: object) -> ProcessId | None:
        if isinstance(data, dict) and isinstance(data.get("pid"), int):
            started = data.get("started")
            return cls(data["pid"], started if isinstance(started, int) else None)
        return None

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)

    def alive(self) -> bool:
        """Whether this very process still runs (same pid and the same start time)."""
        now = start_time(self.pid)
        return now is not None and (self.started is None or now == self.started)
