"""Kubernetes serving backend: TensorFlow Serving as a Deployment, rolled forward by its model config.

The objects come from :mod:`branchops.serving.kubernetes_manifests`, the cluster calls from
:mod:`branchops.k8s.client`, the rollout's steps from :mod:`branchops.serving.rollout`; this module
supplies the primitives:

* the **canary track** is a Deployment of its own (track ``canary``) whose ConfigMap serves the new
  version alone. Ordinary clients reach it only through Istio's VirtualService at the step's weight
  (``serving.kubernetes.istio``); without Istio the Service selects the stable pods only, and the canary
  answers the rollout's probes alone, as TF Serving has no traffic weights;
* the **stable track** keeps a ``specific`` version policy naming the serving version until the new one
  has passed its checks; then the policy lists both, and once the new version is AVAILABLE on every
  stable pod the ``stable`` label moves to it (moving a label needs the version loaded) and the rollout
  waits until every pod's TF Serving reports it, however long the kubelet's ConfigMap sync and TF
  Serving's config poll take (``kubernetes_manifests.model_config_visible_within_s``);
* what serves is what TF Serving reports on the pods (model status and labels), not what the ConfigMap
  asks for; the ConfigMap's annotation keeps the serving version's export sample and contract, so the
  next release is checked against what its clients send.

Checks reach TF Serving through the API server's proxy (to the Service, and to each pod). With Istio's
STRICT mTLS the API server, outside the mesh, cannot reach the pods: allow plain text on the REST port
for it (a PeerAuthentication with ``portLevelMtls`` PERMISSIVE on the serving pods' 8501, and on 8502,
the logging proxy's port the Service goes to).

Monitoring: the logging proxy in each serving pod writes the prediction log onto the volume
``monitoring.log.volume``; ``branchops monitor`` reads it (and the outcomes folder on it) and writes
``monitor.json`` there through short-lived pods that mount the volume, as the Trident storage backend
reads a volume's files: a PVC is mounted only in pods, and the CI agent mounts none (docs/monitoring.md).
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from branchops.errors import BranchopsError, ConfigError, ExternalError
from branchops.k8s.client import KubeApi
from branchops.serving.base import (
    METADATA_FILE,
    Check,
    DeployFailed,
    DeployResult,
    Serving,
    ServingStatus,
)
from branchops.serving.client import ServingClient, ServingError
from branchops.serving.kubernetes_manifests import (
    COPY_IMAGE,
    METADATA_MARKER,
    PROXY_UID,
    REST_PORT,
    ObjectBuilder,
    canary_replicas,
    model_config_visible_within_s,
)
from branchops.serving.prediction_log import FILE_PREFIX, FILE_SUFFIX, MONITOR_FILE
from branchops.serving.rollout import Counts, Rollout, RolloutBackend, counts_from_metrics

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig
    from branchops.serving.release import Release

log = logging.getLogger(__name__)


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
        self.label_timeout_s = model_config_visible_within_s()

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi()
        return self._api

    def client(self) -> ServingClient:
        return self.api.proxy_client(self.namespace, f"services/{self.objects.name}:http", self.model_name)

    def pod_client(self, pod: str) -> ServingClient:
        return self.api.proxy_client(self.namespace, f"pods/{pod}:{REST_PORT}", self.model_name)

    def _state(self) -> dict[str, Any]:
        return self.api.config_state(self.objects.config_map_name(), self.namespace) or {"versions": []}

    def status(self) -> ServingStatus:
        """What TF Serving reports on the stable pods: each version's state, and the version every pod
        labels ``stable`` (None while they differ)."""
        pods = self.api.ready_pods(self.namespace, self.objects.selector("stable"))
        per_version: dict[int, list[str]] = {}
        labelled: set[int | None] = set()
        for pod in pods:
            replica = self.pod_client(pod)
            try:
                for entry in replica.status():
                    per_version.setdefault(int(entry["version"]), []).append(entry["state"])
                labelled.add(int(replica.status(label="stable")[0]["version"]))
            except ServingError as exc:
                if exc.status != 404:
                    raise
                labelled.add(None)
        versions = {}
        for version, states in sorted(per_version.items()):
            common = set(states)
            versions[version] = (
                states[0]
                if len(common) == 1 and len(states) == len(pods)
                else ", ".join(f"{s} on {states.count(s)} of {len(pods)} pods" for s in sorted(common))
            )
        canary = self.api.ready_pods(self.namespace, self.objects.selector("canary"))
        state = self._state()
        return ServingStatus(
            self.backend,
            self.model_name,
            running=bool(pods),
            url=f"http://{self.objects.name}.{self.namespace}.svc:{REST_PORT}",
            stable=labelled.pop() if len(labelled) == 1 else None,
            canary=state.get("canary") if canary else None,
            canary_weight=state.get("canary_weight", 0) if canary else 0,
            versions=versions,
        )

    def live_version(self) -> int | None:
        return self.status().stable

    def export_metadata(self, version: int) -> dict[str, Any]:
        meta = _KubernetesTracks(self).serving_metadata(version)
        if meta is None:
            raise DeployFailed(
                "metadata", f"no export metadata of version {version} is recorded (nor its copy Job's log)"
            )
        return meta

    # -- rollout ----------------------------------------------------------------------------------
    def deploy(self, release: Release, model_source_dir: Path | None = None) -> DeployResult:
        if release.model != self.model_name:
            raise ConfigError(
                f"the release serves model '{release.model}' but serving.model_name is '{self.model_name}'"
            )
        return Rollout(_KubernetesTracks(self), self.model_name, self.rollout).deploy(
            release, None, release.strategy_or(self.rollout.strategy)
        )

    # -- monitoring -----------------------------------------------------------------------------
    def read_prediction_log(self) -> dict[str, bytes]:
        if not self.config.monitoring.log.enabled:
            return {}  # no proxy logs, and no volume to read

        def is_log(name: str) -> bool:
            return name.startswith(FILE_PREFIX) and name.endswith(FILE_SUFFIX)

        return _LogVolumePods(self).read_folder(".", is_log, whole_lines=True) or {}

    def read_outcomes(self) -> dict[str, bytes]:
        if not self.config.monitoring.log.enabled:
            return {}
        folder = self.config.monitoring.live_metric.outcomes_folder
        return _LogVolumePods(self).read_folder(folder, lambda name: name.endswith((".csv", ".jsonl"))) or {}

    def publish_monitoring(self, payload: dict[str, Any]) -> None:
        if not self.config.monitoring.log.enabled:
            log.warning(
                "monitoring.log.enabled is false: no logging proxy exposes the monitoring results, so "
                "%s is not written",
                MONITOR_FILE,
            )
            return
        from branchops.serving.server_metrics import monitor_samples

        try:
            monitor_samples(payload)  # the proxies would expose nothing of a document they cannot read
            data = (json.dumps(payload, indent=1) + "\n").encode("utf-8")
        except (ValueError, TypeError) as exc:
            raise BranchopsError(f"not a monitoring result the logging proxies can expose: {exc}") from None
        _LogVolumePods(self).write_file(MONITOR_FILE, data)

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


class _KubernetesTracks(RolloutBackend):
    """The primitives on a cluster: the stable Deployment and a canary Deployment, both TF Serving."""

    external = "kubernetes"

    def __init__(self, serving: KubernetesServing) -> None:
        self.serving = serving
        self.api = serving.api
        self.objects = serving.objects
        self.namespace = serving.namespace
        self.k8s = serving.k8s
        self.poll_s = serving.poll_s
        self.label_timeout_s = serving.label_timeout_s
        self._exports: dict[int, dict[str, Any]] = {}

    def stable_version(self) -> int | None:
        if not self.api.ready_pods(self.namespace, self.objects.selector("stable")):
            return None
        # Pods that disagree are still reading a config: the one asked for is what they move to.
        return self.label_version("stable") or self.serving._state().get("stable")

    def stable_client(self) -> ServingClient:
        return self.serving.client()

    def _wait(self, what: str, predicate: Any, timeout_s: float | None = None) -> None:
        from branchops.progress import heartbeat

        timeout_s = self.k8s.rollout_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        # up to rollout_timeout_s (600 s by default) of waiting on the cluster: say it is still waiting
        with heartbeat(f"waiting for {what}"):
            while time.monotonic() < deadline:
                if predicate():
                    return
                time.sleep(self.poll_s)
        raise DeployFailed("timeout", f"{what} not reached within {timeout_s:.0f}s")

    def install(self, release: Release, source: Path | None) -> str:
        origin = release.source
        self.api.apply(self.objects.serving_volume())
        if self.objects.prediction_log.enabled:  # every serving pod's proxy mounts it, a canary's too
            self.api.apply(self.objects.prediction_log_volume())
        claim = origin.volume or ""
        if origin.snapshot:
            # A clone smaller than the snapshot's restoreSize never binds.
            restore_size = self.api.snapshot_restore_size(origin.snapshot, self.namespace)
            clone = self.objects.source_clone(origin.snapshot, release.version, restore_size)
            self.api.apply(clone)
            claim = clone["metadata"]["name"]
        job = self.objects.copy_job(claim, origin.path, release.version)
        name = job["metadata"]["name"]
        # A rerun copies again: a Job's template cannot be changed, so the old Job goes first, and is
        # gone (its pods too: foreground deletion) before the new one is created under its name.
        self.api.delete("Job", name, self.namespace)
        self.api.apply(job)
        outcome: dict[str, bool | None] = {"done": None}

        def finished() -> bool:
            outcome["done"] = self.api.job_finished(name, self.namespace)
            return outcome["done"] is not None

        self._wait(f"copy Job {name}", finished)
        if outcome["done"] is False:
            raise DeployFailed(
                "copy",
                f"Job {name} could not copy {origin.describe()} onto the serving volume (see its pod's log)",
            )
        return f"Job {name} copied {origin.describe()} onto the serving volume"

    def export_metadata(self, release: Release, source: Path | None) -> dict[str, Any]:
        meta = self._job_metadata(release.version)
        if meta is None:
            raise DeployFailed(
                "metadata", f"the copy Job printed no valid {METADATA_FILE} for version {release.version}"
            )
        sample = meta.get("sample")
        if not (
            isinstance(sample, dict)
            and sample.get("instances")
            and isinstance(sample.get("predictions"), dict)
        ):
            raise DeployFailed(
                "metadata", f"{METADATA_FILE} of version {release.version} has no sample to smoke-test"
            )
        self._exports[release.version] = meta
        return meta

    def check_runtime(self, meta: dict[str, Any]) -> Check:
        from branchops.serving.compat import check_serving_image

        verdict = check_serving_image(self.k8s.image, meta, refuse_older=self.k8s.refuse_older_image)
        if not verdict.ok:
            raise DeployFailed("serving image", verdict.reason)
        if verdict.reason:
            log.warning("serving image: %s", verdict.reason)
        return Check("serving image", True, verdict.reason or f"{self.k8s.image} loads what the export wrote")

    def _job_metadata(self, version: int) -> dict[str, Any] | None:
        """The export's metadata as the copy Job printed it after the marker (None without a log)."""
        import json

        log_text = self.api.job_log(self.objects.copy_job_name(version), self.namespace)
        _, marker, tail = log_text.partition(METADATA_MARKER)
        try:
            meta = json.loads(tail) if marker else None
        except ValueError:
            return None
        return meta if isinstance(meta, dict) else None

    def serving_metadata(self, version: int) -> dict[str, Any] | None:
        state = self.serving._state()
        export = state.get("export")
        if isinstance(export, dict) and export.get("version") == version:
            self._exports[version] = export  # kept for a restore after the annotation has moved on
            return export
        return self._job_metadata(version)  # the copy Job's log, while the Job is kept

    def _stable_policy(self, versions: list[int], stable: int) -> None:
        """The stable ConfigMap: TF Serving loads exactly ``versions`` and labels ``stable``."""
        state: dict[str, Any] = {
            "versions": sorted(set(versions)),
            "stable": stable,
            "canary": None,
            "canary_weight": 0,
        }
        export = self._exports.get(stable) or self.serving._state().get("export")
        if isinstance(export, dict) and export.get("version", stable) == stable:
            # What the next release is checked against: the sample clients' rows look like, the contract.
            state["export"] = {
                "version": stable,
                "sample": export.get("sample"),
                **{k: export[k] for k in ("input", "outputs", "serving_contract") if k in export},
            }
        self.api.apply(self.objects.config_map(state["versions"], {"stable": stable}, state=state))

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

    def _available_everywhere(self, version: int, track: str) -> bool:
        pods = self.api.ready_pods(self.namespace, self.objects.selector(track))
        if not pods:
            return False
        for pod in pods:
            try:
                status = self.serving.pod_client(pod).status(version=version)[0]
            except ServingError as exc:
                if exc.status in (404, 503):  # not read the new model config yet, or still starting
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

    def _await_available(self, version: int, track: str) -> None:
        self._wait(
            f"version {version} AVAILABLE on every {track} replica",
            lambda: self._available_everywhere(version, track),
        )

    def start_canary(self, version: int) -> ServingClient:
        self._remove_canary()  # a canary left by an interrupted rollout; with Istio, no traffic to it yet
        self.api.apply(self.objects.config_map([version], {}, track="canary"))
        self.api.apply(self.objects.deployment("canary", replicas=1))
        self._await_available(version, "canary")
        # Through the Service: with Istio the canary pods are its endpoints too, addressed by version.
        pods = self.api.ready_pods(self.namespace, self.objects.selector("canary"))
        return self.serving.pod_client(pods[0])

    def set_canary_weight(self, weight: int) -> str:
        if not self.objects.istio:
            return "probes only: without Istio no ordinary traffic reaches the canary pods"
        replicas = canary_replicas(self.k8s.replicas, weight)
        self.api.apply(self.objects.deployment("canary", replicas=replicas))
        self.api.apply(self.objects.virtual_service(weight))
        return f"Istio VirtualService: {weight}% of ordinary traffic to {replicas} canary pod(s)"

    def traffic(self, track: str) -> Counts | None:
        """Requests the track's pods answered (with Istio, the VirtualService's share of ordinary traffic
        and the probes), from each pod's metrics; None if a pod's cannot be read."""
        counts = Counts()
        for pod in self.api.ready_pods(self.namespace, self.objects.selector(track)):
            try:
                found = counts_from_metrics(self.serving.pod_client(pod).metrics(), self.serving.model_name)
            except ExternalError:
                return None
            if found is None:
                return None
            counts = counts + found
        return counts

    def switch_stable(self, version: int, previous: int | None) -> None:
        if previous is None:
            self._stable_policy([version], stable=version)
            self._ensure_workload()
            self._await_available(version, "stable")
            return
        # Loaded beside the serving version first: TF Serving moves a label only onto a loaded version.
        self._stable_policy([previous, version], stable=previous)
        self._ensure_workload()
        self._await_available(version, "stable")
        self._stable_policy([previous, version], stable=version)

    def label_version(self, label: str) -> int | None:
        seen = set()
        for pod in self.api.ready_pods(self.namespace, self.objects.selector("stable")):
            try:
                seen.add(int(self.serving.pod_client(pod).status(label=label)[0]["version"]))
            except ServingError as exc:
                if exc.status not in (404, 503):
                    raise
                seen.add(None)
        return seen.pop() if len(seen) == 1 else None

    def stop_canary(self) -> None:
        self._remove_canary()

    def retire(self, keep: int) -> None:
        self._stable_policy([keep], stable=keep)

    def _remove_canary(self) -> None:
        if self.objects.istio:
            self.api.apply(self.objects.virtual_service(0))
        self.api.delete("Deployment", self.objects.deployment_name("canary"), self.namespace)
        self.api.delete("ConfigMap", self.objects.config_map_name("canary"), self.namespace)

    def restore(self, previous: int | None, failed: int) -> None:
        self._remove_canary()
        if previous is not None:
            self._stable_policy([previous], stable=previous)
        else:  # nothing served before this failed first rollout: serve nothing rather than a bad model
            self.api.delete("Deployment", self.objects.deployment_name(), self.namespace)
            self.api.delete("ConfigMap", self.objects.config_map_name(), self.namespace)


