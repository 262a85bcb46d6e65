"""A training stage stand-in for the retraining tests: records the data window (``data.until`` of the
configuration merged at the commit it runs on) instead of training, so a test can tell which window a
retrain ran on, or that nothing ran."""

from __future__ import annotations

import os

from branchops.stages.base import StageContext, StageResult


def inputs(config) -> tuple[str, ...]:
    return ("config/",)


def plan(ctx: StageContext) -> list[str]:
    return [f"would train on data until {ctx.config.data.until}"]


def run(ctx: StageContext) -> StageResult:
    until = ctx.config.data.until if ctx.config.data else None
    with open(os.environ["BRANCHOPS_TEST_STAGE_LOG"], "a") as fh:
        fh.write(f"{ctx.stage} {ctx.source_commit} until={until}\n")
    return StageResult(outcome="success", summary=f"trained on data until {until}")
