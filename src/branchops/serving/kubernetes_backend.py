"""Kubernetes serving backend: TensorFlow Serving as a Deployment, rolled forward by its model config.

Objects are built as plain dicts (validated strictly in CI, and rendered into ``serving/tfserve/``):
a ConfigMap with ``models.config`` (version policy ``specific`` + version labels) and
``monitoring.config``, the Deployment (TF Serving polls the config file and the file system),
Service, HorizontalPodAutoscaler (autoscaling/v2), PodDisruptionBudget, the serving volume, and for
canaries a second Deployment (track ``canary``) with Istio's DestinationRule/VirtualService weights
when ``kubernetes.istio`` is true, or a replica ratio otherwise.

Rollout (the same checks as the local backend, through the API server's proxy to TF Serving's REST API):
put the version on the serving volume with a Job (from the model volume, or a PVC cloned from the
model snapshot), move the version policy forward to ``[old, new]``, wait until the new version is
AVAILABLE on every replica, check signature and smoke test, move the ``stable`` label, retire the old
version. Any failure puts the previous model config back.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from branchops.errors import ConfigError, ExternalError
from branchops.serving.base import (
    Check,
    DeployFailed,
    DeployResult,
    Serving,
    ServingStatus,
    check_signature,
    percentile,
    smoke_test,
)
from branchops.serving.client import ServingClient

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig
    from branchops.serving.release import Release

log = logging.getLogger(__name__)

REST_PORT = 8501
GRPC_PORT = 8500
MODELS_MOUNT = "/models"
CONFIG_MOUNT = "/etc/tfserve"
METRICS_PATH = "/monitoring/prometheus/metrics"
STATE_ANNOTATION = "branchops.io/serving-state"  # the routing state as JSON, beside models.config
COPY_IMAGE = "docker.io/library/busybox:1.36.1"
METADATA_MARKER = "BRANCHOPS-MODEL-METADATA"


# -- model config (TF Serving's text protobuf) --------------------------------------------------------


def render_models_config(model: str, versions: list[int], labels: dict[str, int]) -> str:
    """``models.config``: serve exactly ``versions`` (policy ``specific``) with ``labels``."""
    if not versions:
        raise ValueError("a model config needs at least one version")
    lines = [
        "model_config_list {",
        "  config {",
        f'    name: "{model}"',
        f'    base_path: "{MODELS_MOUNT}/{model}"',
        '    model_platform: "tensorflow"',
        "    model_version_policy {",
        "      specific {",
    ]
    lines += [f"        versions: {v}" for v in sorted(set(versions))]
    lines += ["      }", "    }"]
    for label, version in sorted(labels.items()):
        if version not in versions:
            raise ValueError(f"label {label} names version {version}, which the policy does not serve")
        lines += ["    version_labels {", f'      key: "{label}"', f"      value: {version}", "    }"]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


MONITORING_CONFIG = f'prometheus_config {{\n  enable: true,\n  path: "{METRICS_PATH}"\n}}\n'


# -- objects ------------------------------------------------------------------------------------------


class ObjectBuilder:
    """Every Kubernetes object the backend sends, as dicts, from the configuration."""

    def __init__(self, config: BranchopsConfig) -> None:
        self.k8s = config.serving.kubernetes
        self.model = config.serving.model_name
        self.namespace = self.k8s.namespace
        self.name = self.k8s.deployment
        self.storage_class = config.storage.trident.storage_class
        self.volume_access = config.storage.trident.access_mode
        self.istio = self.k8s.istio

    def labels(self, track: str | None = None) -> dict[str, str]:
        labels = {
            "app.kubernetes.io/name": self.name,
            "app.kubernetes.io/part-of": "branchops",
            "app.kubernetes.io/component": "model-server",
        }
        if track:
            labels["branchops.io/track"] = track
        return labels

    def selector(self, track: str | None = None) -> dict[str, str]:
        selector = {"app.kubernetes.io/name": self.name}
        if track:
            selector["branchops.io/track"] = track
        return selector

    def meta(
        self, name: str, track: str | None = None, annotations: dict[str, str] | None = None
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": self.labels(track)}
        if annotations:
            meta["annotations"] = annotations
        return meta

    @property
    def volume_claim(self) -> str:
        return f"{self.name}-models"

    def config_map_name(self, track: str = "stable") -> str:
        return f"{self.name}-config" if track == "stable" else f"{self.name}-{track}-config"

    def deployment_name(self, track: str = "stable") -> str:
        return self.name if track == "stable" else f"{self.name}-{track}"

    def serving_volume(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": self.meta(self.volume_claim),
            "spec": {
                "accessModes": [self.volume_access],
                "storageClassName": self.storage_class,
                "resources": {"requests": {"storage": self.k8s.serving_volume_size}},
            },
        }

    def config_map(
        self,
        versions: list[int],
        labels: dict[str, int],
        track: str = "stable",
        state: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        annotations = {STATE_ANNOTATION: json.dumps(state, sort_keys=True)} if state is not None else None
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self.meta(self.config_map_name(track), track, annotations),
            "data": {
                "models.config": render_models_config(self.model, versions, labels),
                "monitoring.config": MONITORING_CONFIG,
            },
        }

    def deployment(self, track: str = "stable", replicas: int | None = None) -> dict[str, Any]:
        probe_path = f"/v1/models/{self.model}"
        http_probe = {"httpGet": {"path": probe_path, "port": "http"}}
        container = {
            "name": "tfserving",
            "image": self.k8s.image,
            "args": [
                f"--port={GRPC_PORT}",
                f"--rest_api_port={REST_PORT}",
                f"--model_config_file={CONFIG_MOUNT}/models.config",
                # The rollout moves the version policy by editing the ConfigMap; TF Serving re-reads it.
                "--model_config_file_poll_wait_seconds=15",
                # New version directories on the serving volume are noticed within this period.
                "--file_system_poll_wait_seconds=10",
                f"--monitoring_config_file={CONFIG_MOUNT}/monitoring.config",
            ],
            "ports": [
                {"name": "http", "containerPort": REST_PORT, "protocol": "TCP"},
                {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            ],
            "readinessProbe": {**http_probe, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3},
            "livenessProbe": {**http_probe, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
            # Loading a large SavedModel can take minutes: liveness only starts once the model answered.
            "startupProbe": {**http_probe, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 120},
            "resources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"cpu": "2", "memory": "2Gi"},
            },
            "volumeMounts": [
                {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True},
                {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            ],
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
        spec: dict[str, Any] = {
            "selector": {"matchLabels": self.selector(track)},
            # Never fewer ready replicas than wanted while pods are replaced.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": self.labels(track),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(REST_PORT),
                        "prometheus.io/path": METRICS_PATH,
                    },
                },
                "spec": {
                    "containers": [container],
                    "terminationGracePeriodSeconds": 30,
                    "volumes": [
                        {
                            "name": "models",
                            "persistentVolumeClaim": {"claimName": self.volume_claim, "readOnly": True},
                        },
                        {"name": "config", "configMap": {"name": self.config_map_name(track)}},
                    ],
                },
            },
        }
        if replicas is not None:
            spec["replicas"] = replicas
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self.meta(self.deployment_name(track), track),
            "spec": spec,
        }

    def service(self) -> dict[str, Any]:
        # Selects both tracks: without Istio the canary's share is its share of the replicas.
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.meta(self.name),
            "spec": {
                "type": "ClusterIP",
                "selector": self.selector(),
                "ports": [
                    {"name": "http", "port": REST_PORT, "targetPort": "http", "protocol": "TCP"},
                    {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                ],
            },
        }

    def autoscaler(self) -> dict[str, Any]:
        return {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": self.meta(self.name),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.name},
                "minReplicas": self.k8s.replicas,
                "maxReplicas": max(self.k8s.max_replicas, self.k8s.replicas),
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
            },
        }

    def disruption_budget(self) -> dict[str, Any]:
        return {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": self.meta(self.name),
            "spec": {
                "minAvailable": max(1, self.k8s.replicas - 1),
                "selector": {"matchLabels": self.selector("stable")},
            },
        }

    def destination_rule(self) -> dict[str, Any]:
        host = f"{self.name}.{self.namespace}.svc.cluster.local"
        return {
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "DestinationRule",
            "metadata": self.meta(self.name),
            "spec": {
                "host": host,
                "subsets": [
                    {"name": "stable", "labels": {"branchops.io/track": "stable"}},
                    {"name": "canary", "labels": {"branchops.io/track": "canary"}},
                ],
            },
        }

    def virtual_service(self, canary_weight: int = 0) -> dict[str, Any]:
        host = f"{self.name}.{self.namespace}.svc.cluster.local"
        return {
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "VirtualService",
            "metadata": self.meta(self.name),
            "spec": {
                "hosts": [host],
                "http": [
                    {
                        "route": [
                            {
                                "destination": {
                                    "host": host,
                                    "subset": "stable",
                                    "port": {"number": REST_PORT},
                                },
                                "weight": 100 - canary_weight,
                            },
                            {
                                "destination": {
                                    "host": host,
                                    "subset": "canary",
                                    "port": {"number": REST_PORT},
                                },
                                "weight": canary_weight,
                            },
                        ]
                    }
                ],
            },
        }

    def source_clone(self, snapshot: str, version: int) -> dict[str, Any]:
        """A PVC cloned from the model snapshot, read by the copy Job (Trident clones cost no copy)."""
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": self.meta(f"{self.name}-src-{version}"),
            "spec": {
                "accessModes": [self.volume_access],
                "storageClassName": self.storage_class,
                "dataSource": {
                    "apiGroup": "snapshot.storage.k8s.io",
                    "kind": "VolumeSnapshot",
                    "name": snapshot,
                },
                "resources": {"requests": {"storage": self.k8s.serving_volume_size}},
            },
        }

    def copy_job(self, source_claim: str, source_path: str, version: int) -> dict[str, Any]:
        """Copy one SavedModel version onto the serving volume: into a temp directory, then rename, so
        TF Serving's file-system poll never sees half a version."""
        dst, incoming = f"{MODELS_MOUNT}/{self.model}", f"{MODELS_MOUNT}/{self.model}/.incoming-{version}"
        script = "\n".join(
            [
                "set -eu",
                f'mkdir -p "{dst}"',
                f'rm -rf "{incoming}"',
                f'mkdir "{incoming}"',
                f'cp -a "/source/$SOURCE_PATH/." "{incoming}/"',
                f'test -f "{incoming}/saved_model.pb"',
                f'rm -rf "{dst}/{version}"',
                f'mv "{incoming}" "{dst}/{version}"',
                # The rollout reads the export's sample from this log (the CI agent need not mount volumes).
                f"echo {METADATA_MARKER}",
                f'cat "{dst}/{version}/assets.extra/branchops_model.json"',
            ]
        )
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": self.meta(f"{self.name}-copy-v{version}"),
            "spec": {
                "backoffLimit": 2,
                "ttlSecondsAfterFinished": 3600,
                "activeDeadlineSeconds": 1800,
                "template": {
                    "metadata": {"labels": self.labels()},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "copy",
                                "image": COPY_IMAGE,
                                "command": ["sh", "-c", script],
                                "env": [{"name": "SOURCE_PATH", "value": source_path}],
                                "volumeMounts": [
                                    {"name": "source", "mountPath": "/source", "readOnly": True},
                                    {"name": "models", "mountPath": MODELS_MOUNT},
                                ],
                                "resources": {
                                    "requests": {"cpu": "100m", "memory": "64Mi"},
                                    "limits": {"memory": "256Mi"},
                                },
                            }
                        ],
                        "volumes": [
                            {
                                "name": "source",
                                "persistentVolumeClaim": {"claimName": source_claim, "readOnly": True},
                            },
                            {"name": "models", "persistentVolumeClaim": {"claimName": self.volume_claim}},
                        ],
                    },
                },
            },
        }

    def base_objects(
        self, versions: list[int], labels: dict[str, int], state: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        objects = [
            self.serving_volume(),
            self.config_map(versions, labels, state=state),
            self.deployment(replicas=self.k8s.replicas),
            self.service(),
            self.autoscaler(),
            self.disruption_budget(),
        ]
        if self.istio:
            objects += [self.destination_rule(), self.virtual_service(0)]
        return objects


def canary_replicas(stable_replicas: int, weight: int) -> int:
    """Canary pods so that their share of all pods is about ``weight`` percent (at least one)."""
    if weight >= 100:
        return stable_replicas
    return max(1, math.ceil(stable_replicas * weight / (100 - weight)))


# -- the cluster --------------------------------------------------------------------------------------

_KINDS = {  # kind -> (api attribute, method suffix)
    "ConfigMap": ("core", "config_map"),
    "Service": ("core", "service"),
    "PersistentVolumeClaim": ("core", "persistent_volume_claim"),
    "Deployment": ("apps", "deployment"),
    "HorizontalPodAutoscaler": ("autoscaling", "horizontal_pod_autoscaler"),
    "PodDisruptionBudget": ("policy", "pod_disruption_budget"),
    "Job": ("batch", "job"),
}
_ISTIO_PLURALS = {"DestinationRule": "destinationrules", "VirtualService": "virtualservices"}


class KubeApi:
    """The few kubernetes-client calls the rollout makes (create-or-patch, read, delete, proxy).

    Every failure is an :class:`ExternalError` naming the call and the server's message (or saying the
    API server is unreachable), so a rollout can roll back rather than crash."""

    request_timeout_s = 30.0  # a hung API server must not hang the rollout

    def __init__(self, api_client: Any = None) -> None:
        from kubernetes import client

        if api_client is None:
            # In-cluster or KUBECONFIG read now (the library reads KUBECONFIG once, at import), into a
            # client of our own rather than the library's process-wide default configuration.
            from branchops.storage.trident import load_api_client

            api_client = load_api_client()
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def _error(self, what: str, exc: Exception) -> ExternalError:
        """``what`` failed: the HTTP status and the message of the server's Status, or unreachable."""
        from kubernetes.client.exceptions import ApiException

        if isinstance(exc, ApiException):
            try:
                message = json.loads(exc.body or "{}").get("message") or exc.reason
            except (TypeError, ValueError, AttributeError):
                message = str(exc.body)[:300]
            return ExternalError(f"{what}: HTTP {exc.status} {exc.reason}: {str(message)[:500]}")
        host = getattr(self.api_client.configuration, "host", "?")
        return ExternalError(f"Kubernetes API at {host} unreachable ({what.lower()}): {exc}")

    def _autoscaled(self, deployment: str, namespace: str) -> bool:
        """Whether a HorizontalPodAutoscaler owns this Deployment's replicas."""
        hpas = self.autoscaling.list_namespaced_horizontal_pod_autoscaler(
            namespace, _request_timeout=self.request_timeout_s
        ).items
        return any(
            h.spec.scale_target_ref.kind == "Deployment" and h.spec.scale_target_ref.name == deployment
            for h in hpas
        )

    def apply(self, obj: dict[str, Any]) -> None:
        """Create, or patch when it exists (an autoscaled Deployment's replicas stay the autoscaler's)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        from branchops.k8s.validate import validate_object

        validate_object(obj, allow_unchecked=obj["kind"] in _ISTIO_PLURALS)
        name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        timeout = self.request_timeout_s
        try:
            if obj["kind"] in _ISTIO_PLURALS:
                group, version = obj["apiVersion"].split("/")
                plural = _ISTIO_PLURALS[obj["kind"]]
                try:
                    self.custom.create_namespaced_custom_object(
                        group, version, namespace, plural, obj, _request_timeout=timeout
                    )
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    self.custom.patch_namespaced_custom_object(
                        group, version, namespace, plural, name, obj, _request_timeout=timeout
                    )
                return
            api, suffix = _KINDS[obj["kind"]]
            target = getattr(self, api)
            try:
                getattr(target, f"create_namespaced_{suffix}")(namespace, obj, _request_timeout=timeout)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                body = obj
                # Only the autoscaler's target keeps its replicas: a canary's are stepped by the rollout.
                if (
                    obj["kind"] == "Deployment"
                    and "replicas" in obj["spec"]
                    and self._autoscaled(name, namespace)
                ):
                    body = {**obj, "spec": {k: v for k, v in obj["spec"].items() if k != "replicas"}}
                getattr(target, f"patch_namespaced_{suffix}")(name, namespace, body, _request_timeout=timeout)
        except (ApiException, HTTPError) as exc:
            raise self._error(f"Kubernetes refused {obj['kind']} {namespace}/{name}", exc) from None

    def delete(self, kind: str, name: str, namespace: str) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            if kind in _ISTIO_PLURALS:
                self.custom.delete_namespaced_custom_object(
                    "networking.istio.io",
                    "v1beta1",
                    namespace,
                    _ISTIO_PLURALS[kind],
                    name,
                    _request_timeout=self.request_timeout_s,
                )
            else:
                api, suffix = _KINDS[kind]
                getattr(getattr(self, api), f"delete_namespaced_{suffix}")(
                    name, namespace, propagation_policy="Background", _request_timeout=self.request_timeout_s
                )
        except (ApiException, HTTPError) as exc:
            if not (isinstance(exc, ApiException) and exc.status == 404):
                raise self._error(f"could not delete {kind} {namespace}/{name}", exc) from None

    def config_state(self, name: str, namespace: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            cm = self.core.read_namespaced_config_map(
                name, namespace, _request_timeout=self.request_timeout_s
            )
        except (ApiException, HTTPError) as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return None
            raise self._error(f"could not read ConfigMap {namespace}/{name}", exc) from None
        raw = (cm.metadata.annotations or {}).get(STATE_ANNOTATION)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ExternalError(
                f"ConfigMap {namespace}/{name}: annotation {STATE_ANNOTATION} is not valid JSON "
                "(edited by hand?); put back a state or delete the annotation"
            ) from None

    def job_finished(self, name: str, namespace: str) -> bool | None:
        """True once succeeded, False once failed, None while running."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            status = self.batch.read_namespaced_job_status(
                name, namespace, _request_timeout=self.request_timeout_s
            ).status
        except (ApiException, HTTPError) as exc:
            raise self._error(f"could not read Job {namespace}/{name}", exc) from None
        if status.succeeded:
            return True
        for condition in status.conditions or []:
            if condition.type == "Failed" and condition.status == "True":
                return False
        return None

    def job_log(self, job: str, namespace: str) -> str:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            pods = self.core.list_namespaced_pod(
                namespace, label_selector=f"job-name={job}", _request_timeout=self.request_timeout_s
            ).items
            succeeded = [p for p in pods if p.status.phase == "Succeeded"] or pods
            if not succeeded:
                return ""
            return self.core.read_namespaced_pod_log(
                succeeded[0].metadata.name,
                namespace,
                container="copy",
                _request_timeout=self.request_timeout_s,
            )
        except (ApiException, HTTPError) as exc:
            raise self._error(
                f"could not list pods of Job {namespace}/{job} or read their log", exc
            ) from None

    def ready_pods(self, namespace: str, selector: dict[str, str]) -> list[str]:
        """Pods that are Running and Ready (a Running pod whose TF Serving still loads is not)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        try:
            pods = self.core.list_namespaced_pod(
                namespace, label_selector=label_selector, _request_timeout=self.request_timeout_s
            ).items
        except (ApiException, HTTPError) as exc:
            raise self._error(f"could not list pods in {namespace}", exc) from None
        return [
            p.metadata.name
            for p in pods
            if p.status.phase == "Running"
            and p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    def proxy_client(self, namespace: str, target: str, model: str, timeout_s: float = 10.0) -> ServingClient:
        """A REST client reaching TF Serving through the API server's proxy (``services/NAME:http`` or
        ``pods/NAME:8501``), with the cluster credentials the kubernetes client loaded."""
        import requests

        conf = self.api_client.configuration
        session = requests.Session()
        token = conf.get_api_key_with_prefix("authorization")  # "Bearer ..." from kubeconfig or in-cluster
        if token:
            session.headers["Authorization"] = token
        if conf.cert_file and conf.key_file:
            session.cert = (conf.cert_file, conf.key_file)
        session.verify = conf.ssl_ca_cert if conf.verify_ssl and conf.ssl_ca_cert else conf.verify_ssl
        base = f"{conf.host.rstrip('/')}/api/v1/namespaces/{namespace}/{target}/proxy"
        return ServingClient(base, model, timeout_s=timeout_s, session=session)


class KubernetesServing(Serving):
    backend = "kubernetes"

    def __init__(self, config: BranchopsConfig, state_dir: Path, api: KubeApi | None = None) -> None:
        self.config = config
        self.objects = ObjectBuilder(config)
        self.k8s = config.serving.kubernetes
        self.rollout = config.serving.rollout
        self.model_name = config.serving.model_name
        self.namespace = self.k8s.namespace
        self._api = api
        self.poll_s = 3.0  # TF Serving re-reads its model config every 15 s; polling faster buys nothing

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi()
        return self._api

    def client(self) -> ServingClient:
        return self.api.proxy_client(self.namespace, f"services/{self.objects.name}:http", self.model_name)

    def _state(self) -> dict[str, Any]:
        return self.api.config_state(self.objects.config_map_name(), self.namespace) or {"versions": []}

    def status(self) -> ServingStatus:
        state = self._state()
        return ServingStatus(
            self.backend,
            self.model_name,
            running=bool(state.get("versions")),
            url=f"http://{self.objects.name}.{self.namespace}.svc:{REST_PORT}",
            stable=state.get("stable"),
            canary=state.get("canary"),
            canary_weight=state.get("canary_weight", 0),
            versions={int(v): "SERVED" for v in state.get("versions", [])},
        )

    def live_version(self) -> int | None:
        return self._state().get("stable")

    # -- rollout ----------------------------------------------------------------------------------
    def _set_policy(
        self, versions: list[int], stable: int | None, canary: int | None = None, weight: int = 0
    ) -> None:
        labels = {k: v for k, v in (("stable", stable), ("canary", canary)) if v is not None}
        state = {
            "versions": sorted(set(versions)),
            "stable": stable,
            "canary": canary,
            "canary_weight": weight,
        }
        self.api.apply(self.objects.config_map(state["versions"], labels, state=state))

    def _ensure_workload(self) -> None:
        """Deployment, Service, autoscaler, disruption budget (and Istio routing): created once, kept."""
        objects = [
            self.objects.deployment(replicas=self.k8s.replicas),
            self.objects.service(),
            self.objects.autoscaler(),
            self.objects.disruption_budget(),
        ]
        if self.objects.istio:
            objects += [self.objects.destination_rule(), self.objects.virtual_service(0)]
        for obj in objects:
            self.api.apply(obj)

    def _wait(self, what: str, predicate: Any) -> None:
        deadline = time.monotonic() + self.k8s.rollout_timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(self.poll_s)
        raise DeployFailed("timeout", f"{what} not reached within {self.k8s.rollout_timeout_s:.0f}s")

    def _copy_in(self, release: Release) -> None:
        source = release.source
        claim = source.volume or ""
        if source.snapshot:
            clone = self.objects.source_clone(source.snapshot, release.version)
            self.api.apply(clone)
            claim = clone["metadata"]["name"]
        job = self.objects.copy_job(claim, source.path, release.version)
        self.api.delete("Job", job["metadata"]["name"], self.namespace)  # a rerun copies again
        self.api.apply(job)
        outcome: dict[str, bool | None] = {"done": None}

        def finished() -> bool:
            outcome["done"] = self.api.job_finished(job["metadata"]["name"], self.namespace)
            return outcome["done"] is not None

        self._wait(f"copy Job {job['metadata']['name']}", finished)
        if outcome["done"] is False:
            raise DeployFailed(
                "copy",
                f"Job {job['metadata']['name']} could not copy {source.describe()} "
                "onto the serving volume (see its pod's log)",
            )

    def _wait_available_everywhere(self, version: int, track: str = "stable") -> None:
        from branchops.serving.client import ServingError

        def on_every_replica() -> bool:
            pods = self.api.ready_pods(self.namespace, self.objects.selector(track))
            if not pods:
                return False
            for pod in pods:
                replica = self.api.proxy_client(self.namespace, f"pods/{pod}:{REST_PORT}", self.model_name)
                try:
                    status = replica.status(version=version)[0]
                except ServingError as exc:
                    if exc.status == 404:  # the replica has not read the new model config yet
                        return False
                    raise
                error = status.get("status", {})
                if status["state"] == "END" and error.get("error_code", "OK") != "OK":
                    raise DeployFailed(
                        "load", f"version {version} failed to load on pod {pod}: {error.get('error_message')}"
                    )
                if status["state"] != "AVAILABLE":
                    return False
            return True

        self._wait(f"version {version} AVAILABLE on every {track} replica", on_every_replica)

    def deploy(self, release: Release, model_source_dir: Path | None = None) -> DeployResult:
        if release.model != self.model_name:
            raise ConfigError(
                f"the release serves model '{release.model}' but serving.model_name is '{self.model_name}'"
            )
        strategy = release.strategy_or(self.rollout.strategy)
        state = self._state()
        before = state.get("stable")
        result = DeployResult(self.model_name, release.version, strategy, before=before, after=before)
        started = time.monotonic()
        version = release.version
        if before == version and state.get("canary") is None:
            result.outcome = "unchanged"
            return result
        try:
            phase = time.monotonic()
            self.api.apply(self.objects.serving_volume())
            self._copy_in(release)
            result.timings["copy"] = round(time.monotonic() - phase, 3)
            phase = time.monotonic()
            old = [v for v in [before] if v is not None]
            self._set_policy(old + [version], stable=before)  # move the policy forward: load beside the old
            self._ensure_workload()
            self._wait_available_everywhere(version)
            result.timings["load"] = round(time.monotonic() - phase, 3)
            client = self.client()
            meta = self._metadata(version)
            result.checks.append(Check("load", True, f"version {version} AVAILABLE on every replica"))
            result.checks.append(check_signature(client, version, meta))
            result.checks.append(smoke_test(client, meta, version=version))
            if strategy == "canary" and before is not None:
                self._canary(before, version, meta, result)
            self._set_policy(old + [version], stable=version)
            result.after = version
            self._set_policy([version], stable=version)  # retire the old version
            result.checks.append(smoke_test(client, meta, label="stable", name="live"))
        except (DeployFailed, ExternalError) as exc:
            check, reason = (
                (exc.check, exc.reason) if isinstance(exc, DeployFailed) else ("kubernetes", str(exc))
            )
            result.checks.append(Check(check, False, reason))
            result.outcome, result.reason, result.after = "rolled_back", f"{check} failed: {reason}", before
            self._roll_back(before)
        result.timings["total"] = round(time.monotonic() - started, 3)
        return result

    def _metadata(self, version: int) -> dict[str, Any]:
        """The export's metadata (with its sample), as the copy Job printed it after the marker."""
        from branchops.serving.base import METADATA_FILE

        log_text = self.api.job_log(
            self.objects.copy_job("x", "x", version)["metadata"]["name"], self.namespace
        )
        _, marker, tail = log_text.partition(METADATA_MARKER)
        try:
            meta = json.loads(tail) if marker else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            raise DeployFailed(
                "metadata", f"the copy Job printed no valid {METADATA_FILE} for version {version}"
            )
        sample = meta.get("sample")
        if not (
            isinstance(sample, dict)
            and sample.get("instances")
            and isinstance(sample.get("predictions"), dict)
        ):
            raise DeployFailed(
                "metadata", f"{METADATA_FILE} of version {version} has no sample to smoke-test"
            )
        return meta

    def _canary(self, stable: int, canary: int, meta: dict[str, Any], result: DeployResult) -> None:
        self.api.apply(self.objects.config_map([canary], {"stable": canary}, track="canary"))
        for weight in self.rollout.canary_steps:
            if weight >= 100:
                break
            phase = time.monotonic()
            replicas = canary_replicas(self.k8s.replicas, weight)
            self.api.apply(self.objects.deployment("canary", replicas=replicas))
            if self.objects.istio:
                self.api.apply(self.objects.virtual_service(weight))
            self._wait_available_everywhere(canary, track="canary")
            pods = self.api.ready_pods(self.namespace, self.objects.selector("canary"))
            latencies, failures = [], 0
            rows = meta["sample"]["instances"]
            for i in range(self.rollout.requests_per_step):
                client = self.api.proxy_client(
                    self.namespace, f"pods/{pods[i % len(pods)]}:{REST_PORT}", self.model_name
                )
                sent = time.perf_counter()
                try:
                    client.predict(instances=[rows[i % len(rows)]], version=canary)
                except ExternalError:
                    failures += 1
                latencies.append((time.perf_counter() - sent) * 1000)
            error_rate, p99 = failures / self.rollout.requests_per_step, percentile(latencies, 99)
            ok = error_rate <= self.rollout.max_error_rate and p99 <= self.rollout.max_p99_latency_ms
            result.canary_steps.append(
                {
                    "weight": weight,
                    "replicas": replicas,
                    "requests": self.rollout.requests_per_step,
                    "errors": failures,
                    "error_rate": round(error_rate, 4),
                    "p99_ms": round(p99, 2),
                    "seconds": round(time.monotonic() - phase, 3),
                    "ok": ok,
                }
            )
            if not ok:
                raise DeployFailed(
                    "canary",
                    f"at {weight}% the canary's error rate was {error_rate:.2%} "
                    f"(max {self.rollout.max_error_rate:.2%}) and p99 latency {p99:.1f} ms "
                    f"(max {self.rollout.max_p99_latency_ms:.1f} ms)",
                )
        self._remove_canary()

    def _remove_canary(self) -> None:
        if self.objects.istio:
            self.api.apply(self.objects.virtual_service(0))
        self.api.delete("Deployment", self.objects.deployment_name("canary"), self.namespace)
        self.api.delete("ConfigMap", self.objects.config_map_name("canary"), self.namespace)

    def _roll_back(self, before: int | None) -> None:
        try:
            self._remove_canary()
            if before is not None:
                self._set_policy([before], stable=before)
            else:  # nothing served before this failed first rollout: serve nothing rather than a bad model
                self.api.delete("Deployment", self.objects.deployment_name(), self.namespace)
                self.api.delete("ConfigMap", self.objects.config_map_name(), self.namespace)
        except ExternalError as exc:
            log.error("rollback to version %s incomplete: %s", before, exc)

    def rollback_to(self, version: int) -> DeployResult:
        from branchops.serving.release import Release

        # Old versions stay on the serving volume; the copy Job re-installs one from there.
        release = Release.model_validate(
            {
                "model": self.model_name,
                "version": version,
                "strategy": "rolling",
                "source": {"volume": self.objects.volume_claim, "path": f"{self.model_name}/{version}"},
            }
        )
        return self.deploy(release)


