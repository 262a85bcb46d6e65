"""``branchops metrics diff`` and ``plots diff`` between two runs, commits or branches (by default the
latest run against what is serving), the change against production in the training report, and
``branchops tensorboard`` on the event files the train component writes."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from branchops.records import ExperimentEntry, TrainingLineage
from branchops.stages import training
from tests.foundation import record_history as history
from tests.foundation import training_records as tr
from tests.foundation.conftest import Project
from tests.foundation.test_cli_schemas import check

RUN0, RUN1, RUN2 = tr.THREE_RUN_IDS
RUN3 = history.run_id(3)  # a_fourth_run_deployed_after_the_serving_one's
VERSION = {i: history.FIRST_VERSION + i for i in range(4)}  # the model version training run i made


@pytest.fixture
def runs(project: Project) -> Project:
    tr.three_runs(project.path)
    return project


def diff(project: Project, *args: str, expect: int = 0) -> dict:
    return tr.cli_json(project, "metrics", "diff", *args, expect=expect)


def a_fourth_run_deployed_after_the_serving_one(runs: Project) -> None:
    """Training run 3 (latest); deploy-model: run 1's model (three_runs' one deployment), then run 2's, which
    replaced it, then run 3's as a canary that was rolled back (run 2's model still serving)."""
    tr.write(
        runs.path,
        "training",
        [
            tr.training_run(
                3,
                [tr.experiment("wide", 3, {"units": 256, "lr": 0.003}, tr.metrics(0.67, 0.63))],
                "wide",
                True,
            )
        ],
    )
    tr.write(
        runs.path,
        "deploy-model",
        [
            tr.deploy_run(1, 2, before=VERSION[1]),
            tr.deploy_run(2, 3, outcome="rolled_back", after=VERSION[2], before=VERSION[2]),
        ],
    )


def test_by_default_the_deployed_model_against_the_previous_deployment(runs):
    a_fourth_run_deployed_after_the_serving_one(runs)
    found = diff(runs)
    check("metrics_diff", found)  # docs/cli.md
    # not the latest run (3, whose canary was rolled back): what serves, against the version it replaced
    assert (found["a"]["label"], found["a"]["run_id"], found["a"]["model_version"]) == (
        "previous deployment",
        RUN1,
        VERSION[1],
    )
    assert (found["b"]["label"], found["b"]["run_id"], found["b"]["model_version"]) == (
        "serving",
        RUN2,
        VERSION[2],
    )
    assert found["note"] == (
        f"The deployed model (B, version {VERSION[2]}) against the previous deployment "
        f"(A, version {VERSION[1]}, which it replaced)"
    )
    roc = next(c for c in found["metrics"] if c["metric"] == "roc_auc")
    assert (roc["a"], roc["b"], roc["change"]) == (0.64, 0.66, pytest.approx(0.02))
    assert found["params"] == {"units": {"a": 64, "b": 128}}

    text = runs.run("metrics", "diff").stdout.splitlines()
    assert text[0] == found["note"] + "."
    assert text[2:4] == [
        f"A  previous deployment: {RUN1} / wide (model version {VERSION[1]})",
        f"B  serving: {RUN2} / wide (model version {VERSION[2]})",
    ]
    # named sides are compared as named, with no note
    named = diff(runs, "serving", "latest")
    assert (named["a"]["run_id"], named["b"]["run_id"], named["note"]) == (RUN2, RUN3, None)


def test_with_one_deployment_by_default_the_latest_run_against_what_is_serving_and_says_so(runs):
    found = diff(runs)
    check("metrics_diff", found)  # docs/cli.md
    assert (found["a"]["run_id"], found["a"]["experiment"], found["a"]["label"]) == (RUN1, "wide", "serving")
    assert (found["b"]["run_id"], found["b"]["experiment"], found["b"]["label"]) == (RUN2, "wide", "latest")
    assert found["note"] == (
        f"No previous deployment (version {VERSION[1]} is the first deployed): the latest run on 'training' "
        "(B) against what is serving (A) instead"
    )
    changes = {c["metric"]: c for c in found["metrics"]}
    assert list(changes) == ["accuracy", "roc_auc", "validation.accuracy", "validation.roc_auc"]
    roc = changes["roc_auc"]
    assert (roc["a"], roc["b"], roc["change"]) == (0.64, 0.66, pytest.approx(0.02))
    assert roc["a_interval"] == [pytest.approx(0.61), pytest.approx(0.67)]
    assert roc["b_interval"] == [pytest.approx(0.63), pytest.approx(0.69)]
    assert changes["accuracy"]["change"] == pytest.approx(0.02)
    assert found["params"] == {"units": {"a": 64, "b": 128}}  # only what differs

    text = runs.run("metrics", "diff").stdout
    assert text.startswith(found["note"] + ".\n")
    assert f"A  serving: {RUN1} / wide" in text and f"B  latest: {RUN2} / wide" in text
    roc_line = next(line for line in text.splitlines() if line.startswith("roc_auc"))
    assert roc_line.split() == [
        "roc_auc",
        "0.6400",
        "[0.610,",
        "0.670]",
        "0.6600",
        "[0.630,",
        "0.690]",
        "+0.0200",
    ]
    assert "units: 64 -> 128" in text


def test_a_previous_version_no_training_run_made_is_named_and_the_default_falls_back(runs):
    tr.write(runs.path, "deploy-model", [tr.deploy_run(1, 2, before=VERSION[0] - 1)])
    found = diff(runs)
    assert (found["a"]["label"], found["a"]["run_id"]) == ("serving", RUN2)
    assert (found["b"]["label"], found["b"]["run_id"]) == ("latest", RUN2)
    assert found["note"].startswith(
        f"Version {VERSION[0] - 1} served before, but no training run on 'training' made it: the latest run"
    )


def test_the_first_deployed_run_against_itself_says_so(runs):
    tr.write(runs.path, "deploy-model", [tr.deploy_run(1, 2)])  # run 2 deployed, nothing recorded before it
    text = runs.run("metrics", "diff").stdout
    assert text.startswith(f"No previous deployment (version {VERSION[2]} is the first deployed)")
    assert f"A  serving: {RUN2}" in text and f"B  latest: {RUN2}" in text
    assert "A and B are the same run's experiment: nothing changed" in text


def test_sides_by_run_commit_branch_and_experiment(runs):
    by_run = diff(runs, RUN0[:20], f"{RUN1}:deep")
    assert (by_run["a"]["run_id"], by_run["a"]["experiment"]) == (RUN0, "wide")
    assert (by_run["b"]["run_id"], by_run["b"]["experiment"]) == (RUN1, "deep")
    roc = next(c for c in by_run["metrics"] if c["metric"] == "roc_auc")
    assert (roc["a"], roc["b"], roc["change"]) == (0.58, 0.61, pytest.approx(0.03))

    by_commit = diff(runs, history.commit_of(0), "training")  # a commit; a branch: its newest run
    assert (by_commit["a"]["run_id"], by_commit["b"]["run_id"]) == (RUN0, RUN2)

    one_side = diff(runs, RUN0)  # one side given: it against what is serving
    assert (one_side["a"]["run_id"], one_side["b"]["run_id"]) == (RUN1, RUN0)


@pytest.mark.parametrize(
    "sides, code, message",
    [
        (("no-such-thing",), 9, "is not a training run, a branch or a commit"),
        ((f"{RUN1}:nope",), 9, "has no experiment 'nope'"),
        ((f"{RUN2}:deep",), 9, "no metrics"),  # the experiment failed
        (("20260101T00",), 2, "more than one training run matches"),
        (("ds1",), 9, "branch 'ds1' holds no training records"),
    ],
)
def test_a_side_that_cannot_be_compared_says_why(runs, sides, code, message):
    error = diff(runs, *sides, expect=code)
    assert error["code"] == code and message in error["error"]


def test_nothing_serving_yet_is_not_found(project):
    tr.write(
        project.path,
        "training",
        [tr.training_run(0, [tr.experiment("wide", 0, {}, tr.metrics(0.6, 0.6))], "wide", True)],
    )
    error = diff(project, expect=9)
    assert "nothing is serving" in error["error"]
    assert diff(project, RUN0, "latest")["b"]["run_id"] == RUN0


def test_plots_diff_overlays_learning_curves_and_roc_in_a_png(runs, tmp_path):
    from PIL import Image

    output = tmp_path / "out" / "diff.png"
    written = json.loads(runs.run("plots", "diff", "-o", str(output), "--json").stdout)
    check("plots_diff", written)  # docs/cli.md
    assert written["written"] == str(output)
    assert written["plotted"]["roc"] == ["serving", "latest"]
    assert written["plotted"]["learning_curves"] == [
        f"{side}:{key}"
        for side in ("serving", "latest")
        for key in ("loss", "val_loss", "accuracy", "val_accuracy")
    ]
    with Image.open(output) as image:
        assert image.format == "PNG" and image.size == (1500, 450)
        # two coloured lines per panel: the image is not a blank canvas
        assert len(image.convert("RGB").getcolors(maxcolors=100_000)) > 50


def test_plots_diff_by_default_draws_the_deployed_model_against_the_previous_deployment(runs, tmp_path):
    a_fourth_run_deployed_after_the_serving_one(runs)
    written = json.loads(runs.run("plots", "diff", "-o", str(tmp_path / "d.png"), "--json").stdout)
    check("plots_diff", written)  # docs/cli.md
    assert written["plotted"]["roc"] == ["previous deployment", "serving"]
    assert (written["a"]["run_id"], written["b"]["run_id"]) == (RUN1, RUN2)
    assert written["note"].startswith("The deployed model (B, ")
    page = tmp_path / "d.html"
    printed = runs.run("plots", "diff", "-o", str(page)).stdout
    assert printed == f"{written['note']}.\nwrote {page}\n"
    assert f"<p>{written['note']}.</p>" in page.read_text()


def test_plots_diff_as_html_holds_the_image_and_the_table(runs, tmp_path):
    output = tmp_path / "diff.html"
    runs.run("plots", "diff", RUN0, RUN2, "-o", str(output))
    page = output.read_text()
    assert "<img" in page and "src='data:image/png;base64," in page
    assert "| roc_auc | 0.5800 [0.550, 0.610] | 0.6600 [0.630, 0.690] | +0.0800 |" in page


def test_plots_diff_of_runs_recorded_without_curves_says_so(project, tmp_path):
    old = [tr.experiment("wide", i, {}, tr.metrics(0.6, 0.6, curves=False)) for i in range(2)]
    tr.write(project.path, "training", [tr.training_run(i, [old[i]], "wide", True) for i in range(2)])
    written = json.loads(
        project.run("plots", "diff", RUN0, RUN1, "-o", str(tmp_path / "d.png"), "--json").stdout
    )
    assert written["plotted"] == {"learning_curves": [], "roc": []}
    error = project.run("plots", "diff", RUN0, RUN1, "-o", str(tmp_path / "d.svg"), "--json", expect=2)
    assert "a .png or an .html file" in json.loads(error.stderr)["error"]


def test_the_training_report_carries_the_change_against_production():
    best = ExperimentEntry(experiment="wide", state="SUCCEEDED", params={}, metrics=tr.metrics(0.66, 0.62))
    ctx = SimpleNamespace(
        config=SimpleNamespace(
            project=SimpleNamespace(name="p", description=""),
            training=SimpleNamespace(
                select_by="roc_auc",
                metrics=["accuracy", "roc_auc"],
                kpis=SimpleNamespace(
                    thresholds={}, require_significant=False, beat_production_by=None, confidence=0.95
                ),
            ),
        ),
        source_commit="a" * 40,
        merge_request=SimpleNamespace(number=1, title="t", author="ds1", merged_by="lead"),
        run_id="run",
        artifacts={},
    )
    production = tr.metrics(0.64, 0.60)
    report = training.report_markdown(ctx, [best], best, production, [], TrainingLineage(), False)
    section = report.split("### Change against production", 1)[1].split("\n\n")[1].splitlines()
    assert section == [
        "| metric | production | **wide** | change |",
        "|---|---|---|---|",
        "| accuracy | 0.6000 | 0.6200 | +0.0200 |",
        "| roc_auc | 0.6400 [0.610, 0.670] | 0.6600 [0.630, 0.690] | +0.0200 |",
        "| validation.accuracy | 0.5900 | 0.6100 | +0.0200 |",
        "| validation.roc_auc | 0.6300 | 0.6500 | +0.0200 |",
    ]
    first = training.report_markdown(ctx, [best], best, None, [], TrainingLineage(), False)
    assert "Change against production" not in first  # nothing deployed yet: nothing to compare with


def release_context(project: Project, i: int):
    """The training stage's context for training run ``i`` of three_runs, on the project's own repository."""
    from branchops import gitops
    from branchops.forge.base import MergeRequest
    from branchops.forge.local import LocalForge
    from branchops.project import working_config
    from branchops.stages.base import StageContext

    repo = gitops.open_repo(project.path)
    return StageContext(
        stage="training",
        branch="training",
        workspace=project.path,
        git_dir=project.path,
        state_dir=gitops.state_dir(repo),
        config=working_config(repo),
        source_commit=history.commit_of(i),
        run_id=history.run_id(i),
        record_dir=f"records/training/{history.run_id(i)}",
        merge_request=MergeRequest(
            i + 1, "change", "ds1", "training", "ds1", "merged", "0" * 40, merged_by="lead"
        ),
        forge=LocalForge(repo),
        notifier=None,
    )


def test_the_merge_request_into_deploy_model_carries_the_diff_against_production(runs):
    from branchops import gitops, records

    repo = gitops.open_repo(runs.path)
    trainings = records.stage_history(repo, runs.tip("training"), "training")

    def release(i: int) -> tuple[int, str]:
        ctx = release_context(runs, i)
        best = trainings.read([history.run_id(i)])[0].training_outputs.best
        _, production = training.production_release(ctx)
        report = training.report_markdown(ctx, [best], best, production, [], TrainingLineage(), False)
        number, _ = training.open_release_request(ctx, best, report)
        return number, ctx.forge.get(number).body

    # run 1's release merged into deploy-model (what serves), then run 2 passes the gate
    first, first_body = release(1)
    assert "Change against production" not in first_body  # nothing released before it
    runs.run("mr", "approve", str(first), "--as", "head-of-ds")
    runs.run("mr", "merge", str(first), "--as", "head-of-ds", "--no-run")
    _, body = release(2)
    assert "### Change against production" in body
    table = body.split("### Change against production\n\n", 1)[1].split("\n\n")[0].splitlines()
    # the table `branchops metrics diff` shows for the same two runs
    same = diff(runs, RUN1, RUN2)["metrics"]
    assert table[0] == "| metric | production | **wide** | change |"
    assert [row.split(" | ")[0].lstrip("| ") for row in table[2:]] == [c["metric"] for c in same]
    assert "| roc_auc | 0.6400 [0.610, 0.670] | 0.6600 [0.630, 0.690] | +0.0200 |" in table


# -- TensorBoard -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_event_files(project: Project, i: int, experiment: str, epochs: int) -> Path:
    """The event files the train component writes, in the work folder the training stage gave the run."""
    from branchops import gitops
    from branchops.project import working_config
    from branchops.storage import make_storage
    from components import train

    repo = gitops.open_repo(project.path)
    volume = make_storage(working_config(repo), gitops.state_dir(repo)).ensure_volume("models")
    curves = tr.metrics(0.6, 0.6, epochs=epochs)["curves"]["learning"]
    folder = Path(volume.path) / "runs" / f"{history.commit_of(i)[:12]}-{experiment}" / train.TENSORBOARD_DIR
    train.write_tensorboard(folder, curves)
    return folder


def test_tensorboard_opens_the_runs_event_files_side_by_side(runs):
    first = write_event_files(runs, 1, "wide", epochs=3)
    write_event_files(runs, 1, "deep", epochs=3)
    second = write_event_files(runs, 2, "wide", epochs=5)
    port = free_port()
    found = json.loads(runs.run("tensorboard", RUN1, f"{RUN2}:wide", "--port", str(port), "--json").stdout)
    assert [(d["run_id"], d["experiment"]) for d in found["logdirs"]] == [
        (RUN1, "wide"),
        (RUN1, "deep"),
        (RUN2, "wide"),
    ]
    check("tensorboard", found)  # docs/cli.md
    spec = found["command"][found["command"].index("--logdir_spec") + 1]
    assert spec.split(",")[0] == f"{RUN1}/wide:{first}" and spec.split(",")[2] == f"{RUN2}/wide:{second}"
    printed = runs.run("tensorboard", RUN1, "--dry-run").stdout
    assert "-m tensorboard.main --logdir_spec" in printed and f"{RUN1}/deep:" in printed

    # the real TensorBoard, started with that command, lists each run's curves under its name
    server = subprocess.Popen(found["command"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listed = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://localhost:{port}/data/plugin/scalars/tags", timeout=5
                ) as r:
                    listed = json.loads(r.read())
                if len(listed) == 6:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert listed is not None, "TensorBoard did not answer"
        assert sorted(listed) == sorted(
            f"{run}/{experiment}/{part}"
            for run, experiment in ((RUN1, "wide"), (RUN1, "deep"), (RUN2, "wide"))
            for part in ("train", "validation")
        )
        assert set(listed[f"{RUN2}/wide/validation"]) == {"epoch_loss", "epoch_accuracy"}
        query = urllib.parse.urlencode({"run": f"{RUN2}/wide/train", "tag": "epoch_loss"})
        with urllib.request.urlopen(f"http://localhost:{port}/data/plugin/scalars/scalars?{query}") as r:
            points = json.loads(r.read())
        assert [step for _, step, _ in points] == [0, 1, 2, 3, 4]
        assert [round(value, 4) for _, _, value in points] == [0.7, 0.69, 0.68, 0.67, 0.66]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_tensorboard_of_a_run_without_event_files_is_not_found(runs):
    error = runs.run("tensorboard", RUN0, "--json", expect=9)
    assert "volume models, which is not a folder on this machine" in json.loads(error.stderr)["error"]
    write_event_files(runs, 1, "wide", epochs=1)  # the volume now exists; run 0 wrote nothing in it
    error = runs.run("tensorboard", RUN0, "--json", expect=9)
    message = json.loads(error.stderr)["error"]
    assert "no TensorBoard event files" in message and f"{history.commit_of(0)[:12]}-wide" in message
