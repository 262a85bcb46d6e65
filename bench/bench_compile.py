"""Compile time of the reference pipeline vs a trivial one-component pipeline, in the same run.

Run: python bench/bench_compile.py [--runs N]
Both are compiled in this process through branchops.engine.compile.compile_pipeline (module load, kfp
compile, digest check, hash); the baseline isolates what kfp's compiler costs for any pipeline at all.
Also reports the one-off cost of importing kfp, measured in fresh interpreters. Writes
bench/results/compile.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

TRIVIAL = '''
def build_pipeline(images=None, gpu=None, mounts=None):
    from kfp import dsl

    @dsl.component(base_image=(images or {}).get("step", "python:3.11-slim"), install_kfp_package=False)
    def step(message: str) -> str:
        return message

    @dsl.pipeline(name="trivial")
    def trivial(message: str = "hello"):
        step(message=message)

    return trivial
'''
NAMES = ("consolidate", "validate", "features", "train", "evaluate", "export")


def timed(fn, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    from branchops.config import GpuSection
    from branchops.engine.compile import compile_pipeline

    images = {n: f"127.0.0.1:5000/djia/{n}@sha256:{'0123456789abcdef' * 4}" for n in NAMES}
    gpu = GpuSection(
        count=1,
        node_selector={"accelerator": "a100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        (workspace / "pipelines").mkdir()
        (workspace / "pipelines" / "trivial.py").write_text(TRIVIAL)
        trivial_images = {"step": images["train"].replace("/train@", "/step@")}
        # Warm up both (first-time imports inside kfp are not what we measure here).
        compile_pipeline(workspace, "pipelines/trivial.py", trivial_images)
        reference = compile_pipeline(REPO_ROOT, "pipelines/djia_pipeline.py", images, gpu)
        # Interleave the two so machine load affects both alike.
        ref_times, base_times = [], []
        for _ in range(args.runs):
            ref_times += timed(
                lambda: compile_pipeline(REPO_ROOT, "pipelines/djia_pipeline.py", images, gpu), 1
            )
            base_times += timed(
                lambda: compile_pipeline(workspace, "pipelines/trivial.py", trivial_images), 1
            )

    import_times = []
    for _ in range(max(3, args.runs // 5)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import kfp.compiler, kfp.dsl"], check=True)
        import_times.append(time.perf_counter() - t0)
    python_only = statistics.median(
        timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), 3)
    )

    ref, base = statistics.median(ref_times), statistics.median(base_times)
    kfp_import = statistics.median(import_times) - python_only
    rows = [
        ("reference pipeline (6 steps, pinned, GPU)", ref),
        ("baseline: trivial 1-step pipeline", base),
        ("one-off: import kfp.compiler + kfp.dsl", kfp_import),
    ]
    lines = [
        f"### Pipeline compile time (median of {args.runs} runs, {len(reference.spec)} bytes spec)",
        "",
        "| what | median (ms) |",
        "|---|---:|",
        *[f"| {name} | {seconds * 1000:.1f} |" for name, seconds in rows],
        "",
        (
            f"Ratio reference / trivial: **{ref / base:.2f}×**; a compile costs {ref * 1000:.0f} ms "
            "on top of the "
            f"{kfp_import * 1000:.0f} ms kfp import."
        ),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = REPO_ROOT / "bench" / "results" / "compile.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
