"""Benchmark: `branchops status` and `lineage` as the record history grows (0, 100, 1,000, 10,000 runs).

A project whose four stage branches each carry N records, in the shape the stages write them: training
run i produced model version i (pipeline spec i, images of build i) and deploy-model run i deployed it.
The records are made in one `git fast-import` per branch (one commit of N record folders, packed, as a
repository's history is after `git gc`), not N commits, so that 10,000 take seconds to build.

We time, in process through the CLI entry (`branchops.cli.main`), medians of several runs:

* `status` (the last run of each of the four stages);
* `lineage <latest version>` (the newest training run, its pipeline upload and image build, and every
  deploy-model record that deployed the version);
* `lineage <first version>`, the worst case: the oldest training run, found by scanning them all;

and, in the same run, the baseline `git ls-tree` of the training records folder (a new git process that
lists the N names). Goals (issue "Integrity under faults", item 7): cost O(records), status and lineage
under 0.5 s at 1,000 records and under 2 s at 10,000.

    python bench/bench_history.py [--sizes 0 100 1000 10000] [--runs 5]

Writes bench/results/history.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from branchops.cli import main as cli  # noqa: E402

SIZES = (0, 100, 1000, 10000)
STAGES = ("build-components", "kf-pipeline", "training", "deploy-model")
FIRST_VERSION = 1_760_000_000  # a model version is its source commit's time in seconds
CONFIG = """\
approvers:
  build-components: [lead]
  kf-pipeline: [lead]
  training: [lead, head-of-ds]
  deploy-model: [head-of-ds]
