"""Benchmarks of the workflow as a user meets it (issue 8):

1. CLI start-up: `branchops --help` against `kfp --help` in the same run (goal: at most half).
2. The demo end to end on the real DJIA files: wall time, and the share that is orchestration
   (everything but the pipeline steps: data processing, training, evaluation, export, and the
   serving rollout's model loading).

    python bench/bench_workflow.py [--runs N] [--demo-runs M] [--data DIR]

Writes bench/results/workflow.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def cli_startup(runs: int) -> dict:
    ours, theirs = [], []
    timed([str(BIN / "branchops"), "--help"])  # warm the file cache for both, then alternate
    timed([str(BIN / "kfp"), "--help"])
    for _ in range(runs):
        ours.append(timed([str(BIN / "branchops"), "--help"]))
        theirs.append(timed([str(BIN / "kfp"), "--help"]))
    return {
        "branchops": statistics.median(ours),
        "kfp": statistics.median(theirs),
        "raw_ours": ours,
        "raw_kfp": theirs,
    }


def git_json(workdir: Path, rev: str) -> dict:
    return json.loads(
        subprocess.run(["git", "show", rev], cwd=workdir, check=True, capture_output=True, text=True).stdout
    )


def latest_record(workdir: Path, branch: str, stage: str) -> dict:
    files = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", branch],
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    path = sorted(f for f in files if f.startswith(f"records/{stage}/") and f.endswith("record.json"))[-1]
    return git_json(workdir, f"{branch}:{path}")


def demo_once(data: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="branchops-bench-demo-") as tmp:
        workdir = Path(tmp) / "demo"
        t0 = time.perf_counter()
        subprocess.run(
            [str(BIN / "branchops"), "-q", "demo", "--workdir", str(workdir), "--data", str(data)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        total = time.perf_counter() - t0
        training = latest_record(workdir, "training", "training")
        deploy = latest_record(workdir, "deploy-model", "deploy-model")
        build = latest_record(workdir, "build-components", "build-components")
        # The pipeline's own work: each run's wall time in the engine (its steps), as recorded.
        runs = [e.get("duration_s") or 0.0 for e in training["outputs"]["experiments"]]
        # Loading the SavedModel into the server (TensorFlow's work, not ours).
        model_loading = ((deploy["outputs"].get("deployment") or {}).get("timings") or {}).get("load", 0.0)
        # The component tests build-components runs before it would build each image (two at a time, so
        # the stage's wall time, not the sum of the tests' times).
        component_tests = build["duration_s"]
        subprocess.run(
            [str(BIN / "branchops"), "-C", str(workdir), "serve", "stop"], stdout=subprocess.DEVNULL
        )
        work = sum(runs) + model_loading + component_tests
        return {
            "total": total,
            "pipeline_runs": sum(runs),
            "model_loading": model_loading,
            "component_tests": component_tests,
            "orchestration": total - work,
            "share": (total - work) / total,
            # the training stage alone: its wall time minus the pipeline's own work
            "training_stage": training["duration_s"],
            "training_overhead_share": (training["duration_s"] - sum(runs)) / training["duration_s"],
            "metrics": {k: training["outputs"]["best"]["metrics"].get(k) for k in ("accuracy", "roc_auc")},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--demo-runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "djia")
    args = parser.parse_args()

    cli = cli_startup(args.runs)
    lines = [
        "## Workflow (issue 8)",
        "",
        f"Median of {args.runs} runs (CLI) and {args.demo_runs} runs (demo); 2 CPU cores. "
        "`python bench/bench_workflow.py`",
        "",
        "| measurement | branchops | baseline | ratio |",
        "|---|---|---|---|",
        f"| CLI start-up, `--help` (baseline: `kfp --help`) | {cli['branchops'] * 1000:.0f} ms | "
        f"{cli['kfp'] * 1000:.0f} ms | **{cli['branchops'] / cli['kfp']:.2f}** (goal ≤ 0.5) |",
    ]
    if args.demo_runs and (args.data / "AAPL_2006-01-01_to_2018-01-01.csv").exists():
        demos = [demo_once(args.data) for _ in range(args.demo_runs)]
        med = {
            k: statistics.median(d[k] for d in demos)
            for k in (
                "total",
                "pipeline_runs",
                "model_loading",
                "component_tests",
                "orchestration",
                "share",
                "training_stage",
                "training_overhead_share",
            )
        }
        lines += [
            f"| demo end to end on the real data (wall time) | {med['total']:.1f} s | — | — |",
            f"| of which pipeline runs (data processing, training, evaluation, export; 2 experiments) | "
            f"{med['pipeline_runs']:.1f} s | — | — |",
            f"| of which model loading in the serving rollout | {med['model_loading']:.1f} s | — | — |",
            "| of which component tests (the build-components stage, 6 components) | "
            f"{med['component_tests']:.1f} s | — "
            "| — |",
            "| of which orchestration (gate, git, records, compile, snapshots, merge requests, checks, "
            "process start-ups) | "
            f"{med['orchestration']:.1f} s | — | **{med['share'] * 100:.1f} %** of the whole |",
            f"| training stage: wall time, and its overhead beyond the pipeline runs (volumes, compile, "
            f"snapshots, records, report, merge request) | {med['training_stage']:.1f} s | — | "
            f"**{med['training_overhead_share'] * 100:.1f} %** of the stage |",
            "",
            "Metrics of each demo run (same data, same seeds): "
            + "; ".join(json.dumps(d["metrics"]) for d in demos),
        ]
    lines += [
        "",
        f"Raw CLI times (s): branchops {[round(x, 3) for x in cli['raw_ours']]}, "
        f"kfp {[round(x, 3) for x in cli['raw_kfp']]}",
    ]
    out = ROOT / "bench" / "results" / "workflow.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
