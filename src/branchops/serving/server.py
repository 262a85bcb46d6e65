"""The local model server: TensorFlow Serving's REST API over numbered SavedModel versions.

Run as ``python -m branchops.serving.server --model-name NAME --base-path DIR ...`` (the local
backend starts it detached). HTTP is Flask served by waitress (multi-threaded); this module only
maps TF Serving's URL scheme and JSON formats onto loaded SavedModels.

Slow and broken clients: waitress reads each request whole before a worker thread sees it, so a client
that never finishes its request holds a connection, not a thread. Connections are bounded
(:data:`CONNECTION_LIMIT`, far above what a few hundred hanging clients take) and dropped after
:data:`CHANNEL_TIMEOUT_S` without a byte, so they neither starve normal requests nor pile up.

Public REST surface (the same as TensorFlow Serving's, https://www.tensorflow.org/tfx/serving/api_rest):

* ``GET  /v1/models/NAME[/versions/N|/labels/L]``            model status
* ``GET  /v1/models/NAME[/versions/N|/labels/L]/metadata``   signature metadata
* ``POST /v1/models/NAME[/versions/N|/labels/L]:predict``    row (``instances``) or columnar (``inputs``)
* ``GET  /monitoring/prometheus/metrics``                    TF Serving's metrics, and branchops' per version
  (with ``--prediction-log``: the log's line counts and the last monitor check's gauges)
* errors as ``{"error": "..."}``, those waitress answers itself (413, 400, 431, 501) included; a request
  the server cannot use gets a 4xx, never a crash.

Admin surface (answered to loopback clients only; the local backend drives rollouts with it):
``GET /branchops/admin/health``, ``POST /branchops/admin/versions/N:load``,
``POST /branchops/admin/versions/N:retire``, ``GET|POST /branchops/admin/routing``.

With ``--prediction-log DIR`` a sample of the :predict requests answered 200 is logged there with their
answers (``prediction_log``; ``X-Request-ID`` is kept as the line's request id), for ``branchops monitor``.

The parts: ``server_codec`` (TF Serving's JSON formats and signatures), ``server_model`` (versions,
loading, label routing), ``server_metrics`` (Prometheus), ``prediction_log`` (the sampled request log),
and this module (the HTTP app and the process).
TensorFlow is imported only in this process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from branchops.serving import prediction_log
from branchops.serving.prediction_log import MONITOR_FILE, PredictionLog
from branchops.serving.server_codec import RequestError, parse_json, predict
from branchops.serving.server_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from branchops.serving.server_model import ModelServer

log = logging.getLogger("branchops.serving.server")

MAX_BODY_BYTES = 16 * 1024 * 1024
# waitress' connection handling (its "adjustments"). The default limit of 100 connections let about a
# hundred half-open connections stop the server accepting for minutes (the default channel timeout is
# 120 s, checked every 30 s).
CONNECTION_LIMIT = 1000
CHANNEL_TIMEOUT_S = 15  # without a byte either way; a finished request being computed is not idle
CLEANUP_INTERVAL_S = 5  # how often idle connections are looked for
FILES_BESIDES_CONNECTIONS = 256  # SavedModel files, log, listener, TensorFlow's own
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
MODELS_PREFIX = "/v1/models/"
MODEL_PATH_RE = re.compile(
    r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>/metadata|:predict|:classify|:regress)?$"
)

__all__ = ["MAX_BODY_BYTES", "ModelServer", "RequestError", "create_app", "main"]


def create_app(server: ModelServer, prediction_log: PredictionLog | None = None) -> Any:
    from flask import Flask, Response, request
    from werkzeug.exceptions import HTTPException
    from werkzeug.wrappers import Request as WerkzeugRequest

    app = Flask("branchops.serving")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    def error(status: int, message: str) -> Response:
        return Response(json.dumps({"error": message}), status=status, mimetype="application/json")

    def ok(payload: Any, status: int = 200) -> Response:
        return Response(json.dumps(payload, indent=1), status=status, mimetype="application/json")

    @app.errorhandler(RequestError)
    def _request_error(exc: RequestError) -> Response:
        return error(exc.status, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("internal error")
        return error(500, f"internal error: {type(exc).__name__}: {str(exc)[:300]}")

    @app.route("/v1/models/<path:rest>", methods=["GET", "POST"])
    def models_view(rest: str) -> Response:
        return models(request, rest)

    def models(request: Any, rest: str) -> Response:
        """TF Serving's model API; ``request`` is Flask's, or werkzeug's on the :predict fast path."""
        started = time.perf_counter()
        match = MODEL_PATH_RE.match(rest)
        version_label = "none"
        api = "predict" if request.method == "POST" else "status"
        try:
            if not match:
                raise RequestError(404, f"Malformed request: {request.method} /v1/models/{rest}")
            tail = match["tail"]
            api = {None: "status", "/metadata": "metadata"}.get(tail, (tail or ":")[1:])
            wants_post = tail in (":predict", ":classify", ":regress")
            if (request.method == "POST") != wants_post:
                raise RequestError(405, f"Malformed request: {request.method} /v1/models/{rest}")
            server.check_name(match["name"])
            version = None
            if match["version"] is not None:
                if not match["version"].isdigit():
                    raise RequestError(400, f"Failed to convert version: {match['version']} to numeric.")
                version = int(match["version"])
            label = match["label"]
            if api == "status":
                response = ok({"model_version_status": server.status_of(version, label)})
            elif api == "metadata":
                mv = server.resolve(version, label)
                version_label = str(mv.version)
                response = ok(
                    {
                        "model_spec": {
                            "name": server.model_name,
                            "signature_name": "",
                            "version": str(mv.version),
                        },
                        "metadata": {
                            "signature_def": {
                                "signature_def": {k: s.to_metadata() for k, s in mv.signatures.items()}
                            }
                        },
                    }
                )
            elif api == "predict":
                body = parse_json(request.get_data(cache=False))
                mv = server.resolve(version, label)
                version_label = str(mv.version)
                answer = predict(mv, body)
                response = ok(answer)
                if prediction_log is not None:
                    prediction_log.submit(mv, label, body, answer, request.headers.get("X-Request-ID"))
            else:
                raise RequestError(
                    400, f"{api} needs tf.Example signatures, which this server does not serve; use :predict"
                )
        except RequestError as exc:
            response = error(exc.status, exc.message)
        except HTTPException as exc:  # e.g. a body over MAX_CONTENT_LENGTH
            response = error(exc.code or 400, exc.description or exc.name)
        except Exception as exc:
            log.exception("internal error in %s", api)
            response = error(500, f"internal error: {type(exc).__name__}: {str(exc)[:300]}")
        model_name = match["name"] if match else ""
        server.metrics.observe(
            model_name, version_label, api, response.status_code, time.perf_counter() - started
        )
        return response

    @app.get("/monitoring/prometheus/metrics")
    def metrics() -> Response:
        return Response(server.metrics.render(), content_type=METRICS_CONTENT_TYPE)

    # -- admin (loopback only) ----------------------------------------------------------------
    def admin_only() -> None:
        if request.remote_addr not in LOOPBACK:
            raise RequestError(403, "the admin API answers loopback clients only")

    def admin_state() -> dict[str, Any]:
        return {
            "model": server.model_name,
            "base_path": str(server.base_path),
            "pid": os.getpid(),
            "ready": server.ready(),
            "routing": server.routing.labels(),
            "versions": {str(v): mv.status() for v, mv in sorted(server.versions().items())},
        }

    @app.get("/branchops/admin/health")
    def health() -> Response:
        admin_only()
        return ok(admin_state())

    @app.post("/branchops/admin/versions/<version>:<action>")
    def version_action(version: str, action: str) -> Response:
        admin_only()
        if not version.isdigit():
            raise RequestError(400, f"version must be a positive integer, got {version!r}")
        if action == "load":
            server.load(int(version))
            return ok(admin_state(), 202)
        if action == "retire":
            server.retire(int(version))
            return ok(admin_state())
        raise RequestError(404, f"unknown admin action {action!r} (load, retire)")

    @app.route("/branchops/admin/routing", methods=["GET", "POST"])
    def routing() -> Response:
        admin_only()
        if request.method == "POST":
            body = parse_json(request.get_data())
            # Labels only: TF Serving has no traffic weights (an unlabelled request gets the highest
            # version), so neither has this server.
            if not isinstance(body, dict) or set(body) - {"stable", "canary"}:
                raise RequestError(400, "expected {\"stable\": int|null, \"canary\": int|null}")
            stable, canary = body.get("stable"), body.get("canary")
            for key, v in (("stable", stable), ("canary", canary)):
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                    raise RequestError(400, f"'{key}' must be a version number or null")
            server.set_routing(stable, canary)
        return ok(admin_state())

    # :predict skips Flask's per-request machinery (application and request contexts, URL map, session,
    # response hooks): about 0.3 ms a request on 2 cores, of the 2 ms the REST layer may add over an
    # in-process call (issue 13). Only a POST the model route would take comes here, answered by the
    # same function; everything else, errors Flask answers itself included, goes through Flask.
    class PredictRequest(WerkzeugRequest):
        max_content_length = MAX_BODY_BYTES  # what Flask's MAX_CONTENT_LENGTH enforces on its route

    flask_wsgi_app = app.wsgi_app

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") == "POST":
            fast = PredictRequest(environ)
            rest = fast.path[len(MODELS_PREFIX) :] if fast.path.startswith(MODELS_PREFIX) else ""
            if MODEL_PATH_RE.match(rest):
                try:
                    response = models(fast, rest)
                except Exception as exc:  # as Flask's handler for the route would answer it
                    response = _unexpected(exc)
                return response(environ, start_response)
        return flask_wsgi_app(environ, start_response)

    app.wsgi_app = wsgi_app  # type: ignore[method-assign]
    return app


