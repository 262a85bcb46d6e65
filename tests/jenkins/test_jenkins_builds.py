"""Builds of this repository's Jenkinsfile as a multibranch job makes them: a real bare remote, a workspace
checked out the way the Git plugin does (only the built branch fetched, the build's commit detached), the
Jenkinsfile run by a declarative stand-in (declarative_stand_in.groovy) whose sh steps run for real, and
the real ``branchops`` CLI inside it. Set-up (a pip install of the toolkit) is stood in: the workspace gets
a venv that points at this one; so are the component tests, except where their report is the point."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from branchops import gitops, records
from tests.conftest import git
from tests.foundation.conftest import Project, make_project

from .conftest import REPO_ROOT
from .test_jenkinsfile import groovy_env

BOT = gitops.Identity("branchops-bot", "branchops-bot@users.noreply.local")
STAND_IN = Path(__file__).with_name("declarative_stand_in.groovy")

CONFIG = """\
approvers: {build-components: [lead], kf-pipeline: [lead], training: [lead], deploy-model: [lead]}
git: {remote: origin}
notifications: [{kind: log_file}]
"""

RELEASE = """\
model: model
version: 3
source: {volume: models, path: model/3}
"""

# What `.venv/bin/branchops` is in a test workspace: the CLI of this checkout, with stage bodies that
# record their calls (tests/jenkins/stage_stand_ins.py) instead of building images or training.
BRANCHOPS = f"""#!{sys.executable}
import sys
sys.path.insert(0, {str(REPO_ROOT)!r})
from tests.jenkins import stage_stand_ins
stage_stand_ins.install()
from branchops.cli import main
main()
"""


def ant_pattern(pattern: str) -> re.Pattern[str]:
    """An Ant fileset pattern (what archiveArtifacts and junit take) as a regex over workspace paths."""
    pattern = pattern.strip()
    if pattern.endswith("/"):
        pattern += "**"
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


@dataclass
class Build:
    workspace: Path
    events: list[dict]
    console: str  # what the build printed (its steps' output)

    def stage(self, name: str) -> str:
        return next(e["outcome"] for e in self.events if e.get("stage") == name)

    @property
    def result(self) -> str:
        return next(e["result"] for e in self.events if "result" in e)

    @property
    def scripts(self) -> list[str]:
        return [e["script"] for e in self.events if e.get("step") == "sh"]

    def archived(self) -> list[str]:
        """The workspace files archiveArtifacts takes (Ant patterns, comma separated; .git never)."""
        patterns = [
            ant_pattern(p)
            for e in self.events
            if e.get("step") == "archiveArtifacts"
            for p in e["artifacts"].split(",")
        ]
        files = []
        for path in self.workspace.rglob("*"):
            relative = path.relative_to(self.workspace).as_posix()
            if path.is_file() and not relative.startswith(".git/"):
                if any(p.fullmatch(relative) for p in patterns):
                    files.append(relative)
        return sorted(files)


class Jenkins:
    """A multibranch job of one repository: each build gets a fresh workspace, as an agent pod does."""

    def __init__(self, tmp_path: Path, remote: Path, forge_state: Path, jenkinsfile: Path):
        self.tmp_path, self.remote, self.forge_state, self.jenkinsfile = (
            tmp_path,
            remote,
            forge_state,
            jenkinsfile,
        )
        self.builds = 0

    def build(
        self, branch: str, commit: str, stand_in: tuple[str, ...] = ("Set up", "Component tests")
    ) -> Build:
        """Build ``commit`` of ``branch``; the stages in ``stand_in`` are reported run without running."""
        self.builds += 1
        ws = self.tmp_path / f"workspace-{self.builds}"
        # what the Git plugin runs for a multibranch job: only the built branch, then the build's commit
        git(self.tmp_path, "init", "-q", str(ws))
        git(ws, "config", "remote.origin.url", str(self.remote))
        refspec = f"+refs/heads/{branch}:refs/remotes/origin/{branch}"
        git(ws, "config", "remote.origin.fetch", refspec)
        git(ws, "fetch", "-q", "--no-tags", "--force", "origin", refspec)
        git(ws, "checkout", "-q", "-f", commit)
        # the forge's merge requests (the local forge stands for GitHub here)
        (ws / ".branchops").mkdir()
        if self.forge_state.exists():
            shutil.copytree(self.forge_state, ws / ".branchops" / "merge-requests")
        venv = ws / ".venv" / "bin"
        venv.mkdir(parents=True)
        (venv / "branchops").write_text(BRANCHOPS)
        (venv / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
        (venv / "pytest").write_text(f'#!/bin/sh\nexec {sys.executable} -m pytest -p no:cacheprovider "$@"\n')
        for tool in venv.iterdir():
            tool.chmod(0o755)
        events = ws / ".." / f"events-{self.builds}.jsonl"
        env = {
            **groovy_env(),
            "BRANCH_NAME": branch,
            "GIT_COMMIT": commit,
            "WORKSPACE": str(ws),
            "BUILD_NUMBER": str(self.builds),
            "BUILD_URL": f"https://jenkins.example.com/job/{branch}/{self.builds}/",
        }
        result = subprocess.run(
            ["groovy", str(STAND_IN), str(self.jenkinsfile), str(events), *stand_in],
            cwd=ws,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        lines = events.read_text().splitlines()
        return Build(ws, [json.loads(line) for line in lines if line], result.stdout + result.stderr)


@pytest.fixture
def team(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Project, Path]:
    """A project with a component test, pushed to a bare remote that Jenkins builds from."""
    monkeypatch.setenv("BRANCHOPS_TEST_STAGE_LOG", str(tmp_path / "stage-calls.log"))
    project = make_project(tmp_path, CONFIG)
    project.commit("main", "components/test_component.py", "def test_component():\n    assert True\n")
    for branch in ("build-components", "kf-pipeline", "training", "deploy-model", "ds1"):
        git(project.path, "checkout", "-q", branch)
        git(project.path, "merge", "-q", "--ff-only", "main")
    project.commit("deploy-model", "serving/tfserve/release.yaml", RELEASE, message="release version 3")
    git(project.path, "checkout", "-q", "ds1")
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(project.path, "remote", "add", "origin", str(remote))
    push_all(project)
    return project, remote


def push_all(project: Project) -> None:
    git(project.path, "push", "-q", "origin", "--all")


def land(project: Project, target: str, path: str, content: str) -> str:
    """An approved merge request into ``target``, merged (what GitHub does on the merge button)."""
    git(project.path, "fetch", "-q", "origin")
    git(project.path, "checkout", "-q", target)
    git(project.path, "merge", "-q", "--ff-only", f"origin/{target}")
    project.commit("ds1", path, content)
    number = project.open_mr(target)
    project.run("mr", "approve", str(number), "--as", "lead")
    project.run("mr", "merge", str(number), "--as", "lead", "--no-run")
    git(project.path, "push", "-q", "origin", target)
    return project.tip(target)


def jenkins_for(tmp_path: Path, project: Project, remote: Path) -> Jenkins:
    return Jenkins(
        tmp_path, remote, project.path / ".branchops" / "merge-requests", REPO_ROOT / "Jenkinsfile"
    )


def write_record(project: Project, branch: str, run_id: str) -> str:
    """A record commit on the remote's ``branch``, as a run's write-back pushes it."""
    repo = gitops.open_repo(project.path)
    message = gitops.bot_message(f"{branch}: succeeded", f"Run: {run_id}", "Branchops-Bot")
    run = records.RunRecord(stage=branch, run_id=run_id, branch=branch, outcome="succeeded")
    record = {"record.json": records.to_json(run), "run.log": b"an earlier run\n"}
    files = {f"records/{branch}/{run_id}/{name}": content for name, content in record.items()}
    return gitops.commit_to_branch(repo, branch, files, message, BOT, remote="origin")


def remote_records(remote: Path, branch: str) -> dict[str, dict]:
    """record.json of every run on the remote's ``branch``, by run id."""
    names = git(remote, "ls-tree", "-r", "--name-only", branch, "records/").splitlines()
    return {
        name.split("/")[2]: json.loads(git(remote, "show", f"{branch}:{name}"))
        for name in names
        if name.endswith("/record.json")
    }


