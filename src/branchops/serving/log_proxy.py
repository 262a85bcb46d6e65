"""The logging proxy: a sidecar in front of TensorFlow Serving that logs its :predict traffic.

TensorFlow Serving's own request logging cannot be used with the open-source model server (no
LogCollector is registered there, and the server it builds has no request-logger creator: a model config
with ``logging_config`` is refused; docs/monitoring.md gives the files), so every serving pod runs this
process beside TF Serving and the Service's REST port goes to it::

    python -m branchops.serving.log_proxy --upstream http://127.0.0.1:8501 --port 8502 \\
        --model-name djia --prediction-log /var/log/branchops/predictions

* every request is forwarded unchanged to ``--upstream`` (method, path, query, body, end-to-end
  headers) and its answer comes back unchanged (status, body, end-to-end headers); only hop-by-hop
  headers (RFC 9110 §7.6.1) are the proxy's own. If TF Serving cannot be reached the answer is a 503
  in TF Serving's error format, as when nothing listens yet;
* a :predict of ``--model-name`` answered 200 is, at ``--log-sample-rate``, handed with its answer to
  the prediction log's writer (:mod:`branchops.serving.prediction_log`, the same writer and line format
  as the local server). That happens once the answer has been handed to the server (Flask's
  ``call_on_close``), so logging adds no wait to the client's request: the version that answered and
  the signature's input and output names are looked up from TF Serving's status and metadata then
  (cached; TF Serving's REST :predict answer does not name its version);
* ``GET /monitoring/prometheus/metrics`` answers TF Serving's metrics followed by the proxy's own: the
  prediction log's line counts and the last ``branchops monitor`` check's gauges, read from
  ``monitor.json`` in the log folder (:class:`branchops.serving.server_metrics.MonitorGauges`);
* ``GET /branchops/log-proxy/health`` answers the proxy's own readiness (the log folder is writable),
  without asking TF Serving, which has probes of its own.

Nothing but the request's inputs, the answer's outputs and ``X-Request-ID`` is logged: no other header,
no credentials. HTTP is Flask served by waitress; TF Serving is reached with one pooled requests session.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from branchops.serving import prediction_log
from branchops.serving.prediction_log import MONITOR_FILE, PredictionLog

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("branchops.serving.log_proxy")

METRICS_PATH = "/monitoring/prometheus/metrics"
HEALTH_PATH = "/branchops/log-proxy/health"
DEFAULT_SIGNATURE = "serving_default"
# As large as a client may send TF Serving: the proxy must not refuse what TF Serving would take.
MAX_BODY_BYTES = 64 * 1024 * 1024
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 300.0  # a large batch on a busy server; TF Serving has no REST deadline of its own
STATUS_CACHE_S = 1.0  # which version a label (or no label) names: TF Serving re-reads its config every 15 s
# Connection-level headers (RFC 9110 §7.6.1) are each hop's own; Host is the upstream's; the length and
# framing of a body are set again by whoever sends it.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]  # forwarded whatever they are
PREDICT_PATH_RE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?:predict$"
)


@dataclass(frozen=True)
class _Signature:
    inputs: list[str]
    outputs: list[str]


@dataclass(frozen=True)
class _Served:
    """What the prediction log's writer reads of the version that answered (as of a local ModelVersion)."""

    version: int
    signatures: dict[str, _Signature]


@dataclass
class Upstream:
    """TF Serving beside the proxy: the forwarding session, and the cached look-ups logging needs."""

    url: str
    model: str
    threads: int = 16
    session: requests.Session = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _versions: dict[str | None, tuple[float, int]] = field(default_factory=dict, init=False)
    _signatures: dict[int, dict[str, _Signature]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.session = requests.Session()
        # One pooled connection per server thread: no request waits for a connection, none is reopened.
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=self.threads)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _get(self, path: str) -> Any:
        response = self.session.get(self.url + path, timeout=(CONNECT_TIMEOUT_S, 30))
        response.raise_for_status()
        return response.json()

    def version_of(self, label: str | None) -> int:
        """The version TF Serving answers ``label`` (None: a request naming neither version nor label,
        which TF Serving gives its highest AVAILABLE version)."""
        now = time.monotonic()
        with self._lock:
            cached = self._versions.get(label)
        if cached is not None and now - cached[0] < STATUS_CACHE_S:
            return cached[1]
        path = f"/v1/models/{self.model}" + (f"/labels/{label}" if label is not None else "")
        available = [
            int(s["version"])
            for s in self._get(path).get("model_version_status", [])
            if s.get("state") == "AVAILABLE"
        ]
        if not available:
            raise LookupError(f"TF Serving reports no AVAILABLE version at {path}")
        version = max(available)
        with self._lock:
            self._versions[label] = (now, version)
        return version

    def served(self, version: int) -> _Served:
        """The version's signatures' input and output names, from TF Serving's metadata (a version's
        signatures never change, so they are asked for once)."""
        with self._lock:
            signatures = self._signatures.get(version)
        if signatures is None:
            document = self._get(f"/v1/models/{self.model}/versions/{version}/metadata")
            defs = document.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
            signatures = {
                key: _Signature(list(sig.get("inputs", {})), list(sig.get("outputs", {})))
                for key, sig in defs.items()
            }
            with self._lock:
                self._signatures[version] = signatures
        return _Served(version, signatures)


def _forwarded_headers(headers: Any) -> dict[str, str]:
    """End-to-end headers only; a header the Connection header names is hop-by-hop too."""
    named = {h.strip().lower() for h in headers.get("Connection", "").split(",") if h.strip()}
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in named}


