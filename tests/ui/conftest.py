"""A repository with real runs for the dashboard's tests, and the dashboard served on it.

The runs are made by the real runner through the CLI (approved merge requests into the stage branches);
only the stage bodies are stand-ins (``stand_in_stages``), so the records, their artifacts and the bot
commits are the ones every stage writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from branchops.stages import REGISTRY
from tests.conftest import git
from tests.foundation import recording_stage
from tests.foundation.conftest import Project, make_project
from tests.foundation.record_history import FIRST_VERSION
from tests.ui import monitor_records, stand_in_stages

# Two training runs (models 1 and 2), then deploy-model: model 1, model 2 as a canary that failed its
# checks and was rolled back to 1, then model 2 again, fully.
TRAINING_RUNS = [{"version": 1, "units": 64, "roc_auc": 0.58}, {"version": 2, "units": 128, "roc_auc": 0.63}]
DEPLOY_RUNS = [
    {"version": 1, "before": None},
    {
        "version": 2,
        "before": 1,
        "outcome": "rolled_back",
        "canary_steps": [{"weight": 10, "requests": 40, "error_rate": 0.2, "p99_ms": 12.0, "ok": False}],
    },
    {"version": 2, "before": 1, "canary_steps": [{"weight": 10, "ok": True}, {"weight": 50, "ok": True}]},
]
# Then monitoring of model 2 (each feature's PSI): in distribution, then volatility drifting on two checks in
# a row, the second of which opened the retraining merge request and had outcomes for a live metric.
MONITOR_CHECKS = [
    {"return_1d": 0.02, "volatility_20d": 0.04, "volume_ratio": 0.01},
    {"return_1d": 0.03, "volatility_20d": 0.31, "volume_ratio": 0.02},
    {"return_1d": 0.05, "volatility_20d": 0.47, "volume_ratio": 0.12},
]
LIVE_METRIC = {
    "name": "roc_auc",
    "value": 0.55,
    "low": 0.49,
    "high": 0.61,
    "n": 120,
    "validated": 0.63,
    "confidence": 0.95,
    "note": None,
    "below_validated": True,
}
# before enough outcomes arrived
NO_LIVE_METRIC = LIVE_METRIC | {
    "value": None,
    "low": None,
    "high": None,
    "n": 12,
    "below_validated": False,
    "note": "12 outcomes joined, fewer than the 50 needed",
}
RETRAIN_BRANCH = "branchops/retrain"
APPROVER = {
    "build-components": "lead",
    "kf-pipeline": "lead",
    "training": "lead",
    "deploy-model": "head-of-ds",
}


def merge_run(project: Project, target: str, wanted: dict) -> None:
    """An approved merge request into ``target`` whose commit tells the stand-in stage what to record."""
    project.commit("ds1", stand_in_stages.RUN_FILE, json.dumps({"for": target, **wanted}) + "\n")
    number = project.open_mr(target)
    project.run("mr", "approve", str(number), "--as", APPROVER[target])
    project.run("mr", "merge", str(number), "--as", APPROVER[target])


@pytest.fixture(scope="module")
def dashboard_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose four stage branches hold runs written by the real runner."""
    root = tmp_path_factory.mktemp("dashboard")
    with pytest.MonkeyPatch.context() as patch:
        for stage in ("build-components", "kf-pipeline"):
            patch.setitem(REGISTRY, stage, recording_stage)
        patch.setitem(REGISTRY, "training", stand_in_stages.TrainingStage)
        patch.setitem(REGISTRY, "deploy-model", stand_in_stages.DeployStage)
        patch.setenv("BRANCHOPS_TEST_STAGE_LOG", str(root / "stage-calls.log"))
        project = make_project(root)
        merge_run(project, "build-components", {})
        merge_run(project, "kf-pipeline", {})
        for wanted in TRAINING_RUNS:
            merge_run(project, "training", wanted)
        # training run k (oldest first) made model version k + 1
        made_by = project.files("training", "records/training/")
        training_runs = sorted({path.split("/")[2] for path in made_by})
        for wanted in DEPLOY_RUNS:
            merge_run(
                project, "deploy-model", wanted | {"training_run_id": training_runs[wanted["version"] - 1]}
            )
        monitor(project)
    return project.path


def monitor(project: Project) -> None:
    """MONITOR_CHECKS recorded on deploy-model, the last one with the retraining merge request it opened (a
    real one on the embedded forge, from the bot's branch into training)."""
    git(project.path, "branch", RETRAIN_BRANCH, "training")
    project.commit(RETRAIN_BRANCH, "src/data_window.txt", "until 2016-06-30\n", user="branchops-bot")
    git(project.path, "checkout", "-q", "ds1")
    number = project.open_mr("training", author="branchops-bot", source=RETRAIN_BRANCH, title="Retrain")
    version = FIRST_VERSION + DEPLOY_RUNS[-1]["version"]
    last = len(MONITOR_CHECKS) - 1
    checks = [
        monitor_records.check(
            i,
            version,
            psi,
            streak=i,  # checks 1 and 2 drifted
            live_metric=LIVE_METRIC if i == last else NO_LIVE_METRIC,
            merge_request={
                "number": number,
                "url": None,
                "action": "opened",
                "branch": RETRAIN_BRANCH,
                "commit": None,
                "data_until": "2016-06-30",
            }
            if i == last
            else None,
        )
        for i, psi in enumerate(MONITOR_CHECKS)
    ]
    monitor_records.write(project.path, checks)


@pytest.fixture(scope="module")
def empty_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with its stage branches and no run yet."""
    return make_project(tmp_path_factory.mktemp("empty")).path


class DashboardServer:
    """``branchops ui`` in its own process, as a user starts it."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.process = subprocess.Popen(
            [sys.executable, "-m", "branchops.cli", "-C", str(repo), "ui", "--port", "0", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        lines = []
        # --json prints one JSON document once the port is bound
        for line in self.process.stdout:
            lines.append(line)
            if line.rstrip() == "}":
                break
        if not lines:
            self.stop()
            raise AssertionError(f"branchops ui printed nothing; stderr:\n{self.process.stderr.read()}")
        self.url = json.loads("".join(lines))["url"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def dashboard(dashboard_repo: Path):
    server = DashboardServer(dashboard_repo)
    yield server
    server.stop()
