"""The dashboard's pages over real records (Flask's test client), and `branchops ui` as a process."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from branchops.ui.app import create_app
from tests.foundation.record_history import FIRST_VERSION
from tests.ui import stand_in_stages
from tests.ui.conftest import DashboardServer

MODEL_1, MODEL_2 = FIRST_VERSION + 1, FIRST_VERSION + 2


@pytest.fixture(scope="module")
def client(dashboard_repo: Path):
    return create_app(str(dashboard_repo)).test_client()


def runs_of(repo: Path, stage: str) -> list[str]:
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{stage}:records/{stage}/"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(listing.split())


def page(client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, f"{url}: {response.status_code}\n{response.text[:2000]}"
    return response.text


def test_a_repository_without_runs_says_so(empty_repo: Path) -> None:
    client = create_app(str(empty_repo)).test_client()
    html = page(client, "/")
    assert 'id="no-runs"' in html and "No runs yet" in html
    assert "Nothing has been deployed yet" in html
    assert "No runs yet on this stage branch" in page(client, "/stages/training")
    assert "No model versions" in page(client, "/models")


def test_overview_lists_each_stage_with_outcomes_approvals_and_timings(client, dashboard_repo: Path) -> None:
    html = page(client, "/")
    assert 'id="no-runs"' not in html
    for stage, count in (("build-components", 1), ("kf-pipeline", 1), ("training", 2), ("deploy-model", 3)):
        assert len(runs_of(dashboard_repo, stage)) == count
        section = html.split(f'id="stage-{stage}"')[1].split("</section>")[0]
        assert f"{count} run" in section
        for run_id in runs_of(dashboard_repo, stage):
            assert f"/runs/{stage}/{run_id}" in section
        assert "succeeded" in section
        # who approved, as the gate counted it, and how long the run took
        assert "approved by " + stand_in_stages_approver(stage) in section
        assert re.search(r"\d+\.\d s", section)


def stand_in_stages_approver(stage: str) -> str:
    from tests.ui.conftest import APPROVER

    return APPROVER[stage]


def test_serving_now_is_the_last_deployment_with_its_labels(client) -> None:
    html = page(client, "/")
    serving = html.split('id="serving-now"')[1].split("</section>")[0]
    # the last deploy-model run promoted model 2 after a canary at 10% and 50%
    assert re.search(rf"<code>stable</code> → version <strong>{MODEL_2}</strong>", serving)
    assert "no canary" in serving


def test_training_run_shows_metrics_and_plots_served_from_git(client, dashboard_repo: Path) -> None:
    run_id = runs_of(dashboard_repo, "training")[-1]
    html = page(client, f"/runs/training/{run_id}")
    assert "roc_auc" in html and "0.63" in html
    plots = re.findall(r'<img class="plot" alt="[^"]+" src="([^"]+)"', html)
    assert len(plots) == 2
    for src in plots:
        response = client.get(src)
        assert response.status_code == 200 and response.mimetype == "image/png"
        artifact = src.split("/artifacts/", 1)[1]
        in_git = subprocess.run(
            ["git", "show", f"training:records/training/{run_id}/{artifact}"],
            cwd=dashboard_repo,
            capture_output=True,
            check=True,
        ).stdout
        assert response.data == in_git
    # only a PNG the record lists as its artifact: not its record.json, not a path outside the folder
    for other in ("record.json", "wide/metrics.json", "../../deploy-model/x.png", "wide/plots/nope.png"):
        assert client.get(f"/runs/training/{run_id}/artifacts/{other}").status_code == 404


def test_no_secret_is_shown(client, dashboard_repo: Path) -> None:
    for run_id in runs_of(dashboard_repo, "training"):
        html = page(client, f"/runs/training/{run_id}")
        assert "kaggle_token" in html  # the parameter is listed...
        assert stand_in_stages.SECRET_VALUE not in html  # ...its value is not
    first, second = runs_of(dashboard_repo, "training")
    assert stand_in_stages.SECRET_VALUE not in page(client, f"/compare?run={first}&run={second}")
    assert stand_in_stages.SECRET_VALUE not in page(client, f"/models/{MODEL_2}")


def test_comparison_of_two_runs_shows_parameters_metrics_and_the_change(client, dashboard_repo: Path) -> None:
    first, second = runs_of(dashboard_repo, "training")
    html = page(client, f"/compare?run={first}&run={second}")
    table = html.split('id="comparison"')[1].split("</table>")[0]
    assert first in table and second in table
    units = table.split("<th>units</th>")[1].split("</tr>")[0]
    assert "64" in units and "128" in units and "changed" in units
    roc = table.split('data-metric="roc_auc"')[1].split("</tr>")[0]
    assert "0.58" in roc and "0.63" in roc and "+0.05" in roc
    assert "[0.55, 0.61]" in roc and "[0.6, 0.66]" in roc  # each value with its interval
    # the second run made model 2, which serves now
    version_row = table.split("<th>model version</th>")[1].split("</tr>")[0]
    assert f"{MODEL_2}</a> (serving)" in version_row and f"{MODEL_1}</a> (serving)" not in version_row
    assert html.count('<img class="plot"') == 4  # each run's two plots
    # and both runs' curves overlaid, drawn as `branchops plots diff` draws them
    overlay = re.search(r'<img class="plot overlay" alt="[^"]+" src="([^"]+)"', html).group(1)
    image = client.get(overlay.replace("&amp;", "&"))
    assert image.status_code == 200 and image.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert client.get(f"/compare/curves.png?run={first}").status_code == 400
    # the same comparison whichever order the runs are named in: older first, the change to the newer
    assert page(client, f"/compare?run={second}&run={first}") == html
    assert page(client, f"/compare?run={first}", status=400)
    assert page(client, f"/compare?run={first}&run={first}", status=400)
    assert page(client, f"/compare?run={first}&run=20990101T000000000000Z-nope", status=404)


def test_lineage_graph_of_a_model_version_with_its_deploys_and_rollback(client, dashboard_repo: Path) -> None:
    html = page(client, f"/models/{MODEL_2}")
    svg = html.split('<div class="graph">')[1].split("</svg>")[0]
    for node in ("commit", "config", "pipeline", "data", "run", "model"):
        assert f'data-node="{node}"' in svg
    training_run = runs_of(dashboard_repo, "training")[-1]
    assert f'href="/runs/training/{training_run}"' in svg
    # model 2's deployments: the canary rolled back, then the full rollout; model 1's first deploy is not
    deploys = runs_of(dashboard_repo, "deploy-model")
    assert f'data-node="deploy-{deploys[0]}"' not in svg
    assert re.search(rf'class="node node-rollback" data-node="deploy-{deploys[1]}"', svg)
    assert re.search(rf'class="node node-deploy" data-node="deploy-{deploys[2]}"', svg)
    assert svg.count("<line") == 5 + 2  # the chain of six nodes, and one edge per deployment
    # model 1: its one deployment
    model_1 = page(client, f"/models/{MODEL_1}")
    assert f'data-node="deploy-{deploys[0]}"' in model_1 and f"deploy-{deploys[2]}" not in model_1
    assert page(client, "/models/12345", status=404)
    # a run id prefix both training runs share: which one is meant, the page says (a request error, not the
    # dashboard's)
    first, second = runs_of(dashboard_repo, "training")
    shared = next(i for i, (x, y) in enumerate(zip(first, second)) if x != y)
    assert "more than one training run matches" in page(client, f"/models/{first[:shared]}", status=400)


def test_stage_pages_and_models_list(client, dashboard_repo: Path) -> None:
    html = page(client, "/stages/training")
    assert html.count('type="checkbox" name="run"') == 2
    models = page(client, "/models")
    assert f"/models/{MODEL_1}" in models and f"/models/{MODEL_2}" in models
    assert page(client, "/stages/nonsense", status=404)


def test_the_dashboard_only_reads(client) -> None:
    assert client.post("/").status_code == 405
    assert client.delete("/runs/training/x").status_code == 405


def test_branchops_ui_serves_on_loopback_and_prints_its_url(dashboard_repo: Path) -> None:
    server = DashboardServer(dashboard_repo)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200 and b"training" in response.read()
    finally:
        server.stop()
    assert server.process.returncode is not None


def test_stage_and_model_pages_page_through_the_runs(client, monkeypatch) -> None:
    from branchops.ui import views

    monkeypatch.setattr(views, "PAGE_SIZE", 1)  # training holds two runs: two pages
    for url in ("/stages/training", "/models"):
        first, second = page(client, url), page(client, f"{url}?page=2")
        assert "page 1 of 2" in first and 'href="?page=2">older' in first and "newer" not in first
        assert "page 2 of 2" in second and 'href="?page=1">newer' in second and "older" not in second


# -- monitoring ------------------------------------------------------------------------------------------


def monitoring_section(html: str) -> str:
    return html.split('id="monitoring-now"')[1].split("</section>")[0]


def test_serving_now_shows_the_latest_checks_drift_against_the_thresholds(client) -> None:
    from tests.ui.conftest import LIVE_METRIC, MONITOR_CHECKS

    section = monitoring_section(page(client, "/"))
    latest = MONITOR_CHECKS[-1]
    rows = {
        name: section.split(f'data-feature="{name}">')[1].split("</tr>")[0]
        for name in (*latest, "prediction")
    }
    # each feature's PSI against the threshold (0.25) and its KS p-value against alpha shared among the
    # columns tested (three features and the prediction); what passes a threshold stands out
    assert "(threshold 0.25)" in section and "(drift below 0.01 / 4 tested = 0.0025)" in section
    assert re.search(
        r'<td class="over">0.47</td>\s*<td class="over">1e-07</td>\s*<td>yes</td>', rows["volatility_20d"]
    )
    assert re.search(r'<td class="">0.12</td>\s*<td class="">0.420</td>\s*<td>no</td>', rows["volume_ratio"])
    assert '<td class="">0.05</td>' in rows["return_1d"]
    # the prediction's PSI reaches the threshold, but its p-value is not below alpha / 4: no drift
    assert re.search(
        r'<td class="over">0.25</td>\s*<td class="">0.003</td>\s*<td>no</td>', rows["prediction"]
    )
    # two drifted checks in a row, of the two that propose a retrain
    assert re.search(r'<strong id="drift-streak">2</strong> of the 2 consecutive', section)
    assert '<p class="warn alarm">Alarm: drift on 2 consecutive checks.</p>' in section
    assert f"of version {MODEL_2}:" in section and 'id="not-checked-yet"' not in section
    live = section.split('class="live-metric"')[1].split("</p>")[0]
    assert (
        f"Live roc_auc: <strong>{LIVE_METRIC['value']}</strong> [0.49, 0.61] "
        '<span class="muted">(95 % interval)</span> on 120 outcomes, against 0.63' in live
    )
    assert live.endswith(
        'against 0.63 validated at training: <span class="warn">significantly below it</span>.'
    )
    retrain = section.split('id="retrain-mr"')[1].split("</p>")[0]
    assert re.search(r"<strong>!\d+</strong>", retrain) and "is open" in retrain


def test_a_retraining_merge_request_no_longer_open_is_not_linked(
    dashboard_repo: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    from tests.foundation.conftest import Project

    copy = Project(tmp_path / "project")
    shutil.copytree(dashboard_repo, copy.path)
    client = create_app(str(copy.path)).test_client()
    listed = json.loads(copy.run("mr", "list", "--json").output)
    [number] = [mr["number"] for mr in listed if mr["target"] == "training" and mr["state"] == "open"]
    assert f"<strong>!{number}</strong>" in monitoring_section(page(client, "/"))
    copy.run("mr", "close", str(number))
    section = monitoring_section(page(client, "/"))
    assert 'id="retrain-mr"' not in section and 'id="drift-streak"' in section


def test_monitoring_page_lists_the_checks_with_their_plots(client, dashboard_repo: Path, monkeypatch) -> None:
    from branchops import records
    from tests.ui.conftest import MONITOR_CHECKS

    reads = []
    cat_files = records._cat_files
    monkeypatch.setattr(
        records, "_cat_files", lambda repo, specs: reads.append(specs) or cat_files(repo, specs)
    )
    html = page(client, "/monitoring")
    # the checks' records in one read, whatever their number
    assert [len(specs) for specs in reads] == [len(MONITOR_CHECKS)]
    checks = runs_of_monitor(dashboard_repo)
    assert len(checks) == len(MONITOR_CHECKS)
    table = html.split('id="checks"')[1].split("</table>")[0]
    listed = re.findall(r'data-check="([^"]+)"', table)
    assert listed == checks[::-1]  # newest first
    verdicts = re.findall(r'class="outcome[^"]*">([^<]+)<', table)
    assert verdicts == ["drifted", "drifted", "no drift"]
    assert "<td>1 of 3: volatility_20d</td>" in table.split(f'data-check="{checks[-1]}"')[1].split("</tr>")[0]
    # every plot a check recorded, straight from git; the newest check's drawn on the page
    links = re.findall(r'href="(/monitoring/[^"]+/artifacts/[^"]+)"', table)
    assert len(links) == 2 * len(MONITOR_CHECKS)
    for link in links:
        response = client.get(link)
        run_id, artifact = link.split("/")[2], link.split("/artifacts/")[1]
        in_git = subprocess.run(
            ["git", "show", f"deploy-model:records/monitor/{run_id}/{artifact}"],
            cwd=dashboard_repo,
            capture_output=True,
            check=True,
        ).stdout
        assert response.status_code == 200 and response.mimetype == "image/png" and response.data == in_git
    newest = html.split('id="newest-check"')[1]
    assert len(re.findall(r'<img class="plot"', newest)) == 2
    assert 'data-feature="volatility_20d"' in newest
    # one check's page
    detail = page(client, f"/monitoring/{checks[-1]}")
    assert "drifted" in detail and "0.47" in detail and "Live roc_auc" in detail
    # a check before enough outcomes had arrived says why it has no live metric
    assert "No live metric (roc_auc): 12 outcomes joined, fewer than the 50 needed." in page(
        client, f"/monitoring/{checks[0]}"
    )
    assert page(client, "/monitoring/20990101T000000000000Z-nope", status=404)
    for other in ("record.json", "nope.png", "../../deploy-model/x.png"):
        assert client.get(f"/monitoring/{checks[-1]}/artifacts/{other}").status_code == 404


def runs_of_monitor(repo: Path) -> list[str]:
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", "deploy-model:records/monitor/"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(listing.split())


@pytest.fixture
def deployed(tmp_path: Path):
    """A project whose deploy-model branch has deployed a model and recorded no monitoring check."""
    from tests.foundation import training_records
    from tests.foundation.conftest import make_project

    project = make_project(tmp_path)
    training_records.three_runs(project.path)
    return project


def test_before_any_monitoring_check_the_serving_panel_says_so(deployed, empty_repo: Path) -> None:
    client = create_app(str(deployed.path)).test_client()
    section = monitoring_section(page(client, "/"))
    assert 'id="no-checks"' in section and "No monitoring checks yet" in section
    assert 'id="drift-streak"' not in section
    assert "No monitoring checks yet" in page(client, "/monitoring")
    assert "No monitoring checks yet" in page(create_app(str(empty_repo)).test_client(), "/monitoring")


def test_a_check_recorded_without_some_figures_shows_them_missing(deployed) -> None:
    from tests.foundation import training_records
    from tests.ui import monitor_records

    version = FIRST_VERSION + 1  # three_runs' deployment
    drifted = [monitor_records.check(i, version, {"volatility_20d": 0.4}, streak=0) for i in range(3)]
    for found in drifted:
        # a record that does not count its streak: counted from the checks
        del found["outputs"]["consecutive_drifted_checks"]
        del found["outputs"]["thresholds"]  # nor says its thresholds: the configured ones
    bare = monitor_records.check(3, version, {}, streak=0)
    bare["outputs"] = {"drifted": True, "version": version}  # a check that recorded nothing else
    monitor_records.write(deployed.path, [*drifted, bare])
    client = create_app(str(deployed.path)).test_client()
    section = monitoring_section(page(client, "/"))
    assert "no feature figures recorded" in section and "No live metric" in section
    assert re.search(r'<strong id="drift-streak">4</strong> of the 2 consecutive', section)
    assert "(threshold 0.25)" in section
    # a version deployed since the last check: the panel says the check is of the one before
    assert 'id="not-checked-yet"' not in section
    training_records.write(deployed.path, "deploy-model", [training_records.deploy_run(1, 2, before=version)])
    section = monitoring_section(page(client, "/"))
    assert f"No monitoring check of version {FIRST_VERSION + 2} yet" in section
    assert f"of version {version}:" in section
    html = page(client, "/monitoring")
    assert html.count("data-check=") == 4


def test_the_checks_branchops_monitor_records_are_what_the_serving_panel_shows(
    tmp_path: Path, djia_dir
) -> None:
    """The dashboard against the real writer: two checks of the 2008 crash by `branchops monitor` (the second
    with outcomes, an alarm and the retraining merge request), on the monitoring tests' served model."""
    from branchops.monitoring import monitor
    from tests.foundation import training_records
    from tests.monitoring import served as model

    days = model.load_days(djia_dir)
    served = model.served_project(tmp_path, days.between(*model.TRAIN_DAYS).alternate(0))
    training_records.write(served.path, "deploy-model", [training_records.deploy_run(0, 0)])
    crash = days.between(*model.CRASH_DAYS)
    served.log_lines(crash, range(0, 100))
    monitor.check(served.path)
    served.log_lines(crash, range(100, 200))
    served.outcomes(crash, range(0, 200))
    check = monitor.check(served.path)
    assert check.alarm and check.merge_request["action"] == "opened", check.to_dict()

    client = create_app(str(served.path)).test_client()
    section = monitoring_section(page(client, "/"))
    assert re.search(rf"of version {model.VERSION}:\s+{check.rows} logged rows", section)
    for drift in [*check.features, check.prediction]:
        row = section.split(f'data-feature="{drift.name}">')[1].split("</tr>")[0]
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
        assert cells[0] == f"{drift.psi:.4g}" and cells[2] == ("yes" if drift.drifted else "no"), (
            drift,
            cells,
        )
    assert f'<strong id="drift-streak">{check.consecutive_drifted_checks}</strong>' in section
    assert check.alarm_reasons[0] in section
    live = check.live_metric
    assert f"Live {live.name}: <strong>{live.value:.4g}</strong> [{live.low:.4g}, {live.high:.4g}]" in section
    assert f"<strong>!{check.merge_request['number']}</strong>" in section and "is open" in section

    html = page(client, "/monitoring")
    assert re.findall(r'data-check="([^"]+)"', html)[0] == check.run_id
    plots = re.findall(r'<img class="plot" alt="[^"]+" src="([^"]+)"', html)
    assert len(plots) == 2
    for src in plots:
        response = client.get(src)
        assert response.status_code == 200 and response.data.startswith(b"\x89PNG\r\n\x1a\n")
