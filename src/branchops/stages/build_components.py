"""The build-components stage: test, build and push the component images whose sources changed.

Every image is tagged by the hash of what goes into it, so "changed" means "its tag is not in the
registry": a rerun on the same commit builds nothing, and a change to one component rebuilds that one.
The record lists each component (built, skipped or failed; tag, digest, test result, durations and why)
and carries the logs of the components that ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from branchops.stages.base import StageContext, StageResult

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig
    from branchops.images.build import BuildReport


def inputs(config: BranchopsConfig) -> tuple[str, ...]:
    """Path prefixes whose change runs this stage in single-branch mode."""
    return ("components/", "docker/")


def _log_dir(ctx: StageContext) -> Path:
    return Path(ctx.state_dir) / "logs" / "build-components" / ctx.run_id


def _outputs(report: BuildReport) -> dict:
    return {
        "registry": report.registry,
        "builder": report.builder,
        "note": report.note,
        "built": [c.name for c in report.built],
        "skipped": [c.name for c in report.skipped],
        "failed": [c.name for c in report.failed],
        "components": [
            {
                "name": c.name,
                "status": c.status,
                "tag": c.tag,
                "image": c.image,
                "digest": c.digest,
                "tests": c.tests,
                "durations": c.durations,
                "reason": c.reason,
            }
            for c in report.components
        ],
    }


def plan(ctx: StageContext) -> list[str]:
    """What would be built and why (looks tags up in the registry; builds, pushes and writes nothing)."""
    from branchops.images import build_components

    report = build_components(ctx.workspace, ctx.config.registry, _log_dir(ctx), dry_run=True)
    return report.lines() or ["no components found"]


def run(ctx: StageContext) -> StageResult:
    from branchops.images import build_components
    from branchops.secrets import mask

    report = build_components(
        ctx.workspace,
        ctx.config.registry,
        _log_dir(ctx),
        run_tests=True,
        dry_run=ctx.dry_run,
        progress_log=ctx.log,
    )
    # The result lines, once: build_components itself only says when each component starts and ends.
    for line in report.lines():
        ctx.log.info("%s", line)
    for component in report.components:
        if component.log and Path(component.log).exists():
            text = Path(component.log).read_text(encoding="utf-8", errors="replace")
            ctx.add_artifact(f"logs/{component.name}.log", mask(text))
    outputs = _outputs(report)
    if not report.ok:
        return StageResult(
            outcome="failed",
            summary=report.summary(),
            outputs=outputs,
            error="\n".join(f"{c.name}: {c.reason}" for c in report.failed),
        )
    summary = report.summary()
    if report.note:
        summary += f". {report.note}"
    return StageResult(outcome="success", summary=summary, outputs=outputs)
