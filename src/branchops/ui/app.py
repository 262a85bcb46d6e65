"""The dashboard's web application (Flask) and the server that runs it (waitress).

Flask and waitress are the ones the local model server already uses (the ``serve`` extra): one web stack
in the project, both maintained, waitress a production WSGI server with no C extension. Every route is a
GET: the dashboard never changes a repository.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from flask import Flask, Response, abort, g, render_template, request

from branchops.errors import BadArgument, BranchopsError, NotFound
from branchops.ui.views import Dashboard

log = logging.getLogger("branchops.ui")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470


def create_app(repo_path: str) -> Flask:
    app = Flask(__name__)  # templates/ and static/ beside this module, shipped as package data
    shared = Dashboard(repo_path)

    class CurrentDashboard:
        """The request's own view of the repository (``Dashboard.fresh``), made on first use."""

        def __getattr__(self, name: str) -> Any:
            if "dashboard" not in g:
                g.dashboard = shared.fresh()
            return getattr(g.dashboard, name)

    dashboard = CurrentDashboard()

    def page_number() -> int:
        value = request.args.get("page", "1")
        return int(value) if value.isdigit() else 1

    @app.get("/")
    def overview() -> str:
        return render_template("overview.html", **dashboard.overview())

    @app.get("/stages/<stage>")
    def stage(stage: str) -> str:
        return render_template("stage.html", **dashboard.stage_page(stage, page_number()))

    @app.get("/runs/<stage>/<run_id>")
    def run(stage: str, run_id: str) -> str:
        return render_template("run.html", run=dashboard.run_page(stage, run_id))

    @app.get("/runs/<stage>/<run_id>/artifacts/<path:artifact>")
    def plot(stage: str, run_id: str, artifact: str) -> Response:
        response = Response(dashboard.plot(stage, run_id, artifact), mimetype="image/png")
        # a recorded artifact never changes: its record folder is append-only
        response.cache_control.max_age = 86400
        return response

    @app.get("/models")
    def models() -> str:
        return render_template("models.html", **dashboard.models(page_number()))

    @app.get("/models/<key>")
    def model(key: str) -> str:
        return render_template("model.html", key=key, **dashboard.model_page(key))

    @app.get("/compare")
    def compare() -> str:
        run_ids = request.args.getlist("run")
        if len(set(run_ids)) < 2:
            abort(400, "select at least two training runs to compare")
        return render_template("compare.html", **dashboard.compare(run_ids))

    @app.get("/compare/curves.png")
    def compare_curves() -> Response:
        run_ids = request.args.getlist("run")
        if len(set(run_ids)) != 2:
            abort(400, "overlaid curves compare exactly two training runs")
        return Response(dashboard.compare_curves(run_ids), mimetype="image/png")

    @app.get("/monitoring")
    def monitoring() -> str:
        return render_template("monitoring.html", **dashboard.monitoring_page(page_number()))

    @app.get("/monitoring/<run_id>")
    def monitor_check(run_id: str) -> str:
        return render_template("check.html", **dashboard.monitor_check(run_id))

    @app.get("/monitoring/<run_id>/artifacts/<path:artifact>")
    def monitor_plot(run_id: str, artifact: str) -> Response:
        response = Response(dashboard.monitor_plot(run_id, artifact), mimetype="image/png")
        response.cache_control.max_age = 86400  # a check's record folder is append-only, as a run's
        return response

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return app.send_static_file("favicon.svg")

    @app.errorhandler(NotFound)
    def not_found(error: NotFound) -> tuple[str, int]:
        return render_template("error.html", message=str(error)), 404

    @app.errorhandler(BadArgument)
    def bad_request(error: BadArgument) -> tuple[str, int]:  # e.g. a run id prefix that several runs share
        return render_template("error.html", message=str(error)), 400

    @app.errorhandler(BranchopsError)
    def failed(error: BranchopsError) -> tuple[str, int]:
        return render_template("error.html", message=str(error)), 500

    @app.template_filter("seconds")
    def seconds(value: Any) -> str:
        return f"{value:.1f} s" if isinstance(value, (int, float)) else "—"

    @app.template_filter("pvalue")
    def pvalue(value: Any) -> str:  # a KS p-value is often far below what 4 significant digits show as 0
        return "—" if value is None else f"{value:.2g}" if value < 0.01 else f"{value:.3f}"

    @app.template_filter("cell")
    def cell(value: Any) -> str:
        if value is None:
            return "—"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return app


def serve(
    repo_path: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard until interrupted; ``on_started`` gets the URL once the port is bound."""
    from waitress.server import create_server

    app = create_app(repo_path)
    # read the configuration now, so that a repository without one fails here and not on the first page
    Dashboard(repo_path).config
    try:
        server = create_server(app, host=host, port=port, threads=4)
    except OSError as exc:  # the port is taken, or the address is not one of this machine's
        raise BadArgument(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound_host, bound_port = server.getsockname()[:2]
    url = f"http://{'[' + bound_host + ']' if ':' in bound_host else bound_host}:{bound_port}/"
    log.info("dashboard at %s (read-only; Ctrl-C stops it)", url)
    if on_started:
        on_started(url)
    try:
        server.run()
    finally:
        server.close()
