"""Slack- or Teams-style incoming webhooks: JSON POST with a timeout, retried on errors and 5xx/429.

Slack gets its ``text`` and ``attachments``; Teams an Adaptive Card in a message envelope, which is what
a Teams Workflows webhook posts to a channel.
"""

from __future__ import annotations

import requests
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from branchops.errors import ExternalError
from branchops.notify.base import Event

COLOURS = {
    "started": "439FE0",
    "succeeded": "2EB67D",
    "failed": "E01E5A",
    "refused": "ECB22E",
    "skipped": "999999",
    "proposed": "439FE0",
}


class _Retryable(Exception):
    pass


# The colours an Adaptive Card's TextBlock can take (named, the host picks the shade).
CARD_COLOURS = {
    "started": "accent",
    "succeeded": "good",
    "failed": "attention",
    "refused": "warning",
    "skipped": "default",
    "proposed": "accent",
}
# Teams renders Adaptive Cards up to 1.5; 1.4 is what Workflows' "post card" action documents and needs
# nothing newer here.
CARD_VERSION = "1.4"


def adaptive_card(event: Event) -> dict:
    """The event as an Adaptive Card: the headline in the outcome's colour, the message, then the facts."""
    facts = [
        ("Stage", event.stage),
        ("Branch", event.branch),
        ("Commit", event.commit[:12]),
        ("Merge request", f"!{event.merge_request}" if event.merge_request else None),
        ("Run", event.run_id),
    ]
    return {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "fallbackText": f"{event.headline()}\n{event.message}",
        "body": [
            {
                "type": "TextBlock",
                "text": event.headline(),
                "weight": "bolder",
                "size": "medium",
                "color": CARD_COLOURS[event.kind],
                "wrap": True,
            },
            {"type": "TextBlock", "text": event.message, "wrap": True},
            {
                "type": "FactSet",
                "facts": [{"title": title, "value": value} for title, value in facts if value],
            },
        ],
    }


def payload(event: Event, fmt: str) -> dict:
    if fmt == "teams":
        # Teams' webhooks (a Workflows / Power Automate "when a Teams webhook request is received" flow)
        # take Adaptive Cards only, in a message envelope; the MessageCard of the retired Office 365
        # connectors is not accepted there.
        return {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": adaptive_card(event),
                }
            ],
        }
    return {
        "text": f"{event.headline()}\n{event.message}",
        "attachments": [{"color": "#" + COLOURS[event.kind], "text": event.message}],
    }


class WebhookChannel:
    def __init__(self, spec):
        self.spec = spec

    def send(self, event: Event) -> None:
        url = self.spec.url.resolve()
        if not url:
            raise ExternalError(f"webhook URL not set ({self.spec.url.describe()})")

        @retry(
            stop=stop_after_attempt(self.spec.retries + 1),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        def post() -> None:
            try:
                response = requests.post(
                    url, json=payload(event, self.spec.format), timeout=self.spec.timeout_s
                )
            except requests.RequestException as exc:
                raise _Retryable(type(exc).__name__) from None  # the message may carry the secret URL
            if response.status_code == 429 or response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                raise ExternalError(f"webhook refused the notification: HTTP {response.status_code}")

        try:
            post()
        except _Retryable as exc:
            raise ExternalError(
                f"webhook unreachable after {self.spec.retries + 1} attempts: {exc}"
            ) from None
