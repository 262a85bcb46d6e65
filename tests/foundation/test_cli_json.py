"""The output contract (docs/cli.md): every command takes --json and then prints exactly one JSON document on
stdout, nothing else; an error is one JSON document ``{"error": ..., "code": ...}`` on stderr.

The commands are enumerated from click's command tree, so a new command without --json, or without an
invocation here, fails this test."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from branchops.cli import main
from tests.foundation import record_history as history
from tests.foundation.conftest import Project


def leaf_commands(
    group: click.Group = main, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], click.Command]:
    found: dict[tuple[str, ...], click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= leaf_commands(command, (*prefix, name))
        else:
            found[(*prefix, name)] = command
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Expect:
    code: int
    on_stdout: bool  # the result document is on stdout; else the error document is on stderr


OK = Expect(0, on_stdout=True)


def result(code: int) -> Expect:
    """The command ends with ``code`` and its result: one JSON document on stdout."""
    return Expect(code, on_stdout=True)


def error(code: int) -> Expect:
    """The command fails with ``code``: nothing on stdout, one JSON document on stderr."""
    return Expect(code, on_stdout=False)


# command path -> (arguments after the path, given the project and a scratch folder; what must happen).
# Commands that need a system this machine does not run (Jenkins, GitHub, a model server with a model) are
# called the way they fail here: their error must keep the contract too.
Invocation = Callable[[Project, Path], list[str]]
INVOCATIONS: dict[tuple[str, ...], tuple[Invocation, Expect]] = {
    ("init",): (lambda p, tmp: [str(tmp / "new-project"), "--template", "minimal", "--synthetic"], OK),
    ("config", "validate"): (lambda p, tmp: [], OK),
    ("config", "show"): (lambda p, tmp: [], OK),
    ("config", "schema"): (lambda p, tmp: [], OK),
    ("mr", "open"): (
        lambda p, tmp: ["--source", "ds1", "--target", "kf-pipeline", "--title", "t", "--as", "ds1"],
        OK,
    ),
    ("mr", "list"): (lambda p, tmp: [], OK),
    ("mr", "show"): (lambda p, tmp: ["1"], OK),
    ("mr", "comment"): (lambda p, tmp: ["1", "looks good"], OK),
    ("mr", "approve"): (lambda p, tmp: ["1", "--as", "lead"], OK),
    # merged without running: the stage's own output is the run test's business
    ("mr", "merge"): (lambda p, tmp: ["1", "--as", "lead", "--no-run"], OK),
    ("mr", "close"): (lambda p, tmp: ["2"], OK),
    # the history's records came in without a merge request: the gate refuses, in a result document
    ("run",): (lambda p, tmp: ["build-components", "--dry-run"], result(4)),
    ("status",): (lambda p, tmp: [], OK),
    ("component",): (lambda p, tmp: ["no-such-component"], error(9)),
    ("lineage",): (lambda p, tmp: [str(history.FIRST_VERSION + 1)], OK),
    ("reproduce",): (lambda p, tmp: ["20990101T000000Z-nothing"], error(9)),
    ("exp", "show"): (lambda p, tmp: ["--sort", "roc_auc"], OK),
    ("metrics", "diff"): (lambda p, tmp: [], OK),  # the latest run against the one serving
    ("plots", "diff"): (
        lambda p, tmp: [history.run_id(0), history.run_id(1), "-o", str(tmp / "diff.png")],
        OK,
    ),
    # the history's runs trained nowhere on this machine: no event files to open
    ("tensorboard",): (lambda p, tmp: [history.run_id(0)], error(9)),
    # no deployment yet: no earlier release to roll back to (not found)
    ("rollback",): (lambda p, tmp: ["--as", "ds1"], error(9)),
    # it serves until interrupted: called where it cannot listen (an address of no interface here)
    ("ui",): (lambda p, tmp: ["--host", "203.0.113.1"], error(2)),
    ("serve", "start"): (lambda p, tmp: ["--port", str(free_port())], OK),
    ("serve", "status"): (lambda p, tmp: [], OK),
    ("predict",): (lambda p, tmp: ["--instances", "[[0.1]]"], error(6)),
    ("serve", "stop"): (lambda p, tmp: [], OK),
    # the server started above served no model: nothing to monitor (not found)
    ("monitor",): (lambda p, tmp: ["--dry-run"], error(9)),
    ("jenkins", "sync"): (lambda p, tmp: ["--dry-run"], error(3)),
    ("jenkins", "status"): (lambda p, tmp: [], error(3)),
    ("jenkins", "trigger"): (lambda p, tmp: [], error(3)),
    ("jenkins", "logs"): (lambda p, tmp: ["build-components", "--no-follow"], error(3)),
    ("bootstrap",): (lambda p, tmp: ["--dry-run"], error(3)),
    ("notify",): (
        lambda p, tmp: [
            "--event",
            "failed",
            "--branch",
            "training",
            "--commit",
            "0" * 40,
            "--message",
            "checkout",
        ],
        OK,
    ),
    ("demo",): (lambda p, tmp: ["--workdir", str(p.path)], error(2)),  # not a new folder
}


def test_every_command_takes_json_and_is_walked_here():
    commands = leaf_commands()
    without = [" ".join(path) for path, command in commands.items() if "--json" not in _options(command)]
    assert without == [], f"commands without --json: {without}"
    assert set(INVOCATIONS) == set(commands), (
        f"not walked here: {sorted(set(commands) - set(INVOCATIONS))}; "
        f"no longer commands: {sorted(set(INVOCATIONS) - set(commands))}"
    )


def _options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


@pytest.fixture
def walked_project(project: Project) -> Project:
    """Merge request !1 into build-components (open, to be approved and merged), !2 into training (to be
    closed), and a training history that lineage can trace."""
    history.fill_history(project.path, 3)
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    project.open_mr("build-components")
    project.open_mr("training")
    return project


def test_every_command_prints_one_json_document(walked_project: Project, tmp_path: Path):
    runner = CliRunner()
    seen = []
    try:
        # in the table's order: approve before merge, serve start before status, predict and stop
        for path, (arguments, expected) in INVOCATIONS.items():
            args = ["-C", str(walked_project.path), *path, *arguments(walked_project, tmp_path), "--json"]
            outcome = runner.invoke(main, args, catch_exceptions=False)
            what = (
                f"branchops {' '.join(args)}: exit {outcome.exit_code}\n"
                f"stdout: {outcome.stdout}\nstderr: {outcome.stderr}"
            )
            assert outcome.exit_code == expected.code, what
            if expected.on_stdout:
                json.loads(outcome.stdout)  # exactly one document: "Extra data" fails here
            else:
                assert outcome.stdout == "", what
                # log lines may come before it: the error is the last line
                document = json.loads(outcome.stderr.strip().splitlines()[-1])
                assert set(document) == {"error", "code"} and document["code"] == expected.code, what
                assert isinstance(document["error"], str) and document["error"], what
            seen.append(path)
    finally:
        runner.invoke(main, ["-C", str(walked_project.path), "serve", "stop"])
    assert len(seen) == len(INVOCATIONS)


def test_a_usage_error_with_json_is_json_too(project: Project):
    result = CliRunner().invoke(
        main, ["-C", str(project.path), "serve", "start", "--port", "99999", "--json"]
    )
    assert result.exit_code == 2 and result.stdout == ""
    error = json.loads(result.stderr)
    assert error["code"] == 2 and "1<=x<=65535" in error["error"]


def test_merge_without_run_names_the_merge_commit_in_its_document(project: Project):
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    number = project.open_mr("build-components")
    project.run("mr", "approve", str(number), "--as", "lead")
    result = CliRunner().invoke(
        main, ["-C", str(project.path), "mr", "merge", str(number), "--as", "lead", "--no-run", "--json"]
    )
    merged = json.loads(result.stdout)
    assert merged["runs"] == []
    assert merged["merge_request"]["merge_commit"] == project.tip("build-components")


def test_demo_with_json_sends_its_story_to_stderr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The demo's narration is progress, not the result: with --json it goes to stderr (a stand-in for
    run_demo narrates one line; the real one takes minutes and is tests/e2e's)."""
    import branchops.demo
    from branchops.demo import DemoResult

    def narrating_demo(workdir, data_dir, synthetic, echo, template):
        echo("1. a line of the story")
        return DemoResult(workdir=Path(workdir), served_version=3)

    monkeypatch.setattr(branchops.demo, "run_demo", narrating_demo)
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "demo"), "--json"])
    assert json.loads(result.stdout)["served_version"] == 3
    assert "a line of the story" in result.stderr
