"""End to end with a second project: the `minimal` template (generated points, a prepare and a train
component, a small Keras classifier, its own parameters and metrics) goes through all four stages, gate
and records included, driven like a user drives it: `branchops` commands on a scaffolded repository.

Nothing in branchops knows this project. Everything here is real: git, the component tests, the kfp
compiler and Kubeflow's local runner, TensorFlow, the local REST model server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from branchops.demo import free_port
from branchops.scaffold import init_project
from tests.conftest import git

pytestmark = pytest.mark.slow

APPROVERS = {
    "build-components": ["lead"],
    "kf-pipeline": ["lead"],
    "training": ["head-of-ds"],
    "deploy-model": ["head-of-ds"],
}
# The data scientist's study, which differs from the template's: other widths, and a test split of a
# quarter of the rows for the second experiment (so the record shows each run got its own parameters).
EXPERIMENTS = [
    {"name": "logistic", "params": {"hidden_units": 0, "learning_rate": 0.1, "epochs": 8, "seed": 3}},
    {
        "name": "hidden-4",
        "params": {
            "hidden_units": 4,
            "learning_rate": 0.05,
            "epochs": 8,
            "l2": 0.001,
            "seed": 3,
            "test_fraction": 0.25,
        },
    },
]
ROWS = 2000  # data/make_points.py


def branchops(project: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "branchops.cli", "-C", str(project), *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == expect, (
        f"branchops {' '.join(args)} -> {proc.returncode} (expected {expect})\n"
        f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def records(project: Path, branch: str, stage: str) -> list[dict]:
    files = git(project, "ls-tree", "-r", "--name-only", branch).splitlines()
    paths = sorted(f for f in files if f.startswith(f"records/{stage}/") and f.endswith("/record.json"))
    return [json.loads(git(project, "show", f"{branch}:{path}")) for path in paths]


def open_approve_merge(
    project: Path,
    target: str,
    title: str,
    approver: str | None,
    merger: str,
    expect: int = 0,
    source: str = "ds1",
) -> int:
    opened = json.loads(
        branchops(
            project,
            "mr",
            "open",
            "--source",
            source,
            "--target",
            target,
            "--title",
            title,
            "--as",
            "ds1",
            "--json",
        ).stdout
    )
    if approver:
        branchops(project, "mr", "approve", str(opened["number"]), "--as", approver)
    branchops(project, "mr", "merge", str(opened["number"]), "--as", merger, expect=expect)
    return opened["number"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    path = tmp_path_factory.mktemp("second") / "points"
    init_project(
        path,
        template="minimal",
        approvers=APPROVERS,
        user="ds1",
        overrides={"serving": {"local": {"port": free_port()}}},
    )
    try:
        yield path
    finally:
        subprocess.run(
            [sys.executable, "-m", "branchops.cli", "-C", str(path), "serve", "stop"],
            timeout=120,
            capture_output=True,
            check=False,
        )


@pytest.fixture(scope="module")
def delivered(project):
    """ds1's study delivered through the four stages: (training record, the deploy merge request)."""
    config_path = project / "config" / "branchops.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["training"]["experiments"] = EXPERIMENTS
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    git(project, "commit", "-q", "-am", "Study: a logistic model and a hidden layer of 4")

    open_approve_merge(project, "build-components", "Components: prepare and train", "lead", "lead")
    open_approve_merge(project, "kf-pipeline", "Pipeline prepare -> train", "lead", "lead")
    open_approve_merge(project, "training", "Train the study", "head-of-ds", "lead")
    (training,) = records(project, "training", "training")
    requests = json.loads(branchops(project, "mr", "list", "--json").stdout)
    (release_mr,) = [m for m in requests if m["target"] == "deploy-model"]
    branchops(project, "mr", "approve", str(release_mr["number"]), "--as", "head-of-ds")
    branchops(project, "mr", "merge", str(release_mr["number"]), "--as", "head-of-ds")
    return training, release_mr


def test_every_stage_ran_once_and_recorded_its_success(project, delivered):
    for stage in ("build-components", "kf-pipeline", "training", "deploy-model"):
        found = records(project, stage, stage)
        assert [r["outcome"] for r in found] == ["succeeded"], (stage, found)

    (build,) = records(project, "build-components", "build-components")
    components = {c["name"]: c for c in build["outputs"]["components"]}
    assert sorted(components) == ["prepare", "train"]
    assert all(c["tests"] == "passed" for c in components.values())
    assert build["merge_request"]["approved_by"] == ["lead"]

    (pipeline,) = records(project, "kf-pipeline", "kf-pipeline")
    assert pipeline["outputs"]["pipeline_name"] == "minimal-classifier" and pipeline["outputs"]["uploaded"]


