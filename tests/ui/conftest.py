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
from tests.foundation import recording_stage
from tests.foundation.conftest import Project, make_project
from tests.ui import stand_in_stages

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
    return project.path


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
