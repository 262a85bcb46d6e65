"""The kf-pipeline stage: compile the pipeline, pin its images by digest, upload it as a version.

The version is named by the hash of the compiled spec, so uploading is an upsert keyed by content: the
same spec is never uploaded twice, and the training stage finds the version by compiling the same
commit again (:func:`compile_workspace`) rather than by ids copied from this stage's record.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from branchops.errors import ConfigError
from branchops.stages.base import StageContext, StageResult

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig
    from branchops.engine.base import CompiledPipeline

INPUTS = ("pipelines/", "components/")


def component_images(config: BranchopsConfig, workspace: Path) -> dict[str, str]:
    """Each component's image pinned by digest, looked up in the registry by its content tag; empty when
    no registry is configured (the local engine runs components as processes, not images)."""
    if not config.registry.url:
        if config.kubeflow.backend == "kubeflow":
            raise ConfigError("kubeflow.backend 'kubeflow' runs component images, so it needs registry.url: "
                              "configure the registry and merge into build-components first")
        return {}
    from branchops.images import image_digests  # the registry client is only needed with a registry

    return image_digests(Path(workspace), config.registry)


def compile_workspace(config: BranchopsConfig, workspace: Path) -> tuple[CompiledPipeline, dict[str, str]]:
    """Compile the configured pipeline module of ``workspace`` exactly as this stage uploads it: the
    same commit and configuration give the same spec hash (what the training stage looks up)."""
    from branchops.engine.compile import compile_pipeline

    images = component_images(config, workspace)
    compiled = compile_pipeline(Path(workspace), config.kubeflow.pipeline_module, images or None,
                                config.training.gpu)
    return compiled, images


def _describe_images(images: dict[str, str]) -> list[str]:
    if not images:
        return ["images: no registry configured; the spec is for the local runner (components run as processes)"]
    return [f"image {name}: {ref}" for name, ref in sorted(images.items())]


def plan(ctx: StageContext) -> list[str]:
    """Compile (in a temporary directory) and look the version up; uploads nothing."""
    from branchops.engine import make_engine

    config = ctx.config
    compiled, images = compile_workspace(config, ctx.workspace)
    name = config.kubeflow.pipeline_name
    lines = [f"compile {config.kubeflow.pipeline_module}: spec hash {compiled.spec_hash}"] + _describe_images(images)
    existing = make_engine(config, ctx.state_dir, ctx.workspace).find_version(name, compiled.version_name)
    if existing:
        lines.append(f"pipeline {name} version {compiled.version_name[:12]} is already uploaded "
                     f"(version id {existing.version_id}): nothing to upload")
    else:
        lines.append(f"would upload pipeline {name} version {compiled.version_name[:12]} to the "
                     f"{config.kubeflow.backend} engine (a new pipeline, or a new version of the existing one)")
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
