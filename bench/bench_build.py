"""Benchmark: build-components with nothing changed vs one fully cached ``buildah bud``.

Goal (issue 4): with every tag already in the registry, the stage's work (discover, hash, look every tag
up) takes less time than one fully cached ``buildah bud`` of a single image, whatever the number of
components. Both are measured in the same run, on the same machine, against a real docker-registry on
127.0.0.1, with a private container store (vfs) and a busybox base image made from scratch.

    python bench/bench_build.py [--components 6] [--repeats 7]

Writes a markdown fragment to bench/results/build.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))  # the throwaway registry is test support: tests/images/local_registry.py

# E402: these imports need the two sys.path entries above (src/ and the repository root for tests/)
from branchops.config import RegistrySection  # noqa: E402
from branchops.images import build_components, discover_components  # noqa: E402
from tests.images.local_registry import LocalRegistry, make_busybox_base_image  # noqa: E402

BASE_IMAGE = "localhost/branchops-bench-base:1"
NAMES = (
    "consolidate",
    "validate",
    "features",
    "train",
    "evaluate",
    "export",
    "train-gpu",
    "score",
    "drift",
    "explain",
    "publish",
    "report",
)


def write_workspace(root: Path, count: int) -> Path:
    (root / "components" / "common").mkdir(parents=True)
    (root / "components" / "__init__.py").write_text("")
    (root / "components" / "__main__.py").write_text("")
    (root / "components" / "common" / "__init__.py").write_text("SHARED = 1\n")
    names = [NAMES[i] if i < len(NAMES) else f"extra{i}" for i in range(count)]
    for name in names:
        src = "train" if name == "train-gpu" else name
        package = root / "components" / src
        (package / "tests").mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(f"NAME = {src!r}\n" + "# padding\n" * 200)
        (package / "requirements.txt").write_text("numpy==2.1.3\n")
        (package / "tests" / "test_it.py").write_text(
            f"from components.{src} import NAME\n\n\ndef test_name():\n    assert NAME == {src!r}\n"
        )
        dockerfile = root / "docker" / name / "Dockerfile"
        dockerfile.parent.mkdir(parents=True)
        dockerfile.write_text(
            textwrap.dedent(f"""\
            ARG BASE_IMAGE=python:3.11-slim
            FROM ${{BASE_IMAGE}}
            WORKDIR /app
            COPY components/__init__.py components/__main__.py components/
            COPY components/common/ components/common/
            COPY components/{src}/ components/{src}/
            RUN test -f /app/components/{src}/__init__.py
            """)
        )
    return root


def timed(fn, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--components", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "build.md")
    args = parser.parse_args()
    missing = [t for t in ("buildah", "docker-registry") if shutil.which(t) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (run .ci/setup.d/containers.sh)")
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    store = tmp / "store"
    store.mkdir()
    (store / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{store}/graph"\nrunroot = "{store}/run"\n'
    )
    (store / "containers.conf").write_text(
        '[containers]\ndefault_ulimits = ["nofile=1024:1024", '
        '"nproc=1024:1024"]\n[engine]\nruntime = "runc"\n'
    )
    os.environ["CONTAINERS_STORAGE_CONF"] = str(store / "storage.conf")
    os.environ["CONTAINERS_CONF"] = str(store / "containers.conf")
    try:
        make_busybox_base_image(BASE_IMAGE)
        workspace = write_workspace(tmp / "ws", args.components)
        with LocalRegistry(tmp / "registry") as registry:
            cfg = RegistrySection(
                url=f"{registry.url}/bench",
                insecure=True,
                builder="buildah",
                max_parallel_builds=2,
                build_args={"BASE_IMAGE": BASE_IMAGE},
            )
            first = build_components(workspace, cfg, tmp / "logs")
            assert first.ok and len(first.built) == args.components, first.summary()

            def unchanged_in_process() -> None:
                report = build_components(workspace, cfg, tmp / "logs-again")
                assert not report.built and len(report.skipped) == args.components, report.summary()

            script = (
                "import sys; from pathlib import Path; from branchops.config import RegistrySection as R; "
                "from branchops.images import build_components as b; "
                f"r = b(Path({str(workspace)!r}), R(url={cfg.url!r}, insecure=True, "
                f"build_args={dict(cfg.build_args)!r}), Path({str(tmp / 'logs-again')!r})); "
                f"sys.exit(0 if len(r.skipped) == {args.components} else 1)"
            )
            env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

            def unchanged_new_process() -> None:
                subprocess.run([sys.executable, "-c", script], check=True, env=env)

            one = discover_components(workspace, cfg.build_args)[0]
            bud = [
                "buildah",
                "bud",
                "--layers",
                "--quiet",
                "-f",
                one.dockerfile,
                "-t",
                f"localhost/bench/{one.name}:x",
                "--build-arg",
                f"BASE_IMAGE={BASE_IMAGE}",
                ".",
            ]

            def cached_bud() -> None:
                subprocess.run(bud, cwd=workspace, check=True, stdout=subprocess.DEVNULL)

            cached_bud()  # warm: every step of that Dockerfile is now in the layer cache
            unchanged_in_process()
            samples = {
                "buildah bud, fully cached, 1 image (baseline)": timed(cached_bud, args.repeats),
                f"build-components, nothing changed, {args.components} components (in-process call)": timed(
                    unchanged_in_process, args.repeats
                ),
                (
                    f"build-components, nothing changed, {args.components} components (new Python process)"
                ): timed(unchanged_new_process, args.repeats),
            }
    finally:
        subprocess.run(
            ["buildah", "rm", "--all"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
        )
        shutil.rmtree(tmp, ignore_errors=True)

    baseline = statistics.median(next(iter(samples.values())))
    rows = []
    for label, values in samples.items():
        median = statistics.median(values)
        rows.append(f"| {label} | {median * 1000:.0f} | {min(values) * 1000:.0f} | {median / baseline:.2f} |")
        print(f"{label}: median {median * 1000:.0f} ms (ratio to baseline {median / baseline:.2f})")
    text = "\n".join(
        [
            "### build-components with nothing changed vs one cached `buildah bud`",
            "",
            (
                f"{args.repeats} runs each, same run, {platform.machine()} / {os.cpu_count()} CPUs (shared), "
                f"docker-registry on 127.0.0.1, vfs store, "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
                "Goal: ratio < 1."
            ),
            "",
            "| case | median (ms) | min (ms) | ratio to baseline |",
            "|---|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
