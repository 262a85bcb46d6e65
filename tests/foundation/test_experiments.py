"""``branchops exp show``: every experiment of every training run, from the records alone, with its
parameters, metrics and intervals, the KPI gate's verdict and whether it is serving; filtered, sorted,
as JSON and CSV, and across branches."""

from __future__ import annotations

import csv
import io

import pytest

from branchops import experiments
from tests.foundation import record_history as history
from tests.foundation import training_records as tr
from tests.foundation.conftest import Project
from tests.foundation.test_cli_schemas import check

RUN0, RUN1, RUN2 = tr.THREE_RUN_IDS


@pytest.fixture
def runs(project: Project) -> Project:
    tr.three_runs(project.path)
    return project


def show(project: Project, *args: str, expect: int = 0) -> dict:
    return tr.cli_json(project, "exp", "show", *args, expect=expect)


def test_every_experiment_of_every_run_with_params_metrics_intervals_gate_and_serving(runs):
    table = show(runs)
    check("exp_show", table)  # docs/cli.md
    rows = {(row["run_id"], row["experiment"]): row for row in table["rows"]}
    assert list(rows) == [(r, e) for r in (RUN0, RUN1, RUN2) for e in ("wide", "deep")]
    assert table["metrics"] == ["accuracy", "roc_auc"]  # training.metrics
    assert table["params"] == ["lr", "units"]

    wide1 = rows[(RUN1, "wide")]
    assert wide1["params"] == {"units": 64, "lr": 0.003}
    assert wide1["metrics"] == {"accuracy": 0.60, "roc_auc": 0.64}
    assert wide1["intervals"]["roc_auc"] == {
        "low": pytest.approx(0.61),
        "high": pytest.approx(0.67),
        "confidence": 0.95,
    }
    assert wide1["validation"] == {"accuracy": pytest.approx(0.59), "roc_auc": pytest.approx(0.63)}

    # the gate judged each run's best experiment only
    assert [(k, row["gate"]) for k, row in rows.items() if row["gate"]] == [
        ((RUN0, "wide"), "refused"),
        ((RUN1, "wide"), "passed"),
        ((RUN2, "wide"), "passed"),
    ]
    assert rows[(RUN0, "wide")]["gate_failures"] == ["too weak"]

    # deploy-model serves run 1's model: its best experiment, not its sibling that exported the same version
    assert [k for k, row in rows.items() if row["serving"]] == [(RUN1, "wide")]
    assert table["serving"]["version"] == history.FIRST_VERSION + 1
    assert table["serving"]["training_run_id"] == RUN1

    failed = rows[(RUN2, "deep")]
    assert failed["state"] == "FAILED" and failed["metrics"] == {"accuracy": None, "roc_auc": None}
    assert failed["best"] is False and failed["serving"] is False


def test_a_rollback_leaves_the_older_model_serving(runs):
    tr.write(
        runs.path,
        "deploy-model",
        [tr.deploy_run(1, 2, outcome="rolled_back", after=history.FIRST_VERSION + 1)],
    )
    table = show(runs)
    assert [(r["run_id"], r["experiment"]) for r in table["rows"] if r["serving"]] == [(RUN1, "wide")]
    # the version the rollout left serving, not the one it released
    assert (table["serving"]["version"], table["serving"]["outcome"]) == (
        history.FIRST_VERSION + 1,
        "rolled_back",
    )
    tr.write(runs.path, "deploy-model", [tr.deploy_run(2, 2)])
    table = show(runs)
    assert [(r["run_id"], r["experiment"]) for r in table["rows"] if r["serving"]] == [(RUN2, "wide")]


