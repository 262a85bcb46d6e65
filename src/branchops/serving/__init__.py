"""The serving port: TensorFlow Serving's REST API locally (a branchops server process) or on
Kubernetes (a TF Serving Deployment). The deploy-model stage only talks to :class:`Serving`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from branchops.serving.base import Check, DeployResult, Serving, ServingStatus

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig

__all__ = ["Check", "DeployResult", "Serving", "ServingStatus", "make_serving"]


def make_serving(config: BranchopsConfig, state_dir: str | Path) -> Serving:
    """The configured serving backend (``serving.backend``)."""
    if config.serving.backend == "kubernetes":
        from branchops.serving.kubernetes_backend import KubernetesServing

        return KubernetesServing(config, Path(state_dir))
    from branchops.serving.local_backend import LocalServing

    return LocalServing(config, Path(state_dir))
