"""Notifications on the forge itself: a commit status on the built commit, a comment on its merge request."""

from __future__ import annotations

from branchops.notify.base import Event

STATUS = {"started": "pending", "succeeded": "success", "failed": "failure", "refused": "error"}


class ForgeChannel:
    def __init__(self, forge, spec, context: str):
        self.forge, self.spec, self.context = forge, spec, context

    def send(self, event: Event) -> None:
        state = STATUS.get(event.kind)
        if self.spec.commit_status and state:
            self.forge.set_commit_status(
                event.commit, state, event.message[:140], f"{self.context}/{event.stage}"
            )
        if self.spec.comment and event.merge_request and event.kind in ("succeeded", "failed", "refused"):
            self.forge.comment(event.merge_request, f"**{event.headline()}**\n\n{event.message}")
