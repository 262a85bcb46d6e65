"""The notifier port: every stage start, end, failure and refusal reaches the configured channels.

A failing channel never fails the stage: its error is logged and the other channels still get the event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, Protocol

log = logging.getLogger(__name__)

EventKind = Literal["started", "succeeded", "failed", "refused", "skipped"]


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


def make_notifier(config, state_dir, forge=None) -> Notifier:
    channels: list[Channel] = []
    for spec in config.notifications:
        if spec.kind == "console":
            from branchops.notify.console import ConsoleChannel
            channels.append(ConsoleChannel())
        elif spec.kind == "log_file":
            from branchops.notify.log_file import LogFileChannel
            channels.append(LogFileChannel(state_dir, spec.path))
        elif spec.kind == "webhook":
            from branchops.notify.webhook import WebhookChannel
            channels.append(WebhookChannel(spec))
        elif spec.kind == "forge" and forge is not None:
            from branchops.notify.forge import ForgeChannel
            channels.append(ForgeChannel(forge, spec, config.forge.github.status_context
                                         if config.forge.github else "branchops"))
    return Notifier(channels)
