"""deploy-model: make model serving match the release in git (docs/architecture.md §1, step 5).

The release file (``serving.release_file``, by default ``serving/tfserve/release.yaml``) is the
desired state. Merging a merge request that changes it rolls serving forward; reverting that merge
makes the previous release desired again and this stage rolls back to it. A rollout whose checks
fail is rolled back automatically by the backend; the stage then reports failure with the reason.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from branchops.errors import ConfigError
from branchops.records import DeploymentRecord, DeployOutputs, ReleaseRef
from branchops.stages.base import StageContext, StageResult

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig
    from branchops.serving.release import Release


def inputs(config: BranchopsConfig) -> tuple[str, ...]:
    """The release file's folder: in single-branch mode a change there (a new release) runs this stage."""
    folder = str(Path(config.serving.release_file).parent)
    return (f"{folder}/",) if folder != "." else (config.serving.release_file,)


def _release(ctx: StageContext) -> Release | None:
    """The desired release, or None before the first merge from training has created it."""
    from branchops.serving.release import read_release

    path = ctx.workspace / ctx.config.serving.release_file
    return read_release(path) if path.exists() else None


def _nothing_yet(ctx: StageContext) -> str:
    return f"no release file at {ctx.config.serving.release_file} yet: nothing to deploy"


def resolve_model_source(ctx: StageContext, release: Release) -> Path | None:
    """The local directory holding the release's model: ``source.path`` inside its volume or snapshot.

    The only coupling between serving and the storage port. None on Kubernetes: there the backend's
    copy Job mounts the volume (or a clone of the snapshot) itself."""
    from branchops.storage import make_storage

    if ctx.config.serving.backend == "kubernetes":
        return None

    storage = make_storage(ctx.config, ctx.state_dir)
    source = release.source
    if source.snapshot:
        found = storage.get_snapshot(source.snapshot)
        kind, name = "snapshot", source.snapshot
    else:
        found = storage.get_volume(source.volume or "")
        kind, name = "volume", source.volume
    if found is None:
        raise ConfigError(
            f"{ctx.config.serving.release_file}: source: {kind} '{name}' does not exist in "
            f"the {storage.backend} storage"
        )
    if found.path is None:
        raise ConfigError(
            f"{kind} '{name}' is not a local directory (storage backend '{storage.backend}'); "
            "the local serving backend needs local storage"
        )
    return Path(found.path) / source.path


def plan(ctx: StageContext) -> list[str]:
    from branchops.serving import make_serving

    release = _release(ctx)
    if release is None:
        return [_nothing_yet(ctx)]
    serving = make_serving(ctx.config, ctx.state_dir)
    live = serving.live_version()
    strategy = release.strategy_or(ctx.config.serving.rollout.strategy)
    where = f"{serving.backend} serving of model '{release.model}'"
    if live == release.version:
        return [f"{where}: version {live} is already live; nothing to do"]
    steps = [
        (
            f"{where}: live version {live if live is not None else 'nothing'} -> desired {release.version} "
            f"({strategy}) from {release.source.describe()}"
        ),
        "refuse it if its serving contract breaks the live version's clients (unless the release declares "
        "breaking_change)",
        "load it on a canary track no ordinary client reaches, check its signature, smoke-test the export's "
        "sample and the live version's",
    ]
    rollout = ctx.config.serving.rollout
    if strategy == "canary" and live is not None:
        steps.append(
            f"canary weights {rollout.canary_steps}%, each step at least {rollout.min_step_seconds:g} s and "
            f"{rollout.requests_per_step} requests, 4xx counted against the stable track's"
        )
    steps.append(
        "switch the stable track once TF Serving reports the label there, retire the old version; "
        "on any failed check roll back automatically"
    )
    return steps


def run(ctx: StageContext) -> StageResult:
    from branchops.serving import make_serving

    started = time.monotonic()
    release = _release(ctx)
    if release is None:
        return StageResult("success", _nothing_yet(ctx), DeployOutputs(deployment=None).to_dict())
    serving = make_serving(ctx.config, ctx.state_dir)
    source = resolve_model_source(ctx, release)
    result = serving.deploy(release, source)
    outputs = DeployOutputs(
        backend=serving.backend,
        release=ReleaseRef.model_validate(release.model_dump(mode="json", exclude_none=True)),
        model_source=str(source) if source else release.source.describe(),
        deployment=DeploymentRecord.model_validate(result.to_dict()),
        approved_by=sorted(ctx.approved_by),  # the approvals the gate counted, not every approval given
        seconds=round(time.monotonic() - started, 3),
    ).to_dict()
    if result.outcome == "unchanged":
        return StageResult(
            "success", f"model {release.model} version {release.version} is already live", outputs
        )
    if result.ok:
        before = f"version {result.before}" if result.before is not None else "nothing served"
        return StageResult(
            "success",
            f"model {release.model}: {before} -> version {result.after} ({result.strategy})",
            outputs,
        )
    still = f"version {result.before} still serves" if result.before is not None else "nothing serves it"
    return StageResult(
        "failed",
        f"model {release.model} version {release.version} rolled back; {still}: {result.reason}",
        outputs,
        error=result.reason,
    )
