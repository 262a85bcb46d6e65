"""A registry stand-in at the HTTP boundary, holding the manifests a test pushed under the tags it chose.

It answers what the OCI distribution spec says a registry answers to a manifest lookup
(``HEAD``/``GET /v2/<name>/manifests/<reference>``): ``200`` with ``Docker-Content-Digest`` (the sha256
of the manifest bytes), ``Content-Type`` and ``Content-Length`` for a known tag; ``404`` with a
``MANIFEST_UNKNOWN`` error for any other name or tag, and, as distribution does, for an OCI manifest
asked for without the OCI media type in ``Accept``. The digests are computed here from the test's
manifest bytes, never by the product, so a test can expect them independently.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def oci_manifest(seed: str) -> bytes:
    """A minimal OCI image manifest whose config blob digest (and so its own digest) depends on ``seed``."""
    config_digest = "sha256:" + hashlib.sha256(seed.encode()).hexdigest()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(seed),
            },
            "layers": [],
        },
        sort_keys=True,
    ).encode()


class FakeRegistry:
    """``with FakeRegistry() as registry: registry.push("djia/train", "abc", manifest)``"""

    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], bytes] = {}  # (repository, tag) -> manifest bytes
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_port}"

    def push(self, repository: str, tag: str, manifest: bytes) -> str:
        """Store ``manifest`` as ``repository:tag``; its digest, as the registry reports it."""
        self.manifests[(repository, tag)] = manifest
        return "sha256:" + hashlib.sha256(manifest).hexdigest()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _handler_for(registry: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(
            self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _unknown(self, message: str) -> None:
            error = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": message, "detail": None}]}
            self._answer(404, "application/json", json.dumps(error).encode())

        def _handle(self) -> None:
            registry.requests.append((self.command, self.path))
            if self.path == "/v2/":
                return self._answer(200, "application/json", b"{}")
            repository, marker, reference = self.path.removeprefix("/v2/").rpartition("/manifests/")
            manifest = registry.manifests.get((repository, reference)) if marker else None
            if manifest is None:
                return self._unknown("manifest unknown")
            if OCI_MANIFEST not in self.headers.get("Accept", ""):
                return self._unknown("OCI manifest found, but accept header does not support OCI manifests")
            digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
            return self._answer(200, OCI_MANIFEST, manifest, {"Docker-Content-Digest": digest})

        do_GET = do_HEAD = _handle

    return Handler
