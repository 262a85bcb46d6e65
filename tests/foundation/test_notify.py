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
    assert received[1]["@type"] == "MessageCard" and received[1]["title"].endswith("failed")


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
