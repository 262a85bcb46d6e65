"""Benchmark: the cost of one `branchops monitor` check per 10,000 logged requests.

A project whose local serving backend serves a model of the reference project's widest shape (the
direction model: 31 tickers x 5 lagged log returns = 155 features, computed from the real DJIA prices),
with the reference statistics components/export writes, and a prediction log of N requests of one row
each (real days drawn with replacement, in the log format of docs/monitoring.md, in files of 2,000 lines),
every one of them with its outcome. We time, medians of several runs, each on a fresh copy of the project
(so that every check reads all N lines):

* `monitor.check()`: the whole check (read and parse the log and the outcomes, drift of 155 features and
  of the prediction, the live ROC AUC with its 1,000-resample bootstrap interval, the two plots, the record
  committed to deploy-model, monitor.json);
* `monitor.check(dry_run=True)`: the same computation, nothing written;
* the baseline: parsing the log alone (`json.loads` of every line), what any reader of it must do.

    python bench/bench_monitor.py [--requests 10000] [--runs 5] [--data ../shared/data/djia]

Writes bench/results/monitor.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from branchops.monitoring import monitor  # noqa: E402
from components.export import reference_statistics  # noqa: E402

WINDOW = 5
VERSION = 1
LINES_PER_FILE = 2000
CONFIG = """\
approvers:
  build-components: [lead]
  kf-pipeline: [lead]
  training: [lead]
  deploy-model: [lead]
serving:
  model_name: djia
notifications:
  - kind: log_file
"""
USER = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@users.local",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@users.local",
}


def features(data: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Lagged log returns of every ticker on the days all traded; AAPL's direction that day; the days."""
    closes = {}
    for path in sorted(data.glob("*_2006-01-01_to_2018-01-01.csv")):
        with open(path, newline="") as handle:
            closes[path.name.split("_")[0]] = {
                r["Date"]: float(r["Close"]) for r in csv.DictReader(handle) if r["Close"]
            }
    tickers = sorted(closes)
    days = sorted(set.intersection(*(set(c) for c in closes.values())))
    returns = np.array(
        [[math.log(closes[t][b] / closes[t][a]) for t in tickers] for a, b in zip(days, days[1:])]
    )
    days = days[1:]
    aapl = tickers.index("AAPL")
    rows = [
        [returns[i - lag, j] for j in range(len(tickers)) for lag in range(1, WINDOW + 1)]
        for i in range(WINDOW, len(days))
    ]
    names = [f"{t}_ret_lag{lag}" for t in tickers for lag in range(1, WINDOW + 1)]
    labels = (returns[WINDOW:, aapl] > 0).astype(int)
    return names, np.asarray(rows, dtype="float32"), labels, days[WINDOW:]


def predict(x: np.ndarray) -> np.ndarray:
    weights = np.resize([4.0, 1.0, 1.0, 1.0, 1.0], x.shape[1])
    return (1 / (1 + np.exp(-(x.astype("float64") @ weights)))).astype("float32")


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **USER})


