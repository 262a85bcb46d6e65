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

* a Pod (``restartPolicy: Never``) is started by an emulated kubelet on its first read after creation: it
  stays ``Pending`` (``Unschedulable``) while a PersistentVolumeClaim it mounts does not exist; otherwise
  its container's ``command`` runs on this machine with each volume mount's path replaced by the local
  directory that holds the emulated volume's files (:meth:`KubeEmulator.volume_dir`), and the pod ends
  ``Succeeded`` or ``Failed`` with the container's exit code in ``containerStatuses``; its log
  (``pods/<name>/log``, stdout and stderr as the container runtime keeps them) is readable once the
  container has started, and a ``400`` before, as the API server answers for a waiting container.

It is not the real thing: no admission, no finalizers, no watch, no image pulls, and neither a read-only
mount nor a pod's security context is enforced (the command runs as this process's user). Tests say so.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
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
    "pods": {"apiVersion": "v1", "kind": "Pod", "group": ""},
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
    logs: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, pod) -> its container's log
    volumes_root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kube-emulator-")))

    def volume_dir(self, namespace: str, claim: str) -> Path:
        """The local directory holding the files of PVC ``claim`` (what a pod mounting it sees)."""
        path = self.volumes_root / namespace / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

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
            Rule("/api/v1/namespaces/<ns>/pods/<name>/log", endpoint="log"),
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
        self, request: Request, endpoint: str, ns: str, resource: str = "pods", name: str | None = None
    ) -> Response:
        if endpoint == "log":
            return self._log(request, ns, str(name))
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
        if resource in ("persistentvolumeclaims", "pods"):
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
        if resource == "pods" and obj["status"].get("phase") == "Pending":
            self._kubelet(ns, obj)
            return
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

    def _kubelet(self, ns: str, pod: dict[str, Any]) -> None:
        """Schedule and run a pending pod's single container to its end (restartPolicy Never)."""
        spec = pod["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec.get("volumes") or []
            if "persistentVolumeClaim" in v
        }
        missing = sorted(c for c in claims.values() if ("persistentvolumeclaims", ns, c) not in self.objects)
        if missing:
            pod["status"] = {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": f'persistentvolumeclaim "{missing[0]}" not found',
                    }
                ],
            }
            return
        [container] = spec["containers"]  # the emulated kubelet runs one container, as our pods have
        args = list(container.get("command") or []) + list(container.get("args") or [])
        for mount in container.get("volumeMounts") or []:
            local = str(self.volume_dir(ns, claims[mount["name"]]))
            args = [arg.replace(mount["mountPath"], local) for arg in args]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        self.logs[(ns, pod["metadata"]["name"])] = done.stdout + done.stderr
        pod["status"] = {
            "phase": "Succeeded" if done.returncode == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    # required in a ContainerStatus: the runtime's digest of what it ran
                    "imageID": container["image"].split("@")[0]
                    + "@sha256:"
                    + hashlib.sha256(container["image"].encode()).hexdigest(),
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": done.returncode,
                            "reason": "Completed" if done.returncode == 0 else "Error",
                            "finishedAt": _now(),
                        }
                    },
                }
            ],
        }
        self._bump(pod)

    def _log(self, request: Request, ns: str, name: str) -> Response:
        self.requests.append(("get", "", "pods/log"))
        pod = self.objects.get(("pods", ns, name))
        if pod is None:
            return self._status(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        container = request.args.get("container") or pod["spec"]["containers"][0]["name"]
        if (ns, name) not in self.logs:
            return self._status(
                400,
                "BadRequest",
                f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating',
            )
        return Response(self.logs[(ns, name)], status="200 OK", content_type="text/plain")

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
