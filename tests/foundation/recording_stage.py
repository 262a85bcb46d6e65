"""A stage body for runner tests: records that it ran (so a test can prove nothing ran), can be told to
fail, and writes one artifact."""

from __future__ import annotations

import os

from branchops.errors import StageFailed
from branchops.stages.base import StageContext, StageResult


def inputs(config) -> tuple[str, ...]:
    return ("src/",)


def plan(ctx: StageContext) -> list[str]:
    return [f"would record a call for {ctx.stage}"]


def run(ctx: StageContext) -> StageResult:
    with open(os.environ["BRANCHOPS_TEST_STAGE_LOG"], "a") as fh:
        fh.write(f"{ctx.stage} {ctx.source_commit}\n")
    if (ctx.workspace / "src" / "FAIL").exists():
        raise StageFailed("the stage was told to fail (src/FAIL exists)")
    ctx.add_artifact("summary.txt", f"ran {ctx.stage} on {ctx.source_commit}\n")
    return StageResult(outcome="success", summary=f"{ctx.stage} recorded", outputs={"workspace_ok": True})
