"""Run every benchmark of the project and write the results table into bench/README.md.

    python bench/run_all.py [--quick]

Each bench_<area>.py measures its subject against a baseline in the same run (medians of several runs)
and writes bench/results/<area>.md; this script runs them one after the other (never in parallel: they
would measure each other) and assembles the fragments.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = [
    "workflow",
    "demo",
    "components",
    "model",
    "compile",
    "build",
    "snapshot",
    "serving",
    "history",
    "ui",
    "monitor",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="areas to run (default: all)")
    parser.add_argument("--assemble-only", action="store_true", help="only rebuild README.md from results/")
    args = parser.parse_args()
    areas = args.only or ORDER
    failed = []
    if not args.assemble_only:
        for area in areas:
            script = BENCH / f"bench_{area}.py"
            print(f"== {script.name}", flush=True)
            if subprocess.run([sys.executable, str(script)]).returncode != 0:
                failed.append(area)
    parts = [
        "# Benchmarks",
        "",
        "Every number is measured against a baseline in the same run, as a median of several runs, on "
        f"the project's CI machine kind (2 cores, {platform.machine()}, Python {platform.python_version()}). "
        "Re-run with `python bench/run_all.py`.",
        "",
        f"Assembled {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
    ]
    for area in ORDER:
        result = BENCH / "results" / f"{area}.md"
        parts += (
            [result.read_text().strip(), ""] if result.exists() else [f"## {area}", "", "not run yet", ""]
        )
    (BENCH / "README.md").write_text("\n".join(parts))
    print(f"wrote {BENCH / 'README.md'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
