"""branchops monitor on real DJIA days: no alarm on traffic like the training data (a bounded false-alarm
rate over many seeds), an alarm on the 2008 crash's days, the live metric against the validated one, the
cursor, consecutive checks, and nothing written on an empty or corrupt log or a dry run.

The served model, its reference and the project come from tests/monitoring/served.py; the checks go through
the real local serving backend (its prediction log, outcomes and monitor.json) and write to real git."""

from __future__ import annotations

import json
import sys
from datetime import date

import numpy as np
import pytest
from click.testing import CliRunner

from branchops import gitops
from branchops.cli import main
from branchops.config import DriftSection
from branchops.errors import DataError
from branchops.forge.local import LocalForge
from branchops.monitoring import monitor
from branchops.monitoring.traffic import NoTraffic
from tests.foundation.test_cli_schemas import check as schema_check
from tests.monitoring import served as model


@pytest.fixture(scope="module")
def days(djia_dir):
    return model.load_days(djia_dir)


@pytest.fixture(scope="module")
def train(days):
    """The days the served version's reference was built from."""
    return days.between(*model.TRAIN_DAYS).alternate(0)


@pytest.fixture(scope="module")
def calm(days):
    """Days of the same period the reference never saw: traffic like the training data, not the same rows."""
    return days.between(*model.TRAIN_DAYS).alternate(1)


@pytest.fixture(scope="module")
def crash(days):
    return days.between(*model.CRASH_DAYS)


@pytest.fixture
def served(tmp_path, train):
    return model.served_project(tmp_path, train)


def records_on_deploy(served) -> list[str]:
    return sorted({p.split("/")[2] for p in served.project.files("deploy-model", "records/monitor/")})


def open_retrains(served) -> list[int]:
    forge = LocalForge(gitops.open_repo(served.path))
    return [m.number for m in forge.list(state="open", target="training")]


# -- the statistics ------------------------------------------------------------------------------------


def test_traffic_like_the_training_data_rarely_drifts_and_never_alarms(days):
    """The false-alarm rate: 50 seeds, each two checks of 100 rows (min_rows, the fewest a check judges)
    drawn independently from the very distribution the reference was computed from (the real days of
    2010-2016). A check may flag drift by chance (rarely: ks_alpha over all the columns); an alarm needs
    two in a row, and in 50 seeds there is none. PSI alone would flag about one check in seven of these,
    KS alone without the correction one in ten."""
    population = days.between("2010-01-01", "2016-12-31")
    reference = model.metadata(population)["reference"]
    names = model.feature_names()
    drifted_checks, alarms = 0, 0
    for seed in range(50):
        generator = np.random.default_rng(seed)
        verdicts = []
        for _ in range(2):
            rows = population.features[generator.integers(0, len(population.features), 100)]
            features, prediction, drifted = monitor.measure_drift(
                reference, names, rows.tolist(), model.predict(rows).tolist(), DriftSection()
            )
            assert len(features) == len(names) and prediction.rows == 100
            verdicts.append(drifted)
        drifted_checks += sum(verdicts)
        alarms += all(verdicts)
    assert drifted_checks <= 3, f"{drifted_checks} of 100 in-distribution checks flagged drift"
    assert alarms == 0


def test_the_crash_drifts_on_every_check(train, crash):
    """Four checks of about 52 real days each, 2008-09 to 2009-06: every one drifts, on several features
    (on every feature in the autumn of 2008, fewer as the markets calm down in 2009)."""
    reference = model.metadata(train)["reference"]
    names = model.feature_names()
    for chunk in np.array_split(np.arange(len(crash.days)), 4):
        rows = crash.features[chunk]
        features, prediction, drifted = monitor.measure_drift(
            reference, names, rows.tolist(), model.predict(rows).tolist(), DriftSection()
        )
        assert drifted, [(d.name, d.psi, d.ks_pvalue) for d in features]
        assert sum(d.drifted for d in features) >= 3


# -- a check, end to end ---------------------------------------------------------------------------------


