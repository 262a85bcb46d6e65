"""An emulated Kubernetes API server for the serving backend's ``KubeApi`` — a fake at the client boundary.

It extends the storage port's emulator (tests/storage/storage_k8s_emulator.py: Status bodies, faults,
resourceVersion, the threaded server and kubeconfig) with the REST endpoints the official kubernetes
client calls for the TF Serving rollout, following the API's documented semantics:

* ConfigMaps, Services, PVCs, Pods (core/v1), Deployments (apps/v1), Jobs (batch/v1),
  HorizontalPodAutoscalers (autoscaling/v2), PodDisruptionBudgets (policy/v1) and Istio
  VirtualServices/DestinationRules (networking.istio.io/v1beta1, custom objects);
* create (POST): 201 with uid/resourceVersion/creationTimestamp (and ``generation``), ``409
  AlreadyExists``, ``400`` on kind/namespace mismatch; what an object deserves is judged by
  tests/k8s/api_rules.py, the API server's rules from Kubernetes' schemas and docs (never branchops' own
  validator): a wrong type is a ``400`` (``422`` on a patch), an unknown field is refused under
  ``fieldValidation=Strict`` and otherwise dropped with a ``Warning`` header (kept in ``warnings``), a
  failed validation is ``422 Invalid`` with its causes (Istio kinds: only metadata, no schema is shipped);
* patch (PATCH) by the content type the client sends: ``strategic-merge-patch+json`` (built-in kinds
  only; lists merged by their patchMergeKey: containers/volumes/env by name, container ports by
  containerPort, service ports by port) and ``merge-patch+json`` (RFC 7386); a custom object refuses a
  strategic patch with 415 as the real server does; a patch carrying a stale ``resourceVersion`` gets
  ``409 Conflict``; immutable fields (Deployment selector, PVC spec but its requests, Job template)
  give 422; the merged object is reviewed as a create's body is; generation bumps only when spec changes;
* update (PUT) needs the current ``resourceVersion``; delete honours ``propagationPolicy`` (a Job's
  pods are orphaned unless Background/Foreground is asked for, as batch/v1 does by default);
* every request needs a bearer token (401 otherwise);
* controllers, advanced one step on every read: a Deployment's pods go Pending -> Running (not ready)
  -> Ready, rolled by pod-template-hash with maxSurge/maxUnavailable 0, and its status reports
  observedGeneration, replicas, updatedReplicas, readyReplicas, availableReplicas; a Job runs one pod
  at a time to ``Succeeded`` (status.succeeded, condition Complete) or ``Failed`` (retried up to
  backoffLimit, then condition Failed/BackoffLimitExceeded), with the log set by the test;
* pod logs (``pods/NAME/log?container=``) and the API server proxy (``pods/NAME:PORT/proxy/...``,
  ``services/NAME:PORT/proxy/...`` to a ready pod the Service selects), answered by a handler the test
  installs; with none, or to a pod not Ready yet (TF Serving opens its REST port after its initial
  load), 503 as when nothing listens.

Not the real thing: no admission webhooks, no ReplicaSet objects, no watch, no field managers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from tests.storage.storage_k8s_emulator import KubeEmulator, RunningEmulator, _now

__all__ = ["RunningEmulator", "ServingKubeEmulator", "merge_patch", "strategic_merge"]

ISTIO = "networking.istio.io"

# plural -> (group, version, kind)
RESOURCES: dict[str, tuple[str, str, str]] = {
    "configmaps": ("", "v1", "ConfigMap"),
    "services": ("", "v1", "Service"),
    "persistentvolumeclaims": ("", "v1", "PersistentVolumeClaim"),
    "pods": ("", "v1", "Pod"),
    "deployments": ("apps", "v1", "Deployment"),
    "jobs": ("batch", "v1", "Job"),
    "horizontalpodautoscalers": ("autoscaling", "v2", "HorizontalPodAutoscaler"),
    "poddisruptionbudgets": ("policy", "v1", "PodDisruptionBudget"),
    "virtualservices": (ISTIO, "v1beta1", "VirtualService"),
    "destinationrules": (ISTIO, "v1beta1", "DestinationRule"),
}
WITH_GENERATION = {
    "deployments",
    "jobs",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
    "virtualservices",
    "destinationrules",
}

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def api_version(resource: str) -> str:
    group, version, _ = RESOURCES[resource]
    return f"{group}/{version}" if group else version


# -- patches --------------------------------------------------------------------------------------------


def merge_patch(original: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _merge_key(path: tuple[str, ...], key: str) -> str | None:
    """The patchMergeKey of the list field ``key`` at ``path`` (core/v1 and apps/v1 types), else None."""
    if key == "ports":
        return "containerPort" if path and path[-1] in ("containers", "initContainers") else "port"
    return {
        "containers": "name",
        "initContainers": "name",
        "volumes": "name",
        "env": "name",
        "volumeMounts": "mountPath",
        "imagePullSecrets": "name",
        "conditions": "type",
    }.get(key)


def strategic_merge(original: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """A strategic merge patch (the subset the built-in kinds here need): maps merge, null deletes,
    lists with a patchMergeKey merge item by item (``$patch: delete`` removes one), other lists replace."""
    if not isinstance(patch, dict) or not isinstance(original, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(original)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
            continue
        current = out.get(key)
        merge_key = _merge_key(path, key)
        if isinstance(value, list) and isinstance(current, list) and merge_key:
            merged = [copy.deepcopy(item) for item in current]
            for item in value:
                index = next(
                    (i for i, old in enumerate(merged) if old.get(merge_key) == item.get(merge_key)), None
                )
                if item.get("$patch") == "delete":
                    if index is not None:
                        merged.pop(index)
                elif index is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[index] = strategic_merge(merged[index], item, path + (key,))
            out[key] = merged
        elif isinstance(value, dict) and isinstance(current, dict):
            out[key] = strategic_merge(current, value, path + (key,))
        else:
            out[key] = copy.deepcopy(value)
    return out


# -- the emulator ---------------------------------------------------------------------------------------

ProxyHandler = Callable[[dict[str, Any], str, str, bytes], tuple[int, Any]]


@dataclass
class ServingKubeEmulator(KubeEmulator):
    ready_after_ticks: int = 2  # reads before a new pod is Ready (one more before it is Running)
    job_ticks: int = 2  # reads a Job's pod runs before it ends
    job_outcomes: dict[str, tuple[bool, str]] = field(default_factory=dict)  # job -> (succeeds, log)
    proxy_handler: ProxyHandler | None = None  # (pod, method, path, body) -> (status, JSON body)
    owners: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # pod uid -> (resource, ns, name)
    ages: dict[str, int] = field(default_factory=dict)  # pod uid -> reads since it was created
    content_types: list[tuple[str, str, str]] = field(default_factory=list)  # (verb, resource, Content-Type)
    authorizations: list[str] = field(default_factory=list)  # the Authorization header of each request
    proxied: list[tuple[str, str, str]] = field(default_factory=list)  # (pod, method, path)

    url_map = Map(
        [
            Rule("/api/v1/namespaces/<ns>/<resource>", endpoint="collection"),
            Rule("/api/v1/namespaces/<ns>/<resource>/<name>", endpoint="item"),
            Rule("/api/v1/namespaces/<ns>/<resource>/<name>/<sub>", endpoint="sub"),
            Rule("/api/v1/namespaces/<ns>/<resource>/<name>/proxy/<path:rest>", endpoint="proxy"),
            Rule("/apis/<group>/<version>/namespaces/<ns>/<resource>", endpoint="collection"),
            Rule("/apis/<group>/<version>/namespaces/<ns>/<resource>/<name>", endpoint="item"),
            Rule("/apis/<group>/<version>/namespaces/<ns>/<resource>/<name>/<sub>", endpoint="sub"),
        ]
    )

    # -- helpers for tests ---------------------------------------------------------------------------
    def of(self, resource: str, namespace: str) -> dict[str, dict[str, Any]]:
        return {n: o for (r, ns, n), o in sorted(self.objects.items()) if r == resource and ns == namespace}

    def pods_of(self, resource: str, namespace: str, name: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.of("pods", namespace).values()
            if self.owners.get(p["metadata"]["uid"]) == (resource, namespace, name)
        ]

    def settle(self, ticks: int = 10) -> None:
        """Let the controllers run as many steps as that many reads would."""
        with self.lock:
            for _ in range(ticks):
                self._tick()

    # -- routing -------------------------------------------------------------------------------------
    def _not_found(self, resource: str, name: str) -> Response:
        group = RESOURCES[resource][0] if resource in RESOURCES else ""
        return self._status(
            404,
            "NotFound",
            f'{resource}{"." + group if group else ""} "{name}" not found',
            {"name": name, "group": group, "kind": resource},
        )

    def _dispatch(
        self,
        request: Request,
        endpoint: str,
        ns: str,
        resource: str,
        name: str | None = None,
        group: str = "",
        version: str = "v1",
        sub: str | None = None,
        rest: str | None = None,
    ) -> Response:
        known = RESOURCES.get(resource)
        if known is None or known[:2] != (group, version):
            return self._status(404, "NotFound", "the server could not find the requested resource")
        auth = request.headers.get("Authorization", "")
        self.authorizations.append(auth)
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            return self._status(401, "Unauthorized", "Unauthorized")
        if endpoint == "proxy" or (endpoint == "sub" and sub == "proxy"):
            verb, fault_resource = "proxy", f"{resource}/proxy"
        elif endpoint == "sub":
            verb = {("GET", "status"): "status", ("GET", "log"): "log"}.get((request.method, sub or ""), "")
            fault_resource = f"{resource}/{sub}"
        else:
            verb = {
                ("collection", "GET"): "list",
                ("collection", "POST"): "create",
                ("item", "GET"): "get",
                ("item", "PATCH"): "patch",
                ("item", "PUT"): "update",
                ("item", "DELETE"): "delete",
            }.get((endpoint, request.method), "")
            fault_resource = resource
        if not verb:
            return self._status(405, "MethodNotAllowed", f"{request.method} is not supported here")
        self.requests.append((verb, group, fault_resource))
        self.content_types.append((verb, fault_resource, request.headers.get("Content-Type", "")))
        for fault in self.faults:
            if fault.method == request.method and fault.resource == fault_resource and fault.times > 0:
                fault.times -= 1
                return self._status(fault.status, fault.reason, fault.message)
        if verb in ("list", "get", "status", "log", "proxy"):
            self._tick()  # what the controllers did by the time of this read
        if verb == "proxy":
            return self._proxy(request, ns, resource, name or "", rest or "")
        return getattr(self, f"_verb_{verb}")(request, ns, resource, name)

    def _body(self, request: Request) -> Any:
        try:
            return json.loads(request.get_data(as_text=True))
        except ValueError:
            return None

    def _check(
        self,
        request: Request,
        obj: dict[str, Any],
        resource: str,
        ns: str,
        *,
        patch: bool = False,
        old: dict[str, Any] | None = None,
    ) -> tuple[Response | None, dict[str, Any]]:
        """The request checks of create/update/patch, then the API server's review of what would be stored:
        (the refusal or None, the object as it would be stored)."""
        kind = RESOURCES[resource][2]
        if obj.get("kind") != kind or obj.get("apiVersion") != api_version(resource):
            return self._status(
                400,
                "BadRequest",
                f"the object is a {obj.get('apiVersion')} {obj.get('kind')}, "
                f"not a {api_version(resource)} {kind}",
            ), obj
        if (obj.get("metadata") or {}).get("namespace", ns) != ns:
            return self._status(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            ), obj
        return self._review(request, obj, patch=patch, old=old)

    # -- verbs ---------------------------------------------------------------------------------------
    def _verb_create(self, request: Request, ns: str, resource: str, _: None) -> Response:
        body = self._body(request)
        if not isinstance(body, dict):
            return self._status(400, "BadRequest", "the request body is not a JSON object")
        self.received.append(copy.deepcopy(body))
        problem, body = self._check(request, body, resource, ns)
        if problem:
            return problem
        meta = body.setdefault("metadata", {})
        # The review refused an object with neither a name nor a generateName.
        name = meta["name"] = meta.get("name") or meta["generateName"] + uuid.uuid4().hex[:5]
        if (resource, ns, name) in self.objects:
            return self._status(
                409,
                "AlreadyExists",
                f'{resource} "{name}" already exists',
                {"name": name, "group": RESOURCES[resource][0], "kind": resource},
            )
        meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now())
        meta.pop("resourceVersion", None)
        if resource in WITH_GENERATION:
            meta["generation"] = 1
        if resource == "services" and body["spec"].get("type", "ClusterIP") != "None":
            ip = f"10.96.{len(self.objects) % 250}.{len(self.objects) % 200 + 10}"
            body["spec"].setdefault("clusterIP", ip)
            body["spec"].setdefault("clusterIPs", [body["spec"]["clusterIP"]])
        if resource == "persistentvolumeclaims":
            body["status"] = {"phase": "Pending"}
        elif resource in ("deployments", "jobs"):
            body["status"] = {}
        elif resource == "horizontalpodautoscalers":  # Go int32 fields without omitempty are sent as 0
            body["status"] = {"desiredReplicas": 0}
        elif resource == "poddisruptionbudgets":
            body["status"] = {
                "currentHealthy": 0,
                "desiredHealthy": 0,
                "disruptionsAllowed": 0,
                "expectedPods": 0,
            }
        self._bump(body)
        self.objects[(resource, ns, name)] = body
        return self._json(body, 201)

    def _verb_get(self, request: Request, ns: str, resource: str, name: str) -> Response:
        obj = self.objects.get((resource, ns, name))
        return self._json(obj) if obj is not None else self._not_found(resource, name)

    def _verb_status(self, request: Request, ns: str, resource: str, name: str) -> Response:
        return self._verb_get(request, ns, resource, name)

    def _verb_list(self, request: Request, ns: str, resource: str, _: None) -> Response:
        wanted = [
            tuple(part.split("=", 1)) for part in request.args.get("labelSelector", "").split(",") if part
        ]
        if any(len(w) != 2 for w in wanted):
            return self._status(400, "BadRequest", "only equality label selectors are emulated")
        items = [
            obj
            for obj in self.of(resource, ns).values()
            if all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in wanted)
        ]
        return self._json(
            {
                "apiVersion": api_version(resource),
                "kind": f"{RESOURCES[resource][2]}List",
                "metadata": {"resourceVersion": str(self.resource_version)},
                "items": items,
            }
        )

    def _verb_patch(self, request: Request, ns: str, resource: str, name: str) -> Response:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        custom = RESOURCES[resource][0] == ISTIO
        if content_type not in ((MERGE,) if custom else (MERGE, STRATEGIC)):
            accepted = ", ".join([JSON_PATCH, MERGE] + ([] if custom else [STRATEGIC]))
            return self._status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - "
                f"accepted media types include: {accepted}",
            )
        patch = self._body(request)
        if not isinstance(patch, dict):
            return self._status(400, "BadRequest", "the patch is not a JSON object")
        self.received.append(copy.deepcopy(patch))
        current = self.objects.get((resource, ns, name))
        if current is None:
            return self._not_found(resource, name)
        wanted_version = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted_version is not None and wanted_version != current["metadata"]["resourceVersion"]:
            return self._conflict(resource, name)
        merged = (merge_patch if content_type == MERGE else strategic_merge)(current, patch)
        return self._store(request, current, merged, resource, ns, name, patch=True)

    def _verb_update(self, request: Request, ns: str, resource: str, name: str) -> Response:
        body = self._body(request)
        if not isinstance(body, dict):
            return self._status(400, "BadRequest", "the request body is not a JSON object")
        self.received.append(copy.deepcopy(body))
        current = self.objects.get((resource, ns, name))
        if current is None:
            return self._not_found(resource, name)
        wanted_version = (body.get("metadata") or {}).get("resourceVersion")
        if not wanted_version:
            return self._status(
                422,
                "Invalid",
                f'{RESOURCES[resource][2]} "{name}" is invalid: '
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            )
        if wanted_version != current["metadata"]["resourceVersion"]:
            return self._conflict(resource, name)
        body["status"] = copy.deepcopy(current.get("status"))  # the main resource cannot change status
        if body["status"] is None:
            body.pop("status")
        return self._store(request, current, body, resource, ns, name)

    def _conflict(self, resource: str, name: str) -> Response:
        group = RESOURCES[resource][0]
        return self._status(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {resource}{"." + group if group else ""} '
            f'"{name}": the object has been modified; please apply your changes to the latest '
            "version and try again",
            {"name": name, "group": group, "kind": resource},
        )

    def _store(
        self,
        request: Request,
        current: dict[str, Any],
        new: dict[str, Any],
        resource: str,
        ns: str,
        name: str,
        *,
        patch: bool = False,
    ) -> Response:
        meta = new.setdefault("metadata", {})
        for key in ("name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion"):
            if key in current["metadata"]:
                if (
                    key in ("name", "namespace")
                    and meta.get(key, current["metadata"][key]) != current["metadata"][key]
                ):
                    return self._status(422, "Invalid", f"metadata.{key}: Invalid value: field is immutable")
                meta[key] = current["metadata"][key]
        immutable = {
            "deployments": [("spec", "selector")],
            "jobs": [("spec", "template"), ("spec", "selector")],
            "services": [("spec", "clusterIP")],
        }.get(resource, [])
        if resource == "persistentvolumeclaims":
            new_spec = {k: v for k, v in new.get("spec", {}).items() if k != "resources"}
            old_spec = {k: v for k, v in current.get("spec", {}).items() if k != "resources"}
            if new_spec != old_spec:
                return self._status(
                    422,
                    "Invalid",
                    f'PersistentVolumeClaim "{name}" is invalid: spec: Forbidden: '
                    "spec is immutable after creation except resources.requests and "
                    "volumeAttributesClassName for bound claims",
                )
        for path in immutable:
            if _dig(new, path) != _dig(current, path):
                return self._status(
                    422,
                    "Invalid",
                    f'{RESOURCES[resource][2]} "{name}" is invalid: '
                    f'{".".join(path)}: Invalid value: field is immutable',
                )
        problem, new = self._check(request, new, resource, ns, patch=patch, old=current)
        if problem:
            return problem
        meta = new["metadata"]
        if new == current:
            return self._json(current)  # a no-op write keeps the resourceVersion
        if resource in WITH_GENERATION and new.get("spec") != current.get("spec"):
            meta["generation"] = current["metadata"].get("generation", 1) + 1
        self._bump(new)
        self.objects[(resource, ns, name)] = new
        return self._json(new)

    def _verb_delete(self, request: Request, ns: str, resource: str, name: str) -> Response:
        obj = self.objects.pop((resource, ns, name), None)
        if obj is None:
            return self._not_found(resource, name)
        policy = request.args.get("propagationPolicy") or (self._body(request) or {}).get("propagationPolicy")
        # batch/v1 Jobs orphan their pods unless asked otherwise (kept for backwards compatibility).
        default = "Orphan" if resource == "jobs" else "Background"
        if (policy or default) != "Orphan":
            for pod in self.pods_of(resource, ns, name):
                self._drop_pod(pod)
        else:
            for pod in self.pods_of(resource, ns, name):
                self.owners.pop(pod["metadata"]["uid"], None)
        self.resource_version += 1
        group = RESOURCES[resource][0]
        return self._json(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "group": group, "kind": resource, "uid": obj["metadata"]["uid"]},
            }
        )

    def _verb_log(self, request: Request, ns: str, resource: str, name: str) -> Response:
        if resource != "pods":
            return self._status(404, "NotFound", "the server could not find the requested resource")
        pod = self.objects.get(("pods", ns, name))
        if pod is None:
            return self._not_found("pods", name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = request.args.get("container") or (containers[0] if len(containers) == 1 else None)
        if container is None:
            return self._status(
                400,
                "BadRequest",
                f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]",
            )
        if container not in containers:
            return self._status(400, "BadRequest", f"container {container} is not valid for pod {name}")
        if pod["status"]["phase"] == "Pending":
            return self._status(
                400,
                "BadRequest",
                f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating',
            )
        return Response(
            pod["metadata"].get("annotations", {}).get("emulator/log", ""),
            status="200 OK",
            content_type="text/plain",
        )

    def _proxy(self, request: Request, ns: str, resource: str, target: str, rest: str) -> Response:
        name = target.split(":", 1)[0]
        if resource == "services":
            service = self.objects.get(("services", ns, name))
            if service is None:
                return self._not_found("services", name)
            selector = service["spec"].get("selector") or {}
            ready = [
                p
                for p in self.of("pods", ns).values()
                if _is_ready(p) and all(p["metadata"]["labels"].get(k) == v for k, v in selector.items())
            ]
            if not ready:
                return self._status(503, "ServiceUnavailable", f'no endpoints available for service "{name}"')
            pod = ready[len(self.proxied) % len(ready)]
        elif resource == "pods":
            pod = self.objects.get(("pods", ns, name))
            if pod is None:
                return self._not_found("pods", name)
        else:
            return self._status(404, "NotFound", "the server could not find the requested resource")
        path = "/" + rest
        self.proxied.append((pod["metadata"]["name"], request.method, path))
        # TF Serving opens its REST port only once its initial models are loaded, i.e. about when the
        # readiness probe passes: before, the API server cannot connect.
        if self.proxy_handler is None or not _is_ready(pod):
            return self._status(
                503,
                "ServiceUnavailable",
                f"error trying to reach service: dial tcp "
                f"{pod['status'].get('podIP', '<none>')}:8501: connect: connection refused",
            )
        status, payload = self.proxy_handler(pod, request.method, path, request.get_data())
        return self._json(payload, status)

    # -- controllers ---------------------------------------------------------------------------------
    def _tick(self) -> None:
        for pod in [o for (r, _, _), o in list(self.objects.items()) if r == "pods"]:
            self._age(pod)
        for (resource, ns, name), obj in list(self.objects.items()):
            if resource == "deployments":
                self._reconcile_deployment(ns, name, obj)
            elif resource == "jobs":
                self._reconcile_job(ns, name, obj)
            elif resource == "persistentvolumeclaims" and obj["status"].get("phase") == "Pending":
                obj["status"] = {
                    "phase": "Bound",
                    "accessModes": obj["spec"]["accessModes"],
                    "capacity": dict(obj["spec"]["resources"]["requests"]),
                }
                self._bump(obj)

    def _age(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        if pod["status"]["phase"] in ("Succeeded", "Failed") or pod["metadata"].get("deletionTimestamp"):
            return
        self.ages[uid] = age = self.ages.get(uid, 0) + 1
        owner = self.owners.get(uid, ("", "", ""))
        status = pod["status"]
        if owner[0] == "jobs" and age > self.job_ticks:
            succeeds, _ = self.job_outcomes.get(owner[2], (True, ""))
            status.update(phase="Succeeded" if succeeds else "Failed", conditions=_conditions(ready=False))
        elif age >= 1 and status["phase"] == "Pending":
            status.update(
                phase="Running",
                podIP=f"10.244.0.{len(self.ages) % 250 + 2}",
                startTime=_now(),
                conditions=_conditions(ready=False),
            )
        elif owner[0] == "deployments" and age > self.ready_after_ticks and not _is_ready(pod):
            status["conditions"] = _conditions(ready=True)
        else:
            return
        self._bump(pod)

    def _new_pod(
        self,
        owner: tuple[str, str, str],
        template: dict[str, Any],
        labels: dict[str, str],
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        _, ns, owner_name = owner
        name = f"{owner_name}-{uuid.uuid4().hex[:5]}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": ns,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": _now(),
                "labels": {**(template.get("metadata") or {}).get("labels", {}), **labels},
                "annotations": {
                    **(template.get("metadata") or {}).get("annotations", {}),
                    **(annotations or {}),
                },
            },
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
        }
        self._bump(pod)
        self.objects[("pods", ns, name)] = pod
        self.owners[pod["metadata"]["uid"]] = owner
        return pod

    def _drop_pod(self, pod: dict[str, Any]) -> None:
        self.objects.pop(("pods", pod["metadata"]["namespace"], pod["metadata"]["name"]), None)
        self.owners.pop(pod["metadata"]["uid"], None)

    def _reconcile_deployment(self, ns: str, name: str, deployment: dict[str, Any]) -> None:
        spec = deployment["spec"]
        wanted = spec.get("replicas", 1)
        template_hash = hashlib.sha256(json.dumps(spec["template"], sort_keys=True).encode()).hexdigest()[:10]
        rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        surge = rolling.get("maxSurge", 1) if isinstance(rolling.get("maxSurge", 1), int) else 1
        pods = [
            p for p in self.pods_of("deployments", ns, name) if not p["metadata"].get("deletionTimestamp")
        ]
        new = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == template_hash]
        old = [p for p in pods if p not in new]
        ready_new = [p for p in new if _is_ready(p)]
        while (
            old and len(old) + len(ready_new) > wanted
        ):  # maxUnavailable 0: retire old pods as new ones are ready
            self._drop_pod(old.pop())
        while len(new) > wanted:
            extra = next((p for p in reversed(new) if not _is_ready(p)), new[-1])
            new.remove(extra)
            self._drop_pod(extra)
        while len(new) < wanted and len(new) + len(old) < wanted + (surge if old else 0):
            new.append(
                self._new_pod(
                    ("deployments", ns, name), spec["template"], {"pod-template-hash": template_hash}
                )
            )
        pods = self.pods_of("deployments", ns, name)
        updated = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == template_hash]
        ready = [p for p in pods if _is_ready(p)]
        status = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": len(pods),
            "updatedReplicas": len(updated),
            "readyReplicas": len(ready),
            "availableReplicas": len(ready),
            "conditions": [
                {"type": "Available", "status": "True" if len(ready) >= wanted else "False"},
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable"
                    if len(updated) == len(ready) == wanted
                    else "ReplicaSetUpdated",
                },
            ],
        }
        if len(pods) > len(ready):
            status["unavailableReplicas"] = len(pods) - len(ready)
        status = {k: v for k, v in status.items() if v != 0}
        if status != deployment["status"]:
            deployment["status"] = status
            self._bump(deployment)

    def _reconcile_job(self, ns: str, name: str, job: dict[str, Any]) -> None:
        status = job["status"]
        if any(c["status"] == "True" for c in status.get("conditions", [])):
            return
        pods = self.pods_of("jobs", ns, name)
        succeeded = [p for p in pods if p["status"]["phase"] == "Succeeded"]
        failed = [p for p in pods if p["status"]["phase"] == "Failed"]
        active = [p for p in pods if p not in succeeded and p not in failed]
        new_status: dict[str, Any] = {"startTime": status.get("startTime", _now())}
        if succeeded:
            new_status.update(
                succeeded=1,
                completionTime=_now(),
                conditions=[
                    {
                        "type": "Complete",
                        "status": "True",
                        "lastProbeTime": _now(),
                        "lastTransitionTime": _now(),
                    }
                ],
            )
        elif len(failed) > job["spec"].get("backoffLimit", 6):
            new_status["conditions"] = [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                    "lastProbeTime": _now(),
                    "lastTransitionTime": _now(),
                }
            ]
        elif not active:
            _, log = self.job_outcomes.get(name, (True, ""))
            self._new_pod(
                ("jobs", ns, name),
                job["spec"]["template"],
                {
                    "job-name": name,
                    "batch.kubernetes.io/job-name": name,
                    "controller-uid": job["metadata"]["uid"],
                },
                {"emulator/log": log},
            )
            active = [1]  # type: ignore[list-item]
        if active and not succeeded:
            new_status["active"] = len(active)
        if failed:
            new_status["failed"] = len(failed)
        if new_status != status:
            job["status"] = new_status
            self._bump(job)


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _conditions(ready: bool) -> list[dict[str, str]]:
    flag = "True" if ready else "False"
    return [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": flag},
        {"type": "Ready", "status": flag},
    ]


def _is_ready(pod: dict[str, Any]) -> bool:
    return (
        pod["status"].get("phase") == "Running"
        and not pod["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
    )
