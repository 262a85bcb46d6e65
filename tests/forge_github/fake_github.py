"""A stateful, in-process fake of the few GitHub REST endpoints the GitHub forge uses.

It sits at the HTTP boundary so that PyGithub itself (requests, retries, pagination, object mapping)
runs unchanged. Response bodies follow the shapes of GitHub's REST API (``pull-request``,
``pull-request-simple``, ``pull-request-review``, ``commit-status``, ``hook``, ``branch-with-protection``,
``content-file``, ``content-directory``, ``file-commit``) restricted to the fields a client reads;
pagination uses GitHub's ``Link`` header; rate limits use GitHub's documented headers.

Files: each branch points at a commit, each commit at a tree (path -> bytes), so a branch created from
``main`` has main's files and a write moves only its own branch. The contents endpoints answer as GitHub
does: blob shas are git's, content is base64 in 60-character lines, files over ``large_file_bytes``
come back with ``encoding: "none"`` and no content, an update names the blob sha it replaces (a wrong
one: 409 "<path> does not match <sha>"; none for an existing file: 422 '"sha" wasn't supplied'),
a missing branch is 404 before anything else is checked. It is a fake: tests using it test our logic,
not GitHub compatibility (that is what the Prism tests are for).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

# GitHub's contents API returns file content only up to 1 MB (larger: encoding "none", content "").
GITHUB_CONTENT_LIMIT = 1024 * 1024
# GitHub refuses an issue's or pull request's body longer than this (422, "body is too long").
ISSUE_BODY_LIMIT = 65536


def git_blob_sha(data: bytes) -> str:
    """The sha git (and GitHub's contents API) gives a file's blob."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    headers: dict[str, str]
    body: dict[str, Any]
    times: int
    delay_s: float = 0.0


@dataclass
class Hook:
    """Runs ``action`` just before the next ``times`` matching requests are answered (races)."""

    method: str
    path: re.Pattern[str]
    action: Callable[[], None]
    times: int


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int = 0


@dataclass
class FakePull:
    number: int
    title: str
    body: str
    head: str
    base: str
    user: str
    head_sha: str
    commits: list[str]
    state: str = "open"
    created_at: str = "2026-01-01T00:00:00Z"
    updated_at: str = "2026-01-01T00:00:00Z"
    merged_at: str | None = None
    merged_by: str | None = None
    merge_commit_sha: str | None = None
    reviews: list[dict[str, Any]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)


class FakeGitHub:
    """``with FakeGitHub("octo/hello") as fake: ...``; ``fake.url`` is the ``base_url`` for PyGithub."""

    def __init__(
        self,
        repository: str = "octo/hello",
        *,
        token: str = "ghp_faketoken123456",
        oauth_scopes: str | None = "repo, admin:repo_hook",
        permissions: dict[str, bool] | None = None,
        private: bool = True,
    ) -> None:
        self.owner, self.repo = repository.split("/")
        self.token = token
        self.oauth_scopes = oauth_scopes
        self.permissions = permissions or {
            "admin": True,
            "maintain": True,
            "push": True,
            "triage": True,
            "pull": True,
        }
        self.private = private
        self.pulls: dict[int, FakePull] = {}
        # "org/team-slug" -> member logins; a team missing here is answered 404, as GitHub answers for a
        # team that does not exist and for one the token cannot see.
        self.teams: dict[str, list[str]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.branches: dict[str, str] = {"main": "a" * 40}
        self.trees: dict[str, dict[str, bytes]] = {"a" * 40: {}}  # commit sha -> path -> content
        self.commit_messages: dict[str, str] = {}
        self.large_file_bytes = GITHUB_CONTENT_LIMIT
        self.protections: dict[str, dict[str, Any]] = {}  # classic branch protection, as PUT
        self.rulesets: dict[int, dict[str, Any]] = {}  # the repository's own rulesets, as POSTed/PUT
        # accounts: login -> id; apps: slug -> id; admins: logins with the admin role on the repository
        self.users: dict[str, int] = {}
        self.apps: dict[str, int] = {}
        self.admins: set[str] = set()
        self.hooks: dict[int, dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        # GitHub links merge commits to pull requests asynchronously; True: not linked yet.
        self.association_lag = False
        self._faults: list[Fault] = []
        self._hooks_before: list[Hook] = []
        self._next_id = 1000
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                fake._dispatch(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- state set-up for tests ------------------------------------------------------------------------

    def _id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def add_pull(
        self,
        head: str,
        base: str,
        *,
        user: str = "ds1",
        head_sha: str = "1" * 40,
        title: str = "change",
        body: str = "",
        state: str = "open",
    ) -> int:
        number = len(self.pulls) + 1
        self.pulls[number] = FakePull(
            number=number,
            title=title,
            body=body,
            head=head,
            base=base,
            user=user,
            head_sha=head_sha,
            commits=[head_sha],
            state=state,
        )
        return number

    def touch(self, number: int, at: str) -> None:
        """Activity on a pull request (a comment, a label, closing it): GitHub moves its ``updated_at``."""
        pull = self.pulls[number]
        pull.updated_at = max(pull.updated_at, at)

    def push(self, number: int, sha: str) -> None:
        pull = self.pulls[number]
        pull.head_sha = sha
        pull.commits.append(sha)

    def review(
        self,
        number: int,
        user: str,
        state: str,
        *,
        commit_id: str | None = None,
        submitted_at: str = "2026-01-02T00:00:00Z",
    ) -> None:
        pull = self.pulls[number]
        pull.reviews.append(
            {
                "id": self._id(),
                "user": user,
                "state": state,
                "commit_id": commit_id or pull.head_sha,
                "submitted_at": submitted_at,
            }
        )
        pull.updated_at = max(pull.updated_at, submitted_at)

    def merge(self, number: int, *, by: str, merge_sha: str, at: str = "2026-01-03T00:00:00Z") -> None:
        pull = self.pulls[number]
        pull.state, pull.merged_at, pull.merged_by, pull.merge_commit_sha = "closed", at, by, merge_sha
        pull.updated_at = max(pull.updated_at, at)

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        *,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        times: int = 1,
        delay_s: float = 0.0,
    ) -> None:
        """Answer the next ``times`` matching requests with this error (or delay them by ``delay_s``)."""
        self._faults.append(
            Fault(
                method,
                re.compile(path_regex),
                status,
                headers or {},
                body if body is not None else {"message": "fault injected"},
                times,
                delay_s,
            )
        )

    def before(self, method: str, path_regex: str, action: Callable[[], None], *, times: int = 1) -> None:
        """Run ``action`` before answering the next ``times`` matching requests (e.g. a concurrent commit)."""
        self._hooks_before.append(Hook(method, re.compile(path_regex), action, times))

    def files(self, branch: str) -> dict[str, bytes]:
        """The files at the tip of ``branch``."""
        return self.trees.get(self.branches[branch], {})

    def commit_file(self, branch: str, path: str, content: bytes | str, message: str = "commit") -> str:
        """Commit ``content`` to ``path`` on ``branch`` (as a user would); returns the new commit sha."""
        data = content.encode("utf-8") if isinstance(content, str) else content
        parent = self.branches[branch]
        tree = {**self.trees.get(parent, {}), path: data}
        sha = hashlib.sha1(f"{parent}\n{path}\n{git_blob_sha(data)}\n{message}".encode()).hexdigest()
        self.trees[sha] = tree
        self.commit_messages[sha] = message
        self.branches[branch] = sha
        return sha

    def calls(self, method: str, path_regex: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.fullmatch(path_regex, r.path)]

    # -- HTTP ----------------------------------------------------------------------------------------

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        record = Recorded(handler.command, split.path, parse_qs(split.query), body)
        self.requests.append(record)
        base = f"http://{handler.headers.get('Host')}"

        status, headers, payload = self._respond(handler, record, base)
        record.status = status
        data = b"" if payload is None else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        if self.oauth_scopes is not None:
            handler.send_header("X-OAuth-Scopes", self.oauth_scopes)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        try:
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            handler.close_connection = True

    def _respond(
        self, handler: BaseHTTPRequestHandler, record: Recorded, base: str
    ) -> tuple[int, dict[str, str], Any]:
        if handler.headers.get("Authorization") != f"token {self.token}":
            return (
                401,
                {},
                {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"},
            )
        for hook in self._hooks_before:
            if hook.times > 0 and hook.method == record.method and hook.path.fullmatch(record.path):
                hook.times -= 1
                hook.action()
        for fault in self._faults:
            if fault.times > 0 and fault.method == record.method and fault.path.fullmatch(record.path):
                fault.times -= 1
                if fault.delay_s:
                    time.sleep(fault.delay_s)
                    break
                return fault.status, dict(fault.headers), fault.body
        try:
            return self._route(record, base)
        except KeyError as exc:
            return 404, {}, {"message": f"Not Found ({exc})"}

    def _route(self, r: Recorded, base: str) -> tuple[int, dict[str, str], Any]:
        prefix = f"/repos/{self.owner}/{self.repo}"
        if (mm := re.fullmatch(r"/orgs/([^/]+)/teams/([^/]+)/members", r.path)) and r.method == "GET":
            members = self.teams.get(f"{unquote(mm[1])}/{unquote(mm[2])}")
            if members is None:
                return 404, {}, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}
            return self._page(r, base, [self._user(login) for login in members])
        if (mm := re.fullmatch(r"/users/([^/]+)", r.path)) and r.method == "GET":
            login = unquote(mm[1])
            if login not in self.users:
                return 404, {}, {"message": "Not Found"}
            return 200, {}, {**self._user(login), "id": self.users[login]}
        if (mm := re.fullmatch(r"/apps/([^/]+)", r.path)) and r.method == "GET":
            slug = unquote(mm[1])
            if slug not in self.apps:
                return 404, {}, {"message": "Not Found"}
            return (
                200,
                {},
                {"id": self.apps[slug], "slug": slug, "name": slug, "owner": self._user(self.owner)},
            )
        if not r.path.startswith(prefix):
            return 404, {}, {"message": "Not Found"}
        path = r.path[len(prefix) :]
        q = {k: v[0] for k, v in r.query.items()}
        m = re.fullmatch
        if path == "" and r.method == "GET":
            return 200, {}, self._repo_json(base)
        if path == "/pulls" and r.method == "GET":
            # GitHub's sort: "created" (the default, newest first) or "updated" (oldest first unless
            # direction=desc); pull request numbers follow creation order here.
            sort = q.get("sort", "created")
            if sort not in ("created", "updated"):
                return 422, {}, {"message": f"sort {sort!r} is not supported by this fake"}
            descending = q.get("direction", "desc" if sort == "created" else "asc") == "desc"
            key = (lambda p: p.number) if sort == "created" else (lambda p: (p.updated_at, p.number))
            pulls = [
                p
                for p in sorted(self.pulls.values(), key=key, reverse=descending)
                if q.get("state", "open") in ("all", p.state)
                and ("head" not in q or q["head"] == f"{self.owner}:{p.head}")
                and ("base" not in q or q["base"] == p.base)
            ]
            return self._page(r, base, [self._pull_json(p, base, simple=True) for p in pulls])
        if path == "/pulls" and r.method == "POST":
            b = r.body or {}
            missing = [k for k in ("head", "base") if k not in b]
            if missing:
                return (
                    422,
                    {},
                    {
                        "message": "Validation Failed",
                        "errors": [
                            {"resource": "PullRequest", "code": "missing_field", "field": k} for k in missing
                        ],
                    },
                )
            if any(
                p.state == "open" and p.head == b["head"] and p.base == b["base"] for p in self.pulls.values()
            ):
                return (
                    422,
                    {},
                    {
                        "message": "Validation Failed",
                        "errors": [
                            {
                                "resource": "PullRequest",
                                "code": "custom",
                                "message": f"A pull request already exists for {self.owner}:{b['head']}.",
                            }
                        ],
                    },
                )
            number = self.add_pull(
                b["head"],
                b["base"],
                user="branchops-bot",
                title=b.get("title", ""),
                body=b.get("body") or "",
                head_sha=self.branches.get(b["head"], "2" * 40),
            )
            return 201, {}, self._pull_json(self.pulls[number], base)
        if mm := m(r"/pulls/(\d+)", path):
            pull = self.pulls[int(mm[1])]
            if r.method == "PATCH":
                refusal = self._pull_update_refusal(r.body or {})
                if refusal is not None:
                    return 422, {}, refusal
                for key in ("title", "body", "state"):
                    if key in (r.body or {}):
                        setattr(pull, key, r.body[key])
                # an edit is activity on the pull request: GitHub moves its updated_at
                pull.updated_at = max(pull.updated_at, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            return 200, {}, self._pull_json(pull, base)
        if mm := m(r"/pulls/(\d+)/reviews", path):
            pull = self.pulls[int(mm[1])]
            return self._page(r, base, [self._review_json(rv, pull, base) for rv in pull.reviews])
        if mm := m(r"/commits/([0-9a-f]{40})/pulls", path):
            # GitHub's description: the merged pull request that brought the commit into the default
            # branch; for a commit outside it, the merged and open pull requests the commit belongs to. A
            # merge commit on another branch belongs to no pull request's commits.
            sha = mm[1]
            pulls = (
                []
                if self.association_lag
                else [
                    p
                    for p in self.pulls.values()
                    if (p.state == "open" or p.merged_at is not None)
                    and (sha in p.commits or (p.merge_commit_sha == sha and p.base == "main"))
                ]
            )
            return self._page(r, base, [self._pull_json(p, base, simple=True) for p in pulls])
        if mm := m(r"/issues/(\d+)/comments", path):
            pull = self.pulls[int(mm[1])]
            pull.comments.append(r.body["body"])
            return (
                201,
                {},
                {
                    "id": self._id(),
                    "body": r.body["body"],
                    "user": self._user("branchops-bot"),
                    "url": f"{base}{prefix}/issues/comments/{self._next_id}",
                    "html_url": f"https://github.com/{self.owner}/{self.repo}/pull/{pull.number}",
                    "created_at": "2026-01-04T00:00:00Z",
                    "updated_at": "2026-01-04T00:00:00Z",
                },
            )
        if mm := m(r"/statuses/([0-9a-f]{40})", path):
            b = r.body or {}
            if len(b.get("description") or "") > 140:
                return (
                    422,
                    {},
                    {
                        "message": "Validation Failed",
                        "errors": [
                            {
                                "resource": "Status",
                                "code": "custom",
                                "field": "description",
                                "message": "description is too long (maximum is 140 characters)",
                            }
                        ],
                    },
                )
            status = {
                "id": self._id(),
                "state": b["state"],
                "description": b.get("description"),
                "context": b.get("context", "default"),
                "target_url": b.get("target_url"),
                "sha": mm[1],
                "created_at": "2026-01-04T00:00:00Z",
                "updated_at": "2026-01-04T00:00:00Z",
                "url": f"{base}{prefix}/statuses/{mm[1]}",
            }
            self.statuses.append(status)
            return 201, {}, status
        if mm := m(r"/branches/([^/]+)", path):
            name = mm[1]
            if name not in self.branches:
                return 404, {}, {"message": "Branch not found"}
            return (
                200,
                {},
                {
                    "name": name,
                    "protected": name in self.protections,
                    "commit": {
                        "sha": self.branches[name],
                        "url": f"{base}{prefix}/commits/{self.branches[name]}",
                    },
                    "_links": {"self": f"{base}{prefix}/branches/{name}"},
                    "protection_url": f"{base}{prefix}/branches/{name}/protection",
                },
            )
        if mm := m(r"/branches/([^/]+)/protection", path):
            branch = unquote(mm[1])
            if r.method == "PUT":
                self.protections[branch] = r.body
            elif branch not in self.protections:
                return 404, {}, {"message": "Branch not protected"}
            elif r.method == "DELETE":
                del self.protections[branch]
                return 204, {}, None
            return 200, {}, {"url": f"{base}{prefix}/branches/{mm[1]}/protection"}
        if path == "/rulesets" and r.method == "GET":
            return self._page(
                r, base, [self._ruleset_json(i, base, summary=True) for i in sorted(self.rulesets)]
            )
        if path == "/rulesets" and r.method == "POST":
            refused = self._ruleset_refusal(r.body or {})
            if refused:
                return 422, {}, {"message": "Validation Failed", "errors": [refused]}
            ruleset_id = self._id()
            self.rulesets[ruleset_id] = dict(r.body)
            return 201, {}, self._ruleset_json(ruleset_id, base)
        if (mm := m(r"/rulesets/(\d+)", path)) and r.method in ("GET", "PUT"):
            ruleset_id = int(mm[1])
            if ruleset_id not in self.rulesets:
                return 404, {}, {"message": "Not Found"}
            if r.method == "PUT":
                refused = self._ruleset_refusal({**self.rulesets[ruleset_id], **(r.body or {})})
                if refused:
                    return 422, {}, {"message": "Validation Failed", "errors": [refused]}
                self.rulesets[ruleset_id].update(r.body or {})
            return 200, {}, self._ruleset_json(ruleset_id, base)
        if path == "/git/refs" and r.method == "POST":
            name = r.body["ref"].removeprefix("refs/heads/")
            if name in self.branches:
                return 422, {}, {"message": "Reference already exists"}
            self.branches[name] = r.body["sha"]
            return (
                201,
                {},
                {
                    "ref": r.body["ref"],
                    "url": f"{base}{prefix}/git/refs/heads/{name}",
                    "object": {"sha": r.body["sha"], "type": "commit", "url": ""},
                },
            )
        if mm := m(r"/contents/(.+)", path):
            return self._contents(r, unquote(mm[1]), q, base)
        if path == "/hooks" and r.method == "GET":
            return self._page(r, base, [self._hook_json(h, base) for h in self.hooks.values()])
        if path == "/hooks" and r.method == "POST":
            hook_id = self._id()
            self.hooks[hook_id] = {"id": hook_id, **r.body}
            return 201, {}, self._hook_json(self.hooks[hook_id], base)
        if mm := m(r"/hooks/(\d+)", path):
            hook = self.hooks[int(mm[1])]
            if r.method == "PATCH":
                hook.update(r.body)
            return 200, {}, self._hook_json(hook, base)
        return 404, {}, {"message": "Not Found"}

    def _contents(
        self, r: Recorded, path: str, q: dict[str, str], base: str
    ) -> tuple[int, dict[str, str], Any]:
        if r.method == "GET":
            ref = q.get("ref", "main")
            if ref not in self.branches:
                return 404, {}, {"message": f"No commit found for the ref {ref}"}
            tree = self.files(ref)
            if path in tree:
                return 200, {}, self._content_json(path, tree[path], ref, base, with_content=True)
            inside = sorted(p for p in tree if p.startswith(path.rstrip("/") + "/"))
            if not inside:
                return 404, {}, {"message": "Not Found"}
            names = sorted({p[len(path.rstrip("/")) + 1 :].split("/")[0] for p in inside})
            return (
                200,
                {},
                [self._directory_entry_json(f"{path.rstrip('/')}/{n}", tree, ref, base) for n in names],
            )
        if r.method != "PUT":
            return 404, {}, {"message": "Not Found"}
        b = r.body or {}
        missing = [k for k in ("message", "content") if k not in b]
        if missing:
            return (
                422,
                {},
                {"message": "Invalid request.\n\n" + ", ".join(f'"{k}" wasn\'t supplied.' for k in missing)},
            )
        branch = b.get("branch", "main")
        if branch not in self.branches:
            return 404, {}, {"message": f"Branch {branch} not found"}
        current = self.files(branch).get(path)
        if current is not None:
            if "sha" not in b:
                return 422, {}, {"message": 'Invalid request.\n\n"sha" wasn\'t supplied.'}
            if b["sha"] != git_blob_sha(current):
                return 409, {}, {"message": f"{path} does not match {b['sha']}"}
        try:
            data = base64.b64decode(b["content"], validate=True)
        except ValueError:
            return 422, {}, {"message": "content is not valid Base64"}
        sha = self.commit_file(branch, path, data, b["message"])
        commit = {
            "sha": sha,
            "url": f"{base}/repos/{self.owner}/{self.repo}/git/commits/{sha}",
            "html_url": f"https://github.com/{self.owner}/{self.repo}/commit/{sha}",
            "message": b["message"],
            "author": {
                "name": "branchops-bot",
                "email": "bot@example.invalid",
                "date": "2026-01-05T00:00:00Z",
            },
            "committer": {
                "name": "branchops-bot",
                "email": "bot@example.invalid",
                "date": "2026-01-05T00:00:00Z",
            },
            "tree": {"sha": "e" * 40, "url": ""},
            "parents": [],
        }
        return (
            (201 if current is None else 200),
            {},
            {"content": self._content_json(path, data, branch, base, with_content=False), "commit": commit},
        )

    def _content_json(
        self, path: str, data: bytes, ref: str, base: str, *, with_content: bool
    ) -> dict[str, Any]:
        sha = git_blob_sha(data)
        url = f"{base}/repos/{self.owner}/{self.repo}/contents/{quote(path)}?ref={quote(ref, safe='')}"
        out: dict[str, Any] = {
            "type": "file",
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": sha,
            "size": len(data),
            "url": url,
            "git_url": f"{base}/repos/{self.owner}/{self.repo}/git/blobs/{sha}",
            "html_url": f"https://github.com/{self.owner}/{self.repo}/blob/{ref}/{path}",
            "download_url": f"https://raw.example.invalid/{self.owner}/{self.repo}/{ref}/{path}",
            "_links": {
                "self": url,
                "git": f"{base}/repos/{self.owner}/{self.repo}/git/blobs/{sha}",
                "html": f"https://github.com/{self.owner}/{self.repo}/blob/{ref}/{path}",
            },
        }
        if with_content:
            if len(data) > self.large_file_bytes:
                out.update(encoding="none", content="")
            else:
                encoded = base64.b64encode(data).decode()
                # GitHub wraps the base64 text in lines of 60 characters.
                out.update(
                    encoding="base64",
                    content="".join(encoded[i : i + 60] + "\n" for i in range(0, len(encoded), 60)),
                )
        return out

    def _directory_entry_json(self, path: str, tree: dict[str, bytes], ref: str, base: str) -> dict[str, Any]:
        if path in tree:
            return self._content_json(path, tree[path], ref, base, with_content=False)
        url = f"{base}/repos/{self.owner}/{self.repo}/contents/{quote(path)}?ref={quote(ref, safe='')}"
        return {
            "type": "dir",
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": "d" * 40,
            "size": 0,
            "url": url,
            "git_url": None,
            "html_url": None,
            "download_url": None,
            "_links": {"self": url, "git": None, "html": None},
        }

    # -- branch rules --------------------------------------------------------------------------------

    def _pull_update_refusal(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """What GitHub answers 422 to an "Update a pull request" (PATCH /repos/{owner}/{repo}/pulls/{n}):
        the request body its REST description documents (title, body, base: strings; state: "open" or
        "closed"; maintainer_can_modify: a boolean), a body over GitHub's 65536 characters (its answer:
        "body is too long (maximum is 65536 characters)") and a base branch that does not exist."""
        kinds = {"title": str, "body": str, "base": str, "state": str, "maintainer_can_modify": bool}
        wrong = [key for key, kind in kinds.items() if key in body and not isinstance(body[key], kind)]
        if wrong or body.get("state", "open") not in ("open", "closed"):
            return {
                "message": "Invalid request.",
                "errors": [f"Invalid value for {key!r}." for key in wrong or ["state"]],
                "documentation_url": "https://docs.github.com/rest/pulls/pulls#update-a-pull-request",
            }
        if len(body.get("body") or "") > ISSUE_BODY_LIMIT:
            return {
                "message": "Validation Failed",
                "errors": [
                    {
                        "resource": "Issue",
                        "code": "custom",
                        "field": "body",
                        "message": f"body is too long (maximum is {ISSUE_BODY_LIMIT} characters)",
                    }
                ],
                "documentation_url": "https://docs.github.com/rest/pulls/pulls#update-a-pull-request",
            }
        if "base" in body and body["base"] not in self.branches:
            return {
                "message": "Validation Failed",
                "errors": [{"resource": "PullRequest", "code": "invalid", "field": "base"}],
                "documentation_url": "https://docs.github.com/rest/pulls/pulls#update-a-pull-request",
            }
        return None

    def push_allowed(self, branch: str, login: str, *, app: bool = False) -> bool:
        """Whether GitHub accepts a direct push to ``branch`` by ``login`` (an app's slug with ``app``).

        GitHub's documented rules ("About protected branches", "About rulesets"): classic protection that
        requires pull request reviews or status checks refuses every direct push except an
        administrator's when administrators are not included (enforce_admins off); a user in
        bypass_pull_request_allowances skips only the review requirement, never the checks. An active
        ruleset on the branch with such rules refuses every push but its bypass actors'. Both apply.
        """
        classic = self.protections.get(branch)
        if classic and (
            classic.get("required_pull_request_reviews") or classic.get("required_status_checks")
        ):
            if app or login not in self.admins or classic.get("enforce_admins"):
                return False
        for ruleset in self.rulesets.values():
            include = ruleset.get("conditions", {}).get("ref_name", {}).get("include", [])
            if ruleset.get("enforcement") != "active" or f"refs/heads/{branch}" not in include:
                continue
            if not {"pull_request", "required_status_checks"} & {
                rule["type"] for rule in ruleset.get("rules", [])
            }:
                continue
            if not any(self._bypasses(actor, login, app) for actor in ruleset.get("bypass_actors") or []):
                return False
        return True

    def _bypasses(self, actor: dict[str, Any], login: str, app: bool) -> bool:
        if actor.get("bypass_mode", "always") != "always":
            return False
        kind, actor_id = actor.get("actor_type"), actor.get("actor_id")
        if app:
            return kind == "Integration" and actor_id == self.apps.get(login)
        if kind == "User":
            return actor_id == self.users.get(login)
        return kind == "RepositoryRole" and actor_id == 5 and login in self.admins

    def _ruleset_refusal(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """What GitHub's description requires of a ruleset that this fake checks (the request's shape is
        Prism's business): a name and an enforcement; known rule types with their required parameters;
        bypass actors of a known type with an id, and mode."""
        required_params = {
            "pull_request": {
                "dismiss_stale_reviews_on_push",
                "require_code_owner_review",
                "require_last_push_approval",
                "required_approving_review_count",
                "required_review_thread_resolution",
            },
            "required_status_checks": {"required_status_checks", "strict_required_status_checks_policy"},
            "deletion": set(),
            "non_fast_forward": set(),
        }
        if not body.get("name") or body.get("enforcement") not in ("disabled", "active", "evaluate"):
            return {"resource": "Ruleset", "code": "missing_field", "field": "name/enforcement"}
        for rule in body.get("rules") or []:
            needed = required_params.get(rule.get("type"))
            if needed is None or needed - set(rule.get("parameters") or {}):
                return {"resource": "Ruleset", "code": "invalid", "field": f"rules.{rule.get('type')}"}
            methods = (rule.get("parameters") or {}).get("allowed_merge_methods")
            if methods is not None and (not methods or set(methods) - {"merge", "squash", "rebase"}):
                return {"resource": "Ruleset", "code": "invalid", "field": "allowed_merge_methods"}
        for actor in body.get("bypass_actors") or []:
            kind = actor.get("actor_type")
            if kind not in (
                "Integration",
                "OrganizationAdmin",
                "RepositoryRole",
                "Team",
                "DeployKey",
                "User",
            ):
                return {"resource": "Ruleset", "code": "invalid", "field": "bypass_actors.actor_type"}
            if kind in ("Integration", "RepositoryRole", "Team", "User") and not isinstance(
                actor.get("actor_id"), int
            ):
                return {"resource": "Ruleset", "code": "missing_field", "field": "bypass_actors.actor_id"}
            if actor.get("bypass_mode", "always") not in ("always", "pull_request", "exempt"):
                return {"resource": "Ruleset", "code": "invalid", "field": "bypass_actors.bypass_mode"}
        return None

    def _ruleset_json(self, ruleset_id: int, base: str, *, summary: bool = False) -> dict[str, Any]:
        ruleset = self.rulesets[ruleset_id]
        data: dict[str, Any] = {
            "id": ruleset_id,
            "name": ruleset["name"],
            "source_type": "Repository",
            "source": f"{self.owner}/{self.repo}",
            "enforcement": ruleset["enforcement"],
            "_links": {"self": {"href": f"{base}/repos/{self.owner}/{self.repo}/rulesets/{ruleset_id}"}},
        }
        if not summary:  # the list answers without target, conditions, rules and bypass actors
            data.update(
                target=ruleset.get("target", "branch"),
                bypass_actors=ruleset.get("bypass_actors") or [],
                conditions=ruleset.get("conditions") or {},
                rules=ruleset.get("rules") or [],
            )
        return data

    # -- shapes --------------------------------------------------------------------------------------

    def _page(self, r: Recorded, base: str, items: list[Any]) -> tuple[int, dict[str, str], Any]:
        # GitHub: per_page defaults to 30, at most 100 (a larger value is served as 100)
        per_page = min(100, int(r.query.get("per_page", ["30"])[0]))
        page = int(r.query.get("page", ["1"])[0])
        last = max(1, -(-len(items) // per_page))
        headers: dict[str, str] = {}
        if last > 1:
            others = {k: v[0] for k, v in r.query.items() if k not in ("page", "per_page")}
            extra = "".join(f"&{k}={v}" for k, v in others.items())
            links = []
            if page < last:
                links.append(f'<{base}{r.path}?per_page={per_page}&page={page + 1}{extra}>; rel="next"')
            links.append(f'<{base}{r.path}?per_page={per_page}&page={last}{extra}>; rel="last"')
            headers["Link"] = ", ".join(links)
        return 200, headers, items[(page - 1) * per_page : page * per_page]

    def _user(self, login: str) -> dict[str, Any]:
        return {
            "login": login,
            "id": abs(hash(login)) % 10**6,
            "type": "User",
            "url": f"https://api.example.invalid/users/{login}",
        }

    def _repo_json(self, base: str) -> dict[str, Any]:
        return {
            "id": 1,
            "name": self.repo,
            "full_name": f"{self.owner}/{self.repo}",
            "html_url": f"https://github.com/{self.owner}/{self.repo}",
            "private": self.private,
            "owner": self._user(self.owner),
            "url": f"{base}/repos/{self.owner}/{self.repo}",
            "default_branch": "main",
            "permissions": dict(self.permissions),
        }

    def _pull_json(self, p: FakePull, base: str, *, simple: bool = False) -> dict[str, Any]:
        url = f"{base}/repos/{self.owner}/{self.repo}/pulls/{p.number}"
        data: dict[str, Any] = {
            "url": url,
            "id": p.number + 500,
            "number": p.number,
            "state": p.state,
            "title": p.title,
            "body": p.body or None,
            "user": self._user(p.user),
            "html_url": f"https://github.com/{self.owner}/{self.repo}/pull/{p.number}",
            "created_at": p.created_at,
            "updated_at": p.updated_at,
            "closed_at": p.merged_at,
            "merged_at": p.merged_at,
            "merge_commit_sha": p.merge_commit_sha,
            "head": {
                "label": f"{self.owner}:{p.head}",
                "ref": p.head,
                "sha": p.head_sha,
                "user": self._user(self.owner),
            },
            "base": {
                "label": f"{self.owner}:{p.base}",
                "ref": p.base,
                "sha": self.branches.get(p.base, "0" * 40),
                "user": self._user(self.owner),
            },
        }
        if not simple:  # only the single-pull-request endpoints carry these
            data.update(
                merged=p.merged_at is not None,
                merged_by=self._user(p.merged_by) if p.merged_by else None,
                mergeable=None,
                comments=len(p.comments),
                commits=len(p.commits),
            )
        return data

    def _review_json(self, rv: dict[str, Any], p: FakePull, base: str) -> dict[str, Any]:
        return {
            "id": rv["id"],
            "user": self._user(rv["user"]),
            "body": "",
            "state": rv["state"],
            "commit_id": rv["commit_id"],
            "submitted_at": rv["submitted_at"],
            "html_url": f"https://github.com/{self.owner}/{self.repo}/pull/{p.number}#pullrequestreview-{rv['id']}",
            "pull_request_url": f"{base}/repos/{self.owner}/{self.repo}/pulls/{p.number}",
            "author_association": "MEMBER",
        }

    def _hook_json(self, hook: dict[str, Any], base: str) -> dict[str, Any]:
        config = {k: v for k, v in hook.get("config", {}).items() if k != "secret"}
        if "secret" in hook.get("config", {}):
            config["secret"] = "********"  # GitHub never returns the secret
        return {
            "type": "Repository",
            "id": hook["id"],
            "name": "web",
            "active": hook.get("active", True),
            "events": hook.get("events", ["push"]),
            "config": config,
            "url": f"{base}/repos/{self.owner}/{self.repo}/hooks/{hook['id']}",
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        }
