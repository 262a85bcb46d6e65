"""Every documented exit code means what the README says: each one is provoked here through the command
line, and the README's table, ``branchops --help`` and ``branchops.errors.EXIT_CODES`` say the same."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from branchops.cli import main
from branchops.errors import EXIT_CODES
from tests.conftest import REPO_ROOT, git
from tests.foundation import record_history as history
from tests.foundation.conftest import Project, make_project
from tests.foundation.test_faults import approved_merge, start_waiting_run


def readme_exit_codes() -> dict[str, str]:
    """The rows of the README's exit code table: | `code` | meaning |."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("Exit codes", 1)[1].split("\n\n", 2)[1]
    return dict(re.findall(r"^\| `([0-9/]+)` \| (.+?) \|$", section, flags=re.MULTILINE))


def test_the_readme_the_help_and_the_code_list_the_same_exit_codes():
    assert readme_exit_codes() == EXIT_CODES
    shown = " ".join(CliRunner().invoke(main, ["--help"], terminal_width=200).output.split())
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {meaning}" in shown, f"--help does not say: {code} {meaning}"


# -- provoking each one -----------------------------------------------------------------------------------


def cli(project: Project, *args: str) -> int:
    return project.run(*args, expect=None).exit_code


def cli_saying(project: Project, reason: str, *args: str) -> int:
    """The exit code of a command that must end for ``reason``, so that the code is that reason's."""
    result = project.run(*args, expect=None)
    assert reason in result.output, f"{args}: {result.output}"
    return result.exit_code


def merged_change(project: Project, path: str = "src/model.py", content: str = "VERSION = 2\n") -> int:
    project.commit("ds1", path, content)
    number = project.open_mr("build-components")
    project.run("mr", "approve", str(number), "--as", "lead")
    project.run("mr", "merge", str(number), "--as", "lead", "--no-run")
    return number


def success(project: Project, tmp_path: Path) -> list[int]:
    merged_change(project)
    return [cli(project, "run", "build-components"), cli(project, "run", "build-components")]  # ran; done


def stage_failed(project: Project, tmp_path: Path) -> list[int]:
    merged_change(project, "src/FAIL", "the recording stage fails when this file exists")
    return [cli(project, "run", "build-components")]


def usage_error(project: Project, tmp_path: Path) -> list[int]:
    (tmp_path / "not-new").mkdir()
    (tmp_path / "not-new" / "file").write_text("keep me")
    history.fill_history(project.path, 2)
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    open_request = project.open_mr("build-components")
    return [
        cli(project, "status", "--no-such-option"),
        cli(project, "serve", "start", "--port", "99999"),
        cli(project, "mr", "show", "0"),
        cli(project, "init", str(tmp_path / "not-new")),
        # a run id prefix that names more than one run: the user gives more of it
        cli_saying(project, "more than one training run matches", "lineage", history.run_id(0)[:9]),
        # a rollback to a request that was never merged into deploy-model: the user names another
        cli_saying(
            project,
            "is not a merge request merged into 'deploy-model'",
            "rollback",
            "--to",
            str(open_request),
            "--as",
            "ds1",
        ),
    ]


def invalid_config(project: Project, tmp_path: Path) -> list[int]:
    broken = tmp_path / "broken.yaml"
    broken.write_text("approvers:\n  training: lead\nunknown_key: 1\n")
    return [cli(project, "config", "validate", "--file", str(broken), "--offline")]


def gate_refused(project: Project, tmp_path: Path) -> list[int]:
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("build-components")
    self_approval = cli(project, "mr", "approve", str(number), "--as", "ds1")
    return [self_approval, cli(project, "mr", "merge", str(number), "--as", "lead")]  # merged unapproved


def merge_refused(project: Project, tmp_path: Path) -> list[int]:
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("build-components")
    project.run("mr", "close", str(number))
    return [cli(project, "mr", "merge", str(number), "--as", "lead")]


def external_failure(project: Project, tmp_path: Path) -> list[int]:
    return [cli(project, "predict", "--instances", "[[0.1]]")]  # no model server runs


