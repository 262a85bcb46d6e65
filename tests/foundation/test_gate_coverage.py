"""The gate covers the whole change: every commit that entered a stage branch since its last gated run
came in through an approved merge request into it, or nothing runs; a revert takes a direct push back
out; a merge request cannot name its own approvers."""

from __future__ import annotations

import json

from tests.conftest import git
from tests.foundation.test_gate import approved_on_the_forge


def approved_merge(
    project, target="build-components", path="src/model.py", content="VERSION = 2\n", expect=0
):
    project.commit("ds1", path, content)
    number = project.open_mr(target)
    project.run("mr", "approve", str(number), "--as", "lead")
    return number, project.run("mr", "merge", str(number), "--as", "lead", expect=expect)


def records(project, branch="build-components"):
    paths = [f for f in project.files(branch) if f.endswith("/record.json")]
    return [json.loads(git(project.path, "show", f"{branch}:{p}")) for p in paths]


def test_a_direct_push_does_not_ride_the_next_approved_merge(project, stage_calls):
    pushed = project.commit("build-components", "src/config.py", "EPOCHS = 2\n", message="quick epochs tweak")
    _, result = approved_merge(project, expect=4)

    assert pushed[:12] in result.output and "quick epochs tweak" in result.output
    assert "Revert" in result.output or "revert" in result.output
    assert stage_calls() == [] and records(project) == []


def test_after_a_revert_of_the_direct_push_the_next_approved_merge_runs(project, stage_calls):
    pushed = project.commit("build-components", "src/config.py", "EPOCHS = 2\n", message="quick epochs tweak")
    first, _ = approved_merge(project, expect=4)
    git(project.path, "checkout", "-q", "build-components")
    git(project.path, "revert", "--no-edit", pushed, user="lead")

    second, result = approved_merge(project, path="src/model.py", content="VERSION = 3\n")

    assert "build-components on build-components: succeeded" in result.output, result.output
    [record] = records(project)
    assert [m["number"] for m in record["included_merge_requests"]] == [second, first]
    assert all(m["approved_by"] == ["lead"] for m in record["included_merge_requests"])


def test_a_revert_of_something_else_does_not_excuse_a_direct_push(project, stage_calls):
    pushed = project.commit("build-components", "src/config.py", "EPOCHS = 2\n", message="quick epochs tweak")
    git(project.path, "checkout", "-q", "build-components")
    # a "revert" message naming the push, but a different change
    project.commit(
        "build-components", "src/other.py", "X = 1\n", message=f"Revert\n\nThis reverts commit {pushed}."
    )
    _, result = approved_merge(project, expect=4)
    assert pushed[:12] in result.output and stage_calls() == []


def test_an_unapproved_merge_left_on_the_branch_blocks_the_next_run(project, stage_calls):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    unapproved = project.open_mr("build-components", title="unreviewed")
    project.run("mr", "merge", str(unapproved), "--as", "ds1", "--no-run")

    _, result = approved_merge(project, path="src/model.py", content="VERSION = 3\n", expect=4)

    assert f"!{unapproved}" in result.output and "without a valid approval" in result.output
    assert stage_calls() == []


def test_a_merge_request_cannot_name_its_own_approvers(project, stage_calls):
    config = (
        (project.path / "config" / "branchops.yaml")
        .read_text()
        .replace("build-components: [lead]", "build-components: [lead, mallory]")
    )
    project.commit("ds1", "config/branchops.yaml", config)
    number = project.open_mr("build-components")
    approved_on_the_forge(project, number, "mallory")
    result = project.run("mr", "merge", str(number), "--as", "mallory", expect=4)
    assert "mallory is not a designated approver" in result.output
    assert stage_calls() == []


def test_runs_after_a_gated_run_look_only_at_what_came_since(project, stage_calls):
    approved_merge(project)
    _, result = approved_merge(project, path="src/model.py", content="VERSION = 3\n")
    assert result.exit_code == 0 and len(stage_calls()) == 2
    latest = max(records(project), key=lambda r: r["started_at"])
    assert len(latest["included_merge_requests"]) == 1


def test_an_unapproved_merge_reverted_on_the_branch_no_longer_blocks(project, stage_calls):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    unapproved = project.open_mr("build-components", title="unreviewed")
    project.run("mr", "merge", str(unapproved), "--as", "ds1", "--no-run")
    git(project.path, "checkout", "-q", "build-components")
    git(project.path, "revert", "--no-edit", "-m", "1", "build-components", user="lead")

    # (git would not merge the reverted change again: the next merge request brings another file)
    _, result = approved_merge(project, path="src/other.py", content="X = 1\n")

    assert "build-components on build-components: succeeded" in result.output, result.output


def test_bootstraps_code_owners_commit_is_not_a_direct_push(project, stage_calls):
    # bootstrap writes .github/CODEOWNERS onto each new stage branch as the bot, so on the stage's first run
    # that commit lies between main and the approved merge
    from branchops.bootstrap import codeowners_message
    from branchops.gate import CODEOWNERS_PATH

    project.commit(
        "build-components",
        CODEOWNERS_PATH,
        "* @lead\n",
        message=codeowners_message("build-components", "Branchops-Bot"),
    )
    _, result = approved_merge(project)
    assert "build-components on build-components: succeeded" in result.output, result.output


def test_a_code_owners_commit_that_changes_more_is_gated(project, stage_calls):
    from branchops.bootstrap import codeowners_message

    sneaked = project.commit(
        "build-components",
        "src/config.py",
        "EPOCHS = 2\n",
        message=codeowners_message("build-components", "Branchops-Bot"),
    )
    _, result = approved_merge(project, expect=4)
    assert sneaked[:12] in result.output and stage_calls() == []


def test_a_bot_commit_that_moves_code_into_records_is_gated(project, stage_calls):
    # git's rename detection names only a moved file's new path: the move takes code out of src/ too
    from branchops.bootstrap import codeowners_message

    git(project.path, "checkout", "-q", "build-components")
    moved = git(project.path, "ls-files", "src/").splitlines()[0]
    (project.path / "records").mkdir(exist_ok=True)
    git(project.path, "mv", moved, "records/moved.py")
    git(
        project.path,
        "commit",
        "-q",
        "-m",
        codeowners_message("build-components", "Branchops-Bot"),
        user="ds1",
    )
    sneaked = git(project.path, "rev-parse", "HEAD")
    _, result = approved_merge(project, expect=4)
    assert sneaked[:12] in result.output and stage_calls() == []
