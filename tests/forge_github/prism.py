"""Prism serving GitHub's official REST description (npm ``@octokit/openapi``), for contract tests.

Every GitHub call branchops makes is sent to Prism, which validates the request against
GitHub's OpenAPI description and answers with the description's examples. A request that does not match
the real API (unknown path, wrong method, missing or mistyped parameter or body field) is rejected by
Prism (400/422/404/405) and reported in its ``sl-violations`` header.

How it is wired:
- ``.ci/setup.d/prism.sh`` installs ``@stoplight/prism-cli`` and ``@octokit/openapi`` under
  ``/opt/branchops-ci/prism`` (``BRANCHOPS_PRISM_HOME`` overrides); without them the tests skip.
- The description is cut down to the operations in :data:`GITHUB_OPERATIONS` (plus every component they
  reference): Prism needs ~13 s and ~300 MB to load the whole 13 MB description on these machines, and
  ~1-2 s for the cut. A call to an operation not listed gets Prism's 404, so a new call cannot slip past
  unverified: add it to the list.
- ``https://api.github.com`` in the description (servers and example URLs, which PyGithub follows, e.g. a
  pull request's ``url``) is rewritten to the local address.
- A small recording proxy sits in front of Prism: it keeps every exchange with Prism's violations, can
  ask Prism for a documented non-2xx answer (``Prefer: code=404``) to exercise e.g. "branch missing",
  and drops the description's placeholder ``Link`` header (``/resource?page=2``), which is the same for
  every list operation and would send a client off the operation it paginates.
- GitHub marks some path parameters ``x-multi-segment`` (the contents API's ``{path}``: ``.github/CODEOWNERS``
  is one parameter). Prism does not know that extension and matches one segment per parameter, so the proxy
  percent-encodes the ``/`` inside such a parameter before forwarding; Prism decodes it and validates the
  value as the description says. Exchanges keep the path as the client sent it.
- PyGithub sends ``Accept: */*``, which GitHub answers with its JSON media type. Prism would pick the first
  media type the description lists instead (for the contents API ``application/vnd.github.object``, which
  it cannot serialise), so the proxy asks Prism for ``application/json`` in that case.

Reuse (e.g. bootstrap tests): ``from tests.forge_github.prism import prism_github`` in a conftest, or
start :class:`PrismGitHub` yourself with ``extra_operations``.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlsplit

import pytest

PRISM_HOME = Path(os.environ.get("BRANCHOPS_PRISM_HOME", "/opt/branchops-ci/prism"))
PRISM_BIN = PRISM_HOME / "node_modules" / ".bin" / "prism"
GITHUB_SPEC = PRISM_HOME / "node_modules" / "@octokit" / "openapi" / "generated" / "api.github.com.json"
SPEC_SERVER = "https://api.github.com"

# Every GitHub REST operation branchops.forge.github and .github_admin call: path template -> methods.
GITHUB_OPERATIONS: dict[str, tuple[str, ...]] = {
    "/repos/{owner}/{repo}": ("get",),
    "/repos/{owner}/{repo}/pulls": ("get", "post"),
    "/repos/{owner}/{repo}/pulls/{pull_number}": ("get", "patch"),
    "/repos/{owner}/{repo}/pulls/{pull_number}/reviews": ("get",),
    "/repos/{owner}/{repo}/issues/{issue_number}/comments": ("post",),
    "/repos/{owner}/{repo}/statuses/{sha}": ("post",),
    "/repos/{owner}/{repo}/branches/{branch}": ("get",),
    "/repos/{owner}/{repo}/branches/{branch}/protection": ("get", "delete"),
    "/repos/{owner}/{repo}/rulesets": ("get", "post"),
    "/repos/{owner}/{repo}/rulesets/{ruleset_id}": ("put",),
    "/repos/{owner}/{repo}/git/refs": ("post",),
    "/repos/{owner}/{repo}/contents/{path}": ("get", "put"),
    "/repos/{owner}/{repo}/hooks": ("get", "post"),
    "/repos/{owner}/{repo}/hooks/{hook_id}": ("patch",),
    "/orgs/{org}/teams/{team_slug}/members": ("get",),
    "/users/{username}": ("get",),
    "/apps/{app_slug}": ("get",),
}

STARTUP_TIMEOUT_S = 180.0


def prism_unavailable_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (run .ci/setup.d/prism.sh)"
    if not PRISM_BIN.exists():
        return f"Prism is not installed at {PRISM_BIN} (run .ci/setup.d/prism.sh)"
    if not GITHUB_SPEC.exists():
        return f"GitHub's OpenAPI description is not at {GITHUB_SPEC} (run .ci/setup.d/prism.sh)"
    return None


# -- the description -----------------------------------------------------------------------------------


def _github_description() -> dict[str, Any]:
    # Not cached: parsed, the description takes ~90 MB, and machines running the tests are shared.
    return json.loads(GITHUB_SPEC.read_text(encoding="utf-8"))


@functools.cache
def described_example(name: str) -> Any:
    """The value of ``components/examples/<name>`` in GitHub's description: what Prism answers with, so
    what a test derives its expectation from."""
    return _github_description()["components"]["examples"][name]["value"]


_REF = re.compile(r'"\$ref":\s*"#/components/([^/"]+)/([^"]+)"')


def cut_description(spec: Mapping[str, Any], operations: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The description restricted to ``operations`` and the components they reference (transitively)."""
    paths: dict[str, Any] = {}
    for template, methods in operations.items():
        item = spec["paths"].get(template)
        if item is None:
            raise KeyError(f"{template} is not in GitHub's description")
        kept = {
            k: v
            for k, v in item.items()
            if k not in ("get", "put", "post", "patch", "delete", "head", "options", "trace")
        }
        for method in methods:
            if method not in item:
                raise KeyError(f"{method.upper()} {template} is not in GitHub's description")
            kept[method] = item[method]
        paths[template] = kept

    components: dict[str, dict[str, Any]] = {}
    pending = [json.dumps(paths)]
    while pending:
        for kind, name in _REF.findall(pending.pop()):
            name = name.replace("~1", "/").replace("~0", "~")
            if name in components.setdefault(kind, {}):
                continue
            component = spec["components"][kind][name]
            components[kind][name] = component
            pending.append(json.dumps(component))
    cut = {k: v for k, v in spec.items() if k not in ("paths", "components", "webhooks", "x-webhooks")}
    cut["paths"] = paths
    cut["components"] = components
    return cut


