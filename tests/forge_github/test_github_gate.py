"""The approval gate with the GitHub forge: real git history, the forge against the stateful fake.

Merges are made in git as GitHub makes them (a merge commit; a squash commit keeping the single commit's
message; a rebased copy of the commit) and recorded on the fake as GitHub records them: the pull
request's ``merge_commit_sha`` is the merge commit, the squash commit or the last rebased commit.
Approvers may be teams ("org/team"), resolved through GitHub's team members API.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from branchops import gate, gitops
from branchops.errors import ExternalError, GateRefused
from branchops.runner import first_non_bot
from tests.conftest import git

from .fake_github import FakeGitHub

MARKER = "Branchops-Bot"
RELEASE_BRANCH = "branchops/release-djia"
RELEASE_FILE = "serving/release.yaml"


def commit_file(path: Path, branch: str, name: str, content: str, message: str, user: str = "ds1") -> str:
    git(path, "checkout", "-q", branch)
    target = path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    git(path, "add", name)
    git(path, "commit", "-q", "-m", message, user=user)
    return git(path, "rev-parse", "HEAD")


def record_commit(path: Path, branch: str, run: str) -> str:
    """What branchops pushes to a stage branch: a record, marked as its own."""
    message = gitops.bot_message(f"deploy-model: succeeded ({run})", f"Run: {run}", MARKER)
    return commit_file(
        path, branch, f"records/deploy-model/{run}/record.json", "{}\n", message, "branchops-bot"
    )


@pytest.fixture
def repo(tmp_path: Path):
    import git as gitpython

    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "serving").mkdir()
    (path / RELEASE_FILE).write_text("version: 1\n")
    git(path, "add", RELEASE_FILE)
    git(path, "commit", "-q", "-m", "first release")
    git(path, "branch", "deploy-model")
    return gitpython.Repo(path)


def land_release(repo, method: str) -> tuple[str, str, str]:
    """The bot's release commit on its branch, then that branch landed on deploy-model by ``method``.
    Returns (deploy-model before, the release commit, the landed commit)."""
    path = Path(repo.working_tree_dir)
    before = git(path, "rev-parse", "deploy-model")
    git(path, "checkout", "-q", "-b", RELEASE_BRANCH, "deploy-model")
    message = gitops.bot_message("release djia version 2", "From training run r2.", MARKER)
    release = commit_file(path, RELEASE_BRANCH, RELEASE_FILE, "version: 2\n", message, "branchops-bot")
    # deploy-model moves on in the meantime (the record of its last run), so a rebase is a real one
    record_commit(path, "deploy-model", "r1")
    git(path, "checkout", "-q", "deploy-model")
    if method == "merge":
        git(
            path,
            "merge",
            "-q",
            "--no-ff",
            "-m",
            "Merge pull request #1 from octo/release",
            RELEASE_BRANCH,
            user="lead",
        )
    elif method == "squash":
        # GitHub's default squash message for a one-commit pull request: that commit's, titled "(#N)"
        git(path, "merge", "-q", "--squash", RELEASE_BRANCH)
        title, _, body = message.partition("\n")
        git(path, "commit", "-q", "-m", f"{title} (#1)\n{body}", user="lead")
    else:
        git(path, "cherry-pick", release, user="lead")
    return before, release, git(path, "rev-parse", "HEAD")


@pytest.mark.parametrize("method", ["merge", "squash", "rebase"])
def test_an_approved_release_runs_deploy_model_whatever_the_merge_method(
    fake_github: FakeGitHub, make_forge, repo, method: str
) -> None:
    before, release, landed = land_release(repo, method)
    assert gitops.trailer_marks(repo.commit(landed).message, MARKER) == (method != "merge")
    n = fake_github.add_pull(RELEASE_BRANCH, "deploy-model", user="branchops-bot", head_sha=release)
    fake_github.review(n, "lead", "APPROVED")
    fake_github.merge(n, by="lead", merge_sha=landed)

    # the landed commit is what the push of the merge builds: a person's approved change, not the bot's
    assert not gate.is_own_commit(repo, landed, MARKER)
    assert first_non_bot(repo, landed, MARKER) == landed
    verdict = gate.check(make_forge(), repo, landed, "deploy-model", ["lead"], before, MARKER)
    assert (verdict.merge_request.number, verdict.approved_by) == (n, ["lead"])

    # the record of that run is the bot's own: it starts nothing, and the run's commit is found under it
    record = record_commit(Path(repo.working_tree_dir), "deploy-model", "r2")
    assert gate.is_own_commit(repo, record, MARKER)
    assert first_non_bot(repo, record, MARKER) == landed


@pytest.mark.parametrize("method", ["squash", "rebase"])
def test_an_unapproved_squash_or_rebase_of_the_release_is_refused(
    fake_github: FakeGitHub, make_forge, repo, method: str
) -> None:
    before, release, landed = land_release(repo, method)
    n = fake_github.add_pull(RELEASE_BRANCH, "deploy-model", user="branchops-bot", head_sha=release)
    fake_github.merge(n, by="ds1", merge_sha=landed)
    with pytest.raises(GateRefused, match=rf"!{n} \({RELEASE_BRANCH} into deploy-model\) was merged without"):
        gate.check(make_forge(), repo, landed, "deploy-model", ["lead"], before, MARKER)


def test_the_bot_trailer_does_not_excuse_a_direct_push(fake_github: FakeGitHub, make_forge, repo) -> None:
    path = Path(repo.working_tree_dir)
    before = git(path, "rev-parse", "deploy-model")
    forged = gitops.bot_message("release djia version 9", "", MARKER)
    pushed = commit_file(path, "deploy-model", RELEASE_FILE, "version: 9\n", forged, "mallory")
    n = fake_github.add_pull("ds1", "deploy-model", head_sha="1" * 40)
    fake_github.review(n, "lead", "APPROVED")
    merged = commit_file(path, "deploy-model", "README.md", "x\n", "Merge pull request #1", "lead")
    fake_github.merge(n, by="lead", merge_sha=merged)

    assert not gate.is_own_commit(repo, pushed, MARKER)
    with pytest.raises(GateRefused) as refused:
        gate.check(make_forge(), repo, merged, "deploy-model", ["lead"], before, MARKER)
    assert pushed[:12] in str(refused.value) and "not the merge of a merge request" in str(refused.value)


# -- team approvers -------------------------------------------------------------------------------------


def approved_merge(fake_github: FakeGitHub, repo, reviewer: str) -> tuple[str, str]:
    path = Path(repo.working_tree_dir)
    before = git(path, "rev-parse", "deploy-model")
    merged = commit_file(path, "deploy-model", "README.md", reviewer, "Merge pull request", "lead")
    n = fake_github.add_pull("ds1", "deploy-model", head_sha="1" * 40)
    fake_github.review(n, reviewer, "APPROVED")
    fake_github.merge(n, by="lead", merge_sha=merged)
    return before, merged


def test_a_member_of_a_designated_team_approves(fake_github: FakeGitHub, make_forge, repo) -> None:
    fake_github.teams["octo/ml-leads"] = ["alice", "bob", "carol", "dan", "erin"]
    before, merged = approved_merge(fake_github, repo, "carol")
    forge = make_forge(per_page=2)

    verdict = gate.check(forge, repo, merged, "deploy-model", ["lead", "octo/ml-leads"], before, MARKER)

    assert verdict.approved_by == ["carol"]
    # GitHub's "list team members", every page (two members a page here)
    pages = fake_github.calls("GET", r"/orgs/octo/teams/ml-leads/members")
    assert len(pages) == 3
    assert forge.team_members("@octo/ml-leads") == ["alice", "bob", "carol", "dan", "erin"]
    assert len(fake_github.calls("GET", r"/orgs/octo/teams/ml-leads/members")) == 3  # read once


def test_someone_outside_the_designated_team_does_not_approve(
    fake_github: FakeGitHub, make_forge, repo
) -> None:
    fake_github.teams["octo/ml-leads"] = ["alice"]
    before, merged = approved_merge(fake_github, repo, "mallory")
    with pytest.raises(
        GateRefused, match=r"mallory is not a designated approver .*nor a member of octo/ml-leads"
    ):
        gate.check(make_forge(), repo, merged, "deploy-model", ["octo/ml-leads"], before, MARKER)


def test_a_named_approver_needs_no_team_lookup(fake_github: FakeGitHub, make_forge, repo) -> None:
    before, merged = approved_merge(fake_github, repo, "lead")
    verdict = gate.check(
        make_forge(), repo, merged, "deploy-model", ["lead", "octo/ml-leads"], before, MARKER
    )
    assert verdict.approved_by == ["lead"]
    assert fake_github.calls("GET", r"/orgs/.*") == []


def test_a_team_github_does_not_show_is_an_external_error(fake_github: FakeGitHub, make_forge, repo) -> None:
    # GitHub answers 404 for a team that does not exist and for one the token may not see.
    before, merged = approved_merge(fake_github, repo, "carol")
    with pytest.raises(ExternalError, match=r"team octo/ml-leads .*not found, or the token cannot see it"):
        gate.check(make_forge(), repo, merged, "deploy-model", ["octo/ml-leads"], before, MARKER)
    assert [r.status for r in fake_github.calls("GET", r"/orgs/octo/teams/ml-leads/members")] == [404]
