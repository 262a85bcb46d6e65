"""The storage port: volumes, point-in-time snapshots of them, and volumes cloned from snapshots.

Backends (one file each): ``local`` (directories; snapshots are hard-linked, read-only trees) and
``trident`` (PersistentVolumeClaims and CSI ``snapshot.storage.k8s.io/v1`` VolumeSnapshots through the
kubernetes client). The training stage uses only this interface, so it is the same for both.

Contract, for every backend:

* every create is idempotent by name: creating what already exists returns the existing object (and a
  snapshot or clone whose existing source differs from the one asked for is an error, never a silent
  reuse);
* a snapshot never changes after it is taken, whatever is later written to its volume;
* names are Kubernetes object names (DNS-1123 labels: lower-case letters, digits and '-', at most 63
  characters) and labels are Kubernetes labels, so the same names work on both backends;
* labels carry the lineage: :data:`LABEL_COMMIT` (the git commit that started the run) and
  :data:`LABEL_RUN` (the run id).
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from branchops.errors import ConfigError

if TYPE_CHECKING:
    from branchops.config import DataVolumePolicy

LABEL_COMMIT = "branchops.io/commit"
LABEL_RUN = "branchops.io/run"
LABEL_VOLUME = "branchops.io/volume"  # on a snapshot: the volume it was taken from
LABEL_CLONED_FROM = "branchops.io/cloned-from"  # on a cloned volume: the snapshot it came from
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "branchops"

# Where a pipeline step on Kubernetes finds the two volumes of a run: the compiler hands these to the
# project's build_pipeline as ``mounts``, and the run's directories are paths under them.
STEP_MOUNTS = {"data": "/mnt/data", "models": "/mnt/models"}

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# A label key: optional DNS-subdomain prefix and '/', then a name; a value: empty or a name.
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is a valid volume/snapshot name, else raise ConfigError saying why."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what} must be a non-empty string, got {name!r}")
    if len(name) > 63:
        raise ConfigError(f"{what} {name!r} is {len(name)} characters long; at most 63 are allowed")
    if not _NAME.match(name):
        raise ConfigError(
            f"{what} {name!r} is not a valid name: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit (a Kubernetes DNS-1123 label)"
        )
    return name


def check_labels(labels: object) -> dict[str, str]:
    """Return a copy of ``labels`` if they are valid Kubernetes labels, else raise ConfigError."""
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise ConfigError(f"labels must be a mapping of strings, got {type(labels).__name__}")
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"label {key!r}: keys and values must be strings, got {value!r}")
        prefix, _, name = key.rpartition("/")
        if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
            raise ConfigError(f"label key {key!r}: prefix {prefix!r} is not a DNS subdomain")
        if not name or len(name) > 63 or not _LABEL_NAME.match(name):
            raise ConfigError(
                f"label key {key!r}: the name part must be 1-63 characters of letters, digits, "
                "'-', '_' or '.', starting and ending with a letter or digit"
            )
        if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
            raise ConfigError(
                f"label {key}={value!r}: a value must be at most 63 characters of letters, "
                "digits, '-', '_' or '.', starting and ending with a letter or digit"
            )
    return dict(labels)


def check_volume_path(path: object) -> str:
    """Return ``path`` if it is a relative path inside a volume (no '..', no leading '/'), else raise."""
    parts = str(path).split("/") if isinstance(path, str) else []
    if not parts or str(path).startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ConfigError(f"{path!r} is not a path inside a volume (relative, without '.', '..' or '//')")
    return str(path)


def lineage_labels(commit: str, run: str) -> dict[str, str]:
    """The labels that tie a snapshot (or volume) to the commit and the run that made it."""
    return check_labels({LABEL_COMMIT: commit, LABEL_RUN: run})


@dataclass(frozen=True)
class Volume:
    name: str
    path: str | None  # a local directory; None for a PVC (pods mount it by claim name)
    size: str | None  # requested size ("20Gi") for a PVC; None for an unbounded local directory
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    name: str
    volume: str  # the volume it was taken from
    created_at: str  # ISO 8601 UTC
    labels: dict[str, str] = field(default_factory=dict)
    ready: bool = True  # a CSI snapshot can be usable only later (status.readyToUse)
    path: str | None = None  # the read-only tree of a local snapshot; None on Kubernetes


class Storage(abc.ABC):
    """One backend of the storage port. All methods raise ConfigError for bad names or a missing source,
    ExternalError when the storage system fails."""

    backend: str = "?"

    @abc.abstractmethod
    def ensure_volume(self, name: str, labels: dict[str, str] | None = None) -> Volume:
        """The volume ``name``, created empty if it does not exist (an existing one keeps its labels)."""

    @abc.abstractmethod
    def get_volume(self, name: str) -> Volume | None:
        """The volume, or None if there is none of that name."""

    @abc.abstractmethod
    def snapshot(self, volume: str, name: str, labels: dict[str, str] | None = None) -> Snapshot:
        """Take snapshot ``name`` of ``volume``; if it exists (from the same volume), return it."""

    @abc.abstractmethod
    def get_snapshot(self, name: str) -> Snapshot | None:
        """The snapshot, or None."""

    @abc.abstractmethod
    def list_snapshots(self, volume: str | None = None) -> list[Snapshot]:
        """Snapshots (of ``volume`` if given), oldest first."""

    @abc.abstractmethod
    def clone(self, snapshot: str, new_volume: str, labels: dict[str, str] | None = None) -> Volume:
        """A new volume holding the snapshot's content; if it exists (cloned from it), return it."""

    @abc.abstractmethod
    def delete_snapshot(self, name: str) -> bool:
        """Delete the snapshot; False if there was none (deleting twice is not an error)."""

    @abc.abstractmethod
    def delete_volume(self, name: str) -> bool:
        """Delete the volume (its snapshots stay); False if there was none."""

    # -- the volume policy of config (storage.data_volume) ------------------------------------------
    def provide_data_volume(
        self, policy: DataVolumePolicy, labels: dict[str, str] | None = None
    ) -> tuple[Volume, bool]:
        """The data volume as ``storage.data_volume`` asks, and whether the data must be downloaded into it.

        ``new``: the volume (created if absent) — needs data when it was just created or is empty
        (the caller downloads, e.g. from Kaggle); ``existing``: the volume must exist; ``clone``: a new
        volume from ``policy.snapshot`` (idempotent: a rerun finds the clone it made).
        """
        if policy.policy == "existing":
            volume = self.get_volume(policy.name)
            if volume is None:
                raise ConfigError(
                    f"storage.data_volume: policy 'existing' but volume {policy.name!r} does not "
                    f"exist ({self.backend} storage); create it or use policy 'new'"
                )
            return volume, False
        if policy.policy == "clone":
            return self.clone(str(policy.snapshot), policy.name, labels), False
        existed = self.get_volume(policy.name) is not None
        volume = self.ensure_volume(policy.name, labels)
        return volume, (not existed) or self.is_empty(volume)

    def step_dir(self, volume: Volume, role: str) -> str:
        """The directory a pipeline step sees ``volume`` at, for ``role`` "data" or "models": the
        volume's mount path on Kubernetes; local backends override it with the directory itself."""
        return STEP_MOUNTS[role]

    def is_empty(self, volume: Volume) -> bool:
        """Whether a volume holds no data; backends that cannot tell say False (not known to be empty)."""
        return False

    # -- reading what a run left on a volume ---------------------------------------------------------
    # The training stage reads a run's metrics.json from the model volume, and whether the raw data is on
    # the data volume, through these: on Kubernetes no local directory holds the files (a PVC is mounted
    # only in pods), so each backend reads them its own way.
    @abc.abstractmethod
    def read_file(self, volume: Volume, path: str) -> bytes | None:
        """The bytes of file ``path`` (relative to the volume's root), or None if there is no such file."""

    @abc.abstractmethod
    def list_folder(self, volume: Volume, path: str) -> list[str] | None:
        """The names in folder ``path`` of the volume, sorted, or None if there is no such folder."""

    @abc.abstractmethod
    def read_folder(self, volume: Volume, path: str) -> dict[str, bytes] | None:
        """The files directly in folder ``path`` of the volume (name -> bytes; subfolders left out), all
        read at once, or None if there is no such folder."""