def write_description(target: Path, base_url: str, operations: Mapping[str, Sequence[str]]) -> Path:
    text = json.dumps(cut_description(_github_description(), operations))
    # Example bodies carry absolute URLs (a pull request's "url", "Link" targets) that PyGithub follows.
    text = text.replace(SPEC_SERVER, base_url)
    cut = json.loads(text)
    cut["servers"] = [{"url": base_url}]
    target.write_text(json.dumps(cut), encoding="utf-8")
    return target


def multi_segment_routes(spec: Mapping[str, Any]) -> list[re.Pattern[str]]:
    """For each path template with an ``x-multi-segment`` parameter: a regex whose named groups are the
    template's start (``head``), that parameter (``value``) and the rest (``tail``)."""
    routes = []
    for template, item in spec["paths"].items():
        params = [
            p
            for op in item.values()
            if isinstance(op, dict)
            for p in op.get("parameters", [])
            if isinstance(p, dict) and p.get("in") == "path" and p.get("x-multi-segment")
        ]
        for name in {p["name"] for p in params}:
            head, _, tail = template.partition("{" + name + "}")
            routes.append(
                re.compile(
                    f"(?P<head>{_template_regex(head)})(?P<value>.+?)(?P<tail>{_template_regex(tail)})"
                )
            )
    return routes


