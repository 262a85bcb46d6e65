"""Stage bodies for the Jenkins build tests, installed by the ``.venv/bin/branchops`` a test workspace gets:
the runner's contract around them is the real one, and the training body reads git through training's own
functions (the model in production on deploy-model, the release branch based on it)."""

from __future__ import annotations

import dataclasses
import types

from branchops.records import ExperimentEntry, ModelRef
from branchops.stages import REGISTRY, training
from branchops.stages.base import StageContext, StageResult
from tests.foundation import recording_stage


class _MergeRequestsElsewhere:
    """Opening the release merge request is the forge's business (tests/forge_github); these tests look at
    what git holds."""

    def open_merge_request(self, source, target, title, body, author=None):
        return types.SimpleNamespace(number=1), True


def run_training(ctx: StageContext) -> StageResult:
    recording_stage.run(ctx)
    release, _ = training.production_release(ctx)
    best = ExperimentEntry(
        experiment="e1",
        state="SUCCEEDED",
        metrics={"roc_auc": 0.7},
        model=ModelRef(volume="models", path="model/7", version=7),
    )
    training.open_release_request(dataclasses.replace(ctx, forge=_MergeRequestsElsewhere()), best, "report")
    production = f"version {release.version}" if release else "no model deployed yet"
    return StageResult("success", f"production: {production}", {"production": production})


def install() -> None:
    for stage in ("build-components", "kf-pipeline", "deploy-model"):
        REGISTRY[stage] = recording_stage
    REGISTRY["training"] = types.SimpleNamespace(
        inputs=recording_stage.inputs, plan=recording_stage.plan, run=run_training
    )
