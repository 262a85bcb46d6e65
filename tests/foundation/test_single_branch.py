"""Single-branch mode: one branch runs every stage whose inputs changed in the merge."""

from __future__ import annotations

from branchops.stages import REGISTRY
from tests.foundation import recording_stage
from tests.foundation.conftest import make_project

CONFIG = """\
approvers: {build-components: [lead], kf-pipeline: [lead], training: [lead], deploy-model: [lead]}
branches: {mode: single-branch, single_branch: main}
notifications: [{kind: log_file}]
"""


def test_only_stages_whose_inputs_changed_run(tmp_path, monkeypatch, stage_calls):
    monkeypatch.setenv("BRANCHOPS_TEST_STAGE_LOG", str(tmp_path / "stage-calls.log"))
    # two stage bodies with different inputs: build-components watches src/, training watches data/
    monkeypatch.setitem(REGISTRY, "build-components", recording_stage)
    monkeypatch.setitem(REGISTRY, "kf-pipeline", recording_stage)
    import types

    training = types.SimpleNamespace(
        inputs=lambda config: ("data/",), plan=recording_stage.plan, run=recording_stage.run
    )
    monkeypatch.setitem(REGISTRY, "training", training)
    monkeypatch.setitem(REGISTRY, "deploy-model", training)
    from branchops import runner

    fetches = []
    fetch = runner.fetch_what_runs_read
    monkeypatch.setattr(runner, "fetch_what_runs_read", lambda p: fetches.append(1) or fetch(p))
    project = make_project(tmp_path, CONFIG)
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("main")
    project.run("mr", "approve", str(number), "--as", "lead")
    result = project.run("mr", "merge", str(number), "--as", "ds1")
    calls = [line.split()[0] for line in stage_calls()]
    assert calls == ["build-components", "kf-pipeline"]
    assert len(fetches) == 1  # one fetch per run, not one more per stage
    assert (
        "training on main: skipped" in result.output and "none of its inputs (data/) changed" in result.output
    )


def test_deploy_model_watches_the_configured_release_file():
    """A project whose release file is elsewhere (the minimal template's serving/release.yaml) still
    deploys in single-branch mode when a release lands there."""
    from branchops.config import parse_config
    from branchops.stages import REGISTRY

    approvers = "approvers: {build-components: [l], kf-pipeline: [l], training: [l], deploy-model: [l]}\n"
    reference = parse_config(approvers)
    minimal = parse_config(approvers + "serving: {release_file: serving/release.yaml}\n")
    assert REGISTRY["deploy-model"].inputs(reference) == ("serving/tfserve/",)
    assert REGISTRY["deploy-model"].inputs(minimal) == ("serving/",)
