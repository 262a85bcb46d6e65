"""Notifications appended as JSON lines to a log file under the local state folder."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from branchops.notify.base import Event
from branchops.secrets import mask


class LogFileChannel:
    def __init__(self, state_dir: Path, path: str):
        relative = Path(path)
        # paths in config are relative to the repository; ".branchops/x" lives in the state folder
        self.path = relative if relative.is_absolute() else Path(state_dir).parent / relative
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def send(self, event: Event) -> None:
        line = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **asdict(event)}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(mask(json.dumps(line, default=str)) + "\n")
