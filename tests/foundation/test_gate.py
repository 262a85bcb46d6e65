"""The approval gate, through the CLI: only an approved merge by a designated approver starts a stage,
and every refusal changes nothing (no ref moves, no record, the stage body never called)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import git


def refused_and_untouched(project, stage_calls, result, before_refs):
    assert result.exit_code == 4, result.output
    assert "refused" in result.output
    assert stage_calls() == []
    # the merge moved the target branch (that is the forge's doing), the refusal moved nothing else
    assert project.refs() == before_refs
    assert project.files("build-components") == []


def approved_on_the_forge(project, number, user):
    """An approval that ``branchops mr approve`` refuses (exit 4), recorded as a forge records any (on GitHub
    anyone with write access can approve): the gate must not count it either."""
    from branchops import gitops
    from branchops.forge.local import LocalForge

    project.run("mr", "approve", str(number), "--as", user, expect=4)
    LocalForge(gitops.open_repo(project.path)).approve(number, user)


def merge_no_run(project, number, user="ds1"):
    project.run("mr", "merge", str(number), "--as", user, "--no-run")


def test_approved_merge_runs_the_stage_and_records_it(project, stage_calls):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("build-components")
    project.run("mr", "approve", str(number), "--as", "lead")
    result = project.run("mr", "merge", str(number), "--as", "lead")
    assert "build-components on build-components: succeeded" in result.output
    merge_commit = git(project.path, "rev-parse", "build-components^")
    assert stage_calls() == [f"build-components {merge_commit}"]
    files = project.files("build-components")
    assert any(f.endswith("/record.json") for f in files) and any(f.endswith("/summary.txt") for f in files)
    record_path = next(f for f in files if f.endswith("record.json"))
    record = json.loads(git(project.path, "show", f"build-components:{record_path}"))
    assert record["outcome"] == "succeeded"
    assert record["source_commit"] == merge_commit
    assert record["merge_request"]["approved_by"] == ["lead"]
    assert record["merge_request"]["author"] == "ds1"
    # the record commit is the bot's, marked so that it never starts a stage
    message = git(project.path, "log", "-1", "--format=%an%n%B", "build-components")
    assert message.startswith("branchops-bot") and "Branchops-Bot: true" in message


def test_direct_push_is_refused(project, stage_calls):
    project.commit("build-components", "src/model.py", "VERSION = 3\n", user="ds1")
    before = project.refs()
    result = project.run("run", "build-components", expect=None)
    refused_and_untouched(project, stage_calls, result, before)
    assert "not the merge of a merge request" in result.output


def test_unapproved_merge_is_refused(project, stage_calls):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("build-components")
    merge_no_run(project, number)
    before = project.refs()
    result = project.run("run", "build-components", expect=None)
    refused_and_untouched(project, stage_calls, result, before)
    assert "nobody approved it" in result.output


def test_self_approval_does_not_count(project, stage_calls):
    project.commit("ds1", "src/model.py", "VERSION = 2\n", user="lead")
    number = project.open_mr("build-components", author="lead")
    approved_on_the_forge(project, number, "lead")
    merge_no_run(project, number, "lead")
    before = project.refs()
    result = project.run("run", "build-components", expect=None)
    refused_and_untouched(project, stage_calls, result, before)
    assert "lead is the author" in result.output


def test_approval_before_the_last_push_does_not_count(project, stage_calls):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("build-components")
    project.run("mr", "approve", str(number), "--as", "lead")
    project.commit("ds1", "src/model.py", "VERSION = 666\n")  # pushed after the approval
    merge_no_run(project, number)
    before = project.refs()
    result = project.run("run", "build-components", expect=None)
    refused_and_untouched(project, stage_calls, result, before)
    assert "before the last push" in result.output


def test_approval_by_someone_not_designated_does_not_count(project, stage_calls):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("build-components")
    approved_on_the_forge(project, number, "head-of-ds")  # designated for training, not here
    merge_no_run(project, number)
    before = project.refs()
    result = project.run("run", "build-components", expect=None)
    refused_and_untouched(project, stage_calls, result, before)
    assert "head-of-ds is not a designated approver of 'build-components'" in result.output


def test_bot_commit_never_starts_a_stage(project, stage_calls):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("build-components")
    project.run("mr", "approve", str(number), "--as", "lead")
    project.run("mr", "merge", str(number), "--as", "lead")
    assert len(stage_calls()) == 1
    before_refs, before_files = project.refs(), project.files("build-components")
    # what a CI job triggered by the bot's own push would run
    result = project.run("run", "--for-branch", "build-components")
    assert "bot commits never start a stage" in result.output
    assert len(stage_calls()) == 1
    assert project.refs() == before_refs and project.files("build-components") == before_files


def test_merge_into_another_branch_does_not_pass_for_this_one(project, stage_calls):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("kf-pipeline")
    project.run("mr", "approve", str(number), "--as", "lead")
    merge_no_run(project, number)
    before = project.refs()
    # the kf-pipeline merge commit, offered as build-components' commit
    result = project.run("run", "build-components", "--commit", project.tip("kf-pipeline"), expect=None)
    assert result.exit_code == 4 and "not into 'build-components'" in result.output
    assert stage_calls() == [] and project.refs() == before


def test_dry_run_shows_the_plan_and_touches_nothing(project, stage_calls):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("build-components")
    project.run("mr", "approve", str(number), "--as", "lead")
    merge_no_run(project, number)
    before = project.refs()
    result = project.run("run", "build-components", "--dry-run")
    assert "planned" in result.output and "would record a call" in result.output
    assert "approved by lead" in result.output
    assert stage_calls() == [] and project.refs() == before


@pytest.mark.parametrize("as_json", [True, False])
def test_failed_stage_writes_a_failed_record_and_exits_1(project, stage_calls, as_json):
    project.commit("ds1", "src/FAIL", "x")
    number = project.open_mr("build-components")
    project.run("mr", "approve", str(number), "--as", "lead")
    merge_no_run(project, number, "lead")
    args = ["run", "build-components"] + (["--json"] if as_json else [])
    result = project.run(*args, expect=1)
    if as_json:
        assert json.loads(result.output)[0]["status"] == "failed"
    record_path = next(f for f in project.files("build-components") if f.endswith("record.json"))
    record = json.loads(git(project.path, "show", f"build-components:{record_path}"))
    assert record["outcome"] == "failed" and "told to fail" in record["error"]
    # the failure is visible on the forge too: a failure status on the merge commit
    statuses = json.loads(
        (project.path / ".branchops" / "commit-statuses" / f"{record['source_commit']}.json").read_text()
    )
    assert statuses["branchops/build-components"]["state"] == "failure"
