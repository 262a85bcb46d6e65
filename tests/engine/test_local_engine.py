"""The local engine: a registry of compiled pipelines, and real runs with Kubeflow's local runner."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from branchops.config import parse_config
from branchops.engine import make_engine
from branchops.engine.base import CompiledPipeline, Upload
from branchops.engine.compile import compile_pipeline
from branchops.engine.local import LocalEngine
from branchops.errors import ConfigError

from .conftest import TINY_PIPELINE, write_tiny_workspace

UPSERTERS = 8
ROUNDS = 25
_start_together = None  # the barrier a worker process of the cross-process test waits at


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
    assert (
        second.created and second.pipeline_id == first.pipeline_id and second.version_id != first.version_id
    )
    assert engine.version_spec("tiny", second.version_name) == other.spec
    assert engine.find_version("tiny", "0" * 64) is None
    assert engine.find_version("never-uploaded", compiled.spec_hash) is None


def test_concurrent_upserts_of_one_spec_make_one_version(tiny_workspace: Path):
    compiled = compile_pipeline(tiny_workspace, "pipelines/tiny.py")
    # A race shows only sometimes: several rounds, each a fresh registry, its upserts released at once.
    for round_number in range(ROUNDS):
        engine = LocalEngine(
            tiny_workspace.parent / f"state-{round_number}" / "kfp", workspace=tiny_workspace
        )
        start_together = threading.Barrier(UPSERTERS)

        def upsert_when_all_are_ready(engine=engine, start_together=start_together):
            start_together.wait(timeout=30)
            return engine.upsert("tiny", compiled)

        with ThreadPoolExecutor(max_workers=UPSERTERS) as pool:
            futures = [pool.submit(upsert_when_all_are_ready) for _ in range(UPSERTERS)]
            # .result() re-raises what an upsert raised: every one of them must return an Upload.
            results = [future.result(timeout=60) for future in futures]
        assert len(results) == UPSERTERS
        assert sum(r.created for r in results) == 1, f"round {round_number}: {results}"
        assert len({(r.pipeline_id, r.version_id, r.version_name) for r in results}) == 1, (
            f"round {round_number}"
        )
        assert results[0].version_name == compiled.spec_hash
        versions = [
            p
            for p in (engine.root / "pipelines" / "tiny" / "versions").iterdir()
            if not p.name.startswith(".")
        ]
        assert [v.name for v in versions] == [compiled.spec_hash]
        assert engine.find_version("tiny", compiled.spec_hash).version_id == results[0].version_id
        record = json.loads((engine.root / "pipelines" / "tiny" / "pipeline.json").read_text())
        assert record["pipeline_id"] == results[0].pipeline_id


def _upsert_once_all_processes_are_ready(root: Path, workspace: Path, compiled: CompiledPipeline) -> Upload:
    _start_together.wait(timeout=60)
    return LocalEngine(root, workspace=workspace).upsert("tiny", compiled)


def _share_barrier(barrier) -> None:
    global _start_together
    _start_together = barrier


def test_upserts_from_separate_processes_make_one_pipeline_and_one_version(tiny_workspace: Path):
    # Two stages of two CI builds share a state directory: no lock inside one process helps them.
    compiled = compile_pipeline(tiny_workspace, "pipelines/tiny.py")
    spawn = multiprocessing.get_context("spawn")
    processes = 4
    with ProcessPoolExecutor(
        max_workers=processes,
        mp_context=spawn,
        initializer=_share_barrier,
        initargs=(spawn.Barrier(processes),),
    ) as pool:
        for round_number in range(ROUNDS):
            root = tiny_workspace.parent / f"shared-state-{round_number}" / "kfp"
            futures = [
                pool.submit(_upsert_once_all_processes_are_ready, root, tiny_workspace, compiled)
                for _ in range(processes)
            ]
            results = [future.result(timeout=120) for future in futures]
            assert sum(r.created for r in results) == 1, f"round {round_number}: {results}"
            assert len({(r.pipeline_id, r.version_id) for r in results}) == 1, (
                f"round {round_number}: {results}"
            )
            record = json.loads((root / "pipelines" / "tiny" / "pipeline.json").read_text())
            assert record["pipeline_id"] == results[0].pipeline_id


def test_a_tiny_pipeline_runs_end_to_end_with_kfp_local_and_a_rerun_is_not_started_again(
    tiny_workspace: Path,
):
    engine = engine_for(tiny_workspace)
    upload = engine.upsert("tiny", compile_pipeline(tiny_workspace, "pipelines/tiny.py"))
    out_dir = tiny_workspace.parent / "volume"
    messages: list[str] = []
    result = engine.run(
        "ds1-training", upload, "run-a", {"out_dir": str(out_dir), "count": 5}, 300, messages.append
    )
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
    result = engine.run(
        "exp", upload, "run-fail", {"out_dir": str(tiny_workspace / "o"), "count": 3, "fail": True}, 300
    )
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
    config = parse_config(
        "approvers: {build-components: [a], kf-pipeline: [a], training: [a], deploy-model: [a]}\n"
    )
    engine = make_engine(config, tmp_path / ".branchops", workspace=tmp_path)
    assert isinstance(engine, LocalEngine)
    assert engine.root == tmp_path / ".branchops" / "kfp"


def test_an_interrupted_run_stops_its_pipeline_and_a_rerun_starts_it_again(tiny_workspace: Path):
    from branchops import interrupt

    engine = engine_for(tiny_workspace)
    upload = engine.upsert("tiny", compile_pipeline(tiny_workspace, "pipelines/tiny.py"))
    out_dir = tiny_workspace / "out-stop"
    params = {"out_dir": str(out_dir), "count": 3, "sleep_s": 120.0}
    run_json = engine.run_dir("exp", "run-stop") / "run.json"
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            engine.run("exp", upload, "run-stop", params, 600)
        except BaseException as exc:  # the interruption, as the runner's thread would see it
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while not (run_json.exists() and json.loads(run_json.read_text()).get("pid")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = json.loads(run_json.read_text())["pid"]
    interrupt.requested.set()
    try:
        worker.join(60)
    finally:
        interrupt.requested.clear()
    assert not worker.is_alive() and isinstance(outcome[0], interrupt.Interrupted)
    record = json.loads(run_json.read_text())
    assert record["state"] == "INTERRUPTED" and record["pid"] is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the pipeline's process group is gone

    params["sleep_s"] = 0.0
    result = engine.run("exp", upload, "run-stop", params, 120)
    assert result.succeeded and not result.reused  # started again, not taken as done
