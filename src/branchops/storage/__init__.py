"""The storage port (volumes, snapshots, clones) and the backend chosen by config.

``make_storage(config, state_dir)`` returns the backend that ``storage.backend`` names:

* ``local`` (default): :class:`~branchops.storage.local.LocalStorage` under ``storage.local.root``
  (a relative root is taken relative to the repository root, the parent of ``state_dir``);
* ``trident``: :class:`~branchops.storage.trident.TridentStorage`, PVCs and CSI VolumeSnapshots in
  ``storage.trident.namespace`` through the kubernetes client (in-cluster or ``KUBECONFIG``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from branchops.storage.base import (
    LABEL_COMMIT,
    LABEL_RUN,
    Snapshot,
    Storage,
    Volume,
    check_labels,
    check_name,
    lineage_labels,
)

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig, StorageSection

__all__ = [
    "LABEL_COMMIT",
    "LABEL_RUN",
    "Snapshot",
    "Storage",
    "Volume",
    "check_labels",
    "check_name",
    "lineage_labels",
    "make_storage",
]


def make_storage(config: BranchopsConfig | StorageSection, state_dir: str | Path) -> Storage:
    """The storage backend configured in ``config.storage`` (or in a StorageSection given directly)."""
    section = getattr(config, "storage", config)
    if section.backend == "trident":
        from branchops.storage.trident import TridentStorage

        return TridentStorage.from_config(section.trident)
    from branchops.storage.local import LocalStorage

    root = Path(section.local.root).expanduser()
    if not root.is_absolute():
        root = Path(state_dir).parent / root
    return LocalStorage(root)
