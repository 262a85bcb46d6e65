"""End to end: `branchops demo` on the real DJIA files (a release trained up to a cut-off, the days after
it replayed as traffic, monitor's retraining merge request approved and merged, the retrained model
rolled forward), then the same repository driven through the CLI to another release and a rollback by
revert. Every stage, merge request and server here is real (git, Kubeflow's local runner, TensorFlow,
the local REST server); nothing is faked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import git

pytestmark = pytest.mark.slow


def branchops(*args: str, cwd: Path | None = None, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "branchops.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=1500
    )
    assert proc.returncode == expect, (
        f"branchops {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    )
    return proc


def record_of(workdir: Path, branch: str, stage: str) -> dict:
    files = git(workdir, "ls-tree", "-r", "--name-only", branch).splitlines()
    paths = sorted(f for f in files if f.startswith(f"records/{stage}/") and f.endswith("/record.json"))
    assert paths, f"no {stage} record on {branch}"
    return json.loads(git(workdir, "show", f"{branch}:{paths[-1]}"))


def records_of(workdir: Path, branch: str, stage: str) -> list[dict]:
    """Every record of ``stage`` on ``branch``, oldest first (run ids begin with their UTC start time)."""
    files = git(workdir, "ls-tree", "-r", "--name-only", branch).splitlines()
    paths = sorted(f for f in files if f.startswith(f"records/{stage}/") and f.endswith("/record.json"))
    return [json.loads(git(workdir, "show", f"{branch}:{path}")) for path in paths]


def serve_status(workdir: Path) -> dict:
    return json.loads(branchops("-C", str(workdir), "serve", "status", "--json").stdout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, djia_dir):
    workdir = tmp_path_factory.mktemp("e2e") / "demo"
    proc = branchops("demo", "--workdir", str(workdir), "--data", str(djia_dir))
    yield workdir, proc.stdout
    subprocess.run([sys.executable, "-m", "branchops.cli", "-C", str(workdir), "serve", "stop"], timeout=60)


def test_the_demo_plays_every_stage_and_serves_the_model(demo):
    workdir, out = demo
    assert "refused as expected" in out and "timeline" in out
    for branch, stage in (
        ("build-components", "build-components"),
        ("kf-pipeline", "kf-pipeline"),
        ("training", "training"),
        ("deploy-model", "deploy-model"),
    ):
        assert record_of(workdir, branch, stage)["outcome"] == "succeeded"

    # the unapproved merge ran nothing: only one build-components record, for the approved merge
    files = git(workdir, "ls-tree", "-r", "--name-only", "build-components").splitlines()
    assert len([f for f in files if f.endswith("record.json")]) == 1
    notifications = (workdir / ".branchops" / "notifications.log").read_text()
    assert '"kind": "refused"' in notifications

    training = record_of(workdir, "training", "training")
    best = training["outputs"]["best"]
    assert training["merge_request"]["approved_by"] == ["head-of-ds"]
    assert set(best["metrics"]) >= {"accuracy", "roc_auc", "baselines", "beats_baselines"}
    assert best["data"]["snapshot"].startswith("djia-data-") and best["model"]["snapshot"].startswith(
        "djia-models-"
    )
    snapshots = workdir / ".branchops" / "volumes" / ".snapshots"
    assert (snapshots / best["data"]["snapshot"]).is_dir() and (
        snapshots / best["model"]["snapshot"]
    ).is_dir()
    report = git(workdir, "show", f"training:records/training/{training['run_id']}/report.md")
    assert "Against the baselines and production" in report and "branchops reproduce" in report

    # the merge requests into deploy-model (the first release, then the retrained one) carried the report
    # and the release, and were merged
    requests = json.loads(branchops("-C", str(workdir), "mr", "list", "--json").stdout)
    deploy = [m for m in requests if m["target"] == "deploy-model"]
    assert len(deploy) == 2 and all(m["state"] == "merged" and "Training report" in m["body"] for m in deploy)
    release = yaml.safe_load(git(workdir, "show", "deploy-model:serving/tfserve/release.yaml"))
    assert release["version"] == best["model"]["version"]

    status = serve_status(workdir)
    assert status["running"] and status["stable"] == release["version"]
    predicted = branchops("-C", str(workdir), "predict", "--sample").stdout
    answer = json.loads(predicted.split("expected at export time:")[0])
    expected = json.loads(predicted.split("expected at export time:")[1])
    # the reference model answers what it predicts: the probability that the next 5 days are more turbulent
    assert set(expected) == {"probability_turbulent", "turbulent"}
    got = [p["probability_turbulent"] for p in answer["predictions"]]
    assert got == pytest.approx(expected["probability_turbulent"], abs=1e-5)
    assert [p["turbulent"] for p in answer["predictions"]] == expected["turbulent"]

    lineage = json.loads(branchops("-C", str(workdir), "lineage", str(release["version"]), "--json").stdout)
    assert lineage["training"]["approved_by"] == ["head-of-ds"]
    assert lineage["pipeline"]["uploaded_by"]["approved_by"] == ["lead"]
    assert lineage["deployments"] and lineage["deployments"][0]["approved_by"] == ["head-of-ds"]

    # reproduce: clone the data snapshot, run the same pipeline version and parameters, same metrics
    again = json.loads(branchops("-C", str(workdir), "reproduce", training["run_id"], "--json").stdout)
    assert again["identical"] is True and again["data_snapshot"] == best["data"]["snapshot"]
    assert again["metrics"]["accuracy"]["reproduced"] == best["metrics"]["accuracy"]


def test_monitor_proposed_the_retrain_which_was_approved_merged_and_rolled_forward(demo):
    """The loop closed: the study trained up to its cut-off, the days after it came as traffic, monitor's
    merge request into training (the bot's, with the evidence) was approved by the head of data science
    and merged, training ran on the refreshed window, and a second deploy serves the newer version."""
    workdir, out = demo
    assert "branchops monitor" in out and "timeline" in out

    requests = json.loads(branchops("-C", str(workdir), "mr", "list", "--json").stdout)
    retrains = [m for m in requests if m["source"] == "branchops/retrain"]
    assert len(retrains) == 1, requests
    retrain = retrains[0]
    assert retrain["target"] == "training" and retrain["author"] == "branchops-bot"
    assert retrain["state"] == "merged" and [a["user"] for a in retrain["approvals"]] == ["head-of-ds"]
    assert "PSI" in retrain["body"] and "roc_auc" in retrain["body"]  # the drift table, the live metric
    # ... and it came before the second release: its merge is what trained the version deployed after it
    deploys = [m for m in requests if m["target"] == "deploy-model"]
    assert [m["number"] for m in deploys] == sorted(m["number"] for m in deploys)
    assert deploys[0]["number"] < retrain["number"] < deploys[1]["number"]

    # two trainings: the study up to its cut-off, then the retrain on the window monitor proposed
    study, retrained = records_of(workdir, "training", "training")
    assert study["outputs"]["best"]["data"]["until"] == "2016-12-30"
    refreshed = retrained["outputs"]["best"]["data"]["until"]
    assert "2017-06-30" < refreshed <= "2017-12-29"
    assert retrained["merge_request"]["number"] == retrain["number"]
    assert retrained["merge_request"]["approved_by"] == ["head-of-ds"]
    proposed = yaml.safe_load(git(workdir, "show", f"{retrain['merge_commit']}:config/branchops.yaml"))
    assert str(proposed["data"]["until"]) == refreshed

    # monitor checked the replayed days on deploy-model, each check a record, and the last one alarmed
    checks = records_of(workdir, "deploy-model", "monitor")
    assert len(checks) >= 2 and checks[-1]["outputs"]["alarm"] is True
    assert sum(c["outputs"]["rows"] for c in checks) >= 200
    assert checks[-1]["outputs"]["merge_request"]["number"] == retrain["number"]

    # two deploy-model runs, the second serving the retrained, newer version
    first, second = records_of(workdir, "deploy-model", "deploy-model")
    assert first["outcome"] == second["outcome"] == "succeeded"
    old_version = study["outputs"]["best"]["model"]["version"]
    new_version = retrained["outputs"]["best"]["model"]["version"]
    assert new_version > old_version
    assert str(old_version) in json.dumps(first["outputs"]) and str(new_version) in json.dumps(
        second["outputs"]
    )
    assert serve_status(workdir)["stable"] == new_version


def test_a_second_release_then_a_rollback_by_revert_brings_the_first_back(demo):
    workdir, _ = demo
    first = serve_status(workdir)["stable"]

    # a data scientist's second study: one small experiment, no KPI threshold, no production comparison. It
    # predicts what the served model predicts from the same inputs (window and target kind), so its release
    # keeps the serving contract; a changed window would be refused before anything loads
    git(workdir, "checkout", "-q", "ds1")
    config_path = workdir / "config" / "branchops.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["training"]["experiments"] = [
        {
            "name": "aapl-small",
            "params": {
                "target": "AAPL",
                "target_kind": "turbulence",
                "purge_gap": 5,
                "hidden_units": [16],
                "epochs": 4,
                "patience": 2,
                "seed": 7,
            },
        }
    ]
    config["training"]["kpis"] = {"thresholds": {}, "require_significant": False, "beat_production_by": None}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    git(workdir, "commit", "-q", "-am", "A smaller network")
    opened = json.loads(
        branchops(
            "-C",
            str(workdir),
            "mr",
            "open",
            "--source",
            "ds1",
            "--target",
            "training",
            "--title",
            "Smaller network",
            "--as",
            "ds1",
            "--json",
        ).stdout
    )
    branchops("-C", str(workdir), "mr", "approve", str(opened["number"]), "--as", "head-of-ds")
    branchops("-C", str(workdir), "mr", "merge", str(opened["number"]), "--as", "lead")
    training = record_of(workdir, "training", "training")
    second_mr = training["outputs"]["deploy_merge_request"]["number"]
    second = training["outputs"]["best"]["model"]["version"]
    assert second > first

    branchops("-C", str(workdir), "mr", "approve", str(second_mr), "--as", "head-of-ds")
    branchops("-C", str(workdir), "mr", "merge", str(second_mr), "--as", "head-of-ds")
    assert serve_status(workdir)["stable"] == second

    # roll back: the revert is a merge request like any other, and runs only once approved and merged
    out = branchops("-C", str(workdir), "rollback", "--as", "ds1").stdout
    number = int(out.split("!")[1].split(":")[0])
    assert serve_status(workdir)["stable"] == second  # nothing happens before sign-off
    branchops("-C", str(workdir), "mr", "approve", str(number), "--as", "head-of-ds")
    branchops("-C", str(workdir), "mr", "merge", str(number), "--as", "head-of-ds")
    assert serve_status(workdir)["stable"] == first
    release = yaml.safe_load(git(workdir, "show", "deploy-model:serving/tfserve/release.yaml"))
    assert release["version"] == first
    deploy = record_of(workdir, "deploy-model", "deploy-model")
    assert deploy["outcome"] == "succeeded" and str(first) in json.dumps(deploy["outputs"])
