from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving.model_factory import build_all


def make_config(base_path: Path, **rollout):
    """A valid configuration with the local serving backend under ``base_path``."""
    from branchops.config import BranchopsConfig

    stages = ("build-components", "kf-pipeline", "training", "deploy-model")
    return BranchopsConfig.model_validate(
        {
            "approvers": {s: ["lead"] for s in stages},
            "serving": {
                "model_name": "djia",
                "local": {"base_path": str(base_path)},
                "rollout": {
                    "requests_per_step": 10,
                    "min_step_seconds": 0.5,
                    "max_p99_latency_ms": 60000,
                    **rollout,
                },
            },
        }
    )


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny SavedModels (good versions 1-3 and broken ones), built once per session."""
    return build_all(tmp_path_factory.mktemp("models"))
