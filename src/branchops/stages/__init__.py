"""The four stages, registered by name: each is one module (``inputs``, ``plan``, ``run``; see
:mod:`branchops.stages.base`). The runner looks a stage up here; nothing is found by import path, so a
stage cannot be swapped by a string in config. The modules import their heavy libraries only inside
``plan``/``run``, so registering them costs nothing at start-up.
"""

from __future__ import annotations

from branchops.stages import build_components, deploy_model, kf_pipeline, training
from branchops.stages.base import Stage

REGISTRY: dict[str, Stage] = {
    "build-components": build_components,
    "kf-pipeline": kf_pipeline,
    "training": training,
    "deploy-model": deploy_model,
}