def test_training_ran_each_experiment_with_its_own_parameters(project, delivered):
    training, _ = delivered
    outputs = training["outputs"]
    assert training["merge_request"]["approved_by"] == ["head-of-ds"]
    runs = {e["experiment"]: e for e in outputs["experiments"]}
    assert sorted(runs) == ["hidden-4", "logistic"]
    for experiment in EXPERIMENTS:
        run = runs[experiment["name"]]
        assert run["state"] == "SUCCEEDED" and run["params"] == experiment["params"]
        metrics = run["metrics"]
        assert all(isinstance(metrics[name], float) for name in ("accuracy", "roc_auc", "log_loss"))
        assert (
            metrics["baselines"]["majority"]["roc_auc"] == 0.5
            and metrics["log_loss"] < metrics["log_loss_constant"]
        )
        # the points follow a learnable rule: each run beats the majority class significantly
        assert [c["low"] > 0 for c in metrics["comparisons"]] == [True, True]
        assert metrics["beats_baselines"]["all"] is True
    # test_fraction reached the prepare step of the one experiment that set it; the other kept the default
    assert runs["logistic"]["metrics"]["test_rows"] == ROWS * 0.2
    assert runs["hidden-4"]["metrics"]["test_rows"] == ROWS * 0.25

    # select_by roc_auc, on the validation rows: the test rows do not pick the model they score
    best = outputs["best"]
    assert best["metrics"]["validation"]["roc_auc"] == max(
        r["metrics"]["validation"]["roc_auc"] for r in runs.values()
    )
    assert outputs["kpi"] == {"passed": True, "failures": []}
    assert outputs["synthetic_data"] is True  # data/make_points.py writes the SYNTHETIC marker
    assert best["data"]["snapshot"].startswith("minimal-data-") and best["model"]["snapshot"].startswith(
        "minimal-models-"
    )

    files = git(project, "ls-tree", "-r", "--name-only", "training").splitlines()
    record_dir = f"records/training/{training['run_id']}"
    for experiment in runs:
        assert f"{record_dir}/{experiment}/plots/learning_curve.png" in files
        assert f"{record_dir}/{experiment}/metrics.json" in files
    report = git(project, "show", f"training:{record_dir}/report.md")
    assert "SYNTHETIC DATA" in report and "| log_loss |" in report and "baseline: majority" in report


def test_the_release_was_approved_merged_and_serves_the_exported_sample(project, delivered):
    training, release_mr = delivered
    best = training["outputs"]["best"]
    version = best["model"]["version"]
    assert (
        release_mr["state"] == "open" and "Training report" in release_mr["body"]
    )  # as listed before the merge
    merged = json.loads(branchops(project, "mr", "show", str(release_mr["number"]), "--json").stdout)
    assert merged["state"] == "merged"
    release = yaml.safe_load(git(project, "show", "deploy-model:serving/release.yaml"))
    assert release["model"] == "points" and release["version"] == version
    assert release["training"]["run_id"] == training["run_id"]
    (deploy,) = records(project, "deploy-model", "deploy-model")
    assert deploy["merge_request"]["approved_by"] == ["head-of-ds"]

    status = json.loads(branchops(project, "serve", "status", "--json").stdout)
    assert status["running"] and status["model"] == "points" and status["stable"] == version
    answered = branchops(project, "predict", "--sample").stdout
    answer, expected = answered.split("expected at export time:")
    predictions, expected = json.loads(answer)["predictions"], json.loads(expected)
    assert len(predictions) == len(expected["probability"]) > 0
    assert [p["probability"] for p in predictions] == pytest.approx(expected["probability"], abs=1e-5)
    assert [p["label"] for p in predictions] == expected["label"]
    assert expected["label"] == [int(p >= 0.5) for p in expected["probability"]]


def test_lineage_traces_the_served_model_to_its_approvals(project, delivered):
    training, _ = delivered
    best = training["outputs"]["best"]
    version = best["model"]["version"]
    lineage = json.loads(branchops(project, "lineage", str(version), "--json").stdout)
    assert lineage["model"]["name"] == "points" and lineage["model"]["version"] == version
    assert lineage["training"]["run_id"] == training["run_id"]
    assert (
        lineage["training"]["experiment"] == best["experiment"]
        and lineage["training"]["params"] == best["params"]
    )
    assert lineage["training"]["synthetic_data"] is True
    assert lineage["data"]["snapshot"] == best["data"]["snapshot"]
    assert lineage["metrics"]["roc_auc"] == best["metrics"]["roc_auc"]
    assert lineage["training"]["approved_by"] == ["head-of-ds"]
    assert lineage["pipeline"]["uploaded_by"]["approved_by"] == ["lead"]
    assert lineage["deployments"] and lineage["deployments"][0]["approved_by"] == ["head-of-ds"]


def test_the_gate_refuses_an_unapproved_merge_and_runs_nothing(project, delivered):
    pipelines = project / ".branchops" / "kfp" / "pipelines" / "minimal-classifier" / "versions"
    versions_before = sorted(p.name for p in pipelines.iterdir())
    git(project, "checkout", "-q", "ds1")
    pipeline = project / "pipelines" / "pipeline.py"
    pipeline.write_text(pipeline.read_text().replace("epochs: int = 20", "epochs: int = 30"))
    git(project, "commit", "-q", "-am", "Train longer by default")

    open_approve_merge(
        project, "kf-pipeline", "Unreviewed: longer training", approver=None, merger="ds1", expect=4
    )
    assert len(records(project, "kf-pipeline", "kf-pipeline")) == 1  # still only the approved run's record
    assert sorted(p.name for p in pipelines.iterdir()) == versions_before  # nothing compiled or uploaded
    notifications = (project / ".branchops" / "notifications.log").read_text()
    assert '"kind": "refused"' in notifications
