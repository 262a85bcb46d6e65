"""The retraining merge request on GitHub: ``propose_retrain`` with the GitHub forge against the stateful
fake (PyGithub unchanged) and a real git remote its branch is pushed to; ``update_body`` against the fake
and against Prism serving GitHub's official description (is the PATCH one GitHub documents)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from branchops.monitoring import retrain
from branchops.monitoring.retrain import BODY_LIMIT, propose_retrain
from tests.conftest import git

from .conftest import TOKEN_ENV, github_settings
from .fake_github import FakeGitHub
from .prism import PrismGitHub

BRANCH = "branchops/retrain"
PULLS = r"/repos/octo/hello/pulls"
JUNE, SEPTEMBER = date(2016, 6, 30), date(2016, 9, 30)
EVIDENCE = "| feature | psi |\n|---|---|\n| x | 0.41 |"


class GitHubProject:
    def __init__(self, path: Path, origin: Path, fake: FakeGitHub):
        self.path, self.origin, self.fake = path, origin, fake

    def remote_tip(self, branch: str) -> str | None:
        out = git(self.origin, "for-each-ref", "--format=%(objectname)", f"refs/heads/{branch}")
        return out or None

    def remote_refs(self) -> str:
        return git(self.origin, "for-each-ref", "--format=%(refname) %(objectname)")

    def propose(self, until: date | None = JUNE, evidence: str = EVIDENCE, **kw: Any):
        return propose_retrain(
            self.path,
            reason="drift on 2 consecutive checks",
            evidence_markdown=evidence,
            data_until=until,
            **kw,
        )

    def open_pulls(self) -> list[int]:
        return [p.number for p in self.fake.pulls.values() if p.state == "open" and p.head == BRANCH]

    def writes(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.fake.requests if r.method != "GET"]


@pytest.fixture
def project(
    tmp_path: Path, fake_github: FakeGitHub, make_forge: Callable[..., Any], monkeypatch
) -> GitHubProject:
    """A project whose forge is the fake GitHub and whose branches live on a git remote, as in production."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "config").mkdir()
    (path / "config" / "branchops.yaml").write_text(
        textwrap.dedent(
            f"""\
            approvers:
              build-components: [lead]
              kf-pipeline: [lead]
              training: [lead]
              deploy-model: [lead]
            git:
              remote: origin
            forge:
              backend: github
              github:
                repository: octo/hello
                token: {{env: {TOKEN_ENV}}}
                base_url: {fake_github.url}
            data:
              source: script
              script: data/make.py
              until: 2016-01-01   # the window's last day
            notifications:
              - kind: log_file
            """
        )
    )
    (path / ".gitignore").write_text(".branchops/\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial project")
    git(path, "remote", "add", "origin", str(origin))
    for branch in ("build-components", "kf-pipeline", "training", "deploy-model"):
        git(path, "branch", branch)
    git(path, "push", "-q", "origin", "--all")
    # without PyGithub's write throttle (1 s between writes on the real GitHub)
    monkeypatch.setattr(retrain, "make_forge", lambda config, repo: make_forge())

    def follow_the_remote() -> None:
        """GitHub knows the pushed branches, and an open pull request follows its head branch."""
        for line in git(origin, "for-each-ref", "--format=%(refname:short) %(objectname)").splitlines():
            name, sha = line.split()
            fake_github.branches[name] = sha
        for pull in fake_github.pulls.values():
            if pull.state == "open" and fake_github.branches.get(pull.head, pull.head_sha) != pull.head_sha:
                fake_github.push(pull.number, fake_github.branches[pull.head])

    for method in ("GET", "POST", "PATCH"):
        fake_github.before(method, ".*", follow_the_remote, times=100_000)
    return GitHubProject(path, origin, fake_github)


def test_repeated_proposals_keep_one_open_pull_request_and_push_a_commit_only_when_the_window_moves(
    project: GitHubProject,
) -> None:
    training_tip = project.remote_tip("training")
    first = project.propose()
    assert (first.action, first.number) == ("opened", 1)
    pull = project.fake.pulls[1]
    assert (pull.head, pull.base, pull.user, pull.head_sha) == (
        BRANCH,
        "training",
        "branchops-bot",
        first.commit,
    )
    assert first.url == "https://github.com/octo/hello/pull/1"
    # pushed to the remote, one commit on training's tip
    assert project.remote_tip(BRANCH) == first.commit
    assert git(project.origin, "rev-parse", f"{first.commit}^") == training_tip

    # same window, newer evidence: one PATCH of the body alone, a comment, nothing pushed
    project.fake.requests.clear()
    again = project.propose(evidence=EVIDENCE.replace("0.41", "0.58"))
    assert (again.action, again.number, again.commit) == ("updated", 1, first.commit)
    [patch] = project.fake.calls("PATCH", rf"{PULLS}/1")
    assert list(patch.body) == ["body"] and "| x | 0.58 |" in patch.body["body"]
    assert pull.body == patch.body["body"] and pull.title.startswith("Retrain")
    assert project.writes() == [("PATCH", f"{PULLS}/1"), ("POST", "/repos/octo/hello/issues/1/comments")]
    assert "unchanged" in pull.comments[-1]
    assert project.remote_tip(BRANCH) == first.commit and pull.commits == [first.commit]

    # the window moved: a new commit pushed on top (never forced), which the pull request follows
    moved = project.propose(until=SEPTEMBER)
    assert (moved.action, moved.number) == ("updated", 1)
    assert git(project.origin, "rev-parse", f"{moved.commit}^") == first.commit
    assert project.remote_tip(BRANCH) == moved.commit == pull.head_sha
    assert "2016-09-30" in pull.comments[-1] and "`2016-01-01` to `2016-09-30`" in pull.body
    assert project.open_pulls() == [1] and len(project.fake.calls("POST", PULLS)) == 0


