"""What a real ``branchops`` process shows on the console (stderr): each verbosity shows more of branchops
only, other libraries only when asked, no logger names, every line once, colour only on a terminal and never
with NO_COLOR."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from branchops.console import DEBUG, NORMAL, QUIET, VERBOSE, ConsoleFilter
from tests.conftest import REPO_ROOT
from tests.foundation.conftest import Project, make_project

STAGE_INFO = "talking stage: working on"
STAGE_WARNING = "warning: talking stage: something to look at"
MERGED = "merged !1 (ds1 into build-components) as"  # the local forge's own INFO line: a module's detail


def branchops(
    project: Project, *args: str, env: dict[str, str] | None = None, stderr=subprocess.PIPE
) -> subprocess.CompletedProcess:
    """``branchops ARGS`` in a real process, with the talking stage registered for every stage; ``-C`` is
    added after the global options (those before the command's name)."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    environment.pop("NO_COLOR", None)
    environment.pop("BRANCHOPS_LOG_LIBS", None)
    split = next(i for i, arg in enumerate(args) if not arg.startswith("-"))  # the command's name
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.foundation.talking_stage",
            *args[:split],
            "-C",
            str(project.path),
            *args[split:],
        ],
        cwd=REPO_ROOT,
        env=environment | (env or {}),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=120,
    )


def approved_project(folder: Path) -> Project:
    """!1 from ds1 into build-components, approved: merging it runs the talking stage (a merge happens once,
    so each verbosity gets a project of its own)."""
    folder.mkdir()
    project = make_project(folder)
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    project.open_mr("build-components")
    project.run("mr", "approve", "1", "--as", "lead")
    return project


@pytest.fixture
def approved(tmp_path: Path) -> Project:
    return approved_project(tmp_path / "approved")


def merge_with(project: Project, *flags: str, env: dict[str, str] | None = None) -> list[str]:
    """The console lines of ``branchops FLAGS mr merge 1`` (which runs the stage)."""
    result = branchops(project, *flags, "mr", "merge", "1", "--as", "lead", env=env)
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_each_verbosity_shows_more_of_branchops(approved: Project, tmp_path: Path):
    quiet = merge_with(approved, "-q")
    assert quiet == [STAGE_WARNING]

    default = merge_with(approved_project(tmp_path / "default"))
    assert [line for line in default if STAGE_INFO in line] and STAGE_WARNING in default
    assert not any(MERGED in line for line in default), "a module's detail is for -v"

    verbose = merge_with(approved_project(tmp_path / "verbose"), "-v")
    assert any(MERGED in line for line in verbose)
    assert set(map(without_hashes, default)) < set(map(without_hashes, verbose))

    debug = merge_with(approved_project(tmp_path / "debug"), "-vv")
    assert len(debug) > len(verbose)
    # -vv: the seconds since start before every line, and the debug line of the command itself
    assert all(line.split()[0].endswith("s") and float(line.split()[0][:-1]) >= 0 for line in debug)
    assert any("command mr in repository" in line for line in debug)


def without_hashes(line: str) -> str:
    """A console line with commit hashes blanked: each project has its own commits."""
    return re.sub(r"\b[0-9a-f]{12,40}\b", "<sha>", line)


def test_other_libraries_log_only_when_asked(approved: Project, tmp_path: Path):
    plain = merge_with(approved, "-vv")
    assert not any("Popen(" in line for line in plain), "GitPython's debug lines need --log-libs"
    asked = merge_with(approved_project(tmp_path / "asked"), "-vv", "--log-libs")
    assert any("Popen(['git'" in line for line in asked)
    by_environment = merge_with(approved_project(tmp_path / "env"), "-vv", env={"BRANCHOPS_LOG_LIBS": "1"})
    assert any("Popen(['git'" in line for line in by_environment)


def test_console_lines_carry_no_logger_names_and_come_once(approved: Project):
    lines = merge_with(approved, "-v")
    assert lines, "the stage said something"
    assert not any("branchops." in line or line.startswith(("INFO", "WARNING")) for line in lines), lines
    assert len(lines) == len(set(lines)), (
        f"printed twice: {[line for line in lines if lines.count(line) > 1]}"
    )


def on_a_terminal(project: Project, *args: str, env: dict[str, str] | None = None) -> str:
    """stderr of ``branchops ARGS`` when stderr is a terminal (a pseudo-terminal)."""
    controller, terminal = os.openpty()
    try:
        branchops(project, *args, env=env, stderr=terminal)
    finally:
        os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the terminal side is closed and everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return b"".join(chunks).decode()


def test_colour_only_on_a_terminal_and_never_with_no_color(approved: Project):
    red_error = "\x1b[31m"
    assert red_error in on_a_terminal(approved, "mr", "show", "99")
    assert "error: merge request !99" in on_a_terminal(approved, "mr", "show", "99", env={"NO_COLOR": "1"})
    assert "\x1b[" not in on_a_terminal(approved, "mr", "show", "99", env={"NO_COLOR": "1"})
    piped = branchops(approved, "mr", "show", "99")
    assert piped.stderr == "error: merge request !99 does not exist\n"


@pytest.mark.parametrize("verbosity", [QUIET, NORMAL, VERBOSE, DEBUG])
def test_a_library_record_of_any_level_needs_the_flag(verbosity: int):
    """The filter itself: -vv also lowers the level of branchops' own loggers only, so a library's DEBUG
    record is never made without --log-libs, but its warnings are, and they stay off the console too."""
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        record = logging.LogRecord("git.cmd", level, __file__, 1, "a library line", None, None)
        assert not ConsoleFilter(verbosity, libraries=False).filter(record)
    warning = logging.LogRecord("git.cmd", logging.WARNING, __file__, 1, "a library warning", None, None)
    assert ConsoleFilter(verbosity, libraries=True).filter(warning)
