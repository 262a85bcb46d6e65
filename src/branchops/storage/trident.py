"""Trident storage: PersistentVolumeClaims and CSI VolumeSnapshots through the kubernetes client.

* a volume is a PVC in ``storage.trident.namespace`` with the configured (Trident) storage class, size
  and access mode;
* a snapshot is a ``snapshot.storage.k8s.io/v1`` VolumeSnapshot of that PVC with the configured
  VolumeSnapshotClass; :meth:`TridentStorage.snapshot` waits until ``status.readyToUse`` (with a
  timeout, logging progress) — a CSI snapshot is usable only then;
* a clone is a new PVC whose ``dataSource`` is the VolumeSnapshot (Trident restores it as a FlexClone);
* a file on a volume is read by a short-lived reader Pod that mounts the PVC read-only and prints the
  file (base64) to its log; the pod is deleted afterwards. A PVC is mounted only in pods, and this is
  how the training stage reads a run's metrics.json without any local work directory.

Every create is idempotent: ``409 AlreadyExists`` reads the existing object, and refuses it if its
source differs. Every object is validated offline (kubernetes-validate strict / the shipped CSI CRD
schema) before it is sent. API failures become :class:`~branchops.errors.ExternalError` naming the
operation, the object and the server's message.

The client is configured in-cluster (a CI agent pod with a service account; see ``jenkins/rbac/``) or
from ``KUBECONFIG`` / ``~/.kube/config`` (``branchops.k8s.client.load_api_client``, shared with Kubernetes
serving). ``kubernetes`` is imported only when this backend is used.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from branchops.errors import ConfigError, ExternalError
from branchops.k8s.client import load_api_client
from branchops.storage.base import (
    LABEL_CLONED_FROM,
    LABEL_MANAGED_BY,
    LABEL_VOLUME,
    MANAGED_BY,
    Snapshot,
    Storage,
    Volume,
    check_labels,
    check_name,
    check_volume_path,
)

if TYPE_CHECKING:
    from branchops.config import StorageTrident

log = logging.getLogger(__name__)

SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
SNAPSHOT_VERSION = "v1"
SNAPSHOT_PLURAL = "volumesnapshots"
REQUEST_TIMEOUT_S = 30.0
PROGRESS_EVERY_S = 10.0

# The reader pod: the volume is mounted read-only here; a missing file or folder exits with
# READER_MISSING (an exit code neither sh, test, base64 nor ls use for their own errors), so "absent"
# is told from "failed" without parsing messages that differ between busybox and coreutils.
READER_MOUNT = "/mnt/volume"
READER_CONTAINER = "reader"
READER_MISSING = 3
_READ_FILE = f'test -f "$1" || exit {READER_MISSING}; base64 "$1"'
_LIST_FOLDER = f'test -d "$1" || exit {READER_MISSING}; ls -1A "$1"'
# each regular file of the folder as a line "#<name>" (# is not in base64's alphabet) and its base64
_READ_FOLDER = (
    f'test -d "$1" || exit {READER_MISSING}; cd "$1" || exit 1; '
    'for f in * .[!.]*; do if test -f "$f"; then echo "#$f"; base64 "$f" || exit 1; fi; done'
)

_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity_bytes(quantity: str | int) -> int:
    """Bytes in a Kubernetes storage quantity ("20Gi", "500M", "1073741824")."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kMGTPE]i?|)\s*", str(quantity))
    if not match or match.group(2) not in _UNITS:
        raise ConfigError(f"{quantity!r} is not a storage quantity (e.g. 20Gi, 500Mi, 1000000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


class TridentStorage(Storage):
    backend = "trident"

    def __init__(
        self,
        *,
        namespace: str,
        storage_class: str,
        snapshot_class: str,
        size: str = "20Gi",
        access_mode: str = "ReadWriteMany",
        ready_timeout_s: float = 600,
        reader_image: str = "busybox:1.36",
        poll_interval_s: float = 2.0,
        api_client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.namespace = check_name(namespace, "storage.trident.namespace")
        self.storage_class = storage_class
        self.snapshot_class = snapshot_class
        self.size = size
        quantity_bytes(size)
        self.access_mode = access_mode
        self.ready_timeout_s = ready_timeout_s
        self.reader_image = reader_image
        self.poll_interval_s = poll_interval_s
        self._api_client = api_client
        self._sleep = sleep

    @classmethod
    def from_config(cls, section: StorageTrident, **kwargs: Any) -> TridentStorage:
        return cls(
            namespace=section.namespace,
            storage_class=section.storage_class,
            snapshot_class=section.snapshot_class,
            size=section.size,
            access_mode=section.access_mode,
            ready_timeout_s=section.ready_timeout_s,
            reader_image=section.reader_image,
            **kwargs,
        )

    # -- the client ----------------------------------------------------------------------------------
    @property
    def api_client(self) -> Any:
        if self._api_client is None:
            self._api_client = load_api_client()
        return self._api_client

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    def _custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client)

    def _call(
        self,
        what: str,
        func: Callable[..., Any],
        *args: Any,
        missing_ok: bool = False,
        conflict_ok: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Call the API; return None on 404 (missing_ok) or the string "conflict" on 409 (conflict_ok)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return func(*args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            if exc.status == 409 and conflict_ok:
                return "conflict"
            raise ExternalError(
                f"Kubernetes API: {what} failed: {exc.status} {exc.reason}: {_server_message(exc)}"
            ) from None
        except HTTPError as exc:
            host = getattr(getattr(self.api_client, "configuration", None), "host", "?")
            raise ExternalError(
                f"Kubernetes API at {host} unreachable while trying to {what}: {exc}"
            ) from None

    def _to_dict(self, obj: Any) -> dict[str, Any]:
        return obj if isinstance(obj, dict) else self.api_client.sanitize_for_serialization(obj)

    def _send(self, body: dict[str, Any]) -> dict[str, Any]:
        from branchops.k8s.validate import validate_object

        validate_object(body)  # never send what the API server would reject
        return body

    def _metadata(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"name": name, "namespace": self.namespace, "labels": {**labels, LABEL_MANAGED_BY: MANAGED_BY}}

    # -- volumes (PVCs) ------------------------------------------------------------------------------
    def _pvc_body(
        self, name: str, labels: dict[str, str], size: str, data_source: dict[str, str] | None = None
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "accessModes": [self.access_mode],
            "storageClassName": self.storage_class,
            "resources": {"requests": {"storage": size}},
        }
        if data_source:
            spec["dataSource"] = data_source
        return self._send(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": self._metadata(name, labels),
                "spec": spec,
            }
        )

    def _read_pvc(self, name: str) -> dict[str, Any] | None:
        found = self._call(
            f"read PersistentVolumeClaim {self.namespace}/{name}",
            self._core().read_namespaced_persistent_volume_claim,
            name,
            self.namespace,
            missing_ok=True,
        )
        return None if found is None else self._to_dict(found)

    @staticmethod
    def _volume_from(pvc: dict[str, Any]) -> Volume:
        meta, spec = pvc.get("metadata", {}), pvc.get("spec", {})
        size = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
        return Volume(name=meta["name"], path=None, size=size, labels=dict(meta.get("labels") or {}))

    def _create_pvc(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        created = self._call(
            f"create PersistentVolumeClaim {self.namespace}/{name}",
            self._core().create_namespaced_persistent_volume_claim,
            self.namespace,
            body,
            conflict_ok=True,
        )
        if created == "conflict":
            existing = self._read_pvc(name)
            if existing is None:
                raise ExternalError(
                    f"PersistentVolumeClaim {self.namespace}/{name}: the API server said it "
                    "exists (409) but it cannot be read back"
                )
            return existing
        log.info(
            "created PersistentVolumeClaim %s/%s (%s, %s)",
            self.namespace,
            name,
            self.storage_class,
            body["spec"]["resources"]["requests"]["storage"],
        )
        return self._to_dict(created)

    def ensure_volume(self, name: str, labels: dict[str, str] | None = None) -> Volume:
        check_name(name, "volume name")
        existing = self._read_pvc(name)
        if existing is not None:
            return self._volume_from(existing)
        return self._volume_from(self._create_pvc(self._pvc_body(name, check_labels(labels), self.size)))

    def get_volume(self, name: str) -> Volume | None:
        pvc = self._read_pvc(check_name(name, "volume name"))
        return None if pvc is None else self._volume_from(pvc)

    def delete_volume(self, name: str) -> bool:
        check_name(name, "volume name")
        done = self._call(
            f"delete PersistentVolumeClaim {self.namespace}/{name}",
            self._core().delete_namespaced_persistent_volume_claim,
            name,
            self.namespace,
            missing_ok=True,
        )
        return done is not None

    # -- snapshots (VolumeSnapshots) -----------------------------------------------------------------
    def _read_snapshot(self, name: str) -> dict[str, Any] | None:
        return self._call(
            f"read VolumeSnapshot {self.namespace}/{name}",
            self._custom().get_namespaced_custom_object,
            SNAPSHOT_GROUP,
            SNAPSHOT_VERSION,
            self.namespace,
            SNAPSHOT_PLURAL,
            name,
            missing_ok=True,
        )

    @staticmethod
    def _snapshot_from(obj: dict[str, Any]) -> Snapshot:
        meta, status = obj.get("metadata", {}), obj.get("status") or {}
        source = ((obj.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName", "")
        return Snapshot(
            name=meta["name"],
            volume=source,
            created_at=status.get("creationTime") or meta.get("creationTimestamp") or "",
            labels=dict(meta.get("labels") or {}),
            ready=status.get("readyToUse") is True,
            path=None,
        )

    def get_snapshot(self, name: str) -> Snapshot | None:
        found = self._read_snapshot(check_name(name, "snapshot name"))
        return None if found is None else self._snapshot_from(found)

    def list_snapshots(self, volume: str | None = None) -> list[Snapshot]:
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        if volume is not None:
            selector += f",{LABEL_VOLUME}={check_name(volume, 'volume name')}"
        found = self._call(
            f"list VolumeSnapshots in {self.namespace}",
            self._custom().list_namespaced_custom_object,
            SNAPSHOT_GROUP,
            SNAPSHOT_VERSION,
            self.namespace,
            SNAPSHOT_PLURAL,
            label_selector=selector,
        )
        snaps = [self._snapshot_from(item) for item in (found or {}).get("items", [])]
        if volume is not None:  # the label is ours; the source field is the truth
            snaps = [s for s in snaps if s.volume == volume]
        return sorted(snaps, key=lambda s: (s.created_at, s.name))

    def snapshot(
        self, volume: str, name: str, labels: dict[str, str] | None = None, *, wait: bool = True
    ) -> Snapshot:
        check_name(volume, "volume name")
        check_name(name, "snapshot name")
        labels = check_labels(labels)
        existing = self._read_snapshot(name)
        if existing is None:
            if self._read_pvc(volume) is None:
                raise ConfigError(
                    f"cannot snapshot volume {volume!r}: no PersistentVolumeClaim {self.namespace}/{volume}"
                )
            body = self._send(
                {
                    "apiVersion": f"{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}",
                    "kind": "VolumeSnapshot",
                    "metadata": self._metadata(name, {**labels, LABEL_VOLUME: volume}),
                    "spec": {
                        "volumeSnapshotClassName": self.snapshot_class,
                        "source": {"persistentVolumeClaimName": volume},
                    },
                }
            )
            created = self._call(
                f"create VolumeSnapshot {self.namespace}/{name}",
                self._custom().create_namespaced_custom_object,
                SNAPSHOT_GROUP,
                SNAPSHOT_VERSION,
                self.namespace,
                SNAPSHOT_PLURAL,
                body,
                conflict_ok=True,
            )
            if created == "conflict":  # created concurrently: read it
                existing = self._read_snapshot(name)
            else:
                log.info(
                    "created VolumeSnapshot %s/%s of PVC %s (class %s)",
                    self.namespace,
                    name,
                    volume,
                    self.snapshot_class,
                )
                existing = created
        if existing is None:
            raise ExternalError(f"VolumeSnapshot {self.namespace}/{name} vanished right after it was created")
        snap = self._snapshot_from(existing)
        if snap.volume != volume:
            raise ConfigError(
                f"snapshot {name!r} already exists and was taken from volume {snap.volume!r}, "
                f"not {volume!r}; choose another snapshot name"
            )
        return self.wait_until_ready(name) if wait and not snap.ready else snap

    def wait_until_ready(self, name: str, timeout_s: float | None = None) -> Snapshot:
        """Poll the VolumeSnapshot until ``status.readyToUse`` is true; ExternalError after the timeout."""
        timeout = self.ready_timeout_s if timeout_s is None else timeout_s
        start = time.monotonic()
        last_log = -PROGRESS_EVERY_S
        while True:
            obj = self._read_snapshot(name)
            if obj is None:
                raise ExternalError(
                    f"VolumeSnapshot {self.namespace}/{name} disappeared while waiting for it to become ready"
                )
            snap = self._snapshot_from(obj)
            if snap.ready:
                log.info(
                    "VolumeSnapshot %s/%s is ready to use (%.0fs)",
                    self.namespace,
                    name,
                    time.monotonic() - start,
                )
                return snap
            elapsed = time.monotonic() - start
            error = ((obj.get("status") or {}).get("error") or {}).get("message")
            if elapsed >= timeout:
                raise ExternalError(
                    f"VolumeSnapshot {self.namespace}/{name} not ready to use after {timeout:.0f}s"
                    + (
                        f"; the snapshot controller reports: {error}"
                        if error
                        else " (no error reported; check the snapshot controller and the VolumeSnapshotClass "
                        f"{self.snapshot_class!r})"
                    )
                )
            if elapsed - last_log >= PROGRESS_EVERY_S:
                log.info(
                    "waiting for VolumeSnapshot %s/%s to be ready to use (%.0fs of %.0fs)%s",
                    self.namespace,
                    name,
                    elapsed,
                    timeout,
                    f": {error}" if error else "",
                )
                last_log = elapsed
            self._sleep(self.poll_interval_s)

    def delete_snapshot(self, name: str) -> bool:
        check_name(name, "snapshot name")
        done = self._call(
            f"delete VolumeSnapshot {self.namespace}/{name}",
            self._custom().delete_namespaced_custom_object,
            SNAPSHOT_GROUP,
            SNAPSHOT_VERSION,
            self.namespace,
            SNAPSHOT_PLURAL,
            name,
            missing_ok=True,
        )
        return done is not None

    # -- clones --------------------------------------------------------------------------------------
    def clone(self, snapshot: str, new_volume: str, labels: dict[str, str] | None = None) -> Volume:
        check_name(snapshot, "snapshot name")
        check_name(new_volume, "volume name")
        labels = check_labels(labels)
        existing = self._read_pvc(new_volume)
        if existing is not None:
            source = (existing.get("spec") or {}).get("dataSource") or {}
            if source.get("kind") != "VolumeSnapshot" or source.get("name") != snapshot:
                raise ConfigError(
                    f"volume {new_volume!r} already exists and was not cloned from snapshot "
                    f"{snapshot!r}; choose another volume name"
                )
            return self._volume_from(existing)
        snap_obj = self._read_snapshot(snapshot)
        if snap_obj is None:
            raise ConfigError(
                f"cannot clone snapshot {snapshot!r}: no VolumeSnapshot {self.namespace}/{snapshot}"
            )
        if not self._snapshot_from(snap_obj).ready:
            self.wait_until_ready(snapshot)
            snap_obj = self._read_snapshot(snapshot) or snap_obj
        # A restored volume must be at least as big as the snapshot's restoreSize, or provisioning fails.
        size = self.size
        restore = (snap_obj.get("status") or {}).get("restoreSize")
        if restore is not None and quantity_bytes(restore) > quantity_bytes(size):
            size = str(restore)
        body = self._pvc_body(
            new_volume,
            {**labels, LABEL_CLONED_FROM: snapshot},
            size,
            data_source={"apiGroup": SNAPSHOT_GROUP, "kind": "VolumeSnapshot", "name": snapshot},
        )
        created = self._create_pvc(body)
        source = (created.get("spec") or {}).get("dataSource") or {}
        if source.get("name") != snapshot:
            raise ConfigError(f"volume {new_volume!r} was created concurrently from another source")
        return self._volume_from(created)

    # -- reading files of a volume (a reader pod) ----------------------------------------------------
    def read_file(self, volume: Volume, path: str) -> bytes | None:
        out = self._run_reader(volume, _READ_FILE, check_volume_path(path), f"read {path}")
        return None if out is None else base64.b64decode("".join(out.split()))

    def list_folder(self, volume: Volume, path: str) -> list[str] | None:
        out = self._run_reader(volume, _LIST_FOLDER, check_volume_path(path), f"list {path}/")
        return None if out is None else sorted(line for line in out.splitlines() if line)

    def read_folder(self, volume: Volume, path: str) -> dict[str, bytes] | None:
        out = self._run_reader(volume, _READ_FOLDER, check_volume_path(path), f"read {path}/")
        if out is None:
            return None
        files: dict[str, list[str]] = {}
        current: list[str] = []
        for line in out.splitlines():
            if line.startswith("#"):
                current = files.setdefault(line[1:], [])
            elif line.strip():
                current.append(line.strip())
        return {name: base64.b64decode("".join(parts)) for name, parts in sorted(files.items())}

    def _reader_pod(self, pod: str, volume: Volume, script: str, path: str) -> dict[str, Any]:
        return self._send(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod,
                    "namespace": self.namespace,
                    "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_VOLUME: volume.name},
                    # Kubeflow profile namespaces inject Istio sidecars, and a pod with a sidecar never
                    # reaches Succeeded: the reader talks to no one, so it goes without.
                    "annotations": {"sidecar.istio.io/inject": "false"},
                },
                "spec": {
                    "restartPolicy": "Never",
                    "activeDeadlineSeconds": max(1, math.ceil(self.ready_timeout_s)),  # the API wants >= 1
                    # admitted under the "restricted" Pod Security Standard; files the steps wrote are
                    # world-readable, so an unprivileged user can read them
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65534,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": READER_CONTAINER,
                            "image": self.reader_image,
                            "command": ["sh", "-c", script, READER_CONTAINER, f"{READER_MOUNT}/{path}"],
                            "volumeMounts": [{"name": "volume", "mountPath": READER_MOUNT, "readOnly": True}],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                    "volumes": [
                        {
                            "name": "volume",
                            "persistentVolumeClaim": {"claimName": volume.name, "readOnly": True},
                        }
                    ],
                },
            }
        )

    def _run_reader(self, volume: Volume, script: str, path: str, what: str) -> str | None:
        """Run a reader pod on ``volume`` and return its log, or None when ``path`` is not there."""
        check_name(volume.name, "volume name")
        # Named here, not by the API server (generateName): a create whose answer is lost (a timeout, a
        # dropped connection) may still have made the pod, and only a known name lets it be deleted.
        pod = f"branchops-read-{uuid.uuid4().hex[:12]}"
        body = self._reader_pod(pod, volume, script, path)
        try:
            self._call(
                f"create a reader Pod in {self.namespace} to {what} of volume {volume.name}",
                self._core().create_namespaced_pod,
                self.namespace,
                body,
            )
            phase, exit_code = self._wait_for_pod(pod, f"{what} of volume {volume.name}")
            log_text = self._call(
                f"read the log of Pod {self.namespace}/{pod}",
                self._core().read_namespaced_pod_log,
                pod,
                self.namespace,
                container=READER_CONTAINER,
            )
        finally:
            self._delete_reader(pod)
        if phase == "Succeeded":
            return str(log_text or "")
        if exit_code == READER_MISSING:
            return None
        raise ExternalError(
            f"reader Pod {self.namespace}/{pod} could not {what} of volume {volume.name}: it ended {phase} "
            f"(exit code {exit_code}): {str(log_text or '').strip()[-500:] or '(no output)'}"
        )

    def _delete_reader(self, pod: str) -> None:
        """Delete a reader pod (gone already is fine). A delete that fails is a warning naming the pod left
        behind, never an error: it must not hide why the read failed, nor fail a read that succeeded."""
        try:
            self._call(
                f"delete Pod {self.namespace}/{pod}",
                self._core().delete_namespaced_pod,
                pod,
                self.namespace,
                missing_ok=True,
            )
        except ExternalError as exc:
            log.warning(
                "reader Pod %s/%s may be left behind (kubectl -n %s delete pod %s): %s",
                self.namespace,
                pod,
                self.namespace,
                pod,
                exc,
            )

    def _wait_for_pod(self, pod: str, what: str) -> tuple[str, int | None]:
        """Poll the pod until it has ended: (phase, its container's exit code)."""
        start = time.monotonic()
        while True:
            found = self._call(
                f"read Pod {self.namespace}/{pod}",
                self._core().read_namespaced_pod,
                pod,
                self.namespace,
                missing_ok=True,
            )
            if found is None:
                raise ExternalError(f"reader Pod {self.namespace}/{pod} disappeared before it ended")
            status = self._to_dict(found).get("status") or {}
            phase = status.get("phase") or "Pending"
            if phase in ("Succeeded", "Failed"):
                terminated = next(
                    (
                        (s.get("state") or {}).get("terminated") or {}
                        for s in status.get("containerStatuses") or []
                        if s.get("name") == READER_CONTAINER
                    ),
                    {},
                )
                return phase, terminated.get("exitCode")
            elapsed = time.monotonic() - start
            if elapsed >= self.ready_timeout_s:
                waiting = [
                    (s.get("state") or {}).get("waiting") or {} for s in status.get("containerStatuses") or []
                ]
                reason = "; ".join(f"{w.get('reason')}: {w.get('message', '')}" for w in waiting if w)
                raise ExternalError(
                    f"reader Pod {self.namespace}/{pod} ({what}) did not finish within "
                    f"{self.ready_timeout_s:.0f}s (phase {phase}{'; ' + reason if reason else ''}; can the "
                    f"cluster pull storage.trident.reader_image {self.reader_image!r}?)"
                )
            self._sleep(self.poll_interval_s)


def _server_message(exc: Any) -> str:
    """The human part of a Kubernetes Status body, without echoing anything else."""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return str(exc.body)[:300] if exc.body else "(no details)"
    return str(body.get("message") or body.get("reason") or "(no details)")[:500]
