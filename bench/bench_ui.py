"""Benchmark: the pages of `branchops ui` on a repository of 1,000 records per stage, beside `status`.

The repository is bench_history's (each of the four stage branches holds N records: training run i made
model version i from pipeline upload i and build i, deploy-model run i deployed it; one fast-import per
branch, packed), and as many monitoring checks on deploy-model (records/monitor/, as `branchops monitor`
writes them: 12 features each, a live metric, the two plots; the last ones drifted). The dashboard runs
as a user starts it, `branchops ui --port 0` in its own process, and each page is fetched over HTTP (a new
connection each time, as a browser's first visit) after one warm-up fetch. Baseline, in the same run:
`branchops status --json` in process through the CLI entry, as bench_history measures it (the newest record
of each stage), and `lineage --json` of the same version the model page shows.

    python bench/bench_ui.py [--sizes 0 1000] [--runs 7]

Writes bench/results/ui.md. Goal (issue 17, item 4): every page under 0.5 s at 1,000 records.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_history import (  # noqa: E402
    FIRST_VERSION,
    ROOT,
    bench_main,
    make_project,
    raw_times,
    run_id,
    timed_cli,
)

SIZES = (0, 1000)
GOAL_S = 0.5
IMAGE = "image: the comparison's overlaid curves (PNG)"  # loads after its page, which shows at once
FEATURES = [f"feature_{k}" for k in range(12)]
PLOT = bytes.fromhex(  # a 1x1 PNG: the plots' size does not matter, the page never reads them
    "89504e470d0a1a0a0000000d49484452000000010000000108020000009077"
    "53de0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082"
)


def check_id(i: int) -> str:
    when = datetime(2026, 3, 1, tzinfo=timezone.utc) + timedelta(hours=6 * i)
    return f"{when.strftime('%Y%m%dT%H%M%S%fZ')}-{i:012x}"


def monitor_record(i: int, count: int) -> dict:
    """Check ``i`` of ``count``: the record `branchops monitor` writes (its outputs: MonitorResult's)."""
    drifted = i >= count - 3
    psi = {name: (0.4 if drifted and k == 0 else 0.02 + k / 1000) for k, name in enumerate(FEATURES)}
    features = {
        name: {"psi": v, "ks_statistic": 0.1, "ks_pvalue": 1e-6 if v >= 0.25 else 0.4, "drifted": v >= 0.25}
        for name, v in psi.items()
    }
    when = (datetime(2026, 3, 1, tzinfo=timezone.utc) + timedelta(hours=6 * i)).isoformat()
    outputs = {
        "model": "djia",
        "version": FIRST_VERSION + count - 1,
        "verdict": "drift" if drifted else "no drift",
        "rows": 500,
        "requests": 500,
        "cursor": when,
        "drifted": drifted,
        "drifted_features": [n for n, f in features.items() if f["drifted"]],
        "consecutive_drifted_checks": max(0, i - (count - 4)),
        "features": features,
        "prediction": {"psi": 0.05, "ks_statistic": 0.05, "ks_pvalue": 0.3, "drifted": False},
        "live_metric": {
            "name": "roc_auc",
            "value": 0.6,
            "low": 0.55,
            "high": 0.65,
            "n": 300,
            "validated": 0.63,
            "confidence": 0.95,
            "note": None,
            "below_validated": False,
        },
        "alarm": False,
        "alarm_reasons": [],
        "merge_request": None,
        "thresholds": {"psi_threshold": 0.25, "ks_alpha": 0.01, "consecutive_checks": 2},
    }
    return {
        "stage": "monitor",
        "run_id": check_id(i),
        "branch": "deploy-model",
        "outcome": "succeeded",
        "summary": f"{outputs['verdict']}: 500 logged rows",
        "started_at": when,
        "finished_at": when,
        "outputs": outputs,
        "artifacts": ["drift.png", "live_metric.png"],
    }


def add_monitor_records(repo: Path, count: int) -> None:
    """``count`` monitoring checks on deploy-model in one commit (git fast-import), then packed."""
    if not count:
        return
    parent = subprocess.run(
        ["git", "rev-parse", "refs/heads/deploy-model"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    stream = [
        f"commit refs/heads/deploy-model\ncommitter bot <bot@users.local> 1772323200 +0000\n"
        f"data 8\nmonitor\nfrom {parent}\n".encode()
    ]
    for i in range(count):
        folder = f"records/monitor/{check_id(i)}"
        content = json.dumps(monitor_record(i, count), indent=2, sort_keys=True).encode() + b"\n"
        for name, data in (("record.json", content), ("drift.png", PLOT), ("live_metric.png", PLOT)):
            stream.append(f"M 100644 inline {folder}/{name}\ndata {len(data)}\n".encode() + data + b"\n")
    subprocess.run(["git", "fast-import", "--quiet", "--force"], cwd=repo, input=b"".join(stream), check=True)
    subprocess.run(["git", "gc", "--quiet"], cwd=repo, check=True)


def pages(count: int, fetch: int = 0) -> dict[str, str]:
    """Page name -> path (``fetch``: which fetch this is, so that a first draw is a new pair each time).
    With no records only the pages that exist then."""
    found = {
        "overview": "/",
        "training runs (page 1)": "/stages/training",
        "model versions": "/models",
        "monitoring checks (page 1)": "/monitoring",
    }
    if count:
        latest, first = count - 1, 0
        found |= {
            "training run": f"/runs/training/{run_id(latest)}",
            "deploy-model run": f"/runs/deploy-model/{run_id(latest)}",
            "lineage graph, latest version": f"/models/{FIRST_VERSION + latest}",
            "lineage graph, first version (every training record read)": f"/models/{FIRST_VERSION + first}",
            "comparison of two runs": f"/compare?run={run_id(latest - 1)}&run={run_id(latest)}",
            # the image the comparison page embeds: plots diff's matplotlib figure, drawn once per pair
            IMAGE
            + ", a pair drawn before": f"/compare/curves.png?run={run_id(latest - 1)}&run={run_id(latest)}",
            IMAGE
            + ", first draw of a pair": f"/compare/curves.png?run={run_id(fetch + 1)}&run={run_id(latest)}",
            "training runs, last page": f"/stages/training?page={-(-count // 50)}",
            "monitoring check": f"/monitoring/{check_id(latest)}",
            "monitoring checks, last page": f"/monitoring?page={-(-count // 50)}",
        }
    return found


class Dashboard:
    def __init__(self, repo: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "branchops.cli", "-C", str(repo), "ui", "--port", "0", "--json"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        lines = []
        for line in self.process.stdout:
            lines.append(line)
            if line.rstrip() == "}":
                break
        self.url = json.loads("".join(lines))["url"].rstrip("/")

    def fetch(self, path: str) -> float:
        start = time.perf_counter()
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            body = response.read()
            if response.status != 200 or not body:
                raise SystemExit(f"{path}: HTTP {response.status}")
        return time.perf_counter() - start

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def measure(root: Path, count: int, runs: int) -> dict[str, list[float]]:
    t0 = time.perf_counter()
    repo = make_project(root, count)
    add_monitor_records(repo, count)
    print(f"{count} records per stage: built in {time.perf_counter() - t0:.1f} s", flush=True)
    dashboard = Dashboard(repo)
    times: dict[str, list[float]] = {}
    try:
        baseline = {"`status --json` (baseline)": ("status", "--json")}
        if count:
            baseline["`lineage --json` of the latest version (baseline)"] = (
                "lineage",
                str(FIRST_VERSION + count - 1),
                "--json",
            )
        timed_cli(repo, "status")  # warm the file cache and the imports, as the server's warm-up fetch
        for path in pages(count, fetch=0).values():
            dashboard.fetch(path)
        for fetch in range(1, runs + 1):
            for name, path in pages(count, fetch).items():
                times.setdefault(name, []).append(dashboard.fetch(path))
            for name, args in baseline.items():
                times.setdefault(name, []).append(timed_cli(repo, *args))
    finally:
        dashboard.stop()
    print("  " + ", ".join(f"{n} {statistics.median(t) * 1000:.0f} ms" for n, t in times.items()), flush=True)
    return times


def report(results: dict[int, dict[str, list[float]]], runs: int, sizes: list[int]) -> list[str]:
    names = list(dict.fromkeys(name for times in results.values() for name in times))
    lines = [
        "## Dashboard pages (`bench/bench_ui.py`)",
        "",
        f"Median of {runs} fetches per page over HTTP from `branchops ui` (a new connection each, after "
        f"one warm-up fetch); {os.cpu_count()} CPU cores (shared, 1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the end), {platform.machine()}, Python {platform.python_version()}. "
        "The repository is bench_history's: N records on each of the four stage branches. Baselines in the "
        "same run, in process through the CLI entry. "
        f"`python bench/bench_ui.py --sizes {' '.join(map(str, sizes))} --runs {runs}`",
        "",
        "| page | " + " | ".join(f"{count:,} records per stage" for count in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    for name in names:
        cells = [
            f"{statistics.median(times[name]) * 1000:.0f} ms" if name in times else "—"
            for times in results.values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if 1000 in results:
        at_1000 = {n: statistics.median(t) for n, t in results[1000].items() if "baseline" not in n}
        pages_at_1000 = {n: t for n, t in at_1000.items() if not n.startswith(IMAGE)}
        slowest = max(pages_at_1000, key=pages_at_1000.get)
        met = pages_at_1000[slowest] < GOAL_S
        first_draw = at_1000.get(IMAGE + ", first draw of a pair")
        lines += [
            "",
            f"- 1,000 records, the slowest page ({slowest}): {pages_at_1000[slowest]:.2f} s, goal < "
            f"{GOAL_S:g} s for every page: **{'met' if met else 'not met'}**",
            f"- the comparison's overlaid curves, the first time a pair is compared: {first_draw:.2f} s "
            f"(goal < {GOAL_S:g} s: **{'met' if first_draw < GOAL_S else 'not met'}**; the comparison page "
            "itself shows before it, and a pair drawn before is served from memory)",
        ]
    lines += [
        "",
        "Reading: each page lists the records folders it needs once and reads only the records it shows "
        "(the overview the newest five per stage and the newest five monitoring checks, a stage page or the "
        "monitoring page fifty, a run or check page one, a comparison two), so "
        "its cost does not grow with the history; the comparison's overlaid curves are `branchops plots "
        "diff`'s matplotlib figure, drawn the first time a pair is compared and kept in memory after (the "
        "import paid once, by the warm-up); the lineage graph is `branchops lineage` plus the "
        "deploy-model records of that version, and the first version's is the worst case, as in "
        "bench_history (every training record read newest first until the oldest).",
        "",
        raw_times(results),
    ]
    return lines


def main() -> None:
    bench_main(__doc__.splitlines()[0], measure, report, SIZES, 7, "ui")


if __name__ == "__main__":
    main()
