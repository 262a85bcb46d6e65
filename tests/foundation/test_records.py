"""Typed records: records already in git (any earlier shape) read leniently, and what the stages write keeps
the JSON shape people and the Jenkins side read (docs/architecture.md §5)."""

from __future__ import annotations

import json
from pathlib import Path

from branchops import gitops, records
from branchops.records import (
    BestRef,
    DataRef,
    DeploymentRecord,
    DeployOutputs,
    ExperimentEntry,
    KpiVerdict,
    ModelRef,
    OpenedMergeRequest,
    PipelineRef,
    ProductionRef,
    ReleaseRef,
    TrainingLineage,
    TrainingOutputs,
)
from branchops.serving.base import Check, DeployResult
from branchops.serving.release import parse_release
from tests.foundation import record_history as history
from tests.foundation.conftest import make_project

# A training record as an earlier branchops wrote it: no included_merge_requests, branchops_version or
# config_digest yet, an entry without reused_run, and keys this version does not know.
OLD_TRAINING_RECORD = {
    "stage": "training",
    "branch": "training",
    "run_id": "20250301T101500000000Z-0123456789ab",
    "source_commit": "0123456789ab" + "0" * 28,
    "outcome": "succeeded",
    "summary": "best wide",
    "started_at": "2025-03-01T10:15:00+00:00",
    "finished_at": "2025-03-01T10:17:00+00:00",
    "duration_s": 120.5,
    "merge_request": {
        "number": 7,
        "title": "Wider",
        "source": "ds1",
        "author": "ds1",
        "approved_by": ["lead"],
        "merged_by": "lead",
        "url": None,
        "labels": ["ml"],
    },
    "jenkins_build": 41,
    "outputs": {
        "experiments": [
            {
                "experiment": "wide",
                "run_name": "0123456789ab-wide",
                "run_id": "r1",
                "state": "SUCCEEDED",
                "error": None,
                "duration_s": 100.0,
                "params": {"units": 128},
                "metrics": {"accuracy": 0.55, "roc_auc": 0.56},
                "gpu": "none",
                "model": {"volume": "models", "path": "runs/x/export/1740824100", "version": 1740824100},
                "data": {"volume": "data", "snapshot": None},
            }
        ],
        "best": {
            "experiment": "wide",
            "run_name": "0123456789ab-wide",
            "state": "SUCCEEDED",
            "params": {"units": 128},
            "metrics": {"accuracy": 0.55, "roc_auc": 0.56},
            "model": {"volume": "models", "path": "runs/x/export/1740824100", "version": 1740824100},
            "data": {"volume": "data", "snapshot": None},
        },
        "kpi": {"passed": True, "failures": []},
    },
    "artifacts": ["report.md"],
}


def commit_record(project, branch: str, data: dict) -> None:
    history.add_records(project.path, branch, data["stage"], [data])