def test_a_dry_run_pushes_nothing_and_writes_nothing_on_github(project: GitHubProject) -> None:
    before = project.remote_refs()
    dry = project.propose(dry_run=True)
    assert (dry.action, dry.number) == ("would open", None)
    assert project.writes() == [] and project.remote_refs() == before and project.fake.pulls == {}

    opened = project.propose()
    before, body = project.remote_refs(), project.fake.pulls[1].body
    project.fake.requests.clear()
    dry = project.propose(until=SEPTEMBER, evidence="newer", dry_run=True)
    assert (dry.action, dry.number, dry.commit) == ("would update", 1, opened.commit)
    assert project.writes() == [] and project.remote_refs() == before
    assert project.fake.pulls[1].body == body and project.fake.pulls[1].comments == []


def test_a_closed_pull_request_leads_to_a_new_one_from_the_training_tip(project: GitHubProject) -> None:
    rejected = project.propose()
    project.fake.pulls[1].state = "closed"  # a reviewer turned it down in GitHub's UI
    # training moves on meanwhile
    git(project.path, "checkout", "-q", "training")
    (project.path / "notes.md").write_text("moved on\n")
    git(project.path, "add", "notes.md")
    git(project.path, "commit", "-q", "-m", "training moved on")
    git(project.path, "push", "-q", "origin", "training")
    training_tip = project.remote_tip("training")

    fresh = project.propose(until=SEPTEMBER)
    assert (fresh.action, fresh.number) == ("opened", 2)
    assert project.open_pulls() == [2]
    # the closed proposal's branch was replaced by one on training's tip (its review is over)
    assert project.remote_tip(BRANCH) == fresh.commit
    assert git(project.origin, "rev-parse", f"{fresh.commit}^") == training_tip
    assert project.fake.pulls[1].head_sha == rejected.commit  # the closed one keeps its commit


def test_evidence_longer_than_github_takes_is_cut_to_fit(project: GitHubProject) -> None:
    project.propose()
    huge = "| x | 0.5 |\n" * 10_000
    updated = project.propose(evidence=huge)
    assert updated.action == "updated"
    [patch] = project.fake.calls("PATCH", rf"{PULLS}/1")
    assert patch.status == 200 and len(patch.body["body"]) <= BODY_LIMIT
    assert patch.body["body"].endswith("the full evidence is in the monitoring record)*")


# -- update_body, the forge port's method ---------------------------------------------------------------


def test_update_body_replaces_only_the_description(fake_github: FakeGitHub, make_forge) -> None:
    n = fake_github.add_pull(BRANCH, "training", title="Retrain", body="old evidence")
    make_forge().update_body(n, "new evidence")
    [patch] = fake_github.calls("PATCH", rf"{PULLS}/{n}")
    assert patch.body == {"body": "new evidence"}
    assert (fake_github.pulls[n].title, fake_github.pulls[n].body) == ("Retrain", "new evidence")


def test_update_body_that_github_refuses_is_an_external_error(fake_github: FakeGitHub, make_forge) -> None:
    from branchops.errors import ExternalError

    n = fake_github.add_pull(BRANCH, "training", body="old evidence")
    with pytest.raises(ExternalError, match="body is too long"):
        make_forge().update_body(n, "x" * (BODY_LIMIT + 1))
    assert fake_github.pulls[n].body == "old evidence"


def test_update_body_is_the_pull_request_update_github_documents(
    prism_github: PrismGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from branchops.forge.github import GitHubForge

    monkeypatch.setenv(TOKEN_ENV, "test-prism-token-0000")
    forge = GitHubForge(
        github_settings(prism_github.url, retries=0),
        seconds_between_requests=0,
        seconds_between_writes=0,
        backoff_factor=0,
    )
    mark = prism_github.mark()
    forge.update_body(1347, "**new evidence**")
    [patch] = prism_github.assert_valid(mark, expect_calls=1)
    assert (patch.method, patch.path, patch.request_body) == (
        "PATCH",
        "/repos/octo/hello/pulls/1347",
        {"body": "**new evidence**"},
    )