def test_in_distribution_traffic_is_recorded_without_alarm(served, calm):
    served.log_lines(calm, range(0, 300))
    served.outcomes(calm, range(0, 300))

    result = monitor.check(served.path)

    assert (result.verdict, result.rows, result.alarm, result.merge_request) == ("no drift", 300, False, None)
    assert records_on_deploy(served) == [result.run_id]
    record_dir = f"records/monitor/{result.run_id}"
    assert sorted(served.project.files("deploy-model", record_dir)) == [
        f"{record_dir}/drift.png",
        f"{record_dir}/live_metric.png",
        f"{record_dir}/record.json",
    ]
    record = json.loads(
        gitops.read_file(gitops.open_repo(served.path), "deploy-model", f"{record_dir}/record.json")
    )
    assert record["stage"] == "monitor" and record["outputs"]["cursor"] == result.cursor
    assert record["outputs"]["consecutive_drifted_checks"] == 0 and record["outputs"]["verdict"] == "no drift"
    assert (
        gitops.read_file(gitops.open_repo(served.path), "deploy-model", f"{record_dir}/drift.png")[:4]
        == b"\x89PNG"
    )
    # the bot's record commit is branchops' own: it starts no stage
    from branchops import gate

    assert gate.is_own_commit(gitops.open_repo(served.path), served.deploy_tip(), "Branchops-Bot")
    published = json.loads(served.monitor_json().read_text())
    assert (published["version"], published["rows"], published["drifted"]) == (model.VERSION, 300, False)
    assert set(published["features"]) == set(model.feature_names())
    assert open_retrains(served) == []


def test_drift_on_consecutive_checks_opens_one_retraining_merge_request(served, crash):
    served.log_lines(crash, range(0, 100))
    one = monitor.check(served.path)  # no outcome yet: drift alone decides
    assert (one.verdict, one.consecutive_drifted_checks, one.alarm) == ("drift", 1, False)
    assert open_retrains(served) == []

    served.log_lines(crash, range(100, 200))
    served.outcomes(crash, range(0, 200))
    two = monitor.check(served.path)
    assert (two.verdict, two.consecutive_drifted_checks, two.alarm) == ("drift", 2, True)
    assert two.alarm_reasons[0].startswith("drift on 2 consecutive checks")
    schema_check("monitor", two.to_dict())
    assert two.merge_request["action"] == "opened" and open_retrains(served) == [two.merge_request["number"]]
    # the last day whose outcome is known (the request ids end with the day); 2008's days are older than
    # the window training has (to 2014-12-31), and a retrain never shrinks it
    assert two.data_until == crash.days[199] and crash.days[199] < "2014-12-31"
    assert two.merge_request["data_until"] == "2014-12-31"
    forge = LocalForge(gitops.open_repo(served.path))
    body = forge.get(two.merge_request["number"]).body
    assert f"records/monitor/{two.run_id}/drift.png" in body and "| feature | PSI |" in body

    served.log_lines(crash, range(50, 150))  # the same days asked again
    three = monitor.check(served.path)
    assert three.consecutive_drifted_checks == 3 and three.merge_request["action"] in ("updated", "unchanged")
    assert open_retrains(served) == [two.merge_request["number"]]
    assert len(records_on_deploy(served)) == 3


def test_a_check_without_drift_resets_the_consecutive_count(served, crash, calm):
    served.log_lines(crash, range(0, 100))
    assert monitor.check(served.path).consecutive_drifted_checks == 1
    served.log_lines(calm, range(0, 300))
    calm = monitor.check(served.path)
    assert (calm.verdict, calm.consecutive_drifted_checks) == ("no drift", 0)
    served.log_lines(crash, range(100, 200))
    again = monitor.check(served.path)
    assert (again.consecutive_drifted_checks, again.alarm) == (1, False)


def test_the_second_check_reads_only_the_lines_logged_after_the_cursor(served, calm):
    served.log_lines(calm, range(0, 150))
    first = monitor.check(served.path)
    # new lines in the same file and in a newer one
    name = served.log_lines(calm, range(150, 270))
    served.log_lines(calm, range(270, 370), file=name)
    second = monitor.check(served.path)
    assert (first.rows, second.rows) == (150, 220)
    assert second.previous_cursor == first.cursor and second.cursor > first.cursor
    # nothing new: said, and nothing written
    tip = served.deploy_tip()
    third = monitor.check(served.path)
    assert (third.verdict, third.rows, third.record) == ("no new traffic", 0, None)
    assert served.deploy_tip() == tip


