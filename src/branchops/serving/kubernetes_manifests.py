"""The Kubernetes objects of TensorFlow Serving, as plain dicts built from the configuration.

Validated strictly in CI and rendered into ``serving/tfserve/``: a ConfigMap with ``models.config``
(version policy ``specific`` + version labels) and ``monitoring.config``, the Deployment (TF Serving
polls the config file and the file system), Service, HorizontalPodAutoscaler (autoscaling/v2),
PodDisruptionBudget, the serving volume, and for canaries a second Deployment (track ``canary``) with
Istio's DestinationRule/VirtualService weights when ``kubernetes.istio`` is true; otherwise the Service
selects the stable pods only and the canary answers the rollout's probes alone. Nothing here talks to
a cluster (``branchops.k8s.client`` does).

With ``monitoring.log.enabled`` every serving pod (stable and canary) also runs the logging proxy
(:mod:`branchops.serving.log_proxy`, image ``serving.kubernetes.proxy_image``) beside TF Serving: the
Service's REST port goes to the proxy, which forwards to TF Serving on the pod's loopback and logs the
:predict traffic onto the prediction log volume (``monitoring.log.volume``, ReadWriteMany, shared by the
pods), mounted in the proxy alone; gRPC still goes to TF Serving directly (docs/monitoring.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig

REST_PORT = 8501
GRPC_PORT = 8500
MODELS_MOUNT = "/models"
CONFIG_MOUNT = "/etc/tfserve"
METRICS_PATH = "/monitoring/prometheus/metrics"
STATE_ANNOTATION = "branchops.io/serving-state"  # the routing state as JSON, beside models.config
COPY_IMAGE = "docker.io/library/busybox:1.36.1"
METADATA_MARKER = "BRANCHOPS-MODEL-METADATA"
MODEL_CONFIG_POLL_S = 15  # TF Serving's --model_config_file_poll_wait_seconds
PROXY_PORT = 8502
PROXY_PORT_NAME = "proxy-http"  # a port name is unique in a pod: TF Serving's REST port keeps "http"
PROXY_HEALTH_PATH = "/branchops/log-proxy/health"
PREDICTION_LOG_MOUNT = "/var/log/branchops/predictions"
# The proxy's user and group (the nonroot user of docker/log-proxy/Dockerfile); the pods that read and
# write the prediction log volume for the backend run as the same, so every file there is theirs.
PROXY_UID = 65532
# A ConfigMap change reaches a mounted volume within the kubelet's sync period (--sync-frequency, 1 min by
# default) plus the delay of its ConfigMap cache (up to its TTL, 1 min, with the TTL cache strategy).
KUBELET_CONFIGMAP_SYNC_S = 60 + 60


def model_config_visible_within_s(poll_s: float = MODEL_CONFIG_POLL_S) -> float:
    """How long after a ConfigMap update every TF Serving pod has read the new models.config at the
    latest: the kubelet's sync into the volume, then one poll interval (what a rollout waits for before
    it may expect a moved label to answer)."""
    return KUBELET_CONFIGMAP_SYNC_S + poll_s


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
        self.prediction_log = config.monitoring.log

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

    def prediction_log_volume(self) -> dict[str, Any]:
        """The volume the logging proxies of every serving pod write to (so ReadWriteMany) and that
        ``branchops monitor`` reads through a short-lived pod."""
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": self.meta(self.prediction_log.volume),
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": self.storage_class,
                "resources": {"requests": {"storage": self.prediction_log.volume_size}},
            },
        }

    def log_proxy_container(self) -> dict[str, Any]:
        """The logging proxy beside TF Serving, under the restricted Pod Security Standard."""
        health = {"httpGet": {"path": PROXY_HEALTH_PATH, "port": PROXY_PORT_NAME}}
        log = self.prediction_log
        return {
            "name": "log-proxy",
            "image": self.k8s.proxy_image,
            "command": ["python3", "-m", "branchops.serving.log_proxy"],
            "args": [
                f"--upstream=http://127.0.0.1:{REST_PORT}",  # TF Serving, in the same pod
                f"--port={PROXY_PORT}",
                f"--model-name={self.model}",
                f"--prediction-log={PREDICTION_LOG_MOUNT}",
                f"--log-sample-rate={log.sample_rate}",
                f"--log-max-file-bytes={log.max_file_bytes}",
                # every pod's proxy prunes the shared volume to this many files, whoever wrote them
                f"--log-max-files={log.max_files}",
            ],
            "ports": [{"name": PROXY_PORT_NAME, "containerPort": PROXY_PORT, "protocol": "TCP"}],
            "readinessProbe": {**health, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3},
            "livenessProbe": {**health, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"cpu": "1", "memory": "512Mi"},
            },
            "volumeMounts": [{"name": "prediction-log", "mountPath": PREDICTION_LOG_MOUNT}],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": PROXY_UID,
                "runAsGroup": PROXY_UID,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
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
                f"--model_config_file_poll_wait_seconds={MODEL_CONFIG_POLL_S}",
                # TF Serving applies version labels before it loads anything (server_core.cc,
                # UpdateModelVersionLabelMap): without this, a config whose label names a version not
                # yet loaded is refused, and a new pod (canary, scale-out, eviction) starts with nothing
                # loaded, so it would exit and crash-loop. Moving an existing label still needs the
                # version AVAILABLE.
                "--allow_version_labels_for_unavailable_models=true",
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
        logging = self.prediction_log.enabled
        pod_spec: dict[str, Any] = {
            # TF Serving first: the container `kubectl logs` and `exec` pick when none is named.
            "containers": [container, self.log_proxy_container()] if logging else [container],
            "terminationGracePeriodSeconds": 30,
            "volumes": [
                {
                    "name": "models",
                    "persistentVolumeClaim": {"claimName": self.volume_claim, "readOnly": True},
                },
                {"name": "config", "configMap": {"name": self.config_map_name(track)}},
            ],
        }
        if logging:
            pod_spec["volumes"].append(
                {"name": "prediction-log", "persistentVolumeClaim": {"claimName": self.prediction_log.volume}}
            )
            # The proxy's group owns the log volume's files (OnRootMismatch: changed once, not at every
            # start); the read-only models volume is left as it is.
            pod_spec["securityContext"] = {"fsGroup": PROXY_UID, "fsGroupChangePolicy": "OnRootMismatch"}
        spec: dict[str, Any] = {
            "selector": {"matchLabels": self.selector(track)},
            # Never fewer ready replicas than wanted while pods are replaced.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": self.labels(track),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        # the proxy answers TF Serving's metrics followed by the monitoring gauges
                        "prometheus.io/port": str(PROXY_PORT if logging else REST_PORT),
                        "prometheus.io/path": METRICS_PATH,
                    },
                },
                "spec": pod_spec,
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
        # With Istio the DestinationRule's subsets split the Service's endpoints by track, so it selects
        # both; without Istio nothing weighs traffic and TF Serving has no weights of its own, so
        # ordinary clients reach the stable pods only (the canary answers the rollout's probes alone).
        selector = self.selector() if self.istio else self.selector("stable")
        # REST through the logging proxy (it forwards every request to TF Serving); gRPC is not logged.
        rest_target = PROXY_PORT_NAME if self.prediction_log.enabled else "http"
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.meta(self.name),
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [
                    {"name": "http", "port": REST_PORT, "targetPort": rest_target, "protocol": "TCP"},
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

    def source_clone(self, snapshot: str, version: int, restore_size: str | None = None) -> dict[str, Any]:
        """A PVC cloned from the model snapshot, read by the copy Job (Trident clones cost no copy).

        A PVC's ``dataSource`` names a VolumeSnapshot in the PVC's own namespace (the configuration is
        refused at load when Trident's namespace is not the serving one: ``BranchopsConfig``), and a
        claim smaller than the snapshot's ``status.restoreSize`` is never provisioned: give
        ``restore_size`` (``KubeApi.snapshot_restore_size``)."""
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
                "resources": {"requests": {"storage": restore_size or self.k8s.serving_volume_size}},
            },
        }

    def copy_job_name(self, version: int) -> str:
        return f"{self.name}-copy-v{version}"

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
            "metadata": self.meta(self.copy_job_name(version)),
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
        objects = [self.serving_volume()]
        if self.prediction_log.enabled:
            objects.append(self.prediction_log_volume())
        objects += [
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


# -- the manifests shipped in serving/tfserve/ --------------------------------------------------------

MANIFEST_HEADER = (
    "# Generated by `python -m branchops.serving.kubernetes_manifests serving/tfserve` from the project's\n"
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
