"""Registry client behaviour that docker-registry cannot show here, against a fake at the HTTP boundary.

The fake follows the distribution specs: the token-auth handshake (``401`` + ``WWW-Authenticate: Bearer
realm,service,scope``; ``GET realm?service&scope`` with basic credentials answers ``{"token": ...}``), a
registry that omits ``Docker-Content-Digest`` (the digest is then the sha256 of the manifest bytes),
and transient ``503`` answers. The real registry is exercised in test_registry.py and test_build_real.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from branchops.config import RegistrySection, SecretRef
from branchops.errors import ExternalError
from branchops.images.registry import MANIFEST_TYPES, RegistryClient

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPES[0], "layers": []}).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
TOKEN = "pull-token-123"


class FakeRegistry(ThreadingHTTPServer):
    send_digest_header = True
    failures_before_success = 0
    requests_seen: list[tuple[str, str, str]]


class Handler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        self.server.requests_seen.append((self.command, self.path, self.headers.get("Authorization", "")))
        host = f"127.0.0.1:{self.server.server_port}"
        if self.path.startswith("/token"):
            expected = "Basic " + base64.b64encode(b"bot:hunter22").decode()
            if self.headers.get("Authorization") != expected:
                return self._answer(401, {})
            if "scope=repository%3Ateam%2Ftrain%3Apull" not in self.path or "service=fake" not in self.path:
                return self._answer(400, {})
            return self._answer(
                200, {"Content-Type": "application/json"}, json.dumps({"token": TOKEN}).encode()
            )
        if self.server.failures_before_success > 0:
            self.server.failures_before_success -= 1
            return self._answer(503, {})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            challenge = (
                f'Bearer realm="http://{host}/token",service="fake",scope="repository:team/train:pull"'
            )
            return self._answer(401, {"WWW-Authenticate": challenge})
        accepted = self.headers.get("Accept", "")
        if self.path != "/v2/team/train/manifests/abc" or MANIFEST_TYPES[0] not in accepted:
            return self._answer(404, {})
        headers = {"Content-Type": MANIFEST_TYPES[0]}
        if self.server.send_digest_header:
            headers["Docker-Content-Digest"] = DIGEST
        return self._answer(200, headers, MANIFEST)

    do_GET = do_HEAD = _handle


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry(("127.0.0.1", 0), Handler)
    server.requests_seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def client_for(fake: FakeRegistry, monkeypatch, password: str = "hunter22") -> RegistryClient:
    monkeypatch.setenv("FAKE_REGISTRY_PASSWORD", password)
    return RegistryClient(
        RegistrySection(
            url=f"127.0.0.1:{fake.server_port}/team",
            insecure=True,
            username="bot",
            password=SecretRef(env="FAKE_REGISTRY_PASSWORD"),
        )
    )


def test_bearer_token_handshake(fake, monkeypatch):
    client = client_for(fake, monkeypatch)
    assert client.manifest_digest("train", "abc") == DIGEST
    assert client.manifest_digest("train", "abc") == DIGEST  # the token is reused
    token_requests = [r for r in fake.requests_seen if r[1].startswith("/token")]
    assert len(token_requests) == 1
    assert fake.requests_seen[-1] == ("HEAD", "/v2/team/train/manifests/abc", f"Bearer {TOKEN}")


def test_token_endpoint_refusing_the_credentials_is_named(fake, monkeypatch):
    client = client_for(fake, monkeypatch, password="wrong")
    with pytest.raises(ExternalError, match="refused the credentials .*registry.username"):
        client.manifest_digest("train", "abc")


def test_digest_from_the_manifest_bytes_when_the_header_is_missing(fake, monkeypatch):
    fake.send_digest_header = False
    assert client_for(fake, monkeypatch).manifest_digest("train", "abc") == DIGEST
    assert [r[0] for r in fake.requests_seen if r[1].startswith("/v2/")][-2:] == ["HEAD", "GET"]


def test_transient_failures_are_retried(fake, monkeypatch):
    fake.failures_before_success = 2
    assert client_for(fake, monkeypatch).manifest_digest("train", "abc") == DIGEST


def test_a_registry_failing_every_time_is_an_external_error(fake, monkeypatch):
    fake.failures_before_success = 100
    with pytest.raises(ExternalError, match=r"answered HTTP 503"):
        client_for(fake, monkeypatch).manifest_digest("train", "abc")
