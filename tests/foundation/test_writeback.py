"""Write-back: idempotent reruns, and concurrent writers to one branch that all land."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from branchops import gitops
from branchops.errors import ExternalError
from tests.conftest import git

BOT = gitops.Identity("branchops-bot", "bot@users.local")


def approved_merge(project, target="build-components"):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr(target)
    project.run("mr", "approve", str(number), "--as", "lead")
    project.run("mr", "merge", str(number), "--as", "lead", "--no-run")
    return project.tip(target)


def test_rerun_on_the_same_commit_writes_no_second_record(project, stage_calls):
    merge_commit = approved_merge(project)
    project.run("run", "build-components")
    records_after_first = project.files("build-components")
    # a CI retry of the same merge commit (e.g. Jenkins "rebuild")
    result = project.run("run", "build-components", "--commit", merge_commit)
    assert "already ran successfully" in result.output
    assert project.files("build-components") == records_after_first
    assert len(stage_calls()) == 1


def test_force_runs_again_but_never_bypasses_the_gate(project, stage_calls):
    project.commit("build-components", "src/model.py", "VERSION = 9\n")  # direct push
    result = project.run("run", "build-components", "--force", expect=4)
    assert "not the merge of a merge request" in result.output
    assert stage_calls() == []


def _write(repo_path: Path, index: int, remote: str | None) -> str:
    repo = gitops.open_repo(repo_path)
    return gitops.commit_to_branch(
        repo,
        "training",
        {f"records/concurrency/{index}.json": b"{}\n"},
        f"record {index}",
        BOT,
        remote=remote,
        retries=50,
    )


def test_ten_concurrent_local_write_backs_all_land(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "commit", "-q", "--allow-empty", "-m", "root")
    git(repo, "branch", "training")
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda i: _write(repo, i, None), range(10)))
    files = git(repo, "ls-tree", "-r", "--name-only", "training").splitlines()
    assert sorted(files) == sorted(f"records/concurrency/{i}.json" for i in range(10))
    assert len(git(repo, "rev-list", "training").splitlines()) == 11  # root + ten, none lost


def test_ten_concurrent_processes_pushing_to_one_remote_all_land(tmp_path):
    """What ten Jenkins agents writing records to the same branch do: push, get rejected, rebase, retry."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(remote), str(seed))
    git(seed, "commit", "-q", "--allow-empty", "-m", "root")
    git(seed, "push", "-q", "origin", "HEAD:refs/heads/main", "HEAD:refs/heads/training")
    clones = []
    for i in range(10):
        clone = tmp_path / f"agent{i}"
        git(tmp_path, "clone", "-q", str(remote), str(clone))
        clones.append(clone)
    code = (
        "import sys; from pathlib import Path; from tests.foundation.test_writeback import _write; "
        "_write(Path(sys.argv[1]), int(sys.argv[2]), 'origin')"
    )
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(c), str(i)], cwd=root) for i, c in enumerate(clones)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0] * 10
    files = git(remote, "ls-tree", "-r", "--name-only", "training").splitlines()
    assert sorted(files) == sorted(f"records/concurrency/{i}.json" for i in range(10))


def test_records_are_append_only(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "commit", "-q", "--allow-empty", "-m", "root")
    r = gitops.open_repo(repo)
    gitops.commit_to_branch(r, "main", {"records/x/record.json": b"1"}, "one", BOT)
    with pytest.raises(Exception, match="append-only"):
        gitops.commit_to_branch(r, "main", {"records/x/record.json": b"2"}, "two", BOT)
    assert git(repo, "show", "main:records/x/record.json") == "1"


def test_write_back_leaves_the_working_tree_and_index_alone(project, stage_calls):
    (project.path / "src" / "model.py").write_text("VERSION = 'uncommitted edit'\n")
    approved_merge(project)  # commits on ds1, leaves ds1 checked out
    (project.path / "scratch.txt").write_text("untracked")
    project.run("run", "build-components")
    assert git(project.path, "rev-parse", "--abbrev-ref", "HEAD") == "ds1"
    assert (project.path / "scratch.txt").read_text() == "untracked"
    assert git(project.path, "status", "--porcelain") == "?? scratch.txt"