def bad_data(project: Project, tmp_path: Path) -> list[int]:
    scaffolded = tmp_path / "minimal"
    project.run("init", str(scaffolded), "--template", "minimal", "--synthetic")
    work = tmp_path / "work"
    work.mkdir()
    arguments = [f"--param=source_dir={work}", f"--param=work_dir={work}", "--param=test_fraction=2"]
    return [CliRunner().invoke(main, ["-C", str(scaffolded), "component", "prepare", *arguments]).exit_code]


def fresh_project(folder: Path) -> Project:
    """A project of its own, run by a real ``branchops`` process (the fixture's stages are in-process)."""
    folder.mkdir()
    return make_project(folder)


def missing_requirement(project: Project, tmp_path: Path) -> list[int]:
    from tests.foundation.test_preflight import branchops_without

    fresh = fresh_project(tmp_path / "fresh")
    merged_change(fresh)
    return [
        branchops_without(tmp_path, ["pytest"], "-C", str(fresh.path), "run", "build-components").returncode
    ]


def not_found(project: Project, tmp_path: Path) -> list[int]:
    (tmp_path / "no-repository").mkdir()
    history.fill_history(project.path, 1)
    codes = [
        CliRunner().invoke(main, ["-C", str(tmp_path / "no-repository"), "status"]).exit_code,
        cli(project, "mr", "show", "99"),
        cli(project, "lineage", "20990101T000000Z-nothing"),
        cli(project, "component", "nope"),
        cli_saying(
            project,
            "has no successful experiment 'nope'",
            "reproduce",
            history.run_id(0),
            "--experiment",
            "nope",
        ),
        # no release was ever merged into deploy-model
        cli_saying(project, "nothing to roll back", "rollback", "--as", "ds1"),
    ]
    git(project.path, "branch", "-D", "kf-pipeline")
    return [
        *codes,
        cli_saying(project, "branch 'kf-pipeline' (stage kf-pipeline) does not exist", "run", "kf-pipeline"),
    ]


def stage_busy(project: Project, tmp_path: Path) -> list[int]:
    fresh, control = fresh_project(tmp_path / "fresh"), tmp_path / "control"
    control.mkdir()
    approved_merge(fresh)
    first = start_waiting_run(fresh, control)
    try:
        return [cli(fresh, "run", "build-components")]
    finally:
        (control / "finish").write_text("")
        first.communicate(timeout=60)


def interrupted(project: Project, tmp_path: Path) -> list[int]:
    codes = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        fresh, control = fresh_project(tmp_path / signum.name), tmp_path / f"control-{signum.name}"
        control.mkdir()
        approved_merge(fresh)
        proc = start_waiting_run(fresh, control)
        proc.send_signal(signum)
        proc.communicate(timeout=60)
        codes.append(proc.returncode)
    return codes


PROVOKE: dict[str, tuple[Callable[[Project, Path], list[int]], list[int]]] = {
    "0": (success, [0, 0]),
    "1": (stage_failed, [1]),
    "2": (usage_error, [2, 2, 2, 2, 2, 2]),
    "3": (invalid_config, [3]),
    "4": (gate_refused, [4, 4]),
    "5": (merge_refused, [5]),
    "6": (external_failure, [6]),
    "7": (bad_data, [7]),
    "8": (missing_requirement, [8]),
    "9": (not_found, [9, 9, 9, 9, 9, 9, 9]),
    "10": (stage_busy, [10]),
    "130/143": (interrupted, [130, 143]),
}


def test_every_documented_code_is_provoked_here():
    assert set(PROVOKE) == set(EXIT_CODES)


@pytest.mark.parametrize("code", list(EXIT_CODES))
def test_the_exit_code(code: str, project: Project, tmp_path: Path):
    provoke, expected = PROVOKE[code]
    assert provoke(project, tmp_path) == expected


def test_an_error_in_json_mode_carries_its_code(project: Project):
    result = CliRunner().invoke(main, ["-C", str(project.path), "mr", "show", "99", "--json"])
    assert (result.exit_code, result.stdout) == (9, "")
    assert json.loads(result.stderr) == {"error": "merge request !99 does not exist", "code": 9}
    assert git(project.path, "status", "--porcelain") == ""
