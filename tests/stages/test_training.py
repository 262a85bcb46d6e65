"""The training stage on the real DJIA data through the local engine: the KPI gate decides whether a
merge request into deploy-model is opened, a failed run writes a failed record and opens nothing, and
a rerun starts nothing twice."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from branchops import gitops
from branchops.cli import main
from branchops.forge.local import LocalForge
from branchops.records import TrainingOutputs
from tests.conftest import git

pytestmark = pytest.mark.slow

APPROVERS = {
    "build-components": ["lead"],
    "kf-pipeline": ["lead"],
    "training": ["lead"],
    "deploy-model": ["lead"],
}


def cli(*args, expect=0):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result


def approved_merge(project, target, title):
    opened = json.loads(
        cli(
            "-C",
            str(project),
            "mr",
            "open",
            "--source",
            "ds1",
            "--target",
            target,
            "--title",
            title,
            "--as",
            "ds1",
            "--json",
        ).output
    )
    cli("-C", str(project), "mr", "approve", str(opened["number"]), "--as", "lead")
    return opened["number"]


def set_training(project, experiments, kpis, message):
    git(project, "checkout", "-q", "ds1")
    path = project / "config" / "branchops.yaml"
    config = yaml.safe_load(path.read_text())
    config["training"]["experiments"] = experiments
    config["training"]["kpis"] = kpis
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    git(project, "commit", "-q", "-am", message)


def training_record(project):
    files = git(project, "ls-tree", "-r", "--name-only", "training").splitlines()
    path = sorted(f for f in files if f.startswith("records/training/") and f.endswith("record.json"))[-1]
    return json.loads(git(project, "show", f"training:{path}"))


def deploy_requests(project):
    return [
        m
        for m in json.loads(cli("-C", str(project), "mr", "list", "--json").output)
        if m["target"] == "deploy-model"
    ]


@pytest.fixture(scope="module")
def project(tmp_path_factory, djia_dir):
    from branchops.scaffold import init_project

    path = tmp_path_factory.mktemp("training") / "proj"
    init_project(path, approvers=APPROVERS, data_dir=str(djia_dir))
    number = approved_merge(path, "kf-pipeline", "pipeline")
    cli("-C", str(path), "mr", "merge", str(number), "--as", "lead")
    return path


SMALL = {"target": "AAPL", "window": 3, "hidden_units": [8], "epochs": 2, "patience": 1, "seed": 1}


def test_kpis_not_met_fail_the_stage_and_open_no_merge_request(project):
    set_training(
        project,
        [{"name": "tiny", "params": SMALL}],
        {"thresholds": {"accuracy": 0.99}},
        "Demand 99% accuracy",
    )
    number = approved_merge(project, "training", "strict KPI")
    result = cli("-C", str(project), "mr", "merge", str(number), "--as", "lead", expect=1)
    assert "KPI gate not passed" in result.output and "accuracy" in result.output
    record = training_record(project)
    assert record["outcome"] == "failed" and record["outputs"]["kpi"]["passed"] is False
    assert record["outputs"]["best"]["data"]["snapshot"]  # the run itself happened and was snapshotted
    assert deploy_requests(project) == []
    report = git(project, "show", f"training:records/training/{record['run_id']}/report.md")
    assert "**Not passed**" in report


def test_a_failed_run_writes_a_failed_record_opens_nothing_and_leaves_volumes_usable(project):
    broken = dict(SMALL, target="ZZZZ")  # a ticker that is not in the data: the features step rejects it
    set_training(
        project, [{"name": "broken", "params": broken}], {"thresholds": {}}, "A ticker we do not have"
    )
    number = approved_merge(project, "training", "broken experiment")
    # the features step refuses the data it was given (a DataError): bad input data, exit 7, not a crash
    result = cli("-C", str(project), "mr", "merge", str(number), "--as", "lead", expect=7)
    assert "did not succeed" in result.output and "ZZZZ" in result.output
    record = training_record(project)
    assert record["outcome"] == "failed" and record["outputs"]["experiments"][0]["state"] == "FAILED"
    assert deploy_requests(project) == []
    assert (project / ".branchops" / "volumes" / "djia-data" / "validated.parquet").exists()


def test_the_default_gate_refuses_next_day_direction_naming_each_comparison_with_its_interval(project):
    """No threshold configured: the default gate asks for a significant advantage over every baseline,
    which a next-day direction model does not have."""
    set_training(project, [{"name": "direction", "params": SMALL}], {}, "Default KPIs")
    number = approved_merge(project, "training", "default KPIs")
    result = cli("-C", str(project), "mr", "merge", str(number), "--as", "lead", expect=1)
    assert "KPI gate not passed" in result.output
    record = training_record(project)
    failures = record["outputs"]["kpi"]["failures"]
    assert record["outputs"]["kpi"]["passed"] is False and deploy_requests(project) == []
    for where in ("test period", "validation"):
        assert any(
            f.startswith(f"{where}, against majority_class on roc_auc") and "95% interval" in f
            for f in failures
        ), failures
    report = git(project, "show", f"training:records/training/{record['run_id']}/report.md")
    assert "must beat every baseline significantly" in report and "### Validation of `direction`" in report
    assert "(by its validation `roc_auc`)" in report
    assert "The model predicts whether AAPL closes above the previous trading day's Close" in report


def test_kpis_met_open_one_merge_request_and_a_rerun_repeats_nothing(project):
    # a threshold alone, the significance rule switched off: the stage's release path is tested, not the model
    set_training(
        project,
        [{"name": "tiny", "params": SMALL}],
        {"thresholds": {"accuracy": 0.3}, "require_significant": False},
        "A reachable KPI",
    )
    number = approved_merge(project, "training", "reachable KPI")
    # not a designated approver of training: the CLI refuses it, a forge records it
    LocalForge(gitops.open_repo(project)).approve(number, "ds2")
    cli("-C", str(project), "mr", "merge", str(number), "--as", "lead")
    record = training_record(project)
    assert record["outcome"] == "succeeded" and record["outputs"]["kpi"]["passed"] is True
    # the approvers the gate counted, in the record and in the lineage the report shows
    assert record["merge_request"]["approved_by"] == record["outputs"]["lineage"]["approved_by"] == ["lead"]
    # the typed record holds all the stage wrote: read and written again, nothing is lost or added
    assert TrainingOutputs.model_validate(record["outputs"]).to_dict() == record["outputs"]
    requests = deploy_requests(project)
    assert len(requests) == 1 and requests[0]["state"] == "open"
    release = yaml.safe_load(git(project, "show", f"{requests[0]['source']}:serving/tfserve/release.yaml"))
    assert release["version"] == record["outputs"]["best"]["model"]["version"]
    assert release["training"]["run_id"] == record["run_id"]

    # forced rerun on the same merge commit: the engine returns the recorded run, snapshots exist,
    # and the merge request is updated, not duplicated
    rerun = json.loads(cli("-C", str(project), "run", "training", "--force", "--json").output)[0]
    assert rerun["status"] == "succeeded"
    assert rerun["outputs"]["experiments"][0]["reused_run"] is True
    assert len(deploy_requests(project)) == 1
