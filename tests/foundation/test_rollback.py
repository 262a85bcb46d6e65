"""rollback: the merges that changed the release are found on deploy-model's first-parent line among its
record commits, and the rollback restores the release from before the latest of them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from branchops import gitops
from branchops.rollback import release_merges
from tests.conftest import git
from tests.foundation.conftest import make_project

RELEASE = "serving/tfserve/release.yaml"


def release(version: int) -> str:
    return yaml.safe_dump(
        {
            "model": "djia",
            "version": version,
            "source": {"volume": "models", "path": f"runs/r/export/{version}"},
        },
        sort_keys=False,
    )


def merge_into_deploy(project, name: str, files: dict[str, str], base: str = "deploy-model") -> str:
    """A branch from ``base`` with ``files`` changed, merged into deploy-model with a merge commit."""
    repo = project.path
    git(repo, "checkout", "-q", "-b", name, base)
    for path, content in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(content)
        git(repo, "add", path)
    git(repo, "commit", "-q", "-m", f"change on {name}")
    git(repo, "checkout", "-q", "deploy-model")
    git(repo, "merge", "-q", "--no-ff", name, "-m", f"Merge {name}", user="head-of-ds")
    return project.tip("deploy-model")


def record_commits(project, count: int) -> None:
    """The bot's record commits on deploy-model between the merges."""
    from tests.foundation import record_history as history

    for i in range(count):
        history.add_records(project.path, "deploy-model", "deploy-model", [history.deployment(i)])
    git(project.path, "checkout", "-q", "-f", "deploy-model")


def test_the_merges_that_changed_the_release_are_found_among_record_commits(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    first = merge_into_deploy(project, "release-1", {RELEASE: release(1)})
    before_second = project.tip("deploy-model")
    record_commits(project, 3)
    second = merge_into_deploy(project, "release-2", {RELEASE: release(2)})
    record_commits(project, 3)
    # a merge of a branch started before release 2: it brings no release change (deploy-model keeps 2)
    merge_into_deploy(project, "docs", {"docs/notes.md": "notes\n"}, base=before_second)
    record_commits(project, 2)

    repo = gitops.open_repo(project.path)
    found = release_merges(repo, project.tip("deploy-model"), RELEASE)
    assert [c.hexsha for c in found] == [second, first]

    # a revert through a merge request is a release merge too: the next rollback goes back from it
    third = merge_into_deploy(project, "revert-2", {RELEASE: release(1)})
    assert [c.hexsha for c in release_merges(repo, project.tip("deploy-model"), RELEASE)] == [
        third,
        second,
        first,
    ]


def test_rollback_prepares_the_release_before_the_latest_release_merge(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    merge_into_deploy(project, "release-1", {RELEASE: release(1)})
    record_commits(project, 2)
    merge_into_deploy(project, "release-2", {RELEASE: release(2)})
    record_commits(project, 2)

    result = project.run("rollback", "--as", "ds1")
    assert "!" in result.output
    requests = json.loads(project.run("mr", "list", "--json").output)
    (request,) = [r for r in requests if r["target"] == "deploy-model"]
    restored = yaml.safe_load(git(project.path, "show", f"{request['source']}:{RELEASE}"))
    assert restored["version"] == 1 and request["title"] == "Roll back djia to version 1"


def test_a_rollback_to_no_other_release_says_why_with_the_code_that_fits(tmp_path: Path) -> None:
    """Naming the request whose release is the one desired is the user's mistake (2, usage); a first
    release has no release before it to go back to (9, not found). Neither prepares anything."""
    project = make_project(tmp_path)
    project.commit("ds1", RELEASE, release(1))
    number = project.open_mr("deploy-model")
    project.run("mr", "approve", str(number), "--as", "head-of-ds")
    project.run("mr", "merge", str(number), "--as", "head-of-ds", "--no-run")
    refs = project.refs()

    named_the_live_one = project.run("rollback", "--to", str(number), "--as", "ds1", expect=2)
    assert "already is that release" in named_the_live_one.output
    first_release = project.run("rollback", "--as", "ds1", expect=9)
    assert "there was no release before that merge" in first_release.output
    assert project.refs() == refs
