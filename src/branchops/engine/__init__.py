"""The pipeline-engine port (see :mod:`branchops.engine.base`) and the backend chosen by config.

Nothing heavy is imported here: kfp is imported inside the functions that compile or talk to Kubeflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from branchops.engine.base import CompiledPipeline, PipelineEngine, RunResult, Upload

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig

__all__ = ["CompiledPipeline", "PipelineEngine", "RunResult", "Upload", "make_engine"]


def make_engine(config: BranchopsConfig, state_dir: Path, workspace: Path | None = None) -> PipelineEngine:
    """The engine ``kubeflow.backend`` selects. ``workspace`` is where the local runner imports the
    components from (the checkout of the commit being run); Kubeflow runs the images instead."""
    section = config.kubeflow
    if section.backend == "kubeflow":
        from branchops.engine.kubeflow import KubeflowEngine

        assert section.kubeflow is not None  # the config schema requires it for this backend
        return KubeflowEngine(section.kubeflow)
    from branchops.engine.local import LocalEngine

    root = Path(section.local.root)
    # like every path in config, a relative root is relative to the repository (the state dir's parent)
    return LocalEngine(root if root.is_absolute() else Path(state_dir).parent / root, workspace=workspace)