def test_filter_and_sort(runs):
    kept = show(runs, "--filter", "roc_auc>=0.6", "--filter", "state=SUCCEEDED", "--sort", "roc_auc")
    assert [(r["run_id"], r["experiment"]) for r in kept["rows"]] == [
        (RUN2, "wide"),
        (RUN1, "wide"),
        (RUN1, "deep"),
    ]
    # a row without the column (the failed experiment has no roc_auc) is not kept
    measured = show(runs, "--filter", "roc_auc>0")
    assert len(measured["rows"]) == 5 and (RUN2, "deep") not in {
        (r["run_id"], r["experiment"]) for r in measured["rows"]
    }
    ascending = show(runs, "--filter", "units=64", "--sort", "metrics.accuracy", "--ascending")
    assert [r["run_id"] for r in ascending["rows"]] == [RUN0, RUN1]
    serving = show(runs, "--filter", "serving=true")
    assert [(r["run_id"], r["experiment"]) for r in serving["rows"]] == [(RUN1, "wide")]
    not_wide = show(runs, "--filter", "experiment!=wide", "--filter", "params.lr<0.005")
    assert [(r["run_id"], r["experiment"]) for r in not_wide["rows"]] == [(RUN1, "deep"), (RUN2, "deep")]
    # rows without the sorted value (a failed experiment's metrics) come last, whichever the direction
    for direction in ((), ("--ascending",)):
        ordered = show(runs, "--sort", "roc_auc", *direction)
        assert ordered["rows"][-1]["experiment"] == "deep" and ordered["rows"][-1]["run_id"] == RUN2


@pytest.mark.parametrize(
    "args, message",
    [
        (("--filter", "roc_auc"), "is not KEY=VALUE"),
        (("--filter", "roc_auc>high"), "'high' is not a number"),
        (("--sort", "no_such_column"), "cannot sort by 'no_such_column'"),
    ],
)
def test_a_bad_filter_or_sort_is_a_usage_error(runs, args, message):
    error = show(runs, *args, expect=2)
    assert error["code"] == 2 and message in error["error"]


def test_csv_has_one_row_per_experiment_with_the_intervals(runs):
    result = runs.run("exp", "show", "--csv", "--filter", "run_id=" + RUN1)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["experiment"] for r in rows] == ["wide", "deep"]
    assert rows[0]["params.units"] == "64" and rows[0]["metrics.roc_auc"] == "0.64"
    assert float(rows[0]["interval.roc_auc.low"]) == pytest.approx(0.61)
    assert rows[0]["gate"] == "passed" and rows[0]["serving"] == "True"
    runs.run("exp", "show", "--csv", "--json", expect=2)


def test_the_terminal_table_marks_the_best_and_the_serving_model(runs):
    text = runs.run("exp", "show").stdout
    line = next(line for line in text.splitlines() if line.startswith(RUN1) and "wide" in line)
    assert "wide *" in line and "0.6400 [0.610, 0.670]" in line and "passed" in line and "serving" in line
    assert f"serving: version {history.FIRST_VERSION + 1}" in text


def test_all_branches_adds_the_runs_only_other_branches_hold(runs):
    # a run recorded on a merge request's source branch only (e.g. an experiment tried there)
    tr.write(
        runs.path,
        "ds1",
        [tr.training_run(5, [tr.experiment("wide", 5, {"units": 8}, tr.metrics(0.7, 0.6))], "wide", True)],
    )
    assert history.run_id(5) not in {r["run_id"] for r in show(runs)["rows"]}
    everywhere = show(runs, "--all-branches")
    branches = {r["run_id"]: r["branches"] for r in everywhere["rows"]}
    assert branches[history.run_id(5)] == ["ds1"]
    assert branches[RUN1] == ["training"]  # listed once, on the branch that holds it
    assert len(everywhere["rows"]) == 7


def test_a_repository_without_runs_says_so(project):
    empty = show(project)
    assert empty["rows"] == [] and empty["serving"]["version"] is None
    check("exp_show", empty)
    assert "no training runs yet" in project.run("exp", "show").stdout


def test_the_library_finds_a_runs_best_or_named_experiment(runs):
    table = experiments.experiment_table(str(runs.path))
    assert experiments.find_row(table, RUN1[:20]).experiment == "wide"
    assert experiments.find_row(table, RUN1, "deep").metrics["roc_auc"] == 0.61
    with pytest.raises(experiments.NotFound, match="no experiment 'nope'"):
        experiments.find_row(table, RUN1, "nope")
