"""The local forge: merge requests beside the repository, real merge commits, conflicts with nothing half
done."""

from __future__ import annotations

import json

from branchops import gitops
from branchops.forge.local import LocalForge
from tests.conftest import git


def test_open_twice_updates_instead_of_duplicating(project):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    first = project.open_mr("build-components", title="first title")
    second = project.open_mr("build-components", title="better title")
    assert first == second
    listed = json.loads(project.run("mr", "list", "--json").output)
    assert [m["title"] for m in listed] == ["better title"]


def test_merge_makes_a_real_two_parent_merge_commit(project):
    head = project.commit("ds1", "src/model.py", "VERSION = 2\n")
    base = project.tip("kf-pipeline")
    number = project.open_mr("kf-pipeline")
    project.run("mr", "merge", str(number), "--as", "lead", "--no-run")
    merge = project.tip("kf-pipeline")
    assert git(project.path, "rev-parse", f"{merge}^1", f"{merge}^2").splitlines() == [base, head]
    assert git(project.path, "show", "kf-pipeline:src/model.py") == "VERSION = 2"
    shown = json.loads(project.run("mr", "show", str(number), "--json").output)
    assert shown["state"] == "merged" and shown["merge_commit"] == merge and shown["merged_by"] == "lead"


def test_conflict_is_reported_and_nothing_is_merged(project):
    project.commit("kf-pipeline", "src/model.py", "VERSION = 'theirs'\n", user="other")
    project.commit("ds1", "src/model.py", "VERSION = 'ours'\n")
    number = project.open_mr("kf-pipeline")
    before = project.refs()
    result = project.run("mr", "merge", str(number), "--as", "lead", expect=5)
    assert "conflicts" in result.output and "src/model.py" in result.output
    assert project.refs() == before
    assert json.loads(project.run("mr", "show", str(number), "--json").output)["state"] == "open"
    assert git(project.path, "status", "--porcelain") == ""


def test_open_request_follows_its_source_branch(project):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("training")
    newer = project.commit("ds1", "src/model.py", "VERSION = 3\n")
    assert LocalForge(gitops.open_repo(project.path)).get(number).head_sha == newer


def test_comments_and_merged_request_lookup(project):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("training")
    project.run("mr", "comment", str(number), "**looks good**")
    shown = json.loads(project.run("mr", "show", str(number), "--json").output)
    assert shown["comments"][0]["body"] == "**looks good**"
    forge = LocalForge(gitops.open_repo(project.path))
    assert forge.merged_request_for_commit(project.tip("training")) is None
    project.run("mr", "merge", str(number), "--as", "lead", "--no-run")
    assert forge.merged_request_for_commit(project.tip("training")).number == number


def test_unknown_request_and_bad_branches_are_clear_errors(project):
    assert (
        "does not exist" in project.run("mr", "show", "42", expect=9).output
    )  # not found, not "merge refused"
    result = project.run(
        "mr", "open", "--source", "nope", "--target", "training", "--title", "x", "--as", "a", expect=5
    )
    assert "source branch 'nope' does not exist" in result.output