def operation_routes(spec: Mapping[str, Any]) -> list[tuple[str, str, re.Pattern[str]]]:
    """``(METHOD, path template, regex of the request paths it matches)`` for every operation in ``spec``;
    an ``x-multi-segment`` parameter spans segments, any other one is a single segment."""
    routes = []
    for template, item in spec["paths"].items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            multi = {
                "{" + p["name"] + "}"
                for p in op.get("parameters", [])
                if isinstance(p, dict) and p.get("in") == "path" and p.get("x-multi-segment")
            }
            regex = "".join(
                ".+" if piece in multi else "[^/]+" if piece.startswith("{") else re.escape(piece)
                for piece in re.split(r"(\{[^}]+\})", template)
            )
            routes.append((method.upper(), template, re.compile(regex)))
    return routes


def _template_regex(part: str) -> str:
    """A regex for a piece of a path template: each ``{parameter}`` is one segment."""
    return "".join(
        "[^/]+" if piece.startswith("{") else re.escape(piece) for piece in re.split(r"(\{[^}]+\})", part)
    )


def encode_multi_segment(path: str, routes: Sequence[re.Pattern[str]]) -> str:
    """``path`` (no query) with the ``/`` inside a multi-segment parameter percent-encoded, for Prism."""
    for route in routes:
        if m := route.fullmatch(path):
            return m["head"] + quote(m["value"], safe="%") + m["tail"]
    return path


# -- the recording proxy ----------------------------------------------------------------------------------


@dataclass
class Exchange:
    method: str
    path: str
    status: int
    violations: list[dict[str, Any]]
    request_body: Any = None

    @property
    def request_violations(self) -> list[dict[str, Any]]:
        return [v for v in self.violations if (v.get("location") or [""])[0] == "request"]

    def describe(self) -> str:
        found = (
            "; ".join(
                f"{'.'.join(map(str, v.get('location', [])))}: {v.get('message')}"
                for v in self.request_violations
            )
            or "no request violations"
        )
        return f"{self.method} {self.path} -> {self.status} ({found})"