def test_too_few_rows_give_no_verdict_and_keep_the_cursor(served, calm):
    served.log_lines(calm, range(0, 40))
    few = monitor.check(served.path)
    assert (few.verdict, few.drifted, few.cursor, few.features) == ("too few rows", False, None, [])
    # no verdict, no gauges: a "too few rows" check never turns a drift alert off
    assert not served.monitor_json().exists()
    served.log_lines(calm, range(40, 140))
    enough = monitor.check(served.path)
    assert (enough.verdict, enough.rows) == ("no drift", 140)  # the 40 rows count again
    assert json.loads(served.monitor_json().read_text())["rows"] == 140


# -- the live metric ---------------------------------------------------------------------------------------


def pairwise_auc(labels, scores) -> float:
    """ROC AUC by its definition: the share of (positive, negative) pairs ranked right, ties one half."""
    positives = [s for s, y in zip(scores, labels) if y == 1]
    negatives = [s for s, y in zip(scores, labels) if y == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p in positives for n in negatives]
    return sum(pairs) / len(pairs)


def hanley_mcneil_se(auc: float, positives: int, negatives: int) -> float:
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)
    return (variance / (positives * negatives)) ** 0.5


@pytest.mark.parametrize("validated, alarm", [(0.5, False), (0.95, True)])
def test_the_live_metric_with_its_interval_against_the_validated_one(tmp_path, train, calm, validated, alarm):
    served = model.served_project(tmp_path, train, validated_roc_auc=validated)
    served.log_lines(calm, range(0, 370))
    served.outcomes(calm, range(0, 320))  # the last 50 days' outcomes have not arrived

    result = monitor.check(served.path)

    live = result.live_metric
    expected = pairwise_auc(calm.labels[:320], model.predict(calm.features[:320]).tolist())
    assert (live.name, live.n, live.validated) == ("roc_auc", 320, validated)
    assert live.value == pytest.approx(expected, abs=1e-6)
    # the bootstrap interval is centred on the value and as wide as the normal approximation's (Hanley and
    # McNeil 1982, an independent estimate of the AUC's standard error)
    positives = int(calm.labels[:320].sum())
    assert abs((live.low + live.high) / 2 - live.value) < 0.015
    assert (live.high - live.low) == pytest.approx(
        2 * 1.96 * hanley_mcneil_se(expected, positives, 320 - positives), rel=0.25
    )
    assert result.verdict == "no drift" and result.alarm is alarm and live.below_validated is alarm
    assert bool(open_retrains(served)) is alarm
    if alarm:
        assert "below the validated 0.950" in result.alarm_reasons[0]
    published = json.loads(served.monitor_json().read_text())["live_metric"]
    assert published["value"] == live.value and published["validated"] == validated and published["n"] == 320


def test_few_outcomes_give_no_live_metric_and_say_why(served, calm):
    served.log_lines(calm, range(0, 200))
    served.outcomes(calm, range(0, 20))
    live = monitor.check(served.path).live_metric
    assert live.value is None and "20 served rows have an outcome; the live metric needs 50" in live.note


# -- what a check refuses, writing nothing -------------------------------------------------------------


def assert_nothing_written(served, tip: str) -> None:
    assert served.deploy_tip() == tip
    assert not served.monitor_json().exists()
    assert open_retrains(served) == []


@pytest.mark.parametrize("files", [0, 1])
def test_an_empty_log_is_no_traffic_and_writes_nothing(served, files):
    served.log_dir.mkdir(parents=True)
    if files:
        (served.log_dir / "predictions-20261129T120000000000-1.jsonl").write_text("")
    tip = served.deploy_tip()
    with pytest.raises(NoTraffic, match="no traffic: the prediction log holds no logged request"):
        monitor.check(served.path)
    assert_nothing_written(served, tip)


def test_a_corrupt_line_is_named_by_file_and_line_and_nothing_is_written(served, crash):
    served.log_lines(crash, range(0, 150))
    monitor.check(served.path)  # one drifted check: a second one would alarm
    tip = served.deploy_tip()
    name = served.log_lines(crash, range(150, 200))
    with open(served.log_dir / name, "r+") as handle:
        lines = handle.read().splitlines(keepends=True)
        lines[2] = '{"time": "2026-11-29T12:10:00Z", "inputs": {\n'
        handle.seek(0)
        handle.write("".join(lines))
        handle.truncate()
    served.monitor_json().unlink()
    with pytest.raises(DataError, match=rf"^{name}:3: not a JSON line of the prediction log"):
        monitor.check(served.path)
    assert_nothing_written(served, tip)