# -- the manifests shipped in serving/tfserve/ --------------------------------------------------------

MANIFEST_HEADER = (
    "# Generated by `python -m branchops.serving.kubernetes_backend serving/tfserve` from the project's\n"
    "# configuration; a test checks it stays in sync. The rollout moves versions in the ConfigMap.\n"
)


def render_manifests(config: BranchopsConfig, version: int = 1) -> dict[str, str]:
    """File name -> text of the reference manifests (serving ``version`` as stable)."""
    import yaml

    objects = ObjectBuilder(config)
    state = {"versions": [version], "stable": version, "canary": None, "canary_weight": 0}
    base = [
        o
        for o in objects.base_objects([version], {"stable": version}, state)
        if not o["apiVersion"].startswith("networking.istio.io")
    ]

    class Dumper(yaml.SafeDumper):
        pass

    # Multi-line strings (models.config) as readable literal blocks.
    Dumper.add_representer(
        str,
        lambda d, text: d.represent_scalar(
            "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
        ),
    )

    def dump(docs: list[dict[str, Any]]) -> str:
        return MANIFEST_HEADER + "---\n".join(
            yaml.dump(d, Dumper=Dumper, sort_keys=False, width=120) for d in docs
        )

    return {
        "tfserve.yaml": dump(base),
        "istio.yaml": dump([objects.destination_rule(), objects.virtual_service(0)]),
        "models.config": render_models_config(objects.model, [version], {"stable": version}),
    }


if __name__ == "__main__":  # run from the project's root: its config/branchops.yaml names the model
    import sys

    from branchops.config import load_config

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "serving/tfserve")
    for file_name, text in render_manifests(load_config(".")).items():
        (folder / file_name).write_text(text)
