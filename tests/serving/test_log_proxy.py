"""The logging proxy as it runs in a serving pod: a real process in front of the real local model server.

It must forward every request faithfully (the client cannot tell it is there, errors included), log only
the :predict requests answered 200, in the prediction log's format (docs/monitoring.md), with the request's
X-Request-ID and nothing else of its headers, and expose the monitoring gauges after TF Serving's metrics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from branchops.config import STAGES, BranchopsConfig
from branchops.serving import make_serving
from branchops.serving.client import metric_sum, parse_prometheus
from branchops.serving.prediction_log import MONITOR_FILE
from branchops.serving.release import Release
from tests.serving.conftest import make_config
from tests.serving.model_factory import SAMPLE

SECRET = "Bearer test-authorization-value"


def start_proxy(upstream: str, folder: Path | None, tmp: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """``python -m branchops.serving.log_proxy`` on a free port: (its process, its base URL)."""
    ready = tmp / f"proxy-{time.monotonic_ns()}.json"
    args = [sys.executable, "-m", "branchops.serving.log_proxy", "--upstream", upstream]
    args += ["--model-name", "djia", "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready)]
    if folder is not None:
        args += ["--prediction-log", str(folder)]
    process = subprocess.Popen([*args, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the proxy did not start: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    return process, f"http://127.0.0.1:{json.loads(ready.read_text())['port']}"


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """The local model server with version 1 stable: (its base URL, the served SavedModel)."""
    root = tmp_path_factory.mktemp("proxied")
    # TF Serving logs nothing of its own: neither does the server standing in for it here
    config = make_config(root / "models").model_copy(
        update={
            "monitoring": BranchopsConfig.model_validate(
                {"approvers": {s: ["lead"] for s in STAGES}, "monitoring": {"log": {"enabled": False}}}
            ).monitoring
        }
    )
    serving = make_serving(config, root / "state")
    serving.start(port=0)
    try:
        release = Release.model_validate(
            {"model": "djia", "version": 1, "source": {"volume": "m", "path": "1"}}
        )
        assert serving.deploy(release, models["v1"]).outcome == "deployed"
        yield serving.client().base_url
    finally:
        serving.stop()


@pytest.fixture(scope="module")
def shared_proxy(server, tmp_path_factory):
    """One proxy for the tests that only compare answers: its base URL."""
    tmp = tmp_path_factory.mktemp("shared-proxy")
    process, url = start_proxy(server, tmp / "predictions", tmp)
    try:
        yield url
    finally:
        stop(process)


@pytest.fixture
def proxied(server, tmp_path):
    """A proxy in front of the shared server, logging into a folder of its own: (base URL, log folder)."""
    folder = tmp_path / "predictions"
    folder.mkdir()
    process, url = start_proxy(server, folder, tmp_path)
    try:
        yield url, folder
    finally:
        stop(process)


def logged_lines(folder: Path, wanted: int, timeout_s: float = 20) -> list[dict]:
    """The log's lines once there are ``wanted`` (the writer runs after the answer went out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [
            json.loads(line)
            for path in sorted(folder.glob("predictions-*.jsonl"))
            for line in path.read_text().splitlines()
        ]
        if len(lines) >= wanted or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


REQUESTS = [
    ("GET", "/v1/models/djia", None),
    ("GET", "/v1/models/djia/versions/1", None),
    ("GET", "/v1/models/djia/labels/stable/metadata", None),
    ("GET", "/v1/models/djia/versions/9", None),  # 404
    ("GET", "/v1/models/djia/versions/one", None),  # 400
    ("GET", "/v1/models/nosuchmodel", None),  # 404
    ("POST", "/v1/models/djia:predict", {"instances": SAMPLE}),
    ("POST", "/v1/models/djia/labels/stable:predict", {"inputs": SAMPLE}),
    ("POST", "/v1/models/djia:predict", {"instances": [[1.0, 2.0]]}),  # 400: wrong width
    ("POST", "/v1/models/djia:predict", {"no": "instances"}),  # 400
    ("POST", "/v1/models/djia/versions/9:predict", {"instances": SAMPLE}),  # 404
    ("GET", "/v1/models/djia:predict", None),  # 405
    ("POST", "/v1/models/djia/frobnicate", {}),  # 404
]


