"""Benchmark: a local snapshot's cost does not grow with the data.

Two volumes with the same file layout — many small files (features, CSVs) and a few big ones (model
weights, Parquet) — one of 10 MiB and one of 1 GiB, for two file counts (100 and 1000 small files). We
time ``LocalStorage.snapshot`` on each (median of several runs, each a fresh snapshot name, deleted
between runs) and, in the same run, ``cp -a`` of the 1 GiB volume (the byte copy a snapshot replaces).
Goals (issue 5): snapshot(1 GiB) / snapshot(10 MiB) <= 2, and ``cp -a`` >= 100x slower than the snapshot
of the 1 GiB volume.

Both volumes have the same number of files on purpose: a hard-link snapshot costs per file, not per
byte, so this isolates the dependence on data size. ``cp -a`` reads from the page cache here (the files
were just written), the most favourable case for the baseline.

Run: ``python bench/bench_snapshot.py [--runs 7] [--dir /path/on/the/volumes/filesystem]``.
Writes ``bench/results/snapshot.md``. Needs about 2.2 GiB free while it runs; removes everything after
each layout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from branchops.storage.local import LocalStorage

MiB = 2**20
SMALL_SIZE = 4096
LAYOUTS = (100, 1000)  # small files per volume (plus 2 or 4 big ones); the cost is per file


def fill(volume: Path, small_files: int, big_files: int, big_size: int) -> int:
    """Write the layout; return the total bytes. Big files repeat a random 1 MiB block (no FS dedupe on
    ext4)."""
    block = os.urandom(MiB)
    total = 0
    for i in range(small_files):
        folder = volume / "features" / f"part-{i % 10:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.bin").write_bytes(os.urandom(SMALL_SIZE))
        total += SMALL_SIZE
    (volume / "models").mkdir()
    for j in range(big_files):
        with open(volume / "models" / f"weights-{j}.bin", "wb") as handle:
            remaining = big_size
            while remaining > 0:
                chunk = block[: min(MiB, remaining)]
                handle.write(chunk)
                remaining -= len(chunk)
        total += big_size
    return total


def time_snapshot(storage: LocalStorage, volume: str, run: int) -> float:
    name = f"{volume}-bench-{run}"
    start = time.perf_counter()
    storage.snapshot(volume, name, {"branchops.io/run": f"bench-{run}"})
    elapsed = time.perf_counter() - start
    storage.delete_snapshot(name)
    return elapsed


def time_copies(source: Path, scratch: Path, runs: int) -> list[float]:
    times = []
    for run in range(runs):
        target = scratch / f"copy-{run}"
        start = time.perf_counter()
        subprocess.run(["cp", "-a", str(source), str(target)], check=True)
        times.append(time.perf_counter() - start)
        shutil.rmtree(target)
    return times


def measure(small_files: int, runs: int, copy_runs: int, where: str | None) -> dict:
    base = Path(tempfile.mkdtemp(prefix="branchops-bench-snapshot-", dir=where))
    try:
        storage = LocalStorage(base / "volumes")
        small = Path(storage.ensure_volume("vol-10mib").path or "")
        large = Path(storage.ensure_volume("vol-1gib").path or "")
        small_bytes = fill(small, small_files, 2, (10 * MiB - small_files * SMALL_SIZE) // 2)
        large_bytes = fill(large, small_files, 4, (1024 * MiB - small_files * SMALL_SIZE) // 4)
        os.sync()
        small_times, large_times = [], []
        for run in range(runs):  # alternate, so drift in machine load hits both alike
            small_times.append(time_snapshot(storage, "vol-10mib", run))
            large_times.append(time_snapshot(storage, "vol-1gib", run))
        copy_times = time_copies(large, base, copy_runs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {
        "files": small_files,
        "small_bytes": small_bytes,
        "large_bytes": large_bytes,
        "small": small_times,
        "large": large_times,
        "copy": copy_times,
        "t_small": statistics.median(small_times),
        "t_large": statistics.median(large_times),
        "t_copy": statistics.median(copy_times),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="snapshot runs per volume (median reported)")
    parser.add_argument("--copy-runs", type=int, default=3, help="cp -a runs (median reported)")
    parser.add_argument("--dir", default=None, help="where to create the volumes (default: a temp dir)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "snapshot.md"))
    args = parser.parse_args()

    results = [measure(n, args.runs, args.copy_runs, args.dir) for n in LAYOUTS]
    lines = [
        "## Local snapshots (`bench/bench_snapshot.py`)",
        "",
        (
            f"Machine: {os.cpu_count()} cores shared with other jobs; volumes on the filesystem of "
            f"`{args.dir or tempfile.gettempdir()}` (ext4: hard links, no reflinks). "
            "Each volume: N small files of 4 KiB in 10 folders plus a few big files (2 in the 10 MiB volume, "
            "4 in the 1 GiB one). "
            f"Median of {args.runs} snapshot runs (10 MiB and 1 GiB alternated) "
            f"and of {args.copy_runs} `cp -a` runs."
        ),
        "",
        (
            "| small files | snapshot 10 MiB | snapshot 1 GiB | `cp -a` 1 GiB (baseline) | 1 GiB / 10 MiB "
            "(goal <= 2) | `cp -a` / snapshot (goal >= 100x) | snapshot cost per file |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio, speedup = r["t_large"] / r["t_small"], r["t_copy"] / r["t_large"]
        lines.append(
            f"| {r['files']} | {r['t_small'] * 1000:.1f} ms | {r['t_large'] * 1000:.1f} ms "
            f"| {r['t_copy'] * 1000:.0f} ms "
            f"| **{ratio:.2f}** ({'met' if ratio <= 2 else 'not met'}) "
            f"| **{speedup:.0f}x** ({'met' if speedup >= 100 else 'not met'}) "
            f"| {r['t_large'] / (r['files'] + 4) * 1e6:.0f} us |"
        )
    lines += [
        "",
        "Reading: a snapshot costs a stat, a chmod and a link per file plus its metadata, and nothing per "
        "byte, so its time is the same for 10 MiB and 1 GiB and grows with the number of files; the speed-up "
        "over `cp -a` is largest for volumes of few big files and shrinks as the files get many and small. "
        "`cp -a` read from the page cache (files just written), the most favourable case for the baseline. "
        "Spread on this shared machine (min-max): "
        + "; ".join(
            f"{r['files']} files: snapshot 1 GiB "
            f"{min(r['large']) * 1000:.0f}-{max(r['large']) * 1000:.0f} ms, "
            f"`cp -a` {min(r['copy']) * 1000:.0f}-{max(r['copy']) * 1000:.0f} ms"
            for r in results
        )
        + ".",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    for r in results:
        print(
            f"{r['files']} files — all times (s): 10 MiB {[round(t, 4) for t in r['small']]}, "
            f"1 GiB {[round(t, 4) for t in r['large']]}, cp -a {[round(t, 3) for t in r['copy']]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