def _json_error_channel(max_body_bytes: int) -> type:
    """waitress' connection class, answering the errors waitress raises itself (413 body too large, 400
    bad request syntax, 431 headers too large, 501 unknown transfer coding) as TF Serving's JSON errors
    instead of waitress' plain text."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask
    from waitress.utilities import RequestEntityTooLarge

    class JsonErrorTask(ErrorTask):
        def execute(self) -> None:
            error = self.request.error
            message = (
                f"the request body is larger than {max_body_bytes} bytes"
                if isinstance(error, RequestEntityTooLarge)
                else f"{error.reason}: {error.body}"
            )
            body = json.dumps({"error": message}).encode()
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JsonErrorChannel(HTTPChannel):
        error_task_class = JsonErrorTask

    return JsonErrorChannel


def _connection_limit() -> int:
    """:data:`CONNECTION_LIMIT`, or fewer if this process may not open that many files; raises the soft
    limit on open files towards the hard one first (each connection is a file descriptor)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CONNECTION_LIMIT + FILES_BESIDES_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %s to %s: %s", soft, raised, exc)
    if soft == resource.RLIM_INFINITY:
        return CONNECTION_LIMIT
    return max(16, min(CONNECTION_LIMIT, soft - FILES_BESIDES_CONNECTIONS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m branchops.serving.server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-name", required=True)
    parser.add_argument(
        "--base-path", required=True, type=Path, help="holds the numbered SavedModel versions"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=8501, help="0 picks a free port (written to --ready-file)"
    )
    parser.add_argument("--state-file", type=Path, help="routing state kept across restarts")
    parser.add_argument(
        "--ready-file", type=Path, help="written with pid, start time and port once the port is bound"
    )
    parser.add_argument("--threads", type=int, default=8)
    prediction_log.add_arguments(parser, "Without it nothing is logged.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from waitress import create_server
    from waitress.server import BaseWSGIServer

    from branchops.processes import ProcessId

    model_server = ModelServer(args.model_name, args.base_path, args.state_file)
    predictions = prediction_log.from_arguments(args, args.model_name, model_server.metrics.registry)
    if predictions is not None:
        model_server.metrics.watch_monitor_file(args.prediction_log / MONITOR_FILE)
    app = create_app(model_server, predictions)
    sockets: dict[int, Any] = {}
    # waitress refuses a body of max_request_body_size bytes or more, Flask one over MAX_CONTENT_LENGTH:
    # both let a body of exactly MAX_BODY_BYTES through.
    http = create_server(
        app,
        map=sockets,
        host=args.host,
        port=args.port,
        threads=args.threads,
        max_request_body_size=MAX_BODY_BYTES + 1,
        connection_limit=_connection_limit(),
        channel_timeout=CHANNEL_TIMEOUT_S,
        cleanup_interval=CLEANUP_INTERVAL_S,
        asyncore_use_poll=True,  # select() cannot watch a descriptor numbered 1024 or more
        ident="branchops-serving",
    )
    error_channel = _json_error_channel(MAX_BODY_BYTES)
    for listener in sockets.values():  # nothing is accepted before http.run()
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = error_channel
    port = http.effective_port  # type: ignore[union-attr]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    model_server.restore()
    log.info("serving model %s from %s on http://%s:%s", args.model_name, args.base_path, args.host, port)
    ready = {**ProcessId.current().to_dict(), "host": args.host, "port": port}
    return prediction_log.serve_until_terminated(http, args.ready_file, ready, predictions)


if __name__ == "__main__":
    sys.exit(main())
