"""The local server's prediction log, through the real server process (docs/monitoring.md's format):
what it logs of each request, its sample, its rotation, and the monitor gauges it exposes.

One server logs every request (default rotation) and is shared by the tests that read single lines;
another samples a quarter of its requests into small files for the sampling and rotation tests."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from branchops.serving import make_serving
from branchops.serving.base import SMOKE_REQUEST_ID
from branchops.serving.client import ServingError, metric_sum
from branchops.serving.release import Release
from tests.serving.model_factory import SAMPLE

LINE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
LINE_KEYS = {"time", "request_id", "model", "version", "label", "inputs", "outputs"}


def logging_config(base_path: Path, **log):
    from branchops.config import BranchopsConfig

    stages = ("build-components", "kf-pipeline", "training", "deploy-model")
    return BranchopsConfig.model_validate(
        {
            "approvers": {s: ["lead"] for s in stages},
            "serving": {
                "model_name": "djia",
                "local": {"base_path": str(base_path)},
                "rollout": {"requests_per_step": 10, "min_step_seconds": 0.5, "max_p99_latency_ms": 60000},
            },
            "monitoring": {"log": {"enabled": True, **log}},
        }
    )


def serve_v1_logging(models, root: Path, **log):
    serving = make_serving(logging_config(root / "models", **log), root / "state")
    serving.start(port=0)
    try:
        release = Release.model_validate(
            {"model": "djia", "version": 1, "source": {"volume": "m", "path": "1"}}
        )
        assert serving.deploy(release, models["v1"]).outcome == "deployed"
        yield serving
    finally:
        serving.stop()


@pytest.fixture(scope="module")
def logging_server(models, tmp_path_factory):
    """Version 1 stable, every request logged."""
    yield from serve_v1_logging(models, tmp_path_factory.mktemp("plog"), sample_rate=1.0)


@pytest.fixture(scope="module")
def sampling_server(models, tmp_path_factory):
    """Version 1 stable, a quarter of the requests logged, into at most 3 files of at most 4096 bytes."""
    yield from serve_v1_logging(
        models, tmp_path_factory.mktemp("plog-sampled"), sample_rate=0.25, max_file_bytes=4096, max_files=3
    )


def logged_lines(serving) -> list[dict]:
    """Every line of the log, in file-name order then line order; each one whole and JSON."""
    lines = []
    for name, content in sorted(serving.read_prediction_log().items()):
        assert content.endswith(b"\n"), f"{name} ends in a partial line"
        lines += [json.loads(line) for line in content.decode().splitlines()]
    return lines


def wait_for_request(serving, request_id: str, timeout_s: float = 30) -> list[dict]:
    """The log's lines once the line of ``request_id`` is there (the writer runs behind the answers)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = logged_lines(serving)
        if any(line["request_id"] == request_id for line in lines):
            return lines
        time.sleep(0.05)
    raise AssertionError(f"request {request_id} was not logged within {timeout_s}s")


def line_of(lines: list[dict], request_id: str) -> dict:
    found = [line for line in lines if line["request_id"] == request_id]
    assert len(found) == 1, f"{len(found)} lines for request {request_id}"
    return found[0]


def columns(predictions: list[dict]) -> dict[str, list]:
    return {name: [p[name] for p in predictions] for name in predictions[0]}


def test_a_row_request_is_logged_columnar_with_its_answer_version_and_request_id(logging_server):
    client = logging_server.client()
    before = datetime.now(timezone.utc)
    answer = client.predict(instances=SAMPLE, request_id="AAPL/2016-03-14")
    line = line_of(wait_for_request(logging_server, "AAPL/2016-03-14"), "AAPL/2016-03-14")
    assert set(line) == LINE_KEYS
    assert line["model"] == "djia" and line["version"] == 1 and line["label"] is None
    assert line["inputs"] == {"lagged_returns": SAMPLE}
    assert line["outputs"] == columns(answer["predictions"])
    assert LINE_TIME.match(line["time"]), line["time"]
    logged_at = datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert before <= logged_at <= datetime.now(timezone.utc)


def test_named_instances_and_columnar_requests_are_logged_in_the_same_columnar_form(logging_server):
    client = logging_server.client()
    named = client.predict(instances=[{"lagged_returns": row} for row in SAMPLE[:2]], request_id="named")
    by_name = client.predict(inputs={"lagged_returns": SAMPLE[1:]}, label="stable", request_id="columnar")
    unnamed = client.predict(inputs=SAMPLE[:1], version=1, request_id="columnar-unnamed")
    lines = wait_for_request(logging_server, "columnar-unnamed")

    assert line_of(lines, "named")["inputs"] == {"lagged_returns": SAMPLE[:2]}
    assert line_of(lines, "named")["outputs"] == columns(named["predictions"])
    columnar = line_of(lines, "columnar")
    assert columnar["inputs"] == {"lagged_returns": SAMPLE[1:]}
    assert columnar["outputs"] == by_name["outputs"]
    assert set(columnar["outputs"]) == {"direction", "probability_up"}
    assert columnar["label"] == "stable" and columnar["version"] == 1
    assert line_of(lines, "columnar-unnamed")["inputs"] == {"lagged_returns": SAMPLE[:1]}
    assert line_of(lines, "columnar-unnamed")["outputs"] == unnamed["outputs"]


