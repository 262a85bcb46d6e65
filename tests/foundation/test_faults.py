"""Every run ends with a record, whatever ends it: an interrupt (SIGTERM, SIGINT), a hard kill (found by
the next run and recorded as abandoned), a broken configuration in an approved merge; a second run at the
same time refuses without hiding the first one's result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, git
from tests.foundation.conftest import make_project


def approved_merge(project, target="build-components"):
    project.commit("ds1", "src/model.py", f"VERSION = {time.time_ns()}\n")
    number = project.open_mr(target)
    project.run("mr", "approve", str(number), "--as", "lead")
    project.run("mr", "merge", str(number), "--as", "lead", "--no-run")
    return number


def start_waiting_run(project, control: Path, *args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "BRANCHOPS_TEST_STAGE_DIR": str(control),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.foundation.waiting_stage",
            "-C",
            str(project.path),
            "run",
            "build-components",
            *args,
        ],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (control / "started").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the stage did not start"
        time.sleep(0.05)
    return proc


def records(project, branch="build-components") -> list[dict]:
    paths = sorted(f for f in project.files(branch) if f.endswith("/record.json"))
    return [json.loads(git(project.path, "show", f"{branch}:{p}")) for p in paths]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def control(tmp_path):
    folder = tmp_path / "control"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_run_leaves_an_interrupted_record_and_a_plain_rerun_succeeds(
    tmp_path, control, signum, code
):
    project = make_project(tmp_path)
    approved_merge(project)
    proc = start_waiting_run(project, control)
    child = int((control / "child.pid").read_text())
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=60)

    assert proc.returncode == code, output
    [record] = records(project)
    assert record["outcome"] == "interrupted", record
    assert signal.Signals(signum).name in record["summary"]
    assert not pid_alive(child), "the run's child process must be stopped"
    assert not (project.path / ".branchops" / "locks" / "build-components.json").exists()
    notes = (project.path / ".branchops" / "notifications.log").read_text()
    assert "started" in notes and notes.rstrip().splitlines()[-1].count("failed") == 1

    # a plain rerun (the tip is now the bot's record commit) runs the merge again and succeeds
    (control / "finish").write_text("")
    (control / "started").unlink()
    rerun = start_waiting_run(project, control)
    output, _ = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, output
    assert [r["outcome"] for r in records(project)] == ["interrupted", "succeeded"]


def test_a_killed_run_is_found_by_the_next_one_and_recorded_as_abandoned(tmp_path, control):
    project = make_project(tmp_path)
    approved_merge(project)
    proc = start_waiting_run(project, control)
    killed_run = (control / "started").read_text()
    orphan = int((control / "child.pid").read_text())
    proc.kill()
    proc.communicate(timeout=30)
    os.killpg(orphan, signal.SIGKILL)  # a SIGKILL leaves the body's own child behind: not what is tested here
    assert records(project) == []  # nothing could write a record

    (control / "finish").write_text("")
    (control / "started").unlink()
    rerun = start_waiting_run(project, control)
    output, _ = rerun.communicate(timeout=60)

    assert rerun.returncode == 0, output
    by_run = {r["run_id"]: r for r in records(project)}
    assert by_run[killed_run]["outcome"] == "abandoned"
    assert sorted(r["outcome"] for r in by_run.values()) == ["abandoned", "succeeded"]
    assert not (project.path / ".branchops" / "workspaces" / f"build-components-{killed_run}").exists()


def test_a_second_run_at_the_same_time_refuses_without_a_record(tmp_path, control):
    project = make_project(tmp_path)
    approved_merge(project)
    first = start_waiting_run(project, control)
    try:
        second = project.run("run", "build-components", expect=10)
        assert "already running" in second.output
        assert records(project) == []
    finally:
        (control / "finish").write_text("")
        output, _ = first.communicate(timeout=60)
    assert first.returncode == 0, output
    assert [r["outcome"] for r in records(project)] == ["succeeded"]
    status = json.loads(project.run("status", "--json").output)
    assert next(row for row in status if row["stage"] == "build-components")["outcome"] == "succeeded"


def test_a_broken_config_in_an_approved_merge_writes_a_failed_record(project, stage_calls):
    config = (project.path / "config" / "branchops.yaml").read_text() + "training:\n  timeout_s: -5\n"
    project.commit("ds1", "config/branchops.yaml", config)
    git(project.path, "checkout", "-q", "main")  # this checkout's own configuration stays valid
    number = project.open_mr("build-components")
    project.run("mr", "approve", str(number), "--as", "lead")
    result = project.run("mr", "merge", str(number), "--as", "lead", expect=3)

    assert "training.timeout_s" in result.output
    [record] = records(project)
    assert record["outcome"] == "failed" and "training.timeout_s" in record["error"]
    assert record["merge_request"]["approved_by"] == ["lead"] and record["config_digest"] is None
    assert stage_calls() == []
    notes = (project.path / ".branchops" / "notifications.log").read_text()
    assert "failed" in notes and "configuration is invalid" in notes


def test_an_unapproved_merge_with_a_broken_config_is_refused_not_recorded(project, stage_calls):
    config = (project.path / "config" / "branchops.yaml").read_text() + "training:\n  timeout_s: -5\n"
    project.commit("ds1", "config/branchops.yaml", config)
    git(project.path, "checkout", "-q", "main")  # this checkout's own configuration stays valid
    number = project.open_mr("build-components")
    result = project.run("mr", "merge", str(number), "--as", "lead", expect=4)
    assert "refused" in result.output and records(project) == []


def test_a_branch_with_no_stage_is_an_error_for_run_for_branch(project):
    result = project.run("run", "--for-branch", "ds1", expect=9)
    assert "not a stage branch" in result.output


def test_what_does_not_exist_exits_9(project):
    assert "no training run" in project.run("lineage", "20990101T000000Z-nothing", expect=9).output
    assert "no component" in project.run("component", "nope", expect=9).output
    assert "does not exist" in project.run("mr", "approve", "99", "--as", "lead", expect=9).output