@pytest.mark.parametrize("method, path, body", REQUESTS, ids=[f"{m} {p}" for m, p, _ in REQUESTS])
def test_answers_exactly_what_tf_serving_answers(server, shared_proxy, method, path, body):
    url = shared_proxy
    direct = requests.request(method, server + path, json=body, timeout=30)
    through = requests.request(method, url + path, json=body, timeout=30)
    assert through.status_code == direct.status_code
    assert through.content == direct.content
    assert through.headers.get("Content-Type") == direct.headers.get("Content-Type")


def test_a_body_that_is_not_json_reaches_tf_serving_as_sent(server, shared_proxy):
    url = shared_proxy
    body = b'{"instances": [[0.1, 0.2, 0.3, 0.4]'  # cut short
    direct = requests.post(server + "/v1/models/djia:predict", data=body, timeout=30)
    through = requests.post(url + "/v1/models/djia:predict", data=body, timeout=30)
    assert (through.status_code, through.content) == (direct.status_code, direct.content)
    assert direct.status_code == 400


def test_logs_only_the_predict_requests_answered_200_with_their_request_id(server, proxied):
    url, folder = proxied
    answers = {}
    for i, (path, body) in enumerate(
        [
            ("/v1/models/djia:predict", {"instances": SAMPLE}),
            ("/v1/models/djia/labels/stable:predict", {"inputs": {"lagged_returns": SAMPLE[:2]}}),
            ("/v1/models/djia/versions/1:predict", {"instances": [{"lagged_returns": SAMPLE[2]}]}),
        ]
    ):
        response = requests.post(
            url + path, json=body, headers={"X-Request-ID": f"AAPL/2016-03-1{i}", "Authorization": SECRET}
        )
        assert response.status_code == 200, response.text
        answers[f"AAPL/2016-03-1{i}"] = (path, body, response.json())
    # What must not be logged: errors, GETs, another model.
    assert requests.post(url + "/v1/models/djia:predict", json={"instances": [[1.0]]}).status_code == 400
    assert (
        requests.post(url + "/v1/models/djia/versions/9:predict", json={"instances": SAMPLE}).status_code
        == 404
    )
    assert requests.post(url + "/v1/models/other:predict", json={"instances": SAMPLE}).status_code == 404
    assert requests.get(url + "/v1/models/djia", headers={"X-Request-ID": "a-get"}).status_code == 200

    lines = logged_lines(folder, 3)
    time.sleep(0.5)  # anything wrongly logged would have been written by now
    lines = logged_lines(folder, 4, timeout_s=0)
    assert [line["request_id"] for line in lines] == list(answers)
    rows = {
        "AAPL/2016-03-10": SAMPLE,
        "AAPL/2016-03-11": SAMPLE[:2],
        "AAPL/2016-03-12": [SAMPLE[2]],
    }
    labels = {"AAPL/2016-03-10": None, "AAPL/2016-03-11": "stable", "AAPL/2016-03-12": None}
    for line in lines:
        path, body, answer = answers[line["request_id"]]
        assert line["model"] == "djia" and line["version"] == 1
        assert line["label"] == labels[line["request_id"]]
        assert line["inputs"] == {"lagged_returns": rows[line["request_id"]]}
        outputs = answer.get("outputs") or {
            name: [p[name] for p in answer["predictions"]] for name in answer["predictions"][0]
        }
        assert line["outputs"] == outputs
        assert time.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    text = "".join(p.read_text() for p in folder.glob("predictions-*.jsonl"))
    assert "test-authorization-value" not in text and "Authorization" not in text