def test_a_merge_that_lands_while_a_stage_runs_is_built(tmp_path, team) -> None:
    """The queued build of the second merge starts after the first run pushed its record on top of it: it
    builds the merge Jenkins checked out, not the tip (which is a record commit)."""
    project, remote = team
    jenkins = jenkins_for(tmp_path, project, remote)
    first = land(project, "training", "src/model.py", "VERSION = 2\n")
    second = land(project, "training", "src/model.py", "VERSION = 3\n")  # lands while the first build runs
    first_build = jenkins.build("training", first)
    assert first_build.stage("Stage") == "ran" and first_build.result == "SUCCESS"
    tip = git(remote, "rev-parse", "training")
    assert git(remote, "rev-parse", "training~1") == second, "the first run's record is on top of the merge"

    second_build = jenkins.build("training", second)
    assert second_build.result == "SUCCESS", second_build.events
    runs = remote_records(remote, "training")
    assert sorted(r["source_commit"] for r in runs.values()) == sorted([first, second])
    assert all(r["outcome"] == "succeeded" for r in runs.values())
    assert git(remote, "rev-parse", "training~1") == tip  # the second record went on top of the first


def test_a_build_of_branchops_own_record_commit_stops_before_set_up(tmp_path, team) -> None:
    project, remote = team
    jenkins = jenkins_for(tmp_path, project, remote)
    record_commit = write_record(project, "training", "20260101T000000Z-0123456789ab")
    # the push of a record starts a build of the record commit
    build = jenkins.build("training", record_commit, stand_in=())
    assert build.result == "SUCCESS", build.console
    assert [build.stage(s) for s in ("Set up", "Component tests", "Stage")] == ["skipped (when)"] * 3
    assert "git log -1" in build.scripts[0]  # the check is git only: nothing installed, tested or run
    for script in build.scripts:
        assert not any(word in script for word in ("pip install", "pytest", "branchops run")), script
    assert "branchops' own record: nothing to build" in build.console
    assert build.archived() == []
    # a commit with the trailer that changes more than records (a squash-merged release) still builds
    git(project.path, "fetch", "-q", "origin")
    git(project.path, "checkout", "-q", "-B", "training", "origin/training")
    release = project.commit(
        "training", "src/model.py", "VERSION = 9\n", message="release model version 9\n\nBranchops-Bot: true"
    )
    git(project.path, "push", "-q", "origin", "training")
    everything = ("Set up", "Component tests", "Stage")
    assert jenkins.build("training", release, stand_in=everything).stage("Set up") == "ran (stood in)"


