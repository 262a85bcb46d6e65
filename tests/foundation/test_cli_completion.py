"""Shell completion (README, docs/cli.md): click's completion protocol, as the script that
``_BRANCHOPS_COMPLETE=bash_source branchops`` prints calls it, completes merge request numbers and run ids
from the repository."""

from __future__ import annotations

from click.testing import CliRunner

from branchops.cli import main
from tests.foundation import record_history as history
from tests.foundation.conftest import Project


def complete(*words: str, shell: str = "bash") -> list[str]:
    """What the shell offers after ``branchops WORDS`` (the last word is the one being typed)."""
    result = CliRunner().invoke(
        main,
        [],
        prog_name="branchops",
        env={
            "_BRANCHOPS_COMPLETE": f"{shell}_complete",
            "COMP_WORDS": " ".join(["branchops", *words]),
            "COMP_CWORD": str(len(words)),
        },
    )
    assert result.exit_code == 0, result.output
    # bash: one "type,value" line per candidate
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def test_the_documented_script_is_printed():
    result = CliRunner().invoke(main, [], prog_name="branchops", env={"_BRANCHOPS_COMPLETE": "bash_source"})
    assert "_BRANCHOPS_COMPLETE=bash_complete" in result.stdout and "complete -o" in result.stdout


def test_merge_request_numbers(project: Project):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    first = project.open_mr("build-components")
    second = project.open_mr("training")
    project.run("mr", "close", str(second))
    repo = ["-C", str(project.path)]
    assert complete(*repo, "mr", "show", "") == [str(first), str(second)]
    assert complete(*repo, "mr", "approve", "") == [str(first)]  # only open requests can be approved
    assert complete(*repo, "mr", "merge", "2") == []


def test_run_ids_newest_first(project: Project):
    history.fill_history(project.path, 3)
    repo = ["-C", str(project.path)]
    newest_first = [history.run_id(2), history.run_id(1), history.run_id(0)]
    assert complete(*repo, "lineage", "") == newest_first
    assert complete(*repo, "reproduce", history.run_id(1)[:20]) == [history.run_id(1)]


def test_outside_a_repository_there_is_nothing_to_offer(tmp_path):
    assert complete("-C", str(tmp_path), "mr", "show", "") == []
    assert complete("-C", str(tmp_path), "lineage", "") == []
