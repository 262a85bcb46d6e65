"""Slack- or Teams-style incoming webhooks: JSON POST with a timeout, retried on errors and 5xx/429."""

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
}


class _Retryable(Exception):
    pass


def payload(event: Event, fmt: str) -> dict:
    if fmt == "teams":
        return {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "themeColor": COLOURS[event.kind],
            "summary": event.headline(),
            "title": event.headline(),
            "text": event.message,
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
