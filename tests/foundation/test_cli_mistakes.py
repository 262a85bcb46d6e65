"""Mistakes caught where they are made: an approval the gate would not count is refused when it is given,
and a number out of range is a usage error naming the valid range."""

from __future__ import annotations

import json

import click
import pytest

from tests.foundation.conftest import Project
from tests.foundation.test_cli_json import leaf_commands


def approvals(project: Project, number: int) -> list[str]:
    return [
        a["user"] for a in json.loads(project.run("mr", "show", str(number), "--json").output)["approvals"]
    ]


def test_the_author_cannot_approve(project: Project):
    project.commit("ds1", "src/model.py", "VERSION = 2\n", user="lead")
    number = project.open_mr("build-components", author="lead")
    result = project.run("mr", "approve", str(number), "--as", "lead", expect=4)
    assert "lead is the author of !1 (no self-approval)" in result.output
    assert approvals(project, number) == []


def test_the_author_cannot_approve_where_no_stage_runs_either(project: Project):
    """A merge request into a branch without a stage has no designated approvers: still no self-approval."""
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("main")
    result = project.run("mr", "approve", str(number), "--as", "ds1", expect=4)
    assert "ds1 is the author of !1 (no self-approval)" in result.output
    project.run("mr", "approve", str(number), "--as", "anyone")
    assert approvals(project, number) == ["anyone"]


def test_who_the_target_branch_does_not_designate_cannot_approve(project: Project):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("build-components")
    result = project.run("mr", "approve", str(number), "--as", "head-of-ds", expect=4)
    assert "head-of-ds is not a designated approver of 'build-components' (designated: lead)" in result.output
    assert approvals(project, number) == []
    project.run("mr", "approve", str(number), "--as", "lead")
    assert approvals(project, number) == ["lead"]


def test_a_merge_request_cannot_designate_its_own_approver(project: Project):
    """Who is designated is read from the target branch, not from the change under review (as the gate
    does at the merge)."""
    config = (project.path / "config" / "branchops.yaml").read_text()
    project.commit(
        "ds1",
        "config/branchops.yaml",
        config.replace("build-components: [lead]", "build-components: [mallory]"),
    )
    number = project.open_mr("build-components")
    result = project.run("mr", "approve", str(number), "--as", "mallory", expect=4)
    assert "mallory is not a designated approver" in result.output
    project.run("mr", "approve", str(number), "--as", "lead")


def test_approving_a_closed_request_is_the_forges_refusal(project: Project):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("build-components")
    project.run("mr", "close", str(number))
    assert (
        "only open requests can be approved"
        in project.run("mr", "approve", str(number), "--as", "ds1", expect=5).output
    )


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_a_port_out_of_range_is_a_usage_error_naming_the_range(project: Project, port: str):
    try:
        result = project.run("serve", "start", "--port", port, expect=2)
    finally:  # a server that started anyway (the mistake accepted) must not outlive the test
        project.run("serve", "stop", expect=None)
    assert "1<=x<=65535" in result.output


def test_every_number_option_is_range_checked():
    """A plain ``int`` option takes 0, -5 or 99999 and the mistake surfaces later (or never): every number
    the command line takes has its bounds."""
    unbounded = [
        f"{' '.join(path)} {param.human_readable_name}"
        for path, command in leaf_commands().items()
        for param in command.params
        if isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType))
        and not (isinstance(param.type, click.types._NumberRangeBase) and param.type.min is not None)
    ]
    assert unbounded == []


@pytest.mark.parametrize(
    "args",
    [
        ["mr", "show", "0"],
        ["mr", "approve", "0", "--as", "lead"],
        ["predict", "--version", "0", "--instances", "[[1]]"],
        ["rollback", "--to", "0", "--as", "ds1"],
        ["jenkins", "logs", "training", "--build", "0"],
    ],
)
def test_numbers_below_one_are_usage_errors(project: Project, args: list[str]):
    assert "x>=1" in project.run(*args, expect=2).output


def test_an_approver_named_as_a_team_is_resolved_through_the_forge(project: Project):
    """Approvers written org/team are members of that team on the forge (GitHub's team members API), as the
    gate resolves them; the embedded forge has no teams, so there a team designates nobody."""
    from branchops import gitops
    from branchops.approvals import check_approval
    from branchops.errors import GateRefused
    from branchops.forge.local import LocalForge
    from branchops.project import Project as Repository

    config = (project.path / "config" / "branchops.yaml").read_text()
    team_config = config.replace("build-components: [lead]", "build-components: [acme/leads]")
    for branch in ("build-components", "ds1"):
        project.commit(branch, "config/branchops.yaml", team_config, user="lead")
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("build-components")
    result = project.run("mr", "approve", str(number), "--as", "lead", expect=4)
    assert (
        "lead is not a designated approver of 'build-components' (nor a member of acme/leads)"
        in result.output
    )

    class ForgeWithTeams(LocalForge):
        """The embedded forge plus one team, as GitHub would list its members."""

        def team_members(self, team: str) -> list[str] | None:
            return ["lead"] if team == "acme/leads" else None

    repo = gitops.open_repo(project.path)
    forge = ForgeWithTeams(repo)
    check_approval(Repository(repo), forge, forge.get(number), "lead")  # a member: accepted
    with pytest.raises(GateRefused, match="nor a member of acme/leads"):
        check_approval(Repository(repo), forge, forge.get(number), "head-of-ds")


def test_without_as_the_user_is_git_user_name_of_the_repository_named_by_c(
    project: Project, tmp_path, monkeypatch
):
    """``-C DIR`` names the repository whose ``user.name`` stands in for ``--as``, not the current folder."""
    import git

    monkeypatch.delenv("BRANCHOPS_USER", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not a repository
    with git.Repo(project.path).config_writer() as writer:
        writer.set_value("user", "name", "ds1")
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    result = project.run(
        "mr", "open", "--source", "ds1", "--target", "build-components", "--title", "t", "--json"
    )
    assert json.loads(result.output)["author"] == "ds1"
