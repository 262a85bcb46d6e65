"""The kf-pipeline stage: compile the pipeline, pin its images by digest, upload it as a version.

The version is named by the hash of the compiled spec, so uploading is an upsert keyed by content: the
same spec is never uploaded twice, and the training stage finds the version by compiling the same
commit again (:func:`compile_workspace`) rather than by ids copied from this stage's record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from branchops.runplan import compile_workspace
from branchops.stages.base import StageContext, StageResult

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig


def inputs(config: BranchopsConfig) -> tuple[str, ...]:
    """Path prefixes whose change runs this stage in single-branch mode."""
    return ("pipelines/", "components/")


def _describe_images(images: dict[str, str]) -> list[str]:
    if not images:
        return [
            "images: no registry configured; the spec is for the local runner (components run as processes)"
        ]
    return [f"image {name}: {ref}" for name, ref in sorted(images.items())]


def plan(ctx: StageContext) -> list[str]:
    """Compile (in a temporary directory) and look the version up; uploads nothing."""
    from branchops.engine import make_engine

    config = ctx.config
    compiled, images = compile_workspace(config, ctx.workspace)
    name = config.kubeflow.pipeline_name
    lines = [f"compile {config.kubeflow.pipeline_module}: spec hash {compiled.spec_hash}"] + _describe_images(
        images
    )
    existing = make_engine(config, ctx.state_dir, ctx.workspace).find_version(name, compiled.version_name)
    if existing:
        lines.append(
            f"pipeline {name} version {compiled.version_name[:12]} is already uploaded "
            f"(version id {existing.version_id}): nothing to upload"
        )
    else:
        lines.append(
            f"would upload pipeline {name} version {compiled.version_name[:12]} to the "
            f"{config.kubeflow.backend} engine (a new pipeline, or a new version of the existing one)"
        )
    return lines


def run(ctx: StageContext) -> StageResult:
    from branchops.engine import make_engine

    config = ctx.config
    compiled, images = compile_workspace(config, ctx.workspace)
    for line in _describe_images(images):
        ctx.log.info("%s", line)
    name = config.kubeflow.pipeline_name
    description = f"source commit {ctx.source_commit}; spec sha256 {compiled.spec_hash}"
    engine = make_engine(config, ctx.state_dir, ctx.workspace)
    upload = engine.upsert(name, compiled, description)
    ctx.add_artifact("pipeline.yaml", compiled.spec)
    outputs = {
        "engine": engine.name,
        "pipeline_name": name,
        "pipeline_id": upload.pipeline_id,
        "version_id": upload.version_id,
        "version_name": upload.version_name,
        "spec_hash": compiled.spec_hash,
        "uploaded": upload.created,
        "images": images,
    }
    if upload.created:
        summary = f"uploaded pipeline {name} version {upload.version_name[:12]} ({engine.name})"
    else:
        summary = f"pipeline {name} version {upload.version_name[:12]} was already uploaded; nothing to do"
    ctx.log.info("%s", summary)
    return StageResult(outcome="success", summary=summary, outputs=outputs)