def test_a_request_without_x_request_id_is_logged_with_a_null_id_and_nothing_of_its_headers(logging_server):
    url = logging_server.client().model_url() + ":predict"
    marker = [[0.125, -0.25, 0.5, -1.0]]
    response = requests.post(
        url,
        json={"instances": marker},
        headers={"Authorization": "Bearer test-authorization-value"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    logging_server.client().predict(instances=SAMPLE[:1], request_id="after-anonymous")
    lines = wait_for_request(logging_server, "after-anonymous")
    anonymous = [line for line in lines if line["inputs"] == {"lagged_returns": marker}]
    assert len(anonymous) == 1 and anonymous[0]["request_id"] is None
    assert set(anonymous[0]) == LINE_KEYS
    raw = b"".join(logging_server.read_prediction_log().values())
    assert b"test-authorization-value" not in raw and b"Authorization" not in raw


def test_an_error_answer_is_not_logged(logging_server):
    client = logging_server.client()
    with pytest.raises(ServingError) as wrong_width:
        client.predict(instances=[[1.0, 2.0]], request_id="refused-width")
    assert wrong_width.value.status == 400
    with pytest.raises(ServingError) as no_version:
        client.predict(instances=SAMPLE[:1], version=9, request_id="refused-version")
    assert no_version.value.status == 404
    client.predict(instances=SAMPLE[:1], request_id="after-refused")
    # One writer, in order: once the later request is logged, an earlier one would have been too.
    lines = wait_for_request(logging_server, "after-refused")
    assert not [line for line in lines if line["request_id"] in ("refused-width", "refused-version")]


def test_lines_are_in_time_order_in_files_named_by_time_and_pid(logging_server):
    client = logging_server.client()
    for i in range(20):
        client.predict(instances=SAMPLE[i % 3 : i % 3 + 1], request_id=f"order-{i}")
    lines = wait_for_request(logging_server, "order-19")
    ordered = [line["request_id"] for line in lines if str(line["request_id"]).startswith("order-")]
    assert ordered == [f"order-{i}" for i in range(20)]
    times = [line["time"] for line in lines]
    assert times == sorted(times) and len(set(times)) == len(times)
    pid = logging_server.status().pid
    for name in logging_server.read_prediction_log():
        assert re.fullmatch(rf"predictions-\d{{8}}T\d{{12}}-{pid}\.jsonl", name), name


def settled_counts(client, timeout_s: float = 30) -> tuple[float, float]:
    """(logged, dropped) once the writer has caught up (the counts stop moving)."""
    deadline = time.monotonic() + timeout_s
    previous = None
    while time.monotonic() < deadline:
        metrics = client.metrics()
        counts = (
            metric_sum(metrics, "branchops_prediction_log_lines_total", model="djia"),
            metric_sum(metrics, "branchops_prediction_log_dropped_lines_total", model="djia"),
        )
        if counts == previous:
            return counts
        previous = counts
        time.sleep(0.5)
    raise AssertionError(f"the prediction log counts still moved after {timeout_s}s: {previous}")


def test_the_server_logs_a_sample_at_the_configured_rate(sampling_server):
    client = sampling_server.client()
    logged_before, _ = settled_counts(client)
    sent = 400
    for i in range(sent):
        client.predict(instances=SAMPLE[:1], request_id=f"s-{i}")
    logged, dropped = settled_counts(client)
    assert dropped == 0
    # Binomial(400, 0.25): mean 100, standard deviation 8.7; five of them either side.
    assert 57 <= logged - logged_before <= 143, f"{logged - logged_before} of {sent} logged at rate 0.25"


def test_rotation_keeps_at_most_max_files_of_at_most_max_file_bytes_and_the_newest_lines(sampling_server):
    client = sampling_server.client()
    for i in range(400):
        client.predict(instances=SAMPLE + SAMPLE[:1], request_id=f"rot-{i}")
    settled_counts(client)
    files = sampling_server.read_prediction_log()
    assert 1 <= len(files) <= 3, sorted(files)
    for name, content in files.items():
        assert len(content) <= 4096, f"{name}: {len(content)} bytes"
    indices = [
        int(line["request_id"].split("-")[1])
        for line in logged_lines(sampling_server)
        if line["request_id"].startswith("rot-")
    ]
    assert indices == sorted(indices)
    # About 100 lines of about 600 bytes were logged; three files hold about 18, the newest ones: those
    # of the last ~70 requests. The oldest kept is from the second half with certainty short of 1e-9.
    assert indices and indices[0] >= 200, indices


def test_stopping_the_server_writes_every_answered_request(models, tmp_path):
    for serving in serve_v1_logging(models, tmp_path, sample_rate=1.0):
        client = serving.client()
        for i in range(3):
            client.predict(instances=SAMPLE, request_id=f"stop-{i}")
        # Its line takes the writer a good part of a second to encode: SIGTERM comes while it is queued.
        big = [[round(0.001 * (i % 997), 3), -0.5, 0.25, 1.0] for i in range(100_000)]
        client.timeout_s = 120
        client.predict(instances=big, request_id="stop-big")
        serving.stop()
        lines = logged_lines(serving)
        # the rollout's smoke test comes first, under an id of its own
        assert {line["request_id"] for line in lines[:-4]} == {SMOKE_REQUEST_ID}
        assert [line["request_id"] for line in lines[-4:]] == ["stop-0", "stop-1", "stop-2", "stop-big"]
        assert lines[-1]["inputs"] == {"lagged_returns": big}
        # the writer was waited for on SIGTERM, and said what it wrote
        closed = re.findall(
            r"prediction log closed: (\d+) lines written, (\d+) dropped", serving.log_file.read_text()
        )
        assert closed == [(str(len(lines)), "0")]


MONITOR = {
    "time": "2026-11-29T22:59:01Z",
    "model": "djia",
    "version": 1,
    "rows": 640,
    "drifted": True,
    "features": {
        "r0": {"psi": 0.41, "ks_pvalue": 0.0004, "drifted": True},
        "r1": {"psi": 0.02, "ks_pvalue": 0.61, "drifted": False},
    },
    "prediction": {"psi": 0.3, "ks_pvalue": 0.002},
    "live_metric": {"name": "roc_auc", "value": 0.58, "low": 0.52, "high": 0.63, "validated": 0.64, "n": 220},
}


def monitor_samples(client) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for s in client.metrics()
        if s.name.startswith("branchops_monitor_")
    }


def test_monitor_results_appear_as_gauges_after_publish_monitoring(logging_server):
    client = logging_server.client()
    (logging_server.prediction_log_dir / "monitor.json").unlink(missing_ok=True)
    assert monitor_samples(client) == {}
    logging_server.publish_monitoring(MONITOR)

    gauges = monitor_samples(client)
    v = (("model", "djia"), ("version", "1"))

    def key(name: str, **labels: str) -> tuple[str, tuple]:
        return name, tuple(sorted((*v, *labels.items())))

    assert gauges == {
        key("branchops_monitor_psi", feature="r0"): 0.41,
        key("branchops_monitor_psi", feature="r1"): 0.02,
        key("branchops_monitor_ks_pvalue", feature="r0"): 0.0004,
        key("branchops_monitor_ks_pvalue", feature="r1"): 0.61,
        key("branchops_monitor_prediction_psi"): 0.3,
        key("branchops_monitor_prediction_ks_pvalue"): 0.002,
        key("branchops_monitor_drift"): 1.0,
        key("branchops_monitor_live_metric", metric="roc_auc"): 0.58,
        key("branchops_monitor_live_metric_low", metric="roc_auc"): 0.52,
        key("branchops_monitor_live_metric_high", metric="roc_auc"): 0.63,
        key("branchops_monitor_rows"): 640.0,
        key("branchops_monitor_last_check_timestamp_seconds"): datetime(
            2026, 11, 29, 22, 59, 1, tzinfo=timezone.utc
        ).timestamp(),
    }
    # A later check replaces them (read at scrape time, not at the server's start).
    logging_server.publish_monitoring({**MONITOR, "drifted": False, "live_metric": None, "rows": 12})
    gauges = monitor_samples(client)
    assert gauges[key("branchops_monitor_drift")] == 0.0 and gauges[key("branchops_monitor_rows")] == 12.0
    assert not [name for name, _ in gauges if name.startswith("branchops_monitor_live_metric")]


def test_a_broken_monitor_file_exposes_nothing_and_is_warned_about_once(logging_server):
    client = logging_server.client()
    logging_server.publish_monitoring(MONITOR)
    assert monitor_samples(client)
    (logging_server.prediction_log_dir / "monitor.json").write_text('{"time": "2026-11-29T22:59:01Z", "mod')
    for _ in range(3):
        assert monitor_samples(client) == {}
    warnings = [
        line
        for line in logging_server.log_file.read_text().splitlines()
        if "not exposing the monitoring results" in line
    ]
    assert len(warnings) == 1, warnings
    # TF Serving's and branchops' own series are still there
    assert metric_sum(client.metrics(), "branchops_prediction_log_lines_total", model="djia") > 0
    logging_server.publish_monitoring(MONITOR)
    assert monitor_samples(client)