def test_a_line_still_being_written_is_left_for_the_next_check(served, calm):
    name = served.log_lines(calm, range(0, 150))
    with open(served.log_dir / name, "a") as handle:
        handle.write('{"time": "2026-11-29T13:00:00.000000Z", "request_id": "AAPL/20')  # no newline yet
    assert monitor.check(served.path).rows == 150


def test_a_dry_run_computes_the_alarm_and_writes_nothing(served, crash):
    served.log_lines(crash, range(0, 100))
    monitor.check(served.path)
    served.log_lines(crash, range(100, 200))
    published = served.monitor_json().read_text()
    tip = served.deploy_tip()

    result = monitor.check(served.path, dry_run=True, data_until=date(2009, 1, 30))

    assert (result.alarm, result.consecutive_drifted_checks, result.record) == (True, 2, None)
    assert result.merge_request["action"] == "would open" and result.data_until == "2009-01-30"
    schema_check("monitor", result.to_dict())
    assert served.deploy_tip() == tip and served.monitor_json().read_text() == published
    assert open_retrains(served) == []
    # the same check for real finds the same rows: the dry run moved no cursor
    assert monitor.check(served.path).rows == result.rows == 100


# -- the command -------------------------------------------------------------------------------------------


def test_the_command_prints_the_check_as_json(served, calm):
    served.log_lines(calm, range(0, 200))
    outcome = CliRunner().invoke(main, ["-C", str(served.path), "monitor", "--json"], catch_exceptions=False)
    assert outcome.exit_code == 0, outcome.stderr
    document = json.loads(outcome.stdout)
    schema_check("monitor", document)  # the schema of docs/cli.md
    assert (document["verdict"], document["rows"], document["alarm"]) == ("no drift", 200, False)
    assert set(document["features"]) == set(model.feature_names()) and document["record"].startswith(
        "records/monitor/"
    )


def test_the_command_on_an_empty_log_exits_7_with_the_message(served):
    outcome = CliRunner().invoke(main, ["-C", str(served.path), "monitor", "--json"])
    assert outcome.exit_code == 7 and outcome.stdout == ""
    error = json.loads(outcome.stderr.strip().splitlines()[-1])
    assert error["code"] == 7 and error["error"].startswith("no traffic")


def test_without_the_monitor_extra_the_command_names_it(served, calm, monkeypatch):
    served.log_lines(calm, range(0, 200))
    tip = served.deploy_tip()
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # as if scipy were not installed
    outcome = CliRunner().invoke(main, ["-C", str(served.path), "monitor", "--json"])
    error = json.loads(outcome.stderr.strip().splitlines()[-1])
    assert outcome.exit_code == 8 and error["code"] == 8
    assert "needs the 'monitor' extra (pip install 'branchops[monitor]')" in error["error"]
    assert_nothing_written(served, tip)


def test_the_live_metric_plot_draws_an_interval_that_misses_its_point_value() -> None:
    # a percentile bootstrap interval can lie wholly above or below its point value (a skewed resampling
    # distribution, seen once in the demo): the plot must still be drawn, not fail the check
    from branchops.monitoring.monitor import MonitorResult, live_metric_plot

    history = [
        {
            "run_id": "r1",
            "outputs": {
                "live_metric": {
                    "name": "roc_auc",
                    "value": 0.60,
                    "low": 0.62,
                    "high": 0.70,
                    "validated": 0.72,
                    "n": 80,
                }
            },
        },
        {
            "run_id": "r0",
            "outputs": {
                "live_metric": {
                    "name": "roc_auc",
                    "value": 0.65,
                    "low": 0.55,
                    "high": 0.64,
                    "validated": 0.72,
                    "n": 60,
                }
            },
        },
    ]
    png = live_metric_plot(MonitorResult(model="djia", version=3, verdict="no drift"), history)
    assert png.startswith(b"\x89PNG")
