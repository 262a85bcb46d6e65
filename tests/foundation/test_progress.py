"""Live progress: the heartbeat (a status line on a terminal, plain periodic lines in a CI log, no colour
with NO_COLOR), streamed commands, and the Kaggle download's periodic lines."""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
import time
import types
from pathlib import Path

import git
import pytest

from branchops import console, progress
from branchops.progress import heartbeat, run_streaming

SGR = re.compile(r"\x1b\[[0-9;]*m")  # Select Graphic Rendition: the escape sequences that colour text


class Terminal(io.StringIO):
    """A stream that says it is a terminal, and keeps what was written to it."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def on_a_terminal(monkeypatch, caplog):
    caplog.set_level(logging.INFO)  # as the CLI sets it: the heartbeat stays silent where INFO is not shown
    monkeypatch.delenv("CI", raising=False)  # CI=true means "a log", whatever isatty says
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(progress, "REDRAW_S", 0.05)
    console.set_verbosity(0)
    yield Terminal()
    console.set_verbosity(None)


def test_elapsed_reads_at_a_glance():
    assert [progress.elapsed(s) for s in (7, 130, 3840)] == ["7s", "2m10s", "1h04m"]


def test_in_a_log_the_heartbeat_is_a_plain_line_with_elapsed_time_and_counts(monkeypatch, caplog):
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.1)
    logger = logging.getLogger("branchops.stage.test")
    log_stream = io.StringIO()  # not a terminal
    with (
        caplog.at_level(logging.INFO),
        heartbeat("component tests", total=3, logger=logger, stream=log_stream) as p,
    ):
        p.advance()
        p.describe("running: train")
        time.sleep(0.45)
    lines = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert len(lines) >= 2, lines
    assert all(
        re.fullmatch(r"component tests … still running \(0s\): 1/3 done, running: train", x) for x in lines
    )
    assert log_stream.getvalue() == ""  # no status line, no carriage returns in a log
    count = len(lines)
    time.sleep(0.3)
    assert len([r for r in caplog.records if r.name == logger.name]) == count  # stopped with the block


def test_an_inner_heartbeat_stands_in_for_the_outer_one_until_it_ends(monkeypatch, caplog):
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.1)
    logger = logging.getLogger("branchops.demo")
    with caplog.at_level(logging.INFO), heartbeat("build-components", logger=logger, stream=io.StringIO()):
        with heartbeat("component tests", logger=logger, stream=io.StringIO()):
            time.sleep(0.45)
        inner_done = len(caplog.records)
        time.sleep(0.35)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:inner_done] and all(
        x.startswith("component tests … still running") for x in lines[:inner_done]
    )
    assert lines[inner_done:] and all(
        x.startswith("build-components … still running") for x in lines[inner_done:]
    )


def test_at_the_default_verbosity_the_console_shows_a_heartbeat_that_names_no_logger(monkeypatch):
    # A wait whose caller passes no logger of its own (the model server's start, `branchops component`)
    # must still be heard in a CI log at the default verbosity.
    from branchops.console import NORMAL, ConsoleFilter

    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.1)
    shown: list[str] = []

    class Console(logging.Handler):
        def emit(self, record):
            shown.append(record.getMessage())

    console = Console()
    console.addFilter(ConsoleFilter(NORMAL, libraries=False))
    root = logging.getLogger()
    root.addHandler(console)
    previous = root.level
    root.setLevel(logging.INFO)
    try:
        with heartbeat("starting model server", stream=io.StringIO()):
            time.sleep(0.35)
        with heartbeat(
            "component prepare", logger=logging.getLogger("branchops.component"), stream=io.StringIO()
        ):
            time.sleep(0.35)
    finally:
        root.removeHandler(console)
        root.setLevel(previous)
    assert any(x.startswith("starting model server … still running") for x in shown), shown
    assert any(x.startswith("component prepare … still running") for x in shown), shown


def test_under_ci_a_terminal_still_gets_plain_lines(monkeypatch, caplog):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.1)
    stream = Terminal()
    with (
        caplog.at_level(logging.INFO),
        heartbeat("training", logger=logging.getLogger("branchops.t"), stream=stream),
    ):
        time.sleep(0.35)
    assert "training … still running (0s)" in caplog.text and stream.getvalue() == ""


def test_on_a_terminal_a_status_line_is_redrawn_in_place_and_wiped_at_the_end(
    on_a_terminal, monkeypatch, caplog
):
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.05)
    terminal = on_a_terminal
    with (
        caplog.at_level(logging.INFO),
        heartbeat("image builds", total=2, logger=logging.getLogger("branchops.t"), stream=terminal) as p,
    ):
        time.sleep(0.3)
        p.advance()
        time.sleep(0.2)
    out = terminal.getvalue()
    frames = [SGR.sub("", f) for f in out.split("\r\x1b[K") if f]
    assert len(frames) >= 3, out
    assert re.fullmatch(r"[|/\-\\] image builds \[\.{20}\] 0s \(0/2 done\)", frames[0])
    assert re.fullmatch(r"[|/\-\\] image builds \[#{10}\.{10}\] 0s \(1/2 done\)", frames[-1])
    assert out.endswith("\r\x1b[K")  # nothing left on the line for what comes next
    assert "still running" not in caplog.text  # the status line replaces the periodic lines
    assert SGR.search(out)  # coloured on a terminal...


def test_the_status_line_never_wraps(on_a_terminal, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")  # what the stream's size falls back to when it is not a real tty
    with heartbeat(
        "a wait with a long name " * 4, logger=logging.getLogger("branchops.t"), stream=on_a_terminal
    ):
        time.sleep(0.3)
    frames = [SGR.sub("", f) for f in on_a_terminal.getvalue().split("\r\x1b[K") if f]
    assert frames and all(len(f) <= 39 and f.endswith("…") for f in frames), frames


def test_no_color_means_no_colour(on_a_terminal, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    with heartbeat("training", logger=logging.getLogger("branchops.t"), stream=on_a_terminal):
        time.sleep(0.3)
    out = on_a_terminal.getvalue()
    assert "training" in out and not SGR.search(out)


def test_a_log_line_never_shares_the_status_line(on_a_terminal):
    terminal = on_a_terminal
    handler = logging.StreamHandler(terminal)
    root = logging.getLogger()
    root.addHandler(handler)
    logger = logging.getLogger("branchops.t")
    try:
        with heartbeat("training", logger=logger, stream=terminal):
            for n in range(5):
                time.sleep(0.08)
                logger.warning("epoch %d done", n)
    finally:
        root.removeHandler(handler)
    out = terminal.getvalue()
    for n in range(5):
        at = out.index(f"epoch {n} done")
        assert out[:at].endswith("\r\x1b[K"), out[max(0, at - 40) : at + 12]


def test_quiet_shows_no_status_line(on_a_terminal):
    console.set_verbosity(-1)
    with heartbeat("training", logger=logging.getLogger("branchops.t"), stream=on_a_terminal):
        time.sleep(0.2)
    assert on_a_terminal.getvalue() == ""


def test_the_demo_says_a_stage_is_still_running_while_it_waits_for_it(monkeypatch, caplog, tmp_path):
    from branchops import demo

    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.1)
    merged = []

    def slow_merge_and_run(workdir, number, merger):
        time.sleep(0.45)
        merged.append((number, merger))
        return None, ["report"]

    monkeypatch.setattr(demo, "merge_and_run", slow_merge_and_run)
    story = demo.Demo(tmp_path, demo.load_template(None), echo=lambda line: None)
    with caplog.at_level(logging.INFO):
        assert story.merge_and_wait("training", 3, "lead") == ["report"]
    assert merged == [(3, "lead")]
    lines = [r.getMessage() for r in caplog.records if r.name == "branchops.demo"]
    assert len(lines) >= 2 and all(x.startswith("training … still running (") for x in lines), lines


# -- streamed commands ---------------------------------------------------------------------------------


def test_a_streamed_command_is_in_its_log_while_it_runs(tmp_path):
    release = tmp_path / "release"
    script = (
        f"printf 'line %s\\n' one; while [ ! -e {release} ]; do sleep 0.05; done; printf 'line %s\\n' two"
    )
    log_path = tmp_path / "out.log"
    result: dict = {}
    with log_path.open("w") as log:
        worker = threading.Thread(target=lambda: result.update(done=run_streaming(["sh", "-c", script], log)))
        worker.start()
        deadline = time.monotonic() + 15
        while "line one" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen_while_running = "line one" in log_path.read_text() and worker.is_alive()
        release.touch()
        worker.join(30)
    assert seen_while_running
    assert log_path.read_text() == "line one\nline two\n"
    assert result["done"].returncode == 0 and result["done"].tail == ["line one", "line two"]


def test_each_line_goes_to_the_console_at_v_and_is_masked(tmp_path, caplog):
    console.set_verbosity(1)
    try:
        with (tmp_path / "out.log").open("w") as log, caplog.at_level(logging.INFO, "branchops.output"):
            done = run_streaming(
                ["sh", "-c", "printf 'token=%s\\n' s3cr3t; exit 3"],
                log,
                label="train",
                transform=lambda line: line.replace("s3cr3t", "****"),
            )
    finally:
        console.set_verbosity(None)
    assert done.returncode == 3
    assert [r.getMessage() for r in caplog.records if r.name == "branchops.output"] == ["[train] token=****"]
    assert "s3cr3t" not in (tmp_path / "out.log").read_text()


def test_at_the_default_verbosity_the_lines_stay_out_of_the_console(tmp_path, caplog):
    console.set_verbosity(0)
    try:
        with (tmp_path / "out.log").open("w") as log, caplog.at_level(logging.INFO):
            run_streaming(["sh", "-c", "echo hello"], log, label="train")
    finally:
        console.set_verbosity(None)
    assert "hello" not in caplog.text and (tmp_path / "out.log").read_text() == "hello\n"


def test_a_streamed_command_past_its_timeout_is_killed_with_its_children(tmp_path):
    started = time.monotonic()
    with (tmp_path / "out.log").open("w") as log:
        done = run_streaming(["sh", "-c", "sleep 60 & wait"], log, timeout_s=0.5)
    assert done.timed_out and done.returncode is None
    assert time.monotonic() - started < 20


def test_a_local_component_run_passes_its_log_through_as_it_runs_under_a_heartbeat(
    tmp_path, monkeypatch, caplog, capfd
):
    from branchops.components_local import run_component

    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.1)
    repo, release = tmp_path / "repo", tmp_path / "release"
    (repo / "components" / "slow").mkdir(parents=True)
    (repo / "components" / "__init__.py").write_text("")
    (repo / "components" / "slow" / "__init__.py").write_text("")
    (repo / "components" / "__main__.py").write_text(
        "import json, pathlib, sys, time\n"
        "print('slow: reading the data', file=sys.stderr)\n"
        f"while not pathlib.Path({str(release)!r}).exists():\n"
        "    time.sleep(0.05)\n"
        "print(json.dumps({'rows': 3}))\n"
    )
    git.Repo.init(repo)
    result: dict = {}
    with caplog.at_level(logging.INFO):
        worker = threading.Thread(target=lambda: result.update(out=run_component(repo, "slow", {})))
        worker.start()
        deadline, err = time.monotonic() + 20, ""
        while time.monotonic() < deadline:
            err += capfd.readouterr().err
            if "component slow … still running" in caplog.text and "slow: reading the data" in err:
                break
            time.sleep(0.05)
        heartbeat_while_running = "component slow … still running" in caplog.text and worker.is_alive()
        passed_through = "slow: reading the data\n" in err
        release.touch()
        worker.join(30)
    assert heartbeat_while_running and passed_through
    assert result["out"] == {"rows": 3}


# -- the Kaggle download ---------------------------------------------------------------------------------


@pytest.fixture
def fake_kaggle(monkeypatch, tmp_path):
    """The kaggle package replaced at its API class (no network here). Its download writes the archive in
    chunks, as the real one does (flushed per chunk), then 'unzips' a real file."""
    calls: list[dict] = []

    class FakeKaggleApi:
        def authenticate(self):
            pass

        def dataset_download_files(
            self, dataset, path=None, force=False, quiet=True, unzip=False, licenses=[]
        ):
            calls.append({"dataset": dataset, "quiet": quiet})
            archive = Path(path) / "dataset.zip"
            with archive.open("wb") as out:
                for _ in range(6):
                    out.write(b"x" * 200_000)
                    out.flush()
                    time.sleep(0.1)
            archive.unlink()
            (Path(path) / "AAPL_2006-01-01_to_2018-01-01.csv").write_text(
                "Date,Open,High,Low,Close,Volume,Name\n2006-01-03,10.34,10.68,10.32,10.68,201853036,AAPL\n"
            )

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = FakeKaggleApi
    for name in ("kaggle", "kaggle.api"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    return calls


def test_a_kaggle_download_in_a_log_is_quiet_and_says_how_far_it_got(
    fake_kaggle, tmp_path, monkeypatch, caplog
):
    from components import consolidate

    monkeypatch.setattr(consolidate, "DOWNLOAD_PROGRESS_S", 0.15)
    with caplog.at_level(logging.INFO, "components.consolidate"):
        consolidate.download_kaggle_dataset("owner/prices", tmp_path / "src")
    assert fake_kaggle == [{"dataset": "owner/prices", "quiet": True}]
    lines = [r.getMessage() for r in caplog.records if "so far" in r.getMessage()]
    assert len(lines) >= 2, caplog.text
    assert all(
        re.fullmatch(r"downloading Kaggle dataset owner/prices: \d+\.\d MB so far \(\d+s\)", x) for x in lines
    )
    assert float(lines[-1].split(": ")[1].split()[0]) > 0


def test_a_kaggle_download_on_a_terminal_shows_the_kaggle_progress_bar(
    fake_kaggle, tmp_path, monkeypatch, caplog
):
    from components import consolidate

    monkeypatch.setattr(consolidate, "DOWNLOAD_PROGRESS_S", 0.15)
    monkeypatch.setattr(consolidate.sys, "stderr", Terminal())
    with caplog.at_level(logging.INFO, "components.consolidate"):
        consolidate.download_kaggle_dataset("owner/prices", tmp_path / "src")
    assert fake_kaggle == [{"dataset": "owner/prices", "quiet": False}]
    assert "so far" not in caplog.text  # the bar says it; no second voice
