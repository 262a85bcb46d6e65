"""Serving benchmark: the local model server's :predict against calling the same SavedModel in-process.

Run: ``python bench/bench_serving.py [--runs 5] [--requests 300]``. Measures, in one run:

* :predict latency (p50, p99) and sequential throughput through the REST server (one client on one
  keep-alive connection, one row per request, row format), and the same SavedModel's
  ``serving_default`` called in this process (the physical limit); the overhead as a ratio and in
  milliseconds. The server's overhead is measured with a lean client (``http.client``); the same
  requests through ``requests.Session`` (what ``ServingClient`` uses) are reported beside it, since a
  client library's own cost can be larger than the server's;
* the same :predict latency on a second server that logs every request (the prediction log at sample
  rate 1.0), beside the first, which logs nothing;
* throughput with 4 concurrent clients;
* the duration of a local rolling rollout (new version loaded and checked on the canary server, then
  switched), of a rollback to the older version (checked on the serving server, where unlabelled
  requests do not reach it) and of an automatic rollback of a broken version.

Medians over ``--runs`` runs; in each run both sides first make ``WARM_UP_CALLS`` unmeasured calls.
Writes ``bench/results/serving.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_FEATURES = 5 * 31  # the reference model: 5 lagged returns of 31 tickers
HIDDEN = (64, 32)
WARM_UP_CALLS = 50  # per side and run, not measured


def build_model(target: Path, seed: int, falsify_sample: bool = False) -> Path:
    """An MLP with the reference model's shape, exported in the serving contract's layout."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    sizes = (N_FEATURES, *HIDDEN, 1)

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights_ = [
                tf.Variable(rng.normal(0, 0.1, (a, b)).astype("float32")) for a, b in zip(sizes, sizes[1:])
            ]

        @tf.function(input_signature=[tf.TensorSpec([None, N_FEATURES], tf.float32, name="lagged_returns")])
        def serve(self, lagged_returns):
            x = lagged_returns
            for w in self.weights_[:-1]:
                x = tf.nn.relu(x @ w)
            p = tf.sigmoid(tf.squeeze(x @ self.weights_[-1], -1))
            return {"probability_up": p, "direction": tf.cast(p > 0.5, tf.int64)}

    model = Model()
    tf.saved_model.save(model, str(target), signatures={"serving_default": model.serve})
    sample = rng.normal(0, 0.02, (4, N_FEATURES)).astype("float32")
    out = model.serve(tf.constant(sample))
    meta = {
        "input": "lagged_returns",
        "outputs": ["probability_up", "direction"],
        "feature_names": [f"f{i}" for i in range(N_FEATURES)],
        "commit": "0" * 40,
        "version": int(target.name),
        "sample": {
            "instances": sample.tolist(),
            "predictions": {
                "probability_up": [
                    p + (0.3 if falsify_sample else 0.0) for p in out["probability_up"].numpy().tolist()
                ],
                "direction": out["direction"].numpy().tolist(),
            },
        },
    }
    (target / "assets.extra").mkdir()
    (target / "assets.extra" / "branchops_model.json").write_text(json.dumps(meta))
    return target


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    import math

    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]  # nearest rank


def timed(call, n: int) -> tuple[list[float], float]:
    latencies = []
    started = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - t) * 1000)
    return latencies, n / (time.perf_counter() - started)