"""
USER = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@users.local",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@users.local",
}


def git(repo: Path, *args: str, data: bytes | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, input=data, capture_output=True, check=True, env={**os.environ, **USER}
    )
    return done.stdout.decode().strip()


def digest(kind: str, i: int) -> str:
    return "sha256:" + hashlib.sha256(f"{kind}-{i}".encode()).hexdigest()


def run_id(i: int) -> str:
    when = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=i)
    return f"{when.strftime('%Y%m%dT%H%M%S%fZ')}-{hashlib.sha1(str(i).encode()).hexdigest()[:12]}"


def envelope(stage: str, i: int, outputs: dict, summary: str) -> dict:
    """record.json as ``runner._execute`` writes it."""
    commit = hashlib.sha1(str(i).encode()).hexdigest()
    return {
        "stage": stage,
        "branch": stage,
        "run_id": run_id(i),
        "source_commit": commit,
        "outcome": "succeeded",
        "summary": summary,
        "error": None,
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
        "duration_s": 60.0,
        "merge_request": {
            "number": i + 1,
            "title": f"change {i}",
            "source": "ds1",
            "author": "ds1",
            "approved_by": ["lead"],
            "merged_by": "lead",
            "url": None,
        },
        "config_digest": hashlib.sha256(f"config-{i}".encode()).hexdigest(),
        "branchops_version": "0.1.0",
        "outputs": outputs,
        "artifacts": ["report.md"] if stage == "training" else [],
    }


def build_record(i: int) -> dict:
    components = [
        {
            "name": name,
            "status": "built",
            "tag": f"t{i}",
            "image": f"registry.local/{name}:t{i}",
            "digest": digest(name, i),
            "tests": "passed",
            "build_s": 1.5,
            "test_s": 0.5,
            "reason": None,
        }
        for name in ("prepare", "train", "evaluate")
    ]
    return envelope(
        "build-components",
        i,
        {"registry": "registry.local", "builder": "buildah", "note": None, "components": components},
        "3 images built",
    )


def pipeline_record(i: int) -> dict:
    spec = digest("spec", i).split(":")[1]
    return envelope(
        "kf-pipeline",
        i,
        {
            "engine": "local",
            "pipeline_name": "djia",
            "pipeline_id": "p-1",
            "version_id": f"v-{i}",
            "version_name": spec,
            "spec_hash": spec,
            "uploaded": True,
            "images": {},
        },
        f"uploaded version {spec[:16]}",
    )


def experiment(i: int, name: str, accuracy: float) -> dict:
    version = FIRST_VERSION + i
    return {
        "experiment": name,
        "run_name": f"{i:012d}-{name}",
        "run_id": f"kfp-{i}-{name}",
        "state": "SUCCEEDED",
        "error": None,
        "duration_s": 30.0,
        "reused_run": False,
        "params": {"epochs": 30, "units": 64},
        "metrics": {
            "accuracy": accuracy,
            "roc_auc": accuracy + 0.01,
            "precision": 0.5,
            "recall": 0.5,
            "f1": 0.5,
            "beats_baselines": {"all": True},
        },
        "model": {
            "volume": "djia-models",
            "path": f"runs/{i}-{name}/export/{version}",
            "version": version,
            "snapshot": f"djia-models-{i:012d}-{name}",
        },
        "data": {"volume": "djia-data", "snapshot": f"djia-data-{i:012d}"},
    }


def training_record(i: int) -> dict:
    entries = [experiment(i, "baseline", 0.52), experiment(i, "wide", 0.54)]
    best = entries[1]
    images = {name: f"registry.local/{name}@{digest(name, i)}" for name in ("prepare", "train", "evaluate")}
    lineage = {
        "source_commit": hashlib.sha1(str(i).encode()).hexdigest(),
        "config_digest": "c" * 64,
        "run_id": run_id(i),
        "images": images,
        "approved_by": ["lead"],
        "pipeline": {
            "name": "djia",
            "id": "p-1",
            "version_id": f"v-{i}",
            "spec_hash": digest("spec", i).split(":")[1],
            "engine": "local",
        },
        "best": {"experiment": best["experiment"], "data": best["data"], "model": best["model"]},
    }
    return envelope(
        "training",
        i,
        {
            "experiments": entries,
            "best": best,
            "lineage": lineage,
            "synthetic_data": False,
            "kpi": {"passed": True, "failures": []},
            "production": {"version": FIRST_VERSION + i - 1 if i else None, "metrics": None},
            "deploy_merge_request": {"number": 10_000 + i, "created": True},
        },
        f"best wide: accuracy 0.54; merge request !{10_000 + i}",
    )


def deploy_record(i: int) -> dict:
    version = FIRST_VERSION + i
    release = {
        "model": "djia",
        "version": version,
        "source": {"snapshot": f"djia-models-{i:012d}-wide", "path": f"runs/{i}-wide/export/{version}"},
        "training": {"run_id": run_id(i), "commit": hashlib.sha1(str(i).encode()).hexdigest()},
    }
    before = version - 1 if i else None
    deployment = {
        "model": "djia",
        "version": version,
        "strategy": "rolling",
        "outcome": "deployed",
        "before": before,
        "after": version,
        "reason": None,
        "ok": True,
        "canary_steps": [],
        "checks": [
            {"name": "signature", "ok": True, "detail": "matches", "seconds": 0.1},
            {"name": "smoke", "ok": True, "detail": "3 rows", "seconds": 0.2},
        ],
        "timings": {"copy": 0.1, "load": 1.0},
    }
    return envelope(
        "deploy-model",
        i,
        {
            "backend": "local",
            "release": release,
            "model_source": "/volumes/x",
            "deployment": deployment,
            "approved_by": ["head-of-ds"],
            "seconds": 1.4,
        },
        f"model djia: version {before} -> version {version} (rolling)",
    )


RECORDS = {
    "build-components": build_record,
    "kf-pipeline": pipeline_record,
    "training": training_record,
    "deploy-model": deploy_record,
}


def add_records(repo: Path, stage: str, count: int) -> None:
    """One commit on ``stage`` adding ``count`` record folders (record.json and run.log), via fast-import."""
    if not count:
        return
    parent = git(repo, "rev-parse", f"refs/heads/{stage}")
    message = f"{count} records"
    chunks = [
        f"commit refs/heads/{stage}\ncommitter bench <bench@users.local> 1767225600 +0000\n"
        f"data {len(message)}\n{message}\nfrom {parent}\n".encode()
    ]
    for i in range(count):
        folder = f"records/{stage}/{run_id(i)}"
        record = (json.dumps(RECORDS[stage](i), indent=2, sort_keys=True) + "\n").encode()
        log = f"{stage} run {i}: did its work\n".encode() * 20
        for name, content in (("record.json", record), ("run.log", log)):
            chunks.append(
                f"M 100644 inline {folder}/{name}\ndata {len(content)}\n".encode() + content + b"\n"
            )
    git(repo, "fast-import", "--quiet", "--force", data=b"".join(chunks))


def make_project(root: Path, count: int) -> Path:
    repo = root / f"project-{count}"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "config").mkdir()
    (repo / "config" / "branchops.yaml").write_text(CONFIG)
    (repo / ".gitignore").write_text(".branchops/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "project")
    for stage in STAGES:
        git(repo, "branch", stage)
        add_records(repo, stage, count)
    git(repo, "gc", "--quiet")
    return repo


def timed_cli(repo: Path, *args: str) -> float:
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["-C", str(repo), *args], catch_exceptions=False)
    elapsed = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"branchops {' '.join(args)} exited {result.exit_code}:\n{result.output}")
    return elapsed


def timed_ls_tree(repo: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["git", "ls-tree", "training:records/training"], cwd=repo, capture_output=True)
    return time.perf_counter() - start


def measure(root: Path, count: int, runs: int) -> dict[str, list[float]]:
    t0 = time.perf_counter()
    repo = make_project(root, count)
    print(f"{count} records per stage: built in {time.perf_counter() - t0:.1f} s", flush=True)
    cases = {"status": ("status",), "baseline": None}
    if count:
        cases["lineage latest"] = ("lineage", str(FIRST_VERSION + count - 1))
        cases["lineage first"] = ("lineage", str(FIRST_VERSION))
    times: dict[str, list[float]] = {name: [] for name in cases}
    timed_cli(repo, "status")  # warm the file cache and the imports
    for _ in range(runs):
        for name, args in cases.items():
            times[name].append(timed_ls_tree(repo) if args is None else timed_cli(repo, *args))
    print(
        "  " + ", ".join(f"{name} {statistics.median(t) * 1000:.0f} ms" for name, t in times.items()),
        flush=True,
    )
    return times


GOALS = {1000: 0.5, 10000: 2.0}  # seconds, for each command (issue "Integrity under faults", item 7)
MEASURED = (
    ("status", "`status`"),
    ("lineage latest", "`lineage` of the latest version"),
    ("lineage first", "`lineage` of the first version (the worst case: every training record is read)"),
)


def ms(values: list[float] | None) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms" if values else "—"


def verdicts(results: dict[int, dict[str, list[float]]]) -> list[str]:
    lines = []
    for count, limit in GOALS.items():
        if count not in results:
            continue
        for name, label in MEASURED:
            median = statistics.median(results[count][name])
            lines.append(
                f"- {count:,} records, {label}: {median:.2f} s, goal < {limit:g} s: "
                f"**{'met' if median < limit else 'not met'}**"
            )
    return lines


def report(results: dict[int, dict[str, list[float]]], runs: int, sizes: list[int]) -> list[str]:
    load = os.getloadavg()[0]
    largest = max(results)
    training_bytes = len(json.dumps(training_record(0), indent=2, sort_keys=True)) * largest
    lines = [
        "## Record history (`bench/bench_history.py`)",
        "",
        f"Median of {runs} runs per size, in process through the CLI entry; {os.cpu_count()} CPU cores "
        f"(shared, 1-minute load average {load:.1f} at the end), {platform.machine()}, Python "
        f"{platform.python_version()}, git {git(ROOT, '--version').split()[-1]}. Each of the four stage "
        "branches holds N records (training run i made model version i, deploy-model run i deployed it), "
        "packed as after `git gc`. "
        f"`python bench/bench_history.py --sizes {' '.join(map(str, sizes))} --runs {runs}`",
        "",
        "| records per stage | `status` | `lineage` latest version | `lineage` first version "
        "| `git ls-tree` of records/training (baseline) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for count, times in results.items():
        lines.append(
            f"| {count:,} | {ms(times['status'])} | {ms(times.get('lineage latest'))} | "
            f"{ms(times.get('lineage first'))} | {ms(times['baseline'])} |"
        )
    lines += [""] + verdicts(results)
    lines += [
        "",
        "Reading: `status` lists each stage's records folder and reads only its newest record; `lineage` "
        "reads the newest training records until one made the version, the kf-pipeline and "
        "build-components records from before that run until the upload and the build it used, and "
        "every deploy-model record (a version's deployments may be anywhere after it), each batch in one "
        f"`git cat-file` process. What remains at {largest:,} is reading the records' bytes: the first "
        f"version's lineage reads all {largest:,} training records ({training_bytes / 2**20:.0f} MiB of "
        "JSON) and as many deploy-model records.",
        "",
        raw_times(results),
    ]
    return lines


def raw_times(results: dict[int, dict[str, list[float]]]) -> str:
    """The report's last line: every measured time, per size and measurement."""
    return "Raw times (s): " + "; ".join(
        f"{count}: " + ", ".join(f"{name} {[round(t, 3) for t in values]}" for name, values in times.items())
        for count, times in results.items()
    )


def bench_main(
    description: str,
    measure: Callable[[Path, int, int], dict[str, list[float]]],
    report: Callable[[dict[int, dict[str, list[float]]], int, list[int]], list[str]],
    sizes: tuple[int, ...],
    runs: int,
    name: str,
) -> None:
    """A history benchmark's command line: measure each size in a scratch folder, write
    bench/results/<name>.md and print it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sizes", type=int, nargs="*", default=list(sizes))
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / f"{name}.md")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix=f"branchops-bench-{name}-") as tmp:
        for count in args.sizes:
            results[count] = measure(Path(tmp), count, args.runs)
    lines = report(results, args.runs, args.sizes)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    bench_main(__doc__.splitlines()[0], measure, report, SIZES, 5, "history")


if __name__ == "__main__":
    main()