def test_an_old_record_reads_with_unknown_keys_ignored_and_missing_ones_none(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    commit_record(project, "training", OLD_TRAINING_RECORD)
    repo = gitops.open_repo(project.path)

    found = records.latest_record(repo, project.tip("training"), "training")
    assert found is not None and found.run_id == OLD_TRAINING_RECORD["run_id"]
    run = found.record
    assert (run.outcome, run.duration_s, run.merge_request.approved_by) == ("succeeded", 120.5, ["lead"])
    assert (run.config_digest, run.branchops_version, run.error) == (None, None, None)
    assert run.included_merge_requests == []
    outputs = found.training_outputs
    entry = outputs.experiments[0]
    assert (entry.experiment, entry.succeeded, entry.reused_run, entry.params) == (
        "wide",
        True,
        None,
        {"units": 128},
    )
    assert entry.model.snapshot is None and entry.data.snapshot is None
    assert (outputs.model_version, outputs.lineage, outputs.production, outputs.deploy_merge_request) == (
        1740824100,
        None,
        None,
        None,
    )
    assert not hasattr(run, "jenkins_build") and "gpu" not in entry.to_dict()

    status = {row["stage"]: row for row in json.loads(project.run("status", "--json").output)}
    assert status["training"]["last_run"] == OLD_TRAINING_RECORD["run_id"]
    assert (status["training"]["outcome"], status["training"]["finished_at"]) == (
        "succeeded",
        "2025-03-01T10:17:00+00:00",
    )
    chain = json.loads(project.run("lineage", "1740824100", "--json").output)
    assert chain["training"]["run_id"] == OLD_TRAINING_RECORD["run_id"]
    assert chain["model"]["version"] == 1740824100 and chain["deployments"] == []
    assert chain["pipeline"] == {"uploaded_by": None}  # that version recorded no lineage block yet


def test_a_record_that_is_not_a_record_is_named(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    commit_record(project, "training", {**OLD_TRAINING_RECORD, "duration_s": "two minutes"})
    result = project.run("status", expect=1)
    assert (
        f"records/training/{OLD_TRAINING_RECORD['run_id']}/record.json: not a readable branchops record"
        in result.output
    )
    assert "duration_s" in result.output


# -- what is written ------------------------------------------------------------------------------------


def test_experiment_entries_leave_out_what_does_not_apply() -> None:
    failed = ExperimentEntry(
        experiment="tiny",
        run_name="c-tiny",
        run_id="r2",
        state="FAILED",
        error="OOM",
        duration_s=1.5,
        reused_run=False,
        params={},
    )
    assert failed.to_dict() == {
        "experiment": "tiny",
        "run_name": "c-tiny",
        "run_id": "r2",
        "state": "FAILED",
        "error": "OOM",
        "duration_s": 1.5,
        "reused_run": False,
        "params": {},
    }

    unsnapshotted = ExperimentEntry(
        experiment="wide",
        run_name="c-wide",
        run_id="r1",
        state="SUCCEEDED",
        error=None,
        duration_s=9.0,
        reused_run=True,
        params={"units": 8},
        metrics={"accuracy": 0.5},
        model=ModelRef(volume="models", path="runs/c-wide/export/5", version=5),
        data=DataRef(volume="data", snapshot=None),
    )
    # storage.snapshots false: the model has no snapshot key, the data says its snapshot is null
    assert unsnapshotted.to_dict() == {
        "experiment": "wide",
        "run_name": "c-wide",
        "run_id": "r1",
        "state": "SUCCEEDED",
        "error": None,
        "duration_s": 9.0,
        "reused_run": True,
        "params": {"units": 8},
        "metrics": {"accuracy": 0.5},
        "model": {"volume": "models", "path": "runs/c-wide/export/5", "version": 5},
        "data": {"volume": "data", "snapshot": None},
    }


def test_training_outputs_keep_their_shape() -> None:
    best = ExperimentEntry(
        experiment="wide",
        run_name="c-wide",
        run_id="r1",
        state="SUCCEEDED",
        error=None,
        duration_s=9.0,
        reused_run=False,
        params={},
        metrics={"accuracy": 0.5},
        model=ModelRef(volume="models", path="p", version=5, snapshot="models-c-wide"),
        data=DataRef(volume="data", snapshot="data-c"),
    )
    lineage = TrainingLineage(
        source_commit="c" * 40,
        config_digest="d" * 64,
        run_id="run",
        pipeline=PipelineRef(name="p", id="p-1", version_id="v-1", spec_hash="s" * 64, engine="local"),
        images="none (no registry configured: steps ran as local processes)",
        approved_by=["lead"],
        best=BestRef(experiment="wide", data=best.data, model=best.model),
    )
    outputs = TrainingOutputs(
        experiments=[best],
        best=best,
        lineage=lineage,
        synthetic_data=False,
        kpi=KpiVerdict(passed=False, failures=["accuracy 0.5000 < 0.6 (threshold)"]),
        production=ProductionRef(version=None, metrics=None),
    )
    written = outputs.to_dict()
    assert set(written) == {"experiments", "best", "lineage", "synthetic_data", "kpi", "production"}
    assert written["lineage"] == {
        "source_commit": "c" * 40,
        "config_digest": "d" * 64,
        "run_id": "run",
        "pipeline": {"name": "p", "id": "p-1", "version_id": "v-1", "spec_hash": "s" * 64, "engine": "local"},
        "images": "none (no registry configured: steps ran as local processes)",
        "approved_by": ["lead"],
        "best": {
            "experiment": "wide",
            "data": {"volume": "data", "snapshot": "data-c"},
            "model": {"volume": "models", "path": "p", "version": 5, "snapshot": "models-c-wide"},
        },
    }
    assert written["production"] == {"version": None, "metrics": None}
    outputs.deploy_merge_request = OpenedMergeRequest(number=3, created=True)
    assert outputs.to_dict()["deploy_merge_request"] == {"number": 3, "created": True}


def test_records_the_stages_wrote_read_and_write_back_unchanged() -> None:
    written = history.training(3)["outputs"]
    written["experiments"].append(
        {
            "experiment": "tiny",
            "run_name": "3-tiny",
            "run_id": None,
            "state": "FAILED",
            "error": "exit 1",
            "duration_s": None,
            "reused_run": False,
            "params": {"units": 2},
        }
    )
    assert TrainingOutputs.model_validate(written).to_dict() == written
    deployed = history.deployment(3)["outputs"]
    assert DeployOutputs.model_validate(deployed).to_dict() == deployed
    assert DeployOutputs(deployment=None).to_dict() == {"deployment": None}  # before the first release file


def test_deploy_outputs_keep_everything_serving_and_the_release_say() -> None:
    """The deploy record carries the serving port's result and the release file whole: a field added there
    must not be dropped on its way into the record."""
    result = DeployResult(
        "djia",
        7,
        "canary",
        outcome="rolled_back",
        before=6,
        after=6,
        reason="smoke test failed",
        checks=[Check("signature", True, "inputs match", 0.01), Check("smoke", False, "differs", 0.2)],
        canary_steps=[{"weight": 10, "requests": 20, "errors": 3}],
        timings={"load": 1.25},
    )
    assert DeploymentRecord.model_validate(result.to_dict()).to_dict() == result.to_dict()
    for text in (
        "model: djia\nversion: 7\nsource: {snapshot: models-abc, path: runs/x/export/7}\n"
        "strategy: canary\ntraining: {run_id: 20260101T000000000000Z-abcdefabcdef, commit: abcdef1}\n",
        "model: djia\nversion: 8\nsource: {volume: models, path: runs/y/export/8}\n",
    ):
        release = parse_release(text).model_dump(mode="json", exclude_none=True)
        assert ReleaseRef.model_validate(release).to_dict() == release
