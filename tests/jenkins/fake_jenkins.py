"""An in-process HTTP fake of the Jenkins REST endpoints branchops uses, so python-jenkins itself runs.

A fake, not Jenkins: no controller can run on these machines (docs/architecture.md §7). It follows Jenkins'
documented behaviour where branchops depends on it:

- Basic authentication with a user's API token on every request; 401 otherwise.
- CSRF: ``GET /crumbIssuer/api/json`` gives ``{crumb, crumbRequestField}`` and, as since Jenkins
  2.176, binds the crumb to the web session it opens (a ``JSESSIONID`` cookie); a POST without that
  header and that cookie is refused with 403 (stricter than Jenkins >= 2.96, which exempts API-token
  requests, so the tests prove python-jenkins sends both).
- ``POST <parent>/createItem?name=N`` with an XML body creates an item from config.xml (its class from
  the root element: a class name, or XStream's alias, ``flow-definition`` for a pipeline job); with
  ``mode=com.cloudbees.hudson.plugins.folder.Folder`` a folder. 400 if N exists, 404 if the parent
  folder does not.
- ``GET|POST <item>/config.xml``: Jenkins rewrites stored XML (plugin versions added to ``plugin``
  attributes, re-serialised), so stored XML never equals what was posted.
- ``<item>/api/json`` (``?tree=name`` too) with ``_class``, ``jobs`` of folders and multibranch
  projects, ``lastBuild`` of branch jobs; ``<job>/<n>/api/json`` build info; ``/queue/api/json``.
- ``POST <multibranch>/build``: schedules a scan (ComputedFolder.doBuild) and answers with a redirect
  to the previous page; 500 when the project is disabled.
- ``<job>/<n>/logText/progressiveText?start=N``: text from offset N, ``X-Text-Size`` the next offset,
  ``X-More-Data: true`` while the build runs. A running build here grows by one line per read and
  ends after ``lines_until_done`` reads.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.etree import ElementTree

FOLDER = "com.cloudbees.hudson.plugins.folder.Folder"
MULTIBRANCH = "org.jenkinsci.plugins.workflow.multibranch.WorkflowMultiBranchProject"
WORKFLOW_JOB = "org.jenkinsci.plugins.workflow.job.WorkflowJob"
FREESTYLE = "hudson.model.FreeStyleProject"
# The root elements XStream writes for these item classes instead of their class names (the rest are
# named by class, e.g. the multibranch project).
XSTREAM_ALIASES = {"flow-definition": WORKFLOW_JOB, "project": FREESTYLE}
CRUMB_FIELD = "Jenkins-Crumb"
SESSION_COOKIE = "JSESSIONID.5f3e1a2b"


@dataclass
class Build:
    number: int
    result: str | None  # None while running
    log_lines: list[str]
    lines_until_done: int = 0  # for a running build: reads of the log before it ends
    timestamp_ms: int = 1_700_000_000_000
    duration_ms: int = 65_000


@dataclass
class Item:
    name: str
    cls: str
    config_xml: str = ""
    children: dict[str, Item] = field(default_factory=dict)
    builds: list[Build] = field(default_factory=list)
    display_name: str | None = None
    disabled: bool = False
    scans: int = 0


class FakeJenkins:
    def __init__(self, user: str = "admin", token: str = "api-token-0123456789", version: str = "2.479.1"):
        self.user, self.token, self.version = user, token, version
        self.crumb = "crumb-5f2a"
        self.session = "node0abc123"
        self.root = Item("", "hudson.model.Hudson")
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path+query, headers
        self.queue: list[dict] = []
        self.forbidden_posts: set[str] = set()  # paths whose POST answers 403 (missing permission)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> FakeJenkins:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                fake._handle(self, "GET")

            def do_POST(self):
                fake._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    # -- fixtures -------------------------------------------------------------------------------------
    def item(self, path: str) -> Item | None:
        node = self.root
        for part in [p for p in path.split("/") if p]:
            node = node.children.get(part)
            if node is None:
                return None
        return node

    def add_branch(self, job_path: str, branch: str, builds: list[Build]) -> Item:
        project = self.item(job_path)
        assert project is not None
        name = branch.replace("%", "%25").replace("/", "%2F")
        child = Item(name, WORKFLOW_JOB, display_name=branch, builds=builds)
        project.children[name] = child
        return child

    def posts(self) -> list[str]:
        return [p for m, p, _ in self.requests if m == "POST"]

    # -- request handling -----------------------------------------------------------------------------
    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: str | bytes = b"",
        ctype: str = "text/plain",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("X-Jenkins", self.version)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _json(self, h, obj, status=200):
        self._send(h, status, json.dumps(obj), "application/json;charset=utf-8")

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        split = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        with self._lock:
            self.requests.append((method, h.path, dict(h.headers)))
            expected = "Basic " + base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
            if h.headers.get("Authorization") != expected:
                return self._send(
                    h, 401, "Unauthorized", headers={"WWW-Authenticate": 'Basic realm="Jenkins"'}
                )
            if method == "POST" and (
                h.headers.get(CRUMB_FIELD) != self.crumb
                or f"{SESSION_COOKIE}={self.session}" not in (h.headers.get("Cookie") or "")
            ):
                return self._send(h, 403, "No valid crumb was included in the request")
            try:
                self._route(h, method, split.path, query, body)
            except KeyError:
                self._send(h, 404, "Not Found")

    def _route(self, h, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        if path == "/crumbIssuer/api/json":
            body = json.dumps(
                {
                    "_class": "hudson.security.csrf.DefaultCrumbIssuer",
                    "crumb": self.crumb,
                    "crumbRequestField": CRUMB_FIELD,
                }
            )
            return self._send(
                h,
                200,
                body,
                "application/json;charset=utf-8",
                {"Set-Cookie": f"{SESSION_COOKIE}={self.session}; Path=/; HttpOnly"},
            )
        if path == "/me/api/json":
            return self._json(h, {"_class": "hudson.model.User", "id": self.user, "fullName": self.user})
        if path == "/queue/api/json":
            return self._json(h, {"_class": "hudson.model.Queue", "items": self.queue})
        if path in ("/", "/api/json"):
            return self._json(
                h, {"_class": "hudson.model.Hudson", "jobs": self._children_json(self.root, "")}
            )
        segments = [unquote(s) for s in path.strip("/").split("/")]
        # Walk job/<name> pairs down the item tree.
        node, names, i = self.root, [], 0
        while i + 1 < len(segments) and segments[i] == "job":
            node = node.children[segments[i + 1]]
            names.append(segments[i + 1])
            i += 2
        rest = segments[i:]
        url = self.url + "".join(f"job/{quote(n, safe='')}/" for n in names)
        if rest == ["createItem"] and method == "POST":
            return self._create(h, node, query, body)
        if not names:
            raise KeyError(path)
        if rest == ["api", "json"]:
            if query.get("tree") == "name":
                return self._json(h, {"_class": node.cls, "name": node.name})
            return self._json(h, self._item_json(node, url))
        if rest == ["config.xml"]:
            if method == "GET":
                return self._send(h, 200, node.config_xml, "application/xml")
            if method == "POST":
                if url.removeprefix(self.url) + "config.xml" in self.forbidden_posts:
                    return self._send(h, 403, "admin is missing the Job/Configure permission")
                node.config_xml = self._as_jenkins_stores_it(body.decode())
                return self._send(h, 200, "")
        if rest == ["build"] and method == "POST":
            if node.cls not in (MULTIBRANCH, WORKFLOW_JOB):
                raise KeyError(path)
            if node.disabled:
                return self._send(h, 500, f"{'/'.join(names)} cannot be recomputed")
            node.scans += 1
            # HttpResponses.forwardToPreviousPage(): back to the Referer, else the item itself.
            return self._send(h, 302, "", headers={"Location": h.headers.get("Referer") or url})
        if rest == [] and method == "GET":
            return self._send(h, 200, f"<html><body>{node.name}</body></html>", "text/html")
        if len(rest) >= 1 and rest[0].isdigit():
            build = next((b for b in node.builds if b.number == int(rest[0])), None)
            if build is None:
                raise KeyError(path)
            if rest[1:] == ["api", "json"]:
                return self._json(h, self._build_json(build, url))
            if rest[1:] == ["logText", "progressiveText"] and method == "GET":
                return self._progressive(h, build, int(query.get("start", "0")))
        raise KeyError(path)

    # -- behaviours -----------------------------------------------------------------------------------
    def _create(self, h, parent: Item, query: dict[str, str], body: bytes) -> None:
        name = query.get("name", "")
        form = (
            {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
            if h.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded")
            else {}
        )
        if parent.cls not in (FOLDER, "hudson.model.Hudson"):
            raise KeyError("createItem outside a folder")
        if not name or "/" in name:
            return self._send(h, 400, f"'{name}' is not a valid item name")
        if name in parent.children:
            return self._send(h, 400, f"A job already exists with the name '{name}'")
        mode = query.get("mode") or form.get("mode")
        if mode:
            if mode != FOLDER:
                return self._send(h, 400, f"unknown mode {mode}")
            parent.children[name] = Item(
                name, FOLDER, config_xml=f'<{FOLDER} plugin="cloudbees-folder@6.955"/>'
            )
            return self._send(h, 302, "", headers={"Location": self.url})
        if not h.headers.get("Content-Type", "").startswith(("text/xml", "application/xml")):
            return self._send(h, 400, "No mode and no XML body")
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError as exc:
            return self._send(h, 500, f"Failed to parse config.xml: {exc}")
        kind = XSTREAM_ALIASES.get(root.tag, root.tag)
        parent.children[name] = Item(name, kind, config_xml=self._as_jenkins_stores_it(body.decode()))
        return self._send(h, 200, "")

    @staticmethod
    def _as_jenkins_stores_it(xml: str) -> str:
        """XStream re-serialisation: plugin attributes gain the installed version, layout changes."""
        root = ElementTree.fromstring(xml.encode())
        for element in root.iter():
            plugin = element.get("plugin")
            if plugin and "@" not in plugin:
                element.set("plugin", f"{plugin}@1.0.{len(plugin)}")
        return "<?xml version='1.1' encoding='UTF-8'?>\n" + ElementTree.tostring(root, encoding="unicode")

    def _children_json(self, node: Item, url: str) -> list[dict]:
        out = []
        for child in node.children.values():
            color = "notbuilt"
            if child.builds:
                last = child.builds[-1]
                color = {"SUCCESS": "blue", "FAILURE": "red", None: "blue_anime"}.get(last.result, "aborted")
            out.append(
                {
                    "_class": child.cls,
                    "name": child.name,
                    "url": f"{url}job/{quote(child.name, safe='')}/",
                    "color": color,
                }
            )
        return out

    def _item_json(self, node: Item, url: str) -> dict:
        data = {
            "_class": node.cls,
            "name": node.name,
            "displayName": node.display_name or node.name,
            "fullName": node.name,
            "url": url,
        }
        if node.cls in (FOLDER, MULTIBRANCH):
            data["jobs"] = self._children_json(node, url)
        if node.cls == MULTIBRANCH:
            data["disabled"] = node.disabled
        if node.cls in (WORKFLOW_JOB, FREESTYLE):
            refs = [
                {
                    "_class": "org.jenkinsci.plugins.workflow.job.WorkflowRun",
                    "number": b.number,
                    "url": f"{url}{b.number}/",
                }
                for b in reversed(node.builds)
            ]
            data.update(
                builds=refs,
                lastBuild=refs[0] if refs else None,
                firstBuild=refs[-1] if refs else None,
                nextBuildNumber=len(node.builds) + 1,
                buildable=True,
                inQueue=False,
            )
        return data

    def _build_json(self, build: Build, url: str) -> dict:
        return {
            "_class": "org.jenkinsci.plugins.workflow.job.WorkflowRun",
            "number": build.number,
            "result": build.result,
            "building": build.result is None,
            "timestamp": build.timestamp_ms,
            "duration": 0 if build.result is None else build.duration_ms,
            "url": f"{url}{build.number}/",
        }

    def _progressive(self, h, build: Build, start: int) -> None:
        if build.result is None:
            if build.lines_until_done > 0:
                build.log_lines.append(f"step {len(build.log_lines)}\n")
                build.lines_until_done -= 1
            if build.lines_until_done == 0:
                build.log_lines.append("Finished: SUCCESS\n")
                build.result = "SUCCESS"
        text = "".join(build.log_lines).encode()
        chunk = text[start:]
        headers = {"X-Text-Size": str(len(text))}
        if build.result is None:
            headers["X-More-Data"] = "true"
        self._send(h, 200, chunk, "text/plain;charset=UTF-8", headers)


def path_of(url_path: str) -> str:
    """`/job/a/job/b/config.xml` -> `a/b` (for assertions)."""
    return "/".join(unquote(m) for m in re.findall(r"job/([^/]+)", url_path))
