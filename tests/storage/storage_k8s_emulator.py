"""An emulated Kubernetes API server for the storage port's tests — a fake at the client boundary.

No API server can run here (docs/architecture.md §7), so this small WSGI app serves the REST endpoints the
official kubernetes client calls for PersistentVolumeClaims and CSI VolumeSnapshots, following the API's
documented semantics:

* create: 201 with uid, resourceVersion, creationTimestamp set; ``409 AlreadyExists`` (a ``Status``
  body) if the name is taken; ``400 BadRequest`` if kind/apiVersion/namespace do not match the URL;
  what the body itself deserves is judged by tests/k8s/api_rules.py, the API server's rules taken from
  Kubernetes' schemas and docs (never from branchops' own validator): a field of the wrong type is a
  ``400``, an unknown field is refused with ``fieldValidation=Strict`` and otherwise dropped with a
  ``Warning`` header (kept in ``warnings``), and a failed validation is ``422 Invalid`` with its causes;
* get/delete: ``404 NotFound`` Status for a missing object; list honours equality ``labelSelector``;
* every write bumps a global ``resourceVersion``;
* a VolumeSnapshot becomes ``status.readyToUse: true`` only after ``ready_after_polls`` reads (the
  snapshot controller works asynchronously); if its source PVC does not exist, the controller's error
  appears in ``status.error`` and it never becomes ready.

It is not the real thing: no admission, no finalizers, no watch. Tests say so.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Self

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.k8s.api_rules import review, status, warning_header

SNAP = "snapshot.storage.k8s.io"

RESOURCES = {
    "persistentvolumeclaims": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "group": ""},
    "volumesnapshots": {"apiVersion": f"{SNAP}/v1", "kind": "VolumeSnapshot", "group": SNAP},
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Fault:
    method: str
    resource: str
    status: int
    reason: str
    message: str
    times: int = 1


@dataclass
class KubeEmulator:
    ready_after_polls: int = 3
    never_ready: bool = False
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (resource, ns, name)
    polls: dict[tuple[str, str], int] = field(default_factory=dict)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (verb, group, resource)
    received: list[dict[str, Any]] = field(default_factory=list)  # every object body sent to us
    rejected: list[str] = field(default_factory=list)  # why a body was refused as invalid
    warnings: list[str] = field(default_factory=list)  # every Warning the server sent (unknown fields)
    faults: list[Fault] = field(default_factory=list)
    resource_version: int = 1000
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- helpers for tests ---------------------------------------------------------------------------
    def fail_next(
        self, method: str, resource: str, status: int, reason: str, message: str = "", times: int = 1
    ) -> None:
        self.faults.append(Fault(method, resource, status, reason, message or reason, times))

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((resource, namespace, name))

    def count(self, verb: str, resource: str) -> int:
        return sum(1 for v, _, r in self.requests if v == verb and r == resource)

    # -- WSGI ----------------------------------------------------------------------------------------
    url_map = Map(
        [
            Rule("/api/v1/namespaces/<ns>/<resource>", endpoint="collection"),
            Rule("/api/v1/namespaces/<ns>/<resource>/<name>", endpoint="item"),
            Rule(f"/apis/{SNAP}/v1/namespaces/<ns>/<resource>", endpoint="collection"),
            Rule(f"/apis/{SNAP}/v1/namespaces/<ns>/<resource>/<name>", endpoint="item"),
        ]
    )

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            endpoint, args = self.url_map.bind_to_environ(environ).match()
        except HTTPException:
            return self._status(404, "NotFound", "the server could not find the requested resource")(
                environ, start_response
            )
        with self.lock:
            self._request_warnings: list[str] = []
            response = self._dispatch(request, endpoint, **args)
            for warning in self._request_warnings:
                response.headers.add("Warning", warning_header(warning))
        return response(environ, start_response)

    def _status(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> Response:
        return self._json(status(code, reason, message, details), code)

    def _review(
        self, request: Request, obj: dict[str, Any], *, patch: bool = False, old: dict[str, Any] | None = None
    ) -> tuple[Response | None, dict[str, Any]]:
        """The API server's verdict on an object to store: (the refusal or None, the object as stored)."""
        verdict = review(obj, patch=patch, old=old, field_validation=request.args.get("fieldValidation"))
        if verdict.status is not None:
            self.rejected.append(verdict.status["message"])
            return self._json(verdict.status, verdict.code), obj
        self.warnings += verdict.warnings
        self._request_warnings += verdict.warnings
        return None, verdict.obj

    def _json(self, obj: Any, code: int = 200) -> Response:
        # Reason phrases as Go's net/http (the API server) sends them, e.g. "403 Forbidden".
        return Response(
            json.dumps(obj), status=f"{code} {HTTPStatus(code).phrase}", content_type="application/json"
        )

    def _bump(self, obj: dict[str, Any]) -> None:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)

    def _dispatch(
        self, request: Request, endpoint: str, ns: str, resource: str, name: str | None = None
    ) -> Response:
        info = RESOURCES.get(resource)
        prefix = "/apis/" + SNAP if request.path.startswith("/apis/") else "/api"
        if info is None or (info["group"] == SNAP) != (prefix != "/api"):
            return self._status(404, "NotFound", "the server could not find the requested resource")
        verb = {
            ("collection", "GET"): "list",
            ("collection", "POST"): "create",
            ("item", "GET"): "get",
            ("item", "DELETE"): "delete",
        }.get((endpoint, request.method))
        if verb is None:
            return self._status(405, "MethodNotAllowed", f"{request.method} is not supported here")
        self.requests.append((verb, info["group"], resource))
        for fault in self.faults:
            if fault.method == request.method and fault.resource == resource and fault.times > 0:
                fault.times -= 1
                return self._status(fault.status, fault.reason, fault.message)
        return getattr(self, f"_{verb}")(request, info, ns, resource, name)

    def _create(self, request: Request, info: dict[str, str], ns: str, resource: str, _: None) -> Response:
        try:
            body = json.loads(request.get_data(as_text=True))
        except ValueError:
            return self._status(400, "BadRequest", "the request body is not JSON")
        if not isinstance(body, dict):
            return self._status(400, "BadRequest", "the request body is not a JSON object")
        self.received.append(json.loads(json.dumps(body)))
        if body.get("kind") != info["kind"] or body.get("apiVersion") != info["apiVersion"]:
            return self._status(
                400,
                "BadRequest",
                f"the object is a {body.get('apiVersion')} {body.get('kind')}, "
                f"not a {info['apiVersion']} {info['kind']}",
            )
        meta = body.get("metadata") or {}
        if meta.get("namespace", ns) != ns:
            return self._status(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        refusal, body = self._review(request, body)
        if refusal is not None:
            return refusal
        meta = body.setdefault("metadata", {})
        # The review refused an object with neither a name nor a generateName.
        name = meta["name"] = meta.get("name") or meta["generateName"] + uuid.uuid4().hex[:5]
        key = (resource, ns, name)
        if key in self.objects:
            return self._status(
                409, "AlreadyExists", f'{resource} "{name}" already exists', {"name": name, "kind": resource}
            )
        meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now())
        body["metadata"] = meta
        if resource == "persistentvolumeclaims":
            body["status"] = {"phase": "Pending"}
        self._bump(body)
        self.objects[key] = body
        return self._json(body, 201)

    def _get(self, request: Request, info: dict[str, str], ns: str, resource: str, name: str) -> Response:
        obj = self.objects.get((resource, ns, name))
        if obj is None:
            return self._status(
                404,
                "NotFound",
                f'{resource}.{info["group"] or "core"} "{name}" not found',
                {"name": name, "kind": resource},
            )
        self._advance(resource, ns, obj)
        return self._json(obj)

    def _advance(self, resource: str, ns: str, obj: dict[str, Any]) -> None:
        """What the controllers would have done by the time of this read."""
        if resource == "persistentvolumeclaims" and obj["status"].get("phase") == "Pending":
            obj["status"] = {
                "phase": "Bound",
                "accessModes": obj["spec"]["accessModes"],
                "capacity": dict(obj["spec"]["resources"]["requests"]),
            }
            self._bump(obj)
        if resource != "volumesnapshots" or (obj.get("status") or {}).get("readyToUse"):
            return
        name = obj["metadata"]["name"]
        self.polls[(ns, name)] = self.polls.get((ns, name), 0) + 1
        source = obj["spec"]["source"].get("persistentVolumeClaimName")
        pvc = self.objects.get(("persistentvolumeclaims", ns, source))
        if pvc is None:
            obj["status"] = {
                "readyToUse": False,
                "error": {
                    "message": 'Failed to create snapshot: failed to get input parameters to create '
                    'snapshot '
                    f'{name}: "persistentvolumeclaim \\"{source}\\" not found"',
                    "time": _now(),
                },
            }
        elif self.never_ready or self.polls[(ns, name)] < self.ready_after_polls:
            obj["status"] = {"readyToUse": False}
        else:
            obj["status"] = {
                "boundVolumeSnapshotContentName": f"snapcontent-{obj['metadata']['uid']}",
                "creationTime": _now(),
                "readyToUse": True,
                "restoreSize": pvc["spec"]["resources"]["requests"]["storage"],
            }
        self._bump(obj)

    def _list(self, request: Request, info: dict[str, str], ns: str, resource: str, _: None) -> Response:
        wanted = [
            tuple(part.split("=", 1)) for part in request.args.get("labelSelector", "").split(",") if part
        ]
        items = [
            obj
            for (res, space, _n), obj in sorted(self.objects.items())
            if res == resource
            and space == ns
            and all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in wanted)
        ]
        return self._json(
            {
                "apiVersion": info["apiVersion"],
                "kind": f"{info['kind']}List",
                "metadata": {"resourceVersion": str(self.resource_version)},
                "items": items,
            }
        )

    def _delete(self, request: Request, info: dict[str, str], ns: str, resource: str, name: str) -> Response:
        obj = self.objects.pop((resource, ns, name), None)
        if obj is None:
            return self._status(
                404,
                "NotFound",
                f'{resource}.{info["group"] or "core"} "{name}" not found',
                {"name": name, "kind": resource},
            )
        self._bump(obj)
        return self._json(obj)


class RunningEmulator:
    """Serve a KubeEmulator on a free 127.0.0.1 port in a thread; a context manager."""

    def __init__(self, emulator: KubeEmulator) -> None:
        self.emulator = emulator
        self._server = make_server("127.0.0.1", 0, emulator, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def kubeconfig(self, path: Any, namespace: str = "kubeflow-user") -> Any:
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: emulator\n  cluster:\n    server: {self.url}\n"
            "users:\n- name: ci\n  user:\n    token: emulator-accepts-any-token\n"
            f"contexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: ci\n"
            f"    namespace: {namespace}\n"
            "current-context: emulator\n"
        )
        return path