# -- the prediction log volume's files, through short-lived pods --------------------------------------

# A missing folder exits with this code (neither sh, test, cd, gzip nor base64 use it for their errors),
# so "absent" is told from "failed" without parsing their messages.
_MISSING = 3
_MOUNT = "/mnt/prediction-log"
_CONTAINER = "files"
# A pod's log goes through the kubelet, which keeps only the newest containerLogMaxSize (10 MiB by
# default) of it. So a folder is read in two steps: one pod lists its regular files with their sizes,
# then pods print byte ranges of them, each range as a line "#<name> <offset>" and the bytes gzipped in
# base64 (# is not in base64's alphabet), then "#end", about READ_BATCH_BYTES of files per pod. What the
# kubelet cut is noticed (no "#end", no name first, or gzip's checksum failing) and that batch is read
# again in halves; a file gone since the listing (pruned by a proxy) is "#-<name>".
_LIST_FOLDER = (
    f'test -d "$1" || exit {_MISSING}; cd "$1" || exit 1; '
    'for f in * .[!.]*; do if test -f "$f"; then echo "$(wc -c < "$f") $f"; fi; done; echo "#end"'
)
_READ_RANGES = (
    'cd "$1" || exit 1; shift; while [ $# -ge 3 ]; do '
    'if test -f "$1"; then echo "#$1 $2"; tail -c "+$(($2 + 1))" "$1" | head -c "$3" | gzip -c | base64; '
    'else echo "#-$1"; fi; shift 3; done; echo "#end"'
)
# JSON Lines compress about threefold: a batch of this many bytes prints well under 10 MiB.
READ_BATCH_BYTES = 16 * 1024 * 1024
MIN_READ_BYTES = 256 * 1024  # a batch cut short even at this size: the kubelet's limit is tiny
# Written beside (a hidden name), then renamed: the proxies read monitor.json whole or not at all.
_WRITE_FILE = 'printf %s "$3" | base64 -d > "$2" && mv -f "$2" "$1"'
# The content travels as one argument of the pod's command: the kernel takes no longer one (MAX_ARG_STRLEN).
_MAX_WRITE_BYTES = 96 * 1024