def test_a_build_archives_its_own_record_and_run_log_only(tmp_path, team) -> None:
    project, remote = team
    jenkins = jenkins_for(tmp_path, project, remote)
    older = "20260101T000000Z-0123456789ab"
    write_record(project, "training", older)
    merge = land(project, "training", "src/model.py", "VERSION = 3\n")  # its checkout holds the older record
    build = jenkins.build("training", merge, stand_in=("Set up",))
    assert build.stage("Stage") == "ran", build.console
    (run_id,) = set(remote_records(remote, "training")) - {older}
    assert (build.workspace / "records" / "training" / older / "record.json").exists()
    assert build.archived() == [
        "reports/junit/components.xml",
        f"reports/records/training/{run_id}/record.json",
        f"reports/records/training/{run_id}/run.log",
        f"reports/records/training/{run_id}/summary.txt",
    ]
    record = json.loads((build.workspace / f"reports/records/training/{run_id}/record.json").read_text())
    assert record["source_commit"] == merge


def test_a_training_build_sees_deploy_model_and_bases_the_release_on_it(tmp_path, team) -> None:
    """A multibranch checkout fetches only the built branch: the run fetches what it reads itself."""
    project, remote = team
    jenkins = jenkins_for(tmp_path, project, remote)
    merge = land(project, "training", "src/model.py", "VERSION = 2\n")
    build = jenkins.build("training", merge)
    assert build.stage("Stage") == "ran", build.events
    (record,) = remote_records(remote, "training").values()
    assert record["outputs"]["production"] == "version 3", record["summary"]
    deploy_tip = git(remote, "rev-parse", "deploy-model")
    release_branch = "branchops/release-model"
    assert git(remote, "rev-parse", f"{release_branch}~1") == deploy_tip
    assert git(remote, "diff", "--name-only", deploy_tip, release_branch) == "serving/tfserve/release.yaml"


def test_a_build_of_main_runs_the_component_tests_and_no_stage(tmp_path, team) -> None:
    """The job builds main too (its pull requests' target); main has no stage, and `branchops run
    --for-branch main` would be an error (not a stage branch), so the build does not call it."""
    project, remote = team
    jenkins = jenkins_for(tmp_path, project, remote)
    build = jenkins.build("main", git(remote, "rev-parse", "main"))
    assert build.result == "SUCCESS", build.console
    assert build.stage("Stage") == "ran"
    assert "main runs no stage" in build.console
    assert not any("branchops run" in script for script in build.scripts)
