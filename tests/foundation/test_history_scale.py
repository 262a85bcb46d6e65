"""History that scales: what ``status``, ``lineage`` and ``reproduce``'s lookup read from git grows at most
linearly with the number of records, and ``status`` reads only each stage's newest record.

No timings: the test counts the bytes that reach branchops from git, through every way it reads git
(GitPython's object database, GitPython's git commands, and git processes it starts itself, through a
pipe or a file), at three history lengths, and compares what each further record costs. Opening every
record by its path re-reads the stage's whole records folder each time, so each further record costs
more than the one before: the quadratic history the benchmark (bench/bench_history.py) shows in seconds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import git
import pytest

from branchops import gitops
from branchops.lineage import find_training_run
from tests.foundation import record_history as history
from tests.foundation.conftest import make_project

SIZES = (10, 100, 190)  # records per stage branch; equal steps, so a linear cost has equal increments


class _Tapped:
    """A GitPython object stream that keeps a copy of what is read from it."""

    def __init__(self, stream, sink: list[bytes]) -> None:
        self._stream, self._sink = stream, sink

    def read(self, *args):
        data = self._stream.read(*args)
        self._sink.append(data)
        return data

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class GitReads:
    """What git hands to branchops, counted (and kept) at the channels it reads git through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        self.data: list[bytes] = []
        reads = self

        stream_object_data, get_object_data = git.cmd.Git.stream_object_data, git.cmd.Git.get_object_data
        execute, run = git.cmd.Git.execute, subprocess.run

        def received(output: str | bytes, size: int | None = None) -> None:
            reads.bytes += len(output) if size is None else size
            reads.data.append(output.encode() if isinstance(output, str) else output)

        def stream_counted(self, ref):
            hexsha, kind, size, stream = stream_object_data(self, ref)
            received(b"", size)
            return hexsha, kind, size, _Tapped(stream, reads.data)

        def data_counted(self, ref):
            found = get_object_data(self, ref)
            received(found[3])
            return found

        def execute_counted(self, command, *args, **kwargs):
            result = execute(self, command, *args, **kwargs)
            output = result[1] if isinstance(result, tuple) else result
            if isinstance(output, (str, bytes)):
                received(output)
            return result

        def run_counted(command, *args, **kwargs):
            into = kwargs.get("stdout")
            start = into.tell() if hasattr(into, "fileno") else 0
            done = run(command, *args, **kwargs)
            if isinstance(command, (list, tuple)) and command and command[0] == "git":
                # its output, whether it came back through a pipe or was written into a file
                received(done.stdout or b"")
                if hasattr(into, "fileno"):
                    with open(into.fileno(), "rb", closefd=False) as written:
                        written.seek(start)
                        received(written.read())
            return done

        monkeypatch.setattr(git.cmd.Git, "stream_object_data", stream_counted)
        monkeypatch.setattr(git.cmd.Git, "get_object_data", data_counted)
        monkeypatch.setattr(git.cmd.Git, "execute", execute_counted)
        monkeypatch.setattr(subprocess, "run", run_counted)

    def of(self, action) -> int:
        """The bytes read while ``action`` ran."""
        self.data.clear()
        before = self.bytes
        action()
        return self.bytes - before

    def saw(self, text: str) -> bool:
        """Whether ``text`` came through a counted channel during the last ``of``."""
        return text.encode() in b"".join(self.data)


@pytest.fixture(scope="module")
def histories(tmp_path_factory: pytest.TempPathFactory) -> dict[int, object]:
    projects = {}
    for count in SIZES:
        project = make_project(tmp_path_factory.mktemp(f"history-{count}"))
        history.fill_history(project.path, count)
        projects[count] = project
    return projects


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> GitReads:
    return GitReads(monkeypatch)


def increments(costs: dict[int, int]) -> tuple[float, float]:
    """What each further record cost, over the first and over the second step of SIZES."""
    small, middle, large = SIZES
    return (costs[middle] - costs[small]) / (middle - small), (costs[large] - costs[middle]) / (
        large - middle
    )


def test_lineage_reads_at_most_linearly_more_as_the_history_grows(histories, reads: GitReads) -> None:
    # the first model version: its training run is the oldest, so every stage's records are searched
    costs = {
        count: reads.of(lambda: project.run("lineage", str(history.FIRST_VERSION), "--json"))
        for count, project in histories.items()
    }
    first, second = increments(costs)
    # all of it is read (every deploy record is checked for the version): the counters see the records
    assert costs[SIZES[-1]] >= SIZES[-1] * len(history.SUMMARY_PADDING), costs
    assert second <= 1.2 * first, f"each further record cost {first:.0f} then {second:.0f} bytes: {costs}"


def test_status_lists_the_history_but_reads_only_the_newest_records(histories, reads: GitReads) -> None:
    costs = {count: reads.of(lambda: project.run("status", "--json")) for count, project in histories.items()}
    first, second = increments(costs)
    # a further record in each of the four stages adds a line to four listings, not a record read
    assert second <= len(history.SUMMARY_PADDING), f"each further record cost {second:.0f} bytes: {costs}"
    assert second <= 1.2 * first, costs
    # and the counters saw the four stages' newest records being read (a listing names neither)
    assert reads.saw(history.commit_of(SIZES[-1] - 1))
    assert all(reads.saw(f'"stage": "{stage}"') for stage in history.STAGE_RECORDS)


def test_finding_a_training_run_reads_at_most_linearly_more(histories, reads: GitReads) -> None:
    """``reproduce`` and ``lineage`` find their run this way: by version (newest first, here the oldest
    run: all of them), and by run id (one listing and one read)."""

    def find(project: Path, key: str) -> None:
        repo = gitops.open_repo(project.path)
        find_training_run(repo, project.tip("training"), key)

    by_version = {
        count: reads.of(lambda: find(project, str(history.FIRST_VERSION)))
        for count, project in histories.items()
    }
    first, second = increments(by_version)
    assert second <= 1.2 * first, by_version
    by_id = {
        count: reads.of(lambda: find(project, history.run_id(0))) for count, project in histories.items()
    }
    assert increments(by_id)[1] <= len(history.SUMMARY_PADDING), by_id