@dataclass
class PrismGitHub:
    """Prism on GitHub's description behind a recording proxy; ``url`` is PyGithub's ``base_url``."""

    workdir: Path
    operations: Mapping[str, Sequence[str]] = field(default_factory=lambda: dict(GITHUB_OPERATIONS))
    exchanges: list[Exchange] = field(default_factory=list)
    # (METHOD, path regex) -> value of the Prefer header to send Prism, e.g. "code=404"
    prefer: dict[tuple[str, str], str] = field(default_factory=dict)
    startup_s: float = 0.0

    def __post_init__(self) -> None:
        self._proxy: ThreadingHTTPServer | None = None
        self._prism: subprocess.Popen[bytes] | None = None
        self._prism_port = 0
        self._multi_segment: list[re.Pattern[str]] = []
        self._operation_routes: list[tuple[str, str, re.Pattern[str]]] = []
        self.log_path = self.workdir / "prism.log"

    @property
    def url(self) -> str:
        assert self._proxy is not None
        return f"http://127.0.0.1:{self._proxy.server_address[1]}"

    def start(self) -> PrismGitHub:
        self._start_proxy()
        spec = write_description(self.workdir / "github-cut.json", self.url, self.operations)
        cut = json.loads(spec.read_text(encoding="utf-8"))
        self._multi_segment = multi_segment_routes(cut)
        self._operation_routes = operation_routes(cut)
        started = time.monotonic()
        self._prism_port = _free_port()
        with open(self.log_path, "wb") as log:
            self._prism = subprocess.Popen(
                [
                    str(PRISM_BIN),
                    "mock",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self._prism_port),
                    "--verboseLevel",
                    "warn",
                    str(spec),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait_until_answering(started)
        self.startup_s = time.monotonic() - started
        return self

    def stop(self) -> None:
        if self._prism is not None and self._prism.poll() is None:
            self._prism.terminate()
            try:
                self._prism.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._prism.kill()
                self._prism.wait()
        if self._proxy is not None:
            self._proxy.shutdown()
            self._proxy.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def mark(self) -> int:
        """Index of the next exchange: pass it to :meth:`since` / :meth:`assert_valid`."""
        return len(self.exchanges)

    def since(self, mark: int) -> list[Exchange]:
        return self.exchanges[mark:]

    def assert_valid(self, mark: int, *, expect_calls: int | None = None) -> list[Exchange]:
        """Every request since ``mark`` reached Prism, matched the description and was answered 2xx/3xx
        (or the documented code asked for with ``prefer``)."""
        made = self.since(mark)
        assert made, "no request reached Prism"
        bad = [e for e in made if e.request_violations or (e.status >= 400 and not self._preferred(e))]
        assert not bad, "requests GitHub's description rejects:\n  " + "\n  ".join(e.describe() for e in bad)
        if expect_calls is not None:
            assert len(made) == expect_calls, [e.describe() for e in made]
        return made

    def operation_of(self, exchange: Exchange) -> tuple[str, str] | None:
        """``(METHOD, path template)`` of the served operation ``exchange`` was a call of; None: none is."""
        path = urlsplit(exchange.path).path
        for method, template, regex in self._operation_routes:
            if method == exchange.method and regex.fullmatch(path):
                return method, template
        return None

    def _preferred(self, exchange: Exchange) -> bool:
        code = self._prefer_for(exchange.method, urlsplit(exchange.path).path)
        return code is not None and code == f"code={exchange.status}"

    def _prefer_for(self, method: str, path: str) -> str | None:
        for (m, pattern), value in self.prefer.items():
            if m == method and re.fullmatch(pattern, path):
                return value
        return None

    # -- internals -------------------------------------------------------------------------------------

    def _wait_until_answering(self, started: float) -> None:
        assert self._prism is not None
        while time.monotonic() - started < STARTUP_TIMEOUT_S:
            if self._prism.poll() is not None:
                raise RuntimeError(f"Prism exited with {self._prism.returncode}:\n{self._log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self._prism_port, timeout=5)
                conn.request("GET", "/repos/octo/hello")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Prism did not answer within {STARTUP_TIMEOUT_S:.0f}s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def _start_proxy(self) -> None:
        owner = self

        class Proxy(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                path_only = urlsplit(self.path).path
                prefer = owner._prefer_for(self.command, path_only)
                if headers.get("Accept", "*/*").strip() in ("", "*/*"):
                    headers = {k: v for k, v in headers.items() if k.lower() != "accept"}
                    headers["Accept"] = "application/json"
                if prefer:
                    headers["Prefer"] = prefer
                conn = http.client.HTTPConnection("127.0.0.1", owner._prism_port, timeout=60)
                split = urlsplit(self.path)
                forwarded = encode_multi_segment(split.path, owner._multi_segment) + (
                    f"?{split.query}" if split.query else ""
                )
                conn.request(self.command, forwarded, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                violations = json.loads(response.getheader("sl-violations") or "[]")
                try:
                    request_body = json.loads(body) if body else None
                except ValueError:
                    request_body = body
                owner.exchanges.append(
                    Exchange(self.command, self.path, response.status, violations, request_body)
                )
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() in ("transfer-encoding", "connection", "content-length", "keep-alive"):
                        continue
                    if name.lower() == "link" and "/resource?page=" in value:
                        # The description's example Link header is a placeholder for every list
                        # operation; following it would leave the operation. Pagination is covered by
                        # the fake's tests.
                        continue
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

        self._proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
        self._proxy.daemon_threads = True
        threading.Thread(target=self._proxy.serve_forever, daemon=True).start()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prism_github(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrismGitHub]:
    """Prism serving GitHub's official description (cut to the operations we call), for the session."""
    reason = prism_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with PrismGitHub(tmp_path_factory.mktemp("prism-github")) as prism:
        yield prism