class _LogVolumePods:
    """Reads a folder of the prediction log volume, or writes one file on it, with a pod that mounts it.

    The pod runs as the logging proxy's user under the restricted Pod Security Standard, has no Istio
    sidecar (a pod with one never reaches Succeeded), is named before it is created (a create whose answer
    is lost can still be deleted) and is deleted once its log is read, whatever happened."""

    def __init__(self, serving: KubernetesServing) -> None:
        self.api = serving.api
        self.namespace = serving.namespace
        self.claim = serving.config.monitoring.log.volume
        self.timeout_s = serving.k8s.rollout_timeout_s
        self.poll_s = serving.poll_s

    def read_folder(
        self, folder: str, wanted: Callable[[str], bool], whole_lines: bool = False
    ) -> dict[str, bytes] | None:
        """File name -> content of the regular files in ``folder`` ("." for the volume's root) whose name
        is ``wanted``, or None when the folder is not there. ``whole_lines``: a file ends at its last
        whole line (several proxies append to their files while they are read; the line being written
        is read by the next check)."""
        where = self.claim if folder == "." else f"{self.claim}/{folder}"
        path = f"{_MOUNT}/{folder}"
        listing = self._run(_LIST_FOLDER, [path], f"list {where}/", read_only=True)
        if listing is None:
            return None
        lines = [line.strip() for line in listing.splitlines() if line.strip()]
        if not lines or lines[-1] != "#end":
            raise ExternalError(f"the log of the pod that listed {where}/ is cut short: {listing[-300:]!r}")
        sizes = {}
        for line in lines[:-1]:
            size, _, name = line.partition(" ")
            if wanted(name):
                sizes[name] = int(size)
        # byte ranges (name, offset, length) of at most READ_BATCH_BYTES, in pods of about that much
        ranges = [
            (name, offset, min(READ_BATCH_BYTES, size - offset))
            for name, size in sorted(sizes.items())
            for offset in range(0, max(size, 1), READ_BATCH_BYTES)
        ]
        parts: dict[str, dict[int, bytes]] = {name: {} for name in sizes}
        gone: set[str] = set()
        batches = _packed(ranges)
        while batches:
            batch = batches.pop(0)
            read = self._read_ranges(path, where, batch)
            if read is None:  # cut short by the kubelet: the same bytes again, in two pods
                if sum(length for _, _, length in batch) <= MIN_READ_BYTES:
                    raise ExternalError(
                        f"the log of the pod that read {where}/ is cut short even for "
                        f"{MIN_READ_BYTES} bytes of files: the kubelet's containerLogMaxSize is too small"
                    )
                batches[0:0] = _halves(batch)
                continue
            for name, offset, data in read:
                if data is None:
                    gone.add(name)
                else:
                    parts[name][offset] = data
        files = {}
        for name in sorted(set(parts) - gone):
            data = b"".join(chunk for _, chunk in sorted(parts[name].items()))
            files[name] = data[: data.rfind(b"\n") + 1] if whole_lines else data
        return files

    def _read_ranges(
        self, path: str, where: str, batch: list[tuple[str, int, int]]
    ) -> list[tuple[str, int, bytes | None]] | None:
        """The ranges' bytes (None for a file gone since the listing), or None if the kubelet cut the
        pod's log."""
        args = [path] + [str(v) for r in batch for v in r]
        out = self._run(_READ_RANGES, args, f"read {where}/", read_only=True)
        lines = [line.strip() for line in (out or "").splitlines() if line.strip()]
        if not lines or lines[-1] != "#end" or not lines[0].startswith("#"):
            return None
        read: list[tuple[str, int, bytes | None]] = []
        current: list[str] = []
        chunks: list[tuple[str, int, list[str]]] = []
        for line in lines[:-1]:
            if line.startswith("#-"):
                read.append((line[2:], 0, None))
            elif line.startswith("#"):
                name, _, offset = line[1:].rpartition(" ")
                current = []
                chunks.append((name, int(offset), current))
            else:
                current.append(line)
        try:
            read += [
                (name, offset, gzip.decompress(base64.b64decode("".join(b64))))
                for name, offset, b64 in chunks
            ]
        except (ValueError, OSError, EOFError):
            return None  # a cut inside a range: gzip's length or checksum does not match
        if len(read) != len(batch):
            return None
        return read

    def write_file(self, name: str, data: bytes) -> None:
        encoded = base64.b64encode(data).decode("ascii")
        if len(encoded) > _MAX_WRITE_BYTES:
            raise ExternalError(
                f"{name} is {len(data)} bytes, more than a pod's command takes "
                f"({_MAX_WRITE_BYTES * 3 // 4} bytes at most)"
            )
        args = [f"{_MOUNT}/{name}", f"{_MOUNT}/.{name}.tmp", encoded]
        self._run(_WRITE_FILE, args, f"write {self.claim}/{name}", read_only=False)

    def _pod(self, name: str, script: str, args: list[str], read_only: bool) -> dict[str, Any]:
        from branchops.k8s.validate import validate_object

        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                # Not the serving pods' labels: no Service or Deployment selector may take it in.
                "labels": {
                    "app.kubernetes.io/part-of": "branchops",
                    "app.kubernetes.io/managed-by": "branchops",
                    "app.kubernetes.io/component": "prediction-log-access",
                },
                "annotations": {"sidecar.istio.io/inject": "false"},
            },
            "spec": {
                "restartPolicy": "Never",
                "activeDeadlineSeconds": max(1, math.ceil(self.timeout_s)),  # the API wants >= 1
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": PROXY_UID,
                    "runAsGroup": PROXY_UID,
                    "fsGroup": PROXY_UID,
                    "fsGroupChangePolicy": "OnRootMismatch",
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": _CONTAINER,
                        "image": COPY_IMAGE,
                        "command": ["sh", "-c", script, _CONTAINER, *args],
                        "volumeMounts": [
                            {"name": "prediction-log", "mountPath": _MOUNT, "readOnly": read_only}
                        ],
                        "resources": {
                            "requests": {"cpu": "50m", "memory": "32Mi"},
                            "limits": {"memory": "128Mi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
                "volumes": [
                    {
                        "name": "prediction-log",
                        "persistentVolumeClaim": {"claimName": self.claim, "readOnly": read_only},
                    }
                ],
            },
        }
        validate_object(pod)
        return pod

    def _call(self, what: str, func: Any, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return func(*args, _request_timeout=self.api.request_timeout_s, **kwargs)
        except (ApiException, HTTPError) as exc:
            if missing_ok and isinstance(exc, ApiException) and exc.status == 404:
                return None
            raise self.api._error(what, exc) from None

    def _run(self, script: str, args: list[str], what: str, read_only: bool) -> str | None:
        """Run a pod on the volume: its log, or None when it exited with :data:`_MISSING`."""
        name = f"branchops-files-{uuid.uuid4().hex[:12]}"
        body = self._pod(name, script, args, read_only)
        core = self.api.core
        try:
            self._call(
                f"could not create a Pod in {self.namespace} to {what}",
                core.create_namespaced_pod,
                self.namespace,
                body,
            )
            phase, exit_code = self._wait(name, what)
            text = self._call(
                f"could not read the log of Pod {self.namespace}/{name}",
                core.read_namespaced_pod_log,
                name,
                self.namespace,
                container=_CONTAINER,
            )
        finally:
            self._delete(name)
        if phase == "Succeeded":
            return str(text or "")
        if exit_code == _MISSING:
            return None
        raise ExternalError(
            f"Pod {self.namespace}/{name} could not {what}: it ended {phase} (exit code {exit_code}): "
            f"{str(text or '').strip()[-500:] or '(no output)'}"
        )

    def _wait(self, name: str, what: str) -> tuple[str, int | None]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            pod = self._call(
                f"could not read Pod {self.namespace}/{name}",
                self.api.core.read_namespaced_pod,
                name,
                self.namespace,
                missing_ok=True,
            )
            if pod is None:
                raise ExternalError(f"Pod {self.namespace}/{name} ({what}) disappeared before it ended")
            status = pod.status
            phase = (status.phase if status else None) or "Pending"
            if phase in ("Succeeded", "Failed"):
                terminated = next(
                    (
                        s.state.terminated
                        for s in status.container_statuses or []
                        if s.name == _CONTAINER and s.state and s.state.terminated
                    ),
                    None,
                )
                return phase, terminated.exit_code if terminated else None
            if time.monotonic() >= deadline:
                conditions = "; ".join(
                    f"{c.reason}: {c.message}"
                    for c in (status.conditions if status else None) or []
                    if c.reason
                )
                raise ExternalError(
                    f"Pod {self.namespace}/{name} ({what}) did not finish within {self.timeout_s:.0f}s "
                    f"(phase {phase}{'; ' + conditions if conditions else ''}; is the PersistentVolumeClaim "
                    f"{self.claim} there, and can the cluster pull {COPY_IMAGE}?)"
                )
            time.sleep(self.poll_s)

    def _delete(self, name: str) -> None:
        """A failed delete is a warning naming the pod left behind: it must not hide why a read failed."""
        try:
            self._call(
                f"could not delete Pod {self.namespace}/{name}",
                self.api.core.delete_namespaced_pod,
                name,
                self.namespace,
                missing_ok=True,
            )
        except ExternalError as exc:
            log.warning(
                "Pod %s/%s may be left behind (kubectl -n %s delete pod %s): %s",
                self.namespace,
                name,
                self.namespace,
                name,
                exc,
            )


def _packed(ranges: list[tuple[str, int, int]]) -> list[list[tuple[str, int, int]]]:
    """Consecutive ranges in batches of at most :data:`READ_BATCH_BYTES` (a range is never larger)."""
    batches: list[list[tuple[str, int, int]]] = [[]]
    for entry in ranges:
        if batches[-1] and sum(length for _, _, length in batches[-1]) + entry[2] > READ_BATCH_BYTES:
            batches.append([])
        batches[-1].append(entry)
    return [b for b in batches if b]


def _halves(batch: list[tuple[str, int, int]]) -> list[list[tuple[str, int, int]]]:
    """The same bytes as ``batch`` in two batches (a single range cut in two)."""
    if len(batch) > 1:
        return [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
    name, offset, length = batch[0]
    half = length // 2
    return [[(name, offset, half)], [(name, offset + half, length - half)]]
