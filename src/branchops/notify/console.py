"""Console notifications: one line on stderr per event, through logging."""

from __future__ import annotations

import logging

from branchops.notify.base import Event

log = logging.getLogger("branchops.notify")


class ConsoleChannel:
    def send(self, event: Event) -> None:
        level = logging.ERROR if event.kind in ("failed", "refused") else logging.INFO
        log.log(level, "%s — %s", event.headline(), event.message)