def create_app(
    upstream: Upstream,
    prediction_log: PredictionLog | None = None,
    sample_rate: float = 1.0,
    registry: CollectorRegistry | None = None,
) -> Any:
    """The proxy's WSGI app; ``registry`` holds the metrics appended to TF Serving's."""
    from flask import Flask, Response, request
    from prometheus_client import generate_latest

    app = Flask("branchops.serving.log_proxy")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    draw = random.Random(int.from_bytes(os.urandom(8), "big"))  # each pod draws its own sample
    folder = prediction_log.folder if prediction_log is not None else None

    def error(status: int, message: str) -> Response:
        return Response(json.dumps({"error": message}), status=status, mimetype="application/json")

    def log_later(path: str, body: bytes, answer: bytes, request_id: str | None) -> None:
        """Hand a :predict answered 200 to the writer: after the answer went out, never failing it."""
        assert prediction_log is not None
        match = PREDICT_PATH_RE.match(path)
        if match is None or match["name"] != upstream.model:
            return
        if sample_rate < 1 and draw.random() >= sample_rate:
            return
        try:
            parsed_body, parsed_answer = json.loads(body), json.loads(answer)
            label = match["label"]
            version = int(match["version"]) if match["version"] else upstream.version_of(label)
            served = upstream.served(version)
            signature = parsed_body.get("signature_name") or DEFAULT_SIGNATURE
            if signature not in served.signatures:
                raise LookupError(f"version {version} has no signature {signature!r}")
            # The writer samples again: it is given every request the proxy drew.
            prediction_log.submit(served, label, parsed_body, parsed_answer, request_id)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - the client has its answer; a line is lost, said once
            log.warning("could not log a :predict answered 200 (request id %s): %s", request_id, exc)

    @app.get(HEALTH_PATH)
    def health() -> Response:
        if folder is not None and not os.access(folder, os.W_OK):
            return error(503, f"the prediction log folder {folder} is not writable")
        return Response(json.dumps({"status": "ok"}), mimetype="application/json")

    @app.route("/", defaults={"path": ""}, methods=METHODS)
    @app.route("/<path:path>", methods=METHODS)
    def forward(path: str) -> Response:
        body = request.get_data(cache=False)
        # The target as the client wrote it (percent-encoding and query untouched), on TF Serving.
        target = upstream.url + request.environ.get("REQUEST_URI", request.full_path.rstrip("?"))
        try:
            answer = upstream.session.request(
                request.method,
                target,
                data=body,
                headers=_forwarded_headers(request.headers),
                timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
                allow_redirects=False,
                stream=True,
            )
            # The bytes as TF Serving sent them (no decoding of a Content-Encoding it chose).
            content = answer.raw.read(decode_content=False)
        except requests.RequestException as exc:
            return error(503, f"TensorFlow Serving at {upstream.url} cannot be reached: {exc}")
        # TF Serving's Server header is kept (waitress then adds a Via naming the proxy).
        headers = [(k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP]
        if (
            registry is not None
            and request.path == METRICS_PATH
            and request.method == "GET"
            and answer.status_code == 200
        ):
            content = content.rstrip(b"\n") + b"\n" + generate_latest(registry)
        response = Response(content, status=answer.status_code, headers=headers)
        if "content-type" not in answer.headers:
            del response.headers["Content-Type"]  # Flask's default; TF Serving sent none
        if (
            prediction_log is not None
            and request.method == "POST"
            and answer.status_code == 200
            and request.path.endswith(":predict")
        ):
            # Read now: the request context is gone when the answer is closed.
            path, request_id = request.path, request.headers.get("X-Request-ID")
            response.call_on_close(lambda: log_later(path, body, content, request_id))
        return response

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m branchops.serving.log_proxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--upstream", required=True, help="TF Serving's REST API, e.g. http://127.0.0.1:8501")
    parser.add_argument("--model-name", required=True, help="the model whose :predict requests are logged")
    parser.add_argument("--host", default="0.0.0.0", help="the address to listen on (a pod's every address)")
    parser.add_argument(
        "--port", type=int, default=8502, help="0 picks a free port (written to --ready-file)"
    )
    parser.add_argument("--ready-file", type=Path, help="written with pid and port once the port is bound")
    parser.add_argument("--threads", type=prediction_log.at_least_one, default=16)
    prediction_log.add_arguments(parser, "Without it the proxy only forwards.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from prometheus_client import CollectorRegistry, disable_created_metrics
    from waitress import create_server

    from branchops.serving.server_metrics import MonitorGauges

    disable_created_metrics()
    registry = CollectorRegistry(auto_describe=False)
    # the proxy draws the sample before it looks anything up: its log writes what it is handed
    predictions = prediction_log.from_arguments(args, args.model_name, registry, sample_rate=1.0)
    if predictions is not None:
        args.prediction_log.mkdir(parents=True, exist_ok=True)  # what the health check looks at
        registry.register(MonitorGauges(args.prediction_log / MONITOR_FILE))  # type: ignore[arg-type]
    upstream = Upstream(args.upstream, args.model_name, threads=args.threads)
    app = create_app(upstream, predictions, args.log_sample_rate, registry)
    http = create_server(
        app,
        host=args.host,
        port=args.port,
        threads=args.threads,
        max_request_body_size=MAX_BODY_BYTES + 1,
        asyncore_use_poll=True,
        ident="branchops-log-proxy",
    )
    port = http.effective_port  # type: ignore[union-attr]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("forwarding http://%s:%s to %s", args.host, port, args.upstream)
    ready = {"pid": os.getpid(), "host": args.host, "port": port}
    return prediction_log.serve_until_terminated(http, args.ready_file, ready, predictions)


if __name__ == "__main__":
    sys.exit(main())