def concurrent_throughput(url: str, row: list[float], clients: int, per_client: int) -> float:
    import requests

    def work() -> None:
        session = requests.Session()
        for _ in range(per_client):
            session.post(url, json={"instances": [row]}, timeout=30).raise_for_status()

    threads = [threading.Thread(target=work) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return clients * per_client / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    load_at_start = os.getloadavg()[0]
    import requests
    import tensorflow as tf

    from branchops.config import STAGES, BranchopsConfig
    from branchops.serving.local_backend import LocalServing
    from branchops.serving.release import Release

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    v1, v2 = build_model(work / "src" / "1", 1), build_model(work / "src" / "2", 2)
    broken = build_model(work / "src" / "3", 3, falsify_sample=True)
    row = json.loads((v1 / "assets.extra" / "branchops_model.json").read_text())["sample"]["instances"][0]

    # Baseline: the same SavedModel, in this process.
    fn = tf.saved_model.load(str(v1)).signatures["serving_default"]
    x = tf.constant([row], tf.float32)

    def in_process() -> None:
        fn(lagged_returns=x)["probability_up"].numpy()

    in_process()

    def server_config(base_path: Path, log_every_request: bool) -> BranchopsConfig:
        log = {"enabled": True, "sample_rate": 1.0} if log_every_request else {"enabled": False}
        return BranchopsConfig.model_validate(
            {
                "approvers": {s: ["a"] for s in STAGES},
                "serving": {"model_name": "djia", "local": {"base_path": str(base_path)}},
                "monitoring": {"log": log},
            }
        )

    serving = LocalServing(server_config(work / "serving", False), work / "state")
    serving.start(port=0)
    logging_serving = LocalServing(server_config(work / "serving-logged", True), work / "state-logged")
    logging_serving.start(port=0)
    keys = (
        "inproc_p50",
        "inproc_p99",
        "inproc_rps",
        "rest_p50",
        "rest_p99",
        "rest_rps",
        "requests_p50",
        "requests_p99",
        "logged_p50",
        "logged_p99",
        "rest_rps_4",
        "rollout_s",
        "rollback_s",
        "auto_rollback_s",
    )
    rows: dict[str, list[float]] = {k: [] for k in keys}

    def release(version: int) -> Release:
        return Release.model_validate(
            {"model": "djia", "version": version, "source": {"volume": "m", "path": str(version)}}
        )

    try:
        assert serving.deploy(release(1), v1).ok
        assert logging_serving.deploy(release(1), v1).ok
        import http.client
        from urllib.parse import urlsplit

        session = requests.Session()
        url = serving.client().model_url() + ":predict"
        parts = urlsplit(url)
        headers = {"Content-Type": "application/json"}
        # One keep-alive connection per run (the server closes connections idle for its channel timeout,
        # which a rollout between runs exceeds).
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

        def rest() -> None:
            connection.request("POST", parts.path, body=json.dumps({"instances": [row]}), headers=headers)
            response = connection.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200 and answer["predictions"], answer

        def with_requests() -> None:
            session.post(url, json={"instances": [row]}, timeout=30).raise_for_status()

        logged_parts = urlsplit(logging_serving.client().model_url() + ":predict")
        logged_connection = http.client.HTTPConnection(logged_parts.hostname, logged_parts.port, timeout=30)

        def logged() -> None:
            body = json.dumps({"instances": [row]})
            logged_connection.request("POST", logged_parts.path, body=body, headers=headers)
            response = logged_connection.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200 and answer["predictions"], answer

        rest()
        with_requests()
        for run in range(args.runs):
            connection.close()
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            rest()
            logged_connection.close()
            logged_connection = http.client.HTTPConnection(
                logged_parts.hostname, logged_parts.port, timeout=30
            )
            logged()
            calls = (("inproc", in_process), ("rest", rest), ("logged", logged), ("requests", with_requests))
            for name, call in calls:
                # steady state on both sides alike: the first calls of a freshly (re)loaded version pay
                # TensorFlow's one-time costs (graph optimisation, thread pools, allocator growth), and
                # the version on the server has just been rolled out and back by the previous run
                timed(call, WARM_UP_CALLS)
                lat, rps = timed(call, args.requests)
                rows[f"{name}_p50"].append(statistics.median(lat))
                rows[f"{name}_p99"].append(pct(lat, 99))
                if f"{name}_rps" in rows:
                    rows[f"{name}_rps"].append(rps)
            rows["rest_rps_4"].append(concurrent_throughput(url, row, 4, args.requests // 4))
            for key, action, expect_ok in (
                ("rollout_s", lambda: serving.deploy(release(2), v2), True),
                ("rollback_s", lambda: serving.rollback_to(1), True),
                ("auto_rollback_s", lambda: serving.deploy(release(3), broken), False),
            ):
                started = time.perf_counter()
                result = action()
                rows[key].append(time.perf_counter() - started)
                assert result.ok == expect_ok, (key, result.reason)
            print(
                f"run {run + 1}/{args.runs}: in-process p50 {rows['inproc_p50'][-1]:.2f} ms, "
                f"REST p50 {rows['rest_p50'][-1]:.2f} ms, rollout {rows['rollout_s'][-1]:.2f} s",
                file=sys.stderr,
            )
    finally:
        serving.stop()
        logging_serving.stop()
    load_at_end = os.getloadavg()[0]

    m = {k: statistics.median(v) for k, v in rows.items()}
    table = [
        f"| serving (median of {args.runs} runs, {args.requests} requests each, "
        f"1 row of {N_FEATURES} features) "
        "| in-process SavedModel | local REST server (http.client) | overhead |",
        "|---|---|---|---|",
        f"| :predict p50 latency | {m['inproc_p50']:.2f} ms | {m['rest_p50']:.2f} ms | "
        f"{m['rest_p50'] / m['inproc_p50']:.1f}x, +{m['rest_p50'] - m['inproc_p50']:.2f} ms |",
        f"| :predict p99 latency | {m['inproc_p99']:.2f} ms | {m['rest_p99']:.2f} ms | "
        f"{m['rest_p99'] / m['inproc_p99']:.1f}x, +{m['rest_p99'] - m['inproc_p99']:.2f} ms |",
        f"| :predict p50 / p99 through requests.Session | | {m['requests_p50']:.2f} / "
        f"{m['requests_p99']:.2f} ms | +{m['requests_p50'] - m['inproc_p50']:.2f} / "
        f"+{m['requests_p99'] - m['inproc_p99']:.2f} ms |",
        f"| :predict p50 / p99 with the prediction log on (every request logged; a second server) | | "
        f"{m['logged_p50']:.2f} / {m['logged_p99']:.2f} ms | {m['logged_p50'] - m['rest_p50']:+.2f} / "
        f"{m['logged_p99'] - m['rest_p99']:+.2f} ms over the log off |",
        f"| throughput, 1 client | {m['inproc_rps']:.0f} req/s | {m['rest_rps']:.0f} req/s | "
        f"{m['inproc_rps'] / m['rest_rps']:.1f}x fewer |",
        f"| throughput, 4 clients | — | {m['rest_rps_4']:.0f} req/s | |",
        "| rolling rollout 1 → 2 (copy, load, signature + smoke test, switch, retire) | | "
        f"{m['rollout_s']:.2f} s | |",
        f"| rollback 2 → 1 (reload beside 2 on the serving server, checks, switch, retire 2) | | "
        f"{m['rollback_s']:.2f} s | |",
        f"| automatic rollback of a broken version (copy, load, smoke test fails, restore) | | "
        f"{m['auto_rollback_s']:.2f} s | |",
    ]
    table += [
        "",
        f"Measured on {os.cpu_count()} CPUs with a 1-minute load average of {load_at_start:.1f} at the "
        f"start and {load_at_end:.1f} at the end (a shared machine: absolute numbers are noisy, the ratios "
        "measured in the same run are the point). The REST overhead is HTTP + JSON on both sides (the "
        "client, waitress, row-format decoding and shape checks, TF Serving's and branchops' metrics; "
        ":predict bypasses Flask's per-request machinery); requests.Session adds its own per-request cost "
        "on top of the same server.",
        "",
        "The rolling rollout and the automatic rollback load the new version on a canary server of its "
        "own, a new process that imports TensorFlow (most of their time), because TF Serving answers an "
        "unlabelled request with the highest version it has loaded: version 2 loaded on the serving "
        "server would take the ordinary clients' traffic before any check (issue 13, item 3). The rollback "
        "to version 1 is checked on the serving server, beside version 2, where unlabelled requests do "
        "not reach it, and pays no import.",
        "",
        "Per run (the load moves between runs; each run measures both sides back to back): :predict p50 "
        f"overhead {[round(r - i, 2) for r, i in zip(rows['rest_p50'], rows['inproc_p50'])]} ms, p99 "
        f"overhead {[round(r - i, 2) for r, i in zip(rows['rest_p99'], rows['inproc_p99'])]} ms, rolling "
        f"rollout {[round(s, 2) for s in rows['rollout_s']]} s, "
        f"rollback {[round(s, 2) for s in rows['rollback_s']]} s.",
    ]
    text = "\n".join(table) + "\n"
    out = ROOT / "bench" / "results" / "serving.md"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
