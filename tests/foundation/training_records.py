"""Training and deploy-model histories for the experiments and comparison tests, written through the typed
record models (``branchops.records``) the stages write with, so the JSON has the records' real shape.

The metrics are metrics.json as the evaluate component documents it (components/evaluate: test metrics,
``intervals``, ``validation``, ``curves``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from branchops.records import (
    DeploymentRecord,
    DeployOutputs,
    DeployRun,
    ExperimentEntry,
    KpiVerdict,
    MergeRequestRef,
    ModelRef,
    ReleaseRef,
    TrainingOutputs,
    TrainingRun,
    TrainingRunRef,
)
from tests.foundation import record_history as history


def metrics(
    roc_auc: float,
    accuracy: float,
    low: float | None = None,
    high: float | None = None,
    curves: bool = True,
    epochs: int = 3,
) -> dict[str, Any]:
    found: dict[str, Any] = {
        "accuracy": accuracy,
        "roc_auc": roc_auc,
        "log_loss": 0.69 - roc_auc / 10,
        "log_loss_constant": 0.69,
        "intervals": {
            "roc_auc": {
                "low": roc_auc - 0.03 if low is None else low,
                "high": roc_auc + 0.03 if high is None else high,
                "confidence": 0.95,
            }
        },
        "validation": {"roc_auc": roc_auc - 0.01, "accuracy": accuracy - 0.01, "folds_count": 4},
    }
    if curves:
        found["curves"] = {
            "learning": {
                "loss": [0.7 - 0.01 * e for e in range(epochs)],
                "val_loss": [0.71 - 0.005 * e for e in range(epochs)],
                "accuracy": [0.5 + 0.01 * e for e in range(epochs)],
                "val_accuracy": [0.5 + 0.005 * e for e in range(epochs)],
            },
            "roc": {"fpr": [0.0, 0.2, 0.5, 1.0], "tpr": [0.0, 0.3 + roc_auc / 10, 0.7, 1.0]},
        }
    return found


def experiment(name: str, i: int, params: dict[str, Any], found: dict[str, Any] | None) -> ExperimentEntry:
    """Experiment ``name`` of training run ``i``; ``found`` None: it failed."""
    version = history.FIRST_VERSION + i
    return ExperimentEntry(
        experiment=name,
        run_name=f"{history.commit_of(i)[:12]}-{name}",
        run_id=f"kfp-{i}-{name}",
        state="SUCCEEDED" if found is not None else "FAILED",
        error=None if found is not None else "the train step failed",
        duration_s=3.0,
        params=params,
        metrics=found,
        model=ModelRef(volume="models", path=f"runs/{i}/export/{version}", version=version)
        if found is not None
        else None,
    )


def training_run(
    i: int, entries: list[ExperimentEntry], best: str | None, passed: bool | None, branch: str = "training"
) -> TrainingRun:
    chosen = next((e for e in entries if e.experiment == best), None)
    return TrainingRun(
        stage="training",
        run_id=history.run_id(i),
        branch=branch,
        source_commit=history.commit_of(i),
        outcome="succeeded" if passed else "failed",
        started_at="2026-01-01T00:00:00+00:00",
        merge_request=MergeRequestRef(number=i + 1, author="ds1", approved_by=["lead"]),
        outputs=TrainingOutputs(
            experiments=entries,
            best=chosen,
            kpi=None
            if passed is None
            else KpiVerdict(passed=passed, failures=[] if passed else ["too weak"]),
        ),
    )


def deploy_run(
    i: int, training_i: int, outcome: str = "deployed", after: int | None = None, before: int | None = None
) -> DeployRun:
    """deploy-model run ``i`` releasing training run ``training_i``'s model; rolled back: ``after`` is the
    version left serving."""
    version = history.FIRST_VERSION + training_i
    return DeployRun(
        stage="deploy-model",
        run_id=history.run_id(i),
        branch="deploy-model",
        source_commit=history.commit_of(1000 + i),
        outcome="succeeded" if outcome != "rolled_back" else "failed",
        outputs=DeployOutputs(
            backend="local",
            release=ReleaseRef(
                model="djia",
                version=version,
                training=TrainingRunRef(
                    run_id=history.run_id(training_i), commit=history.commit_of(training_i)
                ),
            ),
            deployment=DeploymentRecord(
                model="djia",
                version=version,
                outcome=outcome,
                before=before,
                after=version if after is None else after,
                ok=outcome != "rolled_back",
            ),
        ),
    )


def write(repo: Path, branch: str, runs: list[TrainingRun | DeployRun]) -> None:
    """The runs' record.json files on ``branch``, in one commit, as the stages serialise them."""
    if runs:
        history.add_records(repo, branch, runs[0].stage, [run.to_dict() for run in runs])


# the run ids of three_runs' training runs 0, 1, 2
THREE_RUN_IDS = tuple(history.run_id(i) for i in range(3))


def cli_json(project, *args: str, expect: int = 0) -> dict[str, Any]:
    """A ``--json`` command's answer: its output when it succeeds, its error report (stderr) otherwise."""
    result = project.run(*args, "--json", expect=expect)
    return json.loads(result.stdout if expect == 0 else result.stderr)


def three_runs(repo: Path) -> None:
    """Training runs 0, 1, 2 (two experiments each; run 2's ``deep`` failed); deploy-model served run 1's
    model, then rolled forward to nothing else: run 1 is serving, run 2 is the latest."""
    runs = [
        training_run(
            0,
            [
                experiment("wide", 0, {"units": 64, "lr": 0.01}, metrics(0.58, 0.55)),
                experiment("deep", 0, {"units": 16, "lr": 0.01}, metrics(0.52, 0.51, low=0.49)),
            ],
            best="wide",
            passed=False,
        ),
        training_run(
            1,
            [
                experiment("wide", 1, {"units": 64, "lr": 0.003}, metrics(0.64, 0.60)),
                experiment("deep", 1, {"units": 16, "lr": 0.003}, metrics(0.61, 0.58)),
            ],
            best="wide",
            passed=True,
        ),
        training_run(
            2,
            [
                experiment("wide", 2, {"units": 128, "lr": 0.003}, metrics(0.66, 0.62, epochs=5)),
                experiment("deep", 2, {"units": 32, "lr": 0.003}, None),
            ],
            best="wide",
            passed=True,
        ),
    ]
    write(repo, "training", runs)
    write(repo, "deploy-model", [deploy_run(0, 1)])
