"""A stage body that talks: an INFO line and a WARNING on its stage logger, so that tests can see what the
console shows of a real ``branchops`` process at each verbosity. ``python -m tests.foundation.talking_stage
ARGS`` runs branchops with this body registered for every stage."""

from __future__ import annotations

import sys

from branchops.stages.base import StageContext, StageResult


def inputs(config) -> tuple[str, ...]:
    return ("src/",)


def plan(ctx: StageContext) -> list[str]:
    return ["would talk"]


def run(ctx: StageContext) -> StageResult:
    ctx.log.info("talking stage: working on %s", ctx.source_commit[:12])
    ctx.log.warning("talking stage: something to look at")
    return StageResult(outcome="success", summary="talked")


if __name__ == "__main__":
    from branchops.cli import main
    from branchops.stages import REGISTRY

    for name in list(REGISTRY):
        REGISTRY[name] = sys.modules[__name__]
    main(sys.argv[1:])