def test_headers_reach_tf_serving_and_its_answer_headers_come_back(server, tmp_path):
    """The X-Request-ID and other end-to-end headers are forwarded (an echoing upstream shows them)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = {}

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            length = int(self.headers["Content-Length"])
            # headers as http.server keeps them: looked up case-insensitively, as HTTP names are
            seen.update(headers=self.headers, body=self.rfile.read(length), path=self.path)
            payload = b'{"error": "teapot"}'
            self.send_response(418)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Upstream", "tf-serving")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    echo = HTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    process, url = start_proxy(f"http://127.0.0.1:{echo.server_port}", tmp_path / "log", tmp_path)
    try:
        response = requests.post(
            url + "/v1/models/djia:predict?x=%2F1",
            data=b'{"instances": [[1]]}',
            headers={"X-Request-ID": "r-1", "Content-Type": "application/json", "Connection": "keep-alive"},
            timeout=30,
        )
    finally:
        stop(process)
        echo.shutdown()
    assert (response.status_code, response.content) == (418, b'{"error": "teapot"}')
    assert response.headers["X-Upstream"] == "tf-serving"
    assert seen["path"] == "/v1/models/djia:predict?x=%2F1"
    assert seen["body"] == b'{"instances": [[1]]}'
    assert seen["headers"].get("X-Request-ID") == "r-1"
    assert seen["headers"].get("Content-Type") == "application/json"


def test_metrics_are_tf_servings_followed_by_the_log_counts_and_the_monitor_gauges(proxied):
    url, folder = proxied
    assert requests.post(url + "/v1/models/djia:predict", json={"instances": SAMPLE}).status_code == 200
    assert logged_lines(folder, 1)
    (folder / MONITOR_FILE).write_text(
        json.dumps(
            {
                "time": "2026-11-29T23:00:00Z",
                "model": "djia",
                "version": 1,
                "rows": 250,
                "drifted": True,
                "features": {"r0": {"psi": 0.4, "ks_pvalue": 0.001, "drifted": True}},
                "prediction": {"psi": 0.1, "ks_pvalue": 0.3},
                "live_metric": None,
            }
        )
    )
    samples = parse_prometheus(requests.get(url + "/monitoring/prometheus/metrics", timeout=10).text)
    assert metric_sum(samples, ":tensorflow:serving:request_count", model_name="djia", status="OK") >= 1
    assert metric_sum(samples, "branchops_prediction_log_lines_total", model="djia") == 1
    assert metric_sum(samples, "branchops_monitor_psi", feature="r0", version="1") == 0.4
    assert metric_sum(samples, "branchops_monitor_drift", model="djia") == 1


def test_tf_serving_unreachable_is_a_503_in_its_error_format(tmp_path):
    process, url = start_proxy("http://127.0.0.1:9", tmp_path / "log", tmp_path)
    try:
        response = requests.post(url + "/v1/models/djia:predict", json={"instances": SAMPLE}, timeout=30)
        health = requests.get(url + "/branchops/log-proxy/health", timeout=10)
    finally:
        stop(process)
    assert response.status_code == 503
    assert "cannot be reached" in response.json()["error"]
    assert health.status_code == 200  # the proxy is ready; TF Serving has probes of its own


def test_sample_rate_zero_logs_nothing(server, tmp_path):
    folder = tmp_path / "log"
    process, url = start_proxy(server, folder, tmp_path, "--log-sample-rate", "0")
    try:
        for _ in range(5):
            assert (
                requests.post(url + "/v1/models/djia:predict", json={"instances": SAMPLE}).status_code == 200
            )
        time.sleep(0.5)
    finally:
        stop(process)
    assert logged_lines(folder, 1, timeout_s=0) == []


def test_what_is_queued_is_written_before_the_proxy_stops(server, tmp_path):
    folder = tmp_path / "log"
    process, url = start_proxy(server, folder, tmp_path)
    try:
        for i in range(20):
            headers = {"X-Request-ID": str(i)}
            assert requests.post(url + "/v1/models/djia:predict", json={"instances": SAMPLE}, headers=headers)
    finally:
        stop(process)
    assert process.returncode == 0
    assert sorted(int(line["request_id"]) for line in logged_lines(folder, 20, timeout_s=0)) == list(
        range(20)
    )
    assert os.listdir(folder)