def make_project(where: Path, names, x, labels, days, requests: int) -> Path:
    """A project serving the model, with ``requests`` logged requests and their outcomes."""
    path = where / "project"
    (path / "config").mkdir(parents=True)
    (path / "config" / "branchops.yaml").write_text(CONFIG)
    (path / ".gitignore").write_text(".branchops/\n")
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "project")
    for branch in ("build-components", "kf-pipeline", "training", "deploy-model"):
        git(path, "branch", branch)
    train = x[: len(x) * 7 // 10]
    state = path / ".branchops"
    version_dir = state / "serving" / "djia" / str(VERSION)
    (version_dir / "assets.extra").mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"")
    metadata = {
        "input": "lagged_returns",
        "outputs": ["probability_up", "direction"],
        "feature_names": names,
        "threshold": 0.5,
        "sample": {
            "instances": train[:2].tolist(),
            "predictions": {"probability_up": predict(train[:2]).tolist()},
        },
        "reference": reference_statistics(train, names, predict(train), "probability_up"),
    }
    (version_dir / "assets.extra" / "branchops_model.json").write_text(json.dumps(metadata))
    (state / "serving" / "routing.json").write_text(json.dumps({"stable": VERSION}))
    log_dir, outcomes = state / "prediction-log", state / "outcomes"
    log_dir.mkdir()
    outcomes.mkdir()
    generator = np.random.default_rng(0)
    picks = generator.integers(0, len(x), requests)
    clock = datetime(2026, 11, 29, tzinfo=timezone.utc)
    probabilities = predict(x[picks])
    lines, truth = [], ["request_id,label"]
    for n, (i, p) in enumerate(zip(picks, probabilities)):
        clock += timedelta(milliseconds=10)
        request_id = f"AAPL/{days[i]}#{n}"
        lines.append(
            json.dumps(
                {
                    "time": clock.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "request_id": request_id,
                    "model": "djia",
                    "version": VERSION,
                    "label": "stable",
                    "inputs": {"lagged_returns": [x[i].tolist()]},
                    "outputs": {"probability_up": [float(p)], "direction": [int(p >= 0.5)]},
                }
            )
        )
        truth.append(f"{request_id},{labels[i]}")
    for start in range(0, requests, LINES_PER_FILE):
        name = f"predictions-{start:020d}-1.jsonl"
        (log_dir / name).write_text("".join(line + "\n" for line in lines[start : start + LINES_PER_FILE]))
    (outcomes / "outcomes.csv").write_text("\n".join(truth) + "\n")
    return path


def parse_only(path: Path) -> int:
    count = 0
    for file in sorted((path / ".branchops" / "prediction-log").glob("predictions-*.jsonl")):
        for line in file.read_bytes().splitlines():
            json.loads(line)
            count += 1
    return count


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "djia")
    args = parser.parse_args()
    names, x, labels, days = features(args.data)
    full, dry, baseline, log_bytes = [], [], [], 0
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as scratch:
        template = make_project(Path(scratch) / "template", names, x, labels, days, args.requests)
        log_bytes = sum(f.stat().st_size for f in (template / ".branchops" / "prediction-log").iterdir())
        for run in range(args.runs):
            copy = Path(scratch) / f"run-{run}"
            shutil.copytree(template.parent, copy)
            project = copy / "project"
            baseline.append(timed(lambda: parse_only(project)))
            dry.append(timed(lambda: monitor.check(project, dry_run=True)))
            result = None

            def check() -> None:
                nonlocal result
                result = monitor.check(project)

            full.append(timed(check))
            assert result.rows == args.requests and result.record, result.to_dict()
            print(
                f"run {run + 1}: check {full[-1]:.2f} s, dry run {dry[-1]:.2f} s, parse {baseline[-1]:.2f} s"
            )
    per = 10_000 / args.requests
    full_s, dry_s, base_s = (statistics.median(v) * per for v in (full, dry, baseline))
    text = "\n".join(
        [
            "## Monitoring (issue 15)",
            "",
            f"Median of {args.runs} runs; {platform.machine()}, {os.cpu_count()} CPU cores, Python "
            f"{platform.python_version()}. {args.requests:,} logged requests of one row each, 155 features "
            f"(the direction model's width, real DJIA days), every one with its outcome; "
            f"{log_bytes / 2**20:.1f} MiB of log. `python bench/bench_monitor.py`",
            "",
            "| measurement (per 10,000 logged requests) | monitor | baseline: parse the log "
            "(`json.loads` of every line) | ratio |",
            "|---|---|---|---|",
            "| `branchops monitor`: the whole check (log, outcomes, drift of 155 features and the "
            "prediction, live ROC AUC with a 1,000-resample bootstrap, plots, record commit, monitor.json) "
            f"| {full_s:.2f} s | {base_s:.2f} s | {full_s / base_s:.1f}x |",
            "| `branchops monitor --dry-run` (the same computation, nothing written) "
            f"| {dry_s:.2f} s | {base_s:.2f} s | {dry_s / base_s:.1f}x |",
            "",
            f"Raw times (s): check {[round(v, 3) for v in full]}, dry run {[round(v, 3) for v in dry]}, "
            f"parse {[round(v, 3) for v in baseline]}",
        ]
    )
    out = ROOT / "bench" / "results" / "monitor.md"
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
