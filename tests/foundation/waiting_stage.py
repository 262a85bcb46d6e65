"""A stage body that holds on until told to finish, with a child process of its own, so that tests can
interrupt, kill or race a run in progress. Control files live in $BRANCHOPS_TEST_STAGE_DIR:
``started`` (written when the body runs), ``child.pid``, and ``finish`` (create it to let the body end)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from branchops import interrupt
from branchops.stages.base import StageContext, StageResult


def inputs(config) -> tuple[str, ...]:
    return ("src/",)


def plan(ctx: StageContext) -> list[str]:
    return ["would wait for the finish file"]


def run(ctx: StageContext) -> StageResult:
    control = Path(os.environ["BRANCHOPS_TEST_STAGE_DIR"])
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (control / "child.pid").write_text(str(child.pid))
    (control / "started").write_text(ctx.run_id)
    try:
        while not (control / "finish").exists():
            interrupt.check()
            time.sleep(0.05)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # what a stage starts, it stops, however it ends
        child.wait()
    return StageResult(outcome="success", summary="waited and finished")


if __name__ == "__main__":  # run branchops with this body registered for every stage
    from branchops.cli import main
    from branchops.stages import REGISTRY

    for name in list(REGISTRY):
        REGISTRY[name] = sys.modules[__name__]
    main(sys.argv[1:])