def _remote_and_agent(tmp_path: Path) -> tuple[Path, Path]:
    """A bare remote holding main and training, and a clone of it (an agent that writes records)."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(remote), str(seed))
    git(seed, "commit", "-q", "--allow-empty", "-m", "root")
    git(seed, "push", "-q", "origin", "HEAD:refs/heads/main", "HEAD:refs/heads/training")
    agent = tmp_path / "agent"
    git(tmp_path, "clone", "-q", str(remote), str(agent))
    return remote, agent


def test_a_push_the_remote_refuses_is_reported_at_once_with_the_remotes_message(tmp_path):
    """A protected branch (GitHub's GH006) or a hook saying no is not a race: retrying cannot help."""
    remote, agent = _remote_and_agent(tmp_path)
    attempts = tmp_path / "attempts"
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        f"echo attempt >> '{attempts}'\n"
        "echo 'error: GH006: Protected branch update failed for refs/heads/training.' >&2\n"
        "echo 'error: Changes must be made through a pull request.' >&2\n"
        "exit 1\n"
    )
    hook.chmod(0o755)
    with pytest.raises(ExternalError) as refused:
        _write(agent, 0, "origin")
    message = str(refused.value)
    assert "GH006: Protected branch update failed for refs/heads/training." in message, message
    assert "Changes must be made through a pull request." in message, message
    assert "keeps moving" not in message
    assert attempts.read_text().splitlines() == ["attempt"]  # asked once, not eight times
    assert git(remote, "ls-tree", "-r", "--name-only", "training") == ""


def test_a_push_that_loses_a_race_is_rebuilt_on_the_new_tip_and_lands(tmp_path, monkeypatch, caplog):
    """Another writer lands between this writer's fetch and its push: the remote rejects the push as not a
    fast-forward, and the record is rebuilt on the new tip, not reported as refused."""
    remote, agent = _remote_and_agent(tmp_path)
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", "-b", "training", str(remote), str(other))
    build_commit = gitops.build_commit
    calls = []

    def other_writer_lands_first(*args, **kwargs):
        if not calls:
            git(other, "commit", "-q", "--allow-empty", "-m", "another writer's record")
            git(other, "push", "-q", "origin", "HEAD:refs/heads/training")
        calls.append(args)
        return build_commit(*args, **kwargs)

    monkeypatch.setattr(gitops, "build_commit", other_writer_lands_first)
    with caplog.at_level(logging.INFO, logger="branchops.gitops"):
        commit = _write(agent, 0, "origin")
    assert len(calls) == 2
    assert git(remote, "rev-parse", "training") == commit
    assert git(remote, "log", "-1", "--format=%s", "training~1") == "another writer's record"
    retried = [r.getMessage() for r in caplog.records if "rebasing on the new tip" in r.getMessage()]
    assert len(retried) == 1 and ("fetch first" in retried[0] or "non-fast-forward" in retried[0]), retried


REMOTE_CONFIG = """\
approvers: {build-components: [lead], kf-pipeline: [lead], training: [lead], deploy-model: [lead]}
git: {remote: origin}
notifications: [{kind: log_file}]
"""


def test_a_run_whose_record_the_remote_refuses_says_so_with_the_remotes_words(tmp_path, monkeypatch):
    """The stage's work is done, but branch protection refuses the bot's record push (GH006 when the bot has
    no bypass): the run ends at once with the remote's message, and people hear it the same way."""
    from branchops.stages import REGISTRY
    from tests.foundation import recording_stage
    from tests.foundation.conftest import STAGES, make_project

    for stage in STAGES:
        monkeypatch.setitem(REGISTRY, stage, recording_stage)
    monkeypatch.setenv("BRANCHOPS_TEST_STAGE_LOG", str(tmp_path / "stage-calls.log"))
    project = make_project(tmp_path, REMOTE_CONFIG)
    approved_merge(project)
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(project.path, "remote", "add", "origin", str(remote))
    git(project.path, "push", "-q", "origin", "--all")
    attempts = tmp_path / "attempts"
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        f"echo attempt >> '{attempts}'\n"
        "echo 'error: GH006: Protected branch update failed for refs/heads/build-components.' >&2\n"
        "exit 1\n"
    )
    hook.chmod(0o755)

    result = project.run("run", "build-components", expect=6)
    assert "GH006: Protected branch update failed for refs/heads/build-components." in result.output
    assert "keeps moving" not in result.output
    assert attempts.read_text().splitlines() == ["attempt"]
    assert (tmp_path / "stage-calls.log").read_text().startswith("build-components ")  # the work was done
    notified = (project.path / ".branchops" / "notifications.log").read_text().splitlines()
    last = json.loads(notified[-1])
    assert last["kind"] == "failed"
    assert "succeeded but its record could not be written" in last["message"]
    assert "GH006: Protected branch update failed" in last["message"]
