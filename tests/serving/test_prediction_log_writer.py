"""The prediction log's writer in this process (what a server process cannot show on demand: a writer
that has fallen behind, a failing disk, a foreign file in the folder), and the local backend's side of
monitoring without a server: which flags it starts the server with, the files it reads and writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from branchops.errors import BranchopsError
from branchops.serving import prediction_log
from branchops.serving.local_backend import LocalServing
from branchops.serving.prediction_log import PredictionLog, columnar_inputs, columnar_outputs, log_files
from tests.serving.test_prediction_log import MONITOR, logging_config

ROW = [0.01, -0.02, 0.003, 0.0]


def model_version(inputs=("lagged_returns",), outputs=("direction", "probability_up"), version=3):
    signature = SimpleNamespace(inputs=dict.fromkeys(inputs), outputs=dict.fromkeys(outputs))
    return SimpleNamespace(version=version, signatures={"serving_default": signature})


def answer(rows: int) -> dict:
    return {"predictions": [{"direction": 1, "probability_up": 0.75}] * rows}


def count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"model": "djia", **labels}) or 0.0


def read_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for path in log_files(folder) for line in path.read_text().splitlines()]


@pytest.fixture
def blocked_writer(monkeypatch):
    """Holds the writer thread inside its write until ``release`` is set; ``writing`` says it got there."""
    writing, release = threading.Event(), threading.Event()
    append = prediction_log._append

    def slow_append(fd: int, data: bytes) -> None:
        writing.set()
        assert release.wait(30), "the test never released the writer"
        append(fd, data)

    monkeypatch.setattr(prediction_log, "_append", slow_append)
    yield writing, release
    release.set()


def test_a_full_queue_drops_and_counts_lines_instead_of_blocking_the_request(tmp_path, blocked_writer):
    writing, release = blocked_writer
    registry = CollectorRegistry()
    log = PredictionLog(tmp_path, "djia", queue_size=2, registry=registry)
    mv = model_version()
    log.submit(mv, None, {"instances": [ROW]}, answer(1), "first")
    assert writing.wait(10)  # the writer holds "first"; the queue has room for two more
    started = time.perf_counter()
    for i in range(9):
        log.submit(mv, None, {"instances": [ROW]}, answer(1), f"then-{i}")
    assert time.perf_counter() - started < 1.0  # nine submissions against a stuck writer: never waited
    assert count(registry, "branchops_prediction_log_dropped_lines_total", reason="queue_full") == 7
    release.set()
    log.close()
    assert [line["request_id"] for line in read_lines(tmp_path)] == ["first", "then-0", "then-1"]
    assert count(registry, "branchops_prediction_log_lines_total") == 3


def test_close_writes_what_is_queued_and_later_answers_are_counted_as_dropped(tmp_path, blocked_writer):
    writing, release = blocked_writer
    registry = CollectorRegistry()
    log = PredictionLog(tmp_path, "djia", registry=registry)
    mv = model_version()
    for i in range(5):
        log.submit(
            mv, "stable", {"inputs": [ROW]}, {"outputs": {"direction": [1], "probability_up": [0.7]}}, str(i)
        )
    assert writing.wait(10)
    threading.Timer(0.3, release.set).start()  # the writer catches up while close() waits for it
    log.close()
    assert [line["request_id"] for line in read_lines(tmp_path)] == ["0", "1", "2", "3", "4"]
    log.submit(mv, None, {"instances": [ROW]}, answer(1), "too-late")
    assert count(registry, "branchops_prediction_log_dropped_lines_total", reason="closed") == 1
    assert len(read_lines(tmp_path)) == 5


def test_a_line_larger_than_a_file_is_dropped_and_counted_not_written(tmp_path):
    registry = CollectorRegistry()
    log = PredictionLog(tmp_path, "djia", max_file_bytes=4096, registry=registry)
    mv = model_version()
    log.submit(mv, None, {"instances": [ROW] * 200}, answer(200), "huge")
    log.submit(mv, None, {"instances": [ROW]}, answer(1), "small")
    log.close()
    assert [line["request_id"] for line in read_lines(tmp_path)] == ["small"]
    assert count(registry, "branchops_prediction_log_dropped_lines_total", reason="too_large") == 1
    assert all(path.stat().st_size <= 4096 for path in log_files(tmp_path))


def test_the_oldest_files_of_the_folder_go_first_whichever_process_wrote_them(tmp_path):
    # files another (earlier) server process left
    for stamp in ("20250101T000000000000", "20250102T000000000000", "20250103T000000000000"):
        (tmp_path / f"predictions-{stamp}-1.jsonl").write_text("{}\n")
    (tmp_path / "monitor.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("not a log file")
    log = PredictionLog(tmp_path, "djia", max_file_bytes=4096, max_files=2, registry=CollectorRegistry())
    log.submit(model_version(), None, {"instances": [ROW]}, answer(1), "new")
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[:-2] == ["monitor.json", "notes.txt"]
    assert names[-2] == "predictions-20250103T000000000000-1.jsonl"
    assert json.loads(Path(tmp_path / names[-1]).read_text())["request_id"] == "new"


def test_a_folder_that_cannot_be_written_drops_and_counts_lines_and_recovers(tmp_path, caplog):
    folder = tmp_path / "log"
    folder.write_text("a file where the folder should be")
    registry = CollectorRegistry()
    log = PredictionLog(folder, "djia", registry=registry)
    mv = model_version()
    for i in range(3):
        log.submit(mv, None, {"instances": [ROW]}, answer(1), f"lost-{i}")
    deadline = time.monotonic() + 10
    while count(registry, "branchops_prediction_log_dropped_lines_total", reason="write_error") < 3:
        assert time.monotonic() < deadline, "the failed writes were not counted"
        time.sleep(0.02)
    warnings = [r for r in caplog.records if "cannot write the prediction log" in r.getMessage()]
    assert len(warnings) == 1
    folder.unlink()
    log.submit(mv, None, {"instances": [ROW]}, answer(1), "kept")
    log.close()
    assert [line["request_id"] for line in read_lines(folder)] == ["kept"]


def test_a_write_cut_short_by_a_full_disk_leaves_no_partial_line(tmp_path, monkeypatch):
    # ENOSPC after part of a line: left there, the half line would make every later read of the log
    # refuse it as corrupt, until the file is pruned
    from branchops.monitoring import traffic

    append, calls = prediction_log._append, []

    def disk_fills_up(fd: int, data: bytes) -> None:
        calls.append(data)
        if len(calls) == 2:
            os.write(fd, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        append(fd, data)

    monkeypatch.setattr(prediction_log, "_append", disk_fills_up)
    log = PredictionLog(tmp_path, "djia", registry=CollectorRegistry())
    for request_id in ("before", "cut", "after"):
        log.submit(model_version(), None, {"instances": [ROW]}, answer(1), request_id)
    log.close()
    files = {path.name: path.read_bytes() for path in log_files(tmp_path)}
    requests = traffic.read_prediction_log(files).requests
    assert [r.request_id for r in requests] == ["before", "after"]


def test_several_inputs_and_outputs_become_one_column_each_whatever_the_format():
    names = ["prices", "volumes"]
    rows = [{"prices": [1.0, 2.0], "volumes": [3]}, {"prices": [4.0, 5.0], "volumes": [6]}]
    columns = {"prices": [[1.0, 2.0], [4.0, 5.0]], "volumes": [[3], [6]]}
    assert columnar_inputs({"instances": rows}, names) == columns
    assert columnar_inputs({"inputs": columns}, names) == columns
    # a single input: keyed by its signature name, a base64 string included
    assert columnar_inputs({"instances": [{"b64": "AAE="}]}, ["image"]) == {"image": [{"b64": "AAE="}]}
    assert columnar_inputs({"inputs": {"b64": "AAE="}}, ["image"]) == {"image": {"b64": "AAE="}}
    assert columnar_inputs({"inputs": [[1.0]]}, ["x"]) == {"x": [[1.0]]}
    two = ["direction", "probability_up"]
    predictions = [{"direction": 1, "probability_up": 0.7}, {"direction": 0, "probability_up": 0.2}]
    expected = {"direction": [1, 0], "probability_up": [0.7, 0.2]}
    assert columnar_outputs({"predictions": predictions}, two) == expected
    assert columnar_outputs({"outputs": expected}, two) == expected
    assert columnar_outputs({"predictions": [0.7, 0.2]}, ["p"]) == {"p": [0.7, 0.2]}
    assert columnar_outputs({"outputs": [0.7, 0.2]}, ["p"]) == {"p": [0.7, 0.2]}


# -- the local backend's side ---------------------------------------------------------------------------


def test_the_stable_server_is_started_with_the_configured_log_and_the_canary_without(tmp_path):
    config = logging_config(tmp_path / "models", sample_rate=0.125, max_file_bytes=8192, max_files=4)
    serving = LocalServing(config, tmp_path / "state")
    command = serving.server_command(0)
    flags = dict(zip(command[3::2], command[4::2]))
    assert flags["--prediction-log"] == str((tmp_path / "state" / "prediction-log").resolve())
    assert float(flags["--log-sample-rate"]) == 0.125
    assert flags["--log-max-file-bytes"] == "8192" and flags["--log-max-files"] == "4"
    assert "--prediction-log" not in serving._canary_track().server_command(0)
    disabled = LocalServing(logging_config(tmp_path / "models", enabled=False), tmp_path / "state")
    assert not [arg for arg in disabled.server_command(0) if arg.startswith(("--prediction-log", "--log-"))]


def test_the_server_refuses_a_sample_rate_outside_zero_to_one(tmp_path):
    command = [sys.executable, "-m", "branchops.serving.server", "--model-name", "djia", "--port", "0"]
    command += ["--base-path", str(tmp_path), "--prediction-log", str(tmp_path / "log")]
    # a server that accepted the rate would run until killed by the timeout
    refused = subprocess.run(
        [*command, "--log-sample-rate", "1.5"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2
    assert "--log-sample-rate: expected a number from 0 to 1, got 1.5" in refused.stderr


def test_read_prediction_log_and_outcomes_return_their_files_only(tmp_path):
    serving = LocalServing(logging_config(tmp_path / "models"), tmp_path / "state")
    assert serving.read_prediction_log() == {} and serving.read_outcomes() == {}
    log_dir, outcomes = tmp_path / "state" / "prediction-log", tmp_path / "state" / "outcomes"
    log_dir.mkdir(parents=True)
    outcomes.mkdir()
    (log_dir / "predictions-20261129T225901000000-7.jsonl").write_bytes(b'{"time": "x"}\n')
    (log_dir / "monitor.json").write_text("{}")
    (outcomes / "aapl.csv").write_bytes(b"request_id,label\nAAPL/2016-03-14,1\n")
    (outcomes / "more.jsonl").write_bytes(b'{"request_id": "a", "row": 0, "label": 0}\n')
    (outcomes / "README.txt").write_text("not outcomes")
    (outcomes / "old.csv.bak").write_text("not outcomes")
    assert serving.read_prediction_log() == {"predictions-20261129T225901000000-7.jsonl": b'{"time": "x"}\n'}
    assert serving.read_outcomes() == {
        "aapl.csv": b"request_id,label\nAAPL/2016-03-14,1\n",
        "more.jsonl": b'{"request_id": "a", "row": 0, "label": 0}\n',
    }


@pytest.mark.parametrize(
    "change",
    [
        {"version": "one"},
        {"drifted": "yes"},
        {"time": "yesterday"},
        {"time": "2026-11-29T22:59:01"},  # no time zone
        {"features": {"r0": {"psi": "high"}}},
        {"live_metric": {"value": 0.5}},  # no metric name
        {"model": None},
    ],
)
def test_publish_monitoring_refuses_what_the_server_could_not_expose_and_keeps_the_last_result(
    tmp_path, change
):
    serving = LocalServing(logging_config(tmp_path / "models"), tmp_path / "state")
    serving.publish_monitoring(MONITOR)
    published = (tmp_path / "state" / "prediction-log" / "monitor.json").read_text()
    assert json.loads(published) == MONITOR
    with pytest.raises(BranchopsError, match="monitoring result"):
        serving.publish_monitoring({**MONITOR, **change})
    assert (tmp_path / "state" / "prediction-log" / "monitor.json").read_text() == published


def test_a_backend_without_monitoring_says_so_by_name():
    from branchops.serving.base import Serving

    class Bare(Serving):
        backend = "bare"
        status = live_version = deploy = rollback_to = client = export_metadata = None

    with pytest.raises(BranchopsError, match="not supported by serving backend 'bare'"):
        Bare().read_prediction_log()
    with pytest.raises(BranchopsError, match="not supported by serving backend 'bare'"):
        Bare().publish_monitoring(MONITOR)
    with pytest.raises(BranchopsError, match="not supported by serving backend 'bare'"):
        Bare().read_outcomes()
