"""The local engine: a registry of compiled pipelines, and real runs with Kubeflow's local runner."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from branchops.config import parse_config
from branchops.engine import make_engine
from branchops.engine.compile import compile_pipeline
from branchops.engine.local import LocalEngine
from branchops.errors import ConfigError

from .conftest import TINY_PIPELINE, write_tiny_workspace


def engine_for(workspace: Path) -> LocalEngine:
    return LocalEngine(workspace.parent / "state" / "kfp", workspace=workspace, poll_interval_s=0.2)


def test_upsert_registers_a_spec_once_and_new_specs_as_new_versions(tiny_workspace: Path):
    engine = engine_for(tiny_workspace)
    compiled = compile_pipeline(tiny_workspace, "pipelines/tiny.py")
    first = engine.upsert("tiny", compiled, "commit 1111111")
    assert first.created and first.version_name == compiled.spec_hash
    again = engine.upsert("tiny", compiled, "commit 2222222")
    assert not again.created
    assert (again.pipeline_id, again.version_id) == (first.pipeline_id, first.version_id)
    assert engine.find_version("tiny", compiled.spec_hash) == again

    changed = TINY_PIPELINE.replace('name="tiny"', 'name="tiny", description="changed"')
    write_tiny_workspace(tiny_workspace, changed)
    other = compile_pipeline(tiny_workspace, "pipelines/tiny.py")
    second = engine.upsert("tiny", other, "commit 3333333")
    assert second.created and second.pipeline_id == first.pipeline_id and second.version_id != first.version_id
    assert engine.version_spec("tiny", second.version_name) == other.spec
    assert engine.find_version("tiny", "0" * 64) is None
    assert engine.find_version("never-uploaded", compiled.spec_hash) is None


def test_concurrent_upserts_of_one_spec_make_one_version(tiny_workspace: Path):
    engine = engine_for(tiny_workspace)
    compiled = compile_pipeline(tiny_workspace, "pipelines/tiny.py")
    results = []
    threads = [threading.Thread(target=lambda: results.append(engine.upsert("tiny", compiled))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.created for r in results) == 1
    assert len({(r.pipeline_id, r.version_id) for r in results}) == 1
    versions = [p for p in (engine.root / "pipelines" / "tiny" / "versions").iterdir() if not p.name.startswith(".")]
    assert [v.name for v in versions] == [compiled.spec_hash]


def test_a_tiny_pipeline_runs_end_to_end_with_kfp_local_and_a_rerun_is_not_started_again(tiny_workspace: Path):
    engine = engine_for(tiny_workspace)
    upload = engine.upsert("tiny", compile_pipeline(tiny_workspace, "pipelines/tiny.py"))
    out_dir = tiny_workspace.parent / "volume"
    messages: list[str] = []
    result = engine.run("ds1-training", upload, "run-a", {"out_dir": str(out_dir), "count": 5}, 300, messages.append)
    assert result.state == "SUCCEEDED", result.error
    assert result.outputs["summary"] == {"total": 10}
    assert json.loads((out_dir / "numbers.json").read_text()) == [0, 1, 2, 3, 4]
    assert any("Executing task 'produce'" in m for m in messages)
    assert any("Task 'consume' finished with status SUCCESS" in m for m in messages)

    (out_dir / "numbers.json").unlink()
    again = engine.run("ds1-training", upload, "run-a", {"out_dir": str(out_dir), "count": 5}, 300)
    assert again.reused and again.run_id == result.run_id and again.outputs == result.outputs
    assert not (out_dir / "numbers.json").exists()  # nothing ran the second time

    record = json.loads((engine.run_dir("ds1-training", "run-a") / "run.json").read_text())
    assert record["state"] == "SUCCEEDED" and record["params"]["count"] == 5 and record["duration_s"] > 0


def test_a_failing_step_gives_a_failed_run_with_the_steps_own_error(tiny_workspace: Path):
    engine = engine_for(tiny_workspace)
    upload = engine.upsert("tiny", compile_pipeline(tiny_workspace, "pipelines/tiny.py"))
    result = engine.run("exp", upload, "run-fail", {"out_dir": str(tiny_workspace / "o"), "count": 3, "fail": True}, 300)
    assert result.state == "FAILED"
    assert "produce" in result.error and "ValueError: asked to fail (count=3)" in result.error
    assert "\x1b[" not in result.error


def test_a_run_that_exceeds_its_timeout_is_stopped_and_recorded(tiny_workspace: Path):
    engine = engine_for(tiny_workspace)
    upload = engine.upsert("tiny", compile_pipeline(tiny_workspace, "pipelines/tiny.py"))
    out_dir = tiny_workspace / "slow"
    result = engine.run("exp", upload, "run-slow", {"out_dir": str(out_dir), "count": 3, "sleep_s": 120.0}, 2)
    assert result.state == "TIMEOUT" and "did not finish within 2 s" in result.error
    assert not (out_dir / "numbers.json").exists()
    assert engine.run("exp", upload, "run-slow", {"out_dir": str(out_dir), "count": 3}, 2).state == "TIMEOUT"


def test_parameters_are_checked_before_anything_starts(tiny_workspace: Path):
    engine = engine_for(tiny_workspace)
    upload = engine.upsert("tiny", compile_pipeline(tiny_workspace, "pipelines/tiny.py"))
    with pytest.raises(ConfigError) as info:
        engine.run("exp", upload, "run-bad", {"out_dir": "/tmp/x", "count": "five", "epochz": 3}, 60)
    message = str(info.value)
    assert "epochz: not a parameter" in message and "count: expected an integer" in message
    with pytest.raises(ConfigError, match="out_dir: required parameter is missing"):
        engine.run("exp", upload, "run-bad", {"count": 2}, 60)
    assert not engine.run_dir("exp", "run-bad").exists()


def test_bad_names_are_refused(tiny_workspace: Path):
    engine = engine_for(tiny_workspace)
    compiled = compile_pipeline(tiny_workspace, "pipelines/tiny.py")
    with pytest.raises(ConfigError, match="pipeline name '../escape' is not valid"):
        engine.upsert("../escape", compiled)


def test_make_engine_selects_the_local_backend_under_the_repository(tmp_path: Path):
    config = parse_config("approvers: {build-components: [a], kf-pipeline: [a], training: [a], deploy-model: [a]}\n")
    engine = make_engine(config, tmp_path / ".branchops", workspace=tmp_path)
    assert isinstance(engine, LocalEngine)
    assert engine.root == tmp_path / ".branchops" / "kfp"
