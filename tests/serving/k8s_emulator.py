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
* a Pod created on its own (no Deployment or Job owns it: the short-lived pods that read or write a
  volume's files) is run by the storage emulator's kubelet: Pending while a PVC it mounts is missing,
  else its command runs here against the emulated volumes' directories and it ends Succeeded or Failed
  with the exit code, its output as its log, of which the kubelet keeps only the newest
  ``container_log_max_bytes`` (its containerLogMaxSize; unlimited by default);
* pod logs (``pods/NAME/log?container=``) and the API server proxy (``pods/NAME:PORT/proxy/...``,
  ``services/NAME:PORT/proxy/...`` to a ready pod the Service selects), answered by a handler the test
  installs; with none, or to a pod not Ready yet (TF Serving opens its REST port after its initial
  load), 503 as when nothing listens.

* TF Serving in the pods (``TfServingReplica``), as tensorflow_serving/model_servers/server_core.cc and
  server.cc behave: at start and on every ``--model_config_file_poll_wait_seconds`` it reads
  ``models.config`` as the kubelet has synced it into the pod (ConfigMap volumes change only after
  ``kubelet_sync_s``), and ReloadConfig applies the version labels *before* it loads anything: a label
  naming a version that is not AVAILABLE refuses the whole config ("Request to assign label to version
  N of model M, which is not currently available for inference") unless
  ``--allow_version_labels_for_unavailable_models`` is set and the label is new or unchanged. At start
  nothing is loaded yet, so a labelled config without the flag makes the container exit: the pod
  crash-loops (CrashLoopBackOff, restartCount) and never becomes Ready. A refused config at a later poll
  is logged and the replica keeps serving what it had. Model status and labels are answered through the
  proxy from that state (``/v1/models/NAME[/versions/N|/labels/L]``) when the test's handler answers
  ``None``; ``fails_readiness`` keeps chosen pods un-Ready;
* deletion as the garbage collector does it: ``Foreground`` keeps the owner (deletionTimestamp,
  finalizer ``foregroundDeletion``) until its pods are gone; ``Background`` removes the owner at once
  and its pods terminate afterwards (``pod_termination_ticks``); a create while an object of that name
  is still terminating is ``409 AlreadyExists``.

Not the real thing: no admission webhooks, no ReplicaSet objects, no watch, no field managers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
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
    "volumesnapshots": ("snapshot.storage.k8s.io", "v1", "VolumeSnapshot"),
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


LABELS_FOR_UNAVAILABLE_FLAG = "--allow_version_labels_for_unavailable_models"
POLL_FLAG = "--model_config_file_poll_wait_seconds="


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


# -- TF Serving in a pod --------------------------------------------------------------------------------


def parse_models_config(text: str) -> tuple[str, list[int], dict[str, int]]:
    """(model name, versions of the ``specific`` policy, version labels) of a one-model ModelServerConfig."""
    name = re.search(r'name:\s*"([^"]*)"', text)
    versions = [int(v) for v in re.findall(r"versions:\s*(\d+)", text)]
    labels = {
        key: int(value)
        for key, value in re.findall(r'version_labels\s*\{\s*key:\s*"([^"]*)"\s*value:\s*(\d+)\s*\}', text)
    }
    return (name[1] if name else ""), versions, labels


@dataclass
class TfServingReplica:
    """What one TF Serving container made of its model config file (server_core.cc: ReloadConfig runs
    UpdateModelVersionLabelMap, then adds/removes models)."""

    allow_labels_for_unavailable: bool
    poll_s: float
    started: float
    model: str = ""
    available: set[int] = field(default_factory=set)
    labels: dict[str, int] = field(default_factory=dict)
    read_text: str | None = None  # the config text last read
    error: str = ""
    crashed: bool = False
    restarts: int = 0
    polls: int = 0

    def reload(self, text: str, first: bool) -> bool:
        """ReloadConfig(``text``); False (and ``error``) if TF Serving refuses it."""
        self.read_text = text
        model, versions, labels = parse_models_config(text)
        available = set() if first else self.available
        for label, version in labels.items():
            # The flag lets a label name an unavailable version only if the label is new or unchanged.
            allowed = self.allow_labels_for_unavailable and self.labels.get(label, version) == version
            if version not in available and not allowed:
                self.error = (
                    f"Request to assign label to version {version} of model {model}, "
                    "which is not currently available for inference"
                )
                return False
        self.model, self.labels, self.available, self.error = model, labels, set(versions), ""
        return True

    def status(self, path: str) -> tuple[int, Any] | None:
        """TF Serving's answer to a model status GET, or None for any other path."""
        match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?", path)
        if not match:
            return None
        if match[1] != self.model:
            return 404, {"error": f"Servable not found for request: Latest({match[1]})"}
        if match[3] is not None:
            if match[3] not in self.labels:
                return 404, {"error": f"Unrecognized servable version label: {match[3]}"}
            versions = [self.labels[match[3]]]
        elif match[2] is not None:
            versions = [int(match[2])]
        else:
            versions = sorted(self.available, reverse=True)
        found = [v for v in versions if v in self.available]
        if not versions:
            return 404, {"error": f"Could not find any versions of model {match[1]}"}
        if not found:
            return 404, {"error": f"Could not find version {versions[0]} of model {match[1]}"}
        ok = {"error_code": "OK", "error_message": ""}
        return 200, {
            "model_version_status": [{"version": str(v), "state": "AVAILABLE", "status": ok} for v in found]
        }


# -- the emulator ---------------------------------------------------------------------------------------

# (pod, method, path, body) -> (status, JSON body), or None to leave the answer to the emulated TF Serving
ProxyHandler = Callable[[dict[str, Any], str, str, bytes], tuple[int, Any] | None]


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
    queries: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # (verb, resource, args)
    kubelet_sync_s: float = (
        0.0  # before a ConfigMap change shows in the pods' volumes (about a minute for real)
    )
    config_poll_s: float | None = 0.0  # TF Serving's config poll; None: each pod's own flag
    fails_readiness: Callable[[dict[str, Any]], bool] | None = None  # pods whose probe fails
    pod_termination_ticks: int = 2  # reads a deleted pod takes to terminate (its grace period)
    replicas: dict[str, TfServingReplica] = field(default_factory=dict)  # pod uid -> its TF Serving
    config_history: dict[tuple[str, str], list[tuple[float, str]]] = field(default_factory=dict)
    terminating: dict[str, int] = field(default_factory=dict)  # pod uid -> reads until it is gone
    events: list[tuple[str, str, str, str]] = field(default_factory=list)  # (ns, object, reason, message)
    created_pods: set[str] = field(default_factory=set)  # uids of the pods created through the API
    container_log_max_bytes: int | None = None  # the kubelet's containerLogMaxSize (10 MiB by default)

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

    def replica(self, namespace: str, pod_name: str) -> TfServingReplica | None:
        pod = self.objects.get(("pods", namespace, pod_name))
        return self.replicas.get(pod["metadata"]["uid"]) if pod else None

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
        self.queries.append((verb, fault_resource, dict(request.args)))
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
        existing = self.objects.get((resource, ns, name))
        if existing is not None:
            group = RESOURCES[resource][0]
            message = f'{resource} "{name}" already exists'
            if existing["metadata"].get("deletionTimestamp"):
                qualified = f"{resource}.{group}" if group else resource
                message = f'object is being deleted: {qualified} "{name}" already exists'
            return self._status(
                409,
                "AlreadyExists",
                message,
                {"name": name, "group": group, "kind": resource},
            )
        meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now())
        meta.pop("resourceVersion", None)
        if resource in WITH_GENERATION:
            meta["generation"] = 1
        if resource == "services" and body["spec"].get("type", "ClusterIP") != "None":
            ip = f"10.96.{len(self.objects) % 250}.{len(self.objects) % 200 + 10}"
            body["spec"].setdefault("clusterIP", ip)
            body["spec"].setdefault("clusterIPs", [body["spec"]["clusterIP"]])
        if resource in ("persistentvolumeclaims", "pods"):
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
        if resource == "pods":
            self.created_pods.add(meta["uid"])
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
        obj = self.objects.get((resource, ns, name))
        if obj is None:
            return self._not_found(resource, name)
        policy = request.args.get("propagationPolicy") or (self._body(request) or {}).get("propagationPolicy")
        # batch/v1 Jobs orphan their pods unless asked otherwise (kept for backwards compatibility).
        policy = policy or ("Orphan" if resource == "jobs" else "Background")
        if policy not in ("Orphan", "Background", "Foreground"):
            return self._status(
                400,
                "BadRequest",
                f'propagationPolicy "{policy}" is not one of Orphan, Background, Foreground',
            )
        dependents = self.pods_of(resource, ns, name)
        if policy == "Orphan":
            for pod in dependents:
                self.owners.pop(pod["metadata"]["uid"], None)
        else:
            for pod in dependents:
                self._terminate_pod(pod)
                if policy == "Background":  # collected already: no longer anyone's, still running a while
                    self.owners.pop(pod["metadata"]["uid"], None)
        if policy == "Foreground" and dependents:
            # The owner stays, terminating, until the garbage collector has removed its dependents.
            meta = obj["metadata"]
            meta.setdefault("deletionTimestamp", _now())
            meta["deletionGracePeriodSeconds"] = 0
            meta["finalizers"] = sorted({*meta.get("finalizers", []), "foregroundDeletion"})
            self._bump(obj)
            return self._json(obj)
        self.objects.pop((resource, ns, name))
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
        if (ns, name) in self.logs:  # what a pod run by the kubelet printed
            return Response(self.logs[(ns, name)], status="200 OK", content_type="text/plain")
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
        answer = None
        if _is_ready(pod):
            if self.proxy_handler is not None:
                answer = self.proxy_handler(pod, request.method, path, request.get_data())
            replica = self.replicas.get(pod["metadata"]["uid"])
            if answer is None and replica is not None and request.method == "GET":
                answer = replica.status(path)
        if answer is None:
            return self._status(
                503,
                "ServiceUnavailable",
                f"error trying to reach service: dial tcp "
                f"{pod['status'].get('podIP', '<none>')}:8501: connect: connection refused",
            )
        status, payload = answer
        return self._json(payload, status)

    # -- controllers ---------------------------------------------------------------------------------
    def _tick(self) -> None:
        for pod in [o for (r, _, _), o in list(self.objects.items()) if r == "pods"]:
            uid = pod["metadata"]["uid"]
            if uid in self.terminating:
                self.terminating[uid] -= 1
                if self.terminating[uid] <= 0:
                    self._drop_pod(pod)
                continue
            self._age(pod)
        for (resource, ns, name), obj in list(self.objects.items()):
            meta = obj["metadata"]
            if "foregroundDeletion" in meta.get("finalizers", []):
                if not self.pods_of(resource, ns, name):  # the dependents are gone: so is the owner
                    self.objects.pop((resource, ns, name))
                    self.resource_version += 1
                continue
            if resource == "deployments":
                self._reconcile_deployment(ns, name, obj)
            elif resource == "jobs":
                self._reconcile_job(ns, name, obj)
            elif resource == "persistentvolumeclaims" and obj["status"].get("phase") == "Pending":
                problem = self._provisioning_problem(ns, obj)
                if problem:  # the claim stays Pending; the provisioner says why in an event
                    event = (ns, name, "ProvisioningFailed", problem)
                    if event not in self.events:
                        self.events.append(event)
                    continue
                obj["status"] = {
                    "phase": "Bound",
                    "accessModes": obj["spec"]["accessModes"],
                    "capacity": dict(obj["spec"]["resources"]["requests"]),
                }
                self._bump(obj)

    def _provisioning_problem(self, ns: str, claim: dict[str, Any]) -> str | None:
        """Why the CSI external-provisioner cannot provision this claim from its data source, or None.
        ``dataSource`` is a TypedLocalObjectReference: the snapshot is looked up in the claim's namespace."""
        source = claim["spec"].get("dataSource") or {}
        if source.get("kind") != "VolumeSnapshot":
            return None
        name = source.get("name", "")
        snapshot = self.objects.get(("volumesnapshots", ns, name))
        if snapshot is None:
            return (
                f"error getting handle for DataSource Type VolumeSnapshot by Name {name}: error getting "
                f'snapshot {name} from api server: volumesnapshots.snapshot.storage.k8s.io "{name}" not found'
            )
        status = snapshot.get("status") or {}
        if not status.get("readyToUse"):
            return f"snapshot {name} is not Ready"
        requested = claim["spec"]["resources"]["requests"]["storage"]
        restore = status.get("restoreSize")
        if restore is not None and quantity_bytes(requested) < quantity_bytes(restore):
            return (
                f"requested volume size {quantity_bytes(requested)} is less than the size "
                f"{quantity_bytes(restore)} for the source snapshot {name}"
            )
        return None

    def _bump(self, obj: dict[str, Any]) -> None:
        super()._bump(obj)
        if obj.get("kind") == "ConfigMap":  # what the kubelet will sync into the pods that mount it
            meta = obj["metadata"]
            history = self.config_history.setdefault((meta["namespace"], meta["name"]), [])
            text = (obj.get("data") or {}).get("models.config", "")
            if not history or history[-1][1] != text:
                history.append((time.monotonic(), text))

    def _mounted_config(self, pod: dict[str, Any], started: float) -> str | None:
        """models.config as the kubelet has put it into this pod's volume: the ConfigMap as it was when
        the pod started, or a later version once ``kubelet_sync_s`` has passed since it changed."""
        name = next(
            (v["configMap"]["name"] for v in pod["spec"].get("volumes", []) if "configMap" in v), None
        )
        history = self.config_history.get((pod["metadata"]["namespace"], name or ""), [])
        now = time.monotonic()
        synced = [
            text for changed, text in history if changed <= started or changed + self.kubelet_sync_s <= now
        ]
        return synced[-1] if synced else None

    def _start_tf_serving(self, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        args = container.get("args") or []
        if not any(a.startswith("--model_config_file=") for a in args):
            return
        flag = any(a in (LABELS_FOR_UNAVAILABLE_FLAG, f"{LABELS_FOR_UNAVAILABLE_FLAG}=true") for a in args)
        own_poll = next((float(a[len(POLL_FLAG) :]) for a in args if a.startswith(POLL_FLAG)), 0.0)
        poll_s = own_poll if self.config_poll_s is None else self.config_poll_s
        replica = TfServingReplica(flag, poll_s, time.monotonic())
        self.replicas[pod["metadata"]["uid"]] = replica
        self._start_container(pod, replica)

    def _start_container(self, pod: dict[str, Any], replica: TfServingReplica) -> None:
        """TF Serving's start: ServerCore::Create reads the config file and reloads it with nothing
        loaded; a refusal ends the process (the kubelet restarts it, with back-off)."""
        text = self._mounted_config(pod, replica.started)
        replica.available, replica.labels = set(), {}
        if text is None:
            replica.crashed, replica.error = True, "Failed to read ModelServerConfig file"
        else:
            replica.crashed = not replica.reload(text, first=True)
        container = pod["spec"]["containers"][0]
        status = {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": False,
            "restartCount": replica.restarts,
            "started": not replica.crashed,
            "state": {"running": {"startedAt": _now()}},
        }
        if replica.crashed:
            status["state"] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off restarting failed container {container['name']}",
                }
            }
            status["lastState"] = {
                "terminated": {"exitCode": 1, "reason": "Error", "message": replica.error[:300]}
            }
        pod["status"]["containerStatuses"] = [status]

    def _run_tf_serving(self, pod: dict[str, Any]) -> bool:
        """One step of the pod's TF Serving: a crashed container restarts, a running one polls its
        config file when its interval has passed. True if the pod's status changed."""
        replica = self.replicas.get(pod["metadata"]["uid"])
        if replica is None:
            return False
        if replica.crashed:
            replica.restarts += 1
            self._start_container(pod, replica)
            return True
        if replica.poll_s <= 0:  # TF Serving reads the file once when the interval is 0
            return False
        due = int((time.monotonic() - replica.started) // replica.poll_s)
        if due > replica.polls:
            replica.polls = due
            text = self._mounted_config(pod, replica.started)
            if text is not None and text != replica.read_text:
                replica.reload(text, first=False)  # a refused config is logged; the replica keeps its state
        return False

    def _serves(self, pod: dict[str, Any]) -> bool:
        """Whether the readiness probe passes: TF Serving up with a model, and the test does not say no."""
        replica = self.replicas.get(pod["metadata"]["uid"])
        if replica is not None and (replica.crashed or not replica.available):
            return False
        return not (self.fails_readiness and self.fails_readiness(pod))

    def _age(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        if pod["status"]["phase"] in ("Succeeded", "Failed") or pod["metadata"].get("deletionTimestamp"):
            return
        self.ages[uid] = age = self.ages.get(uid, 0) + 1
        owner = self.owners.get(uid, ("", "", ""))
        status = pod["status"]
        if uid in self.created_pods and status["phase"] == "Pending":  # a pod of its own: run it to its end
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            self._kubelet(key[0], pod)
            limit = self.container_log_max_bytes
            if limit is not None and len(self.logs.get(key, "")) > limit:  # rotated: the newest part only
                self.logs[key] = self.logs[key][-limit:]
            return
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
            self._start_tf_serving(pod)
        elif owner[0] == "deployments":
            changed = self._run_tf_serving(pod)
            ready = age > self.ready_after_ticks and self._serves(pod)
            if ready != _is_ready(pod):
                status["conditions"] = _conditions(ready=ready)
                for container in status.get("containerStatuses", []):
                    container["ready"] = ready
                changed = True
            if not changed:
                return
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
        self.replicas.pop(pod["metadata"]["uid"], None)
        self.terminating.pop(pod["metadata"]["uid"], None)

    def _terminate_pod(self, pod: dict[str, Any]) -> None:
        """A graceful delete: the pod keeps running (a copy keeps copying) until its grace period ends."""
        if pod["metadata"]["uid"] in self.terminating:
            return
        pod["metadata"]["deletionTimestamp"] = _now()
        pod["metadata"]["deletionGracePeriodSeconds"] = 30
        self.terminating[pod["metadata"]["uid"]] = self.pod_termination_ticks
        self._bump(pod)

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
        pods = [p for p in self.pods_of("jobs", ns, name) if not p["metadata"].get("deletionTimestamp")]
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


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
_FACTORS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_FACTORS.update({"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50})


def quantity_bytes(quantity: str | int) -> int:
    """A Kubernetes resource quantity (the forms storage sizes use) in bytes."""
    match = _QUANTITY.match(str(quantity))
    if not match:
        raise ValueError(f"not a storage quantity: {quantity!r}")
    return int(float(match[1]) * _FACTORS[match[2]])


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
