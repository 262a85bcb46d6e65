"""The notifier's interface: the event a stage sends, a channel that delivers it, and the fan-out.

A failing channel never fails the stage: its error is logged and the other channels still get the event.
The factory that picks the channels from config is :func:`branchops.notify.make_notifier`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, Protocol

log = logging.getLogger(__name__)

# "proposed": branchops proposes a change for review (the retraining merge request of `branchops monitor`)
EventKind = Literal["started", "succeeded", "failed", "refused", "skipped", "proposed"]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    stage: str
    branch: str
    commit: str
    message: str
    run_id: str | None = None
    merge_request: int | None = None
    details: dict = field(default_factory=dict)

    def headline(self) -> str:
        mr = f" (!{self.merge_request})" if self.merge_request else ""
        return f"[branchops] {self.stage} on {self.branch} @ {self.commit[:12]}{mr}: {self.kind}"


class Channel(Protocol):
    def send(self, event: Event) -> None: ...


class Notifier:
    """Fans an event out to every configured channel."""

    def __init__(self, channels: list[Channel]):
        self.channels = channels

    def notify(self, event: Event) -> None:
        for channel in self.channels:
            try:
                channel.send(event)
            except Exception as exc:  # a notification channel must never take a stage down
                log.warning("notification via %s failed: %s", type(channel).__name__, exc)
