"""The kf-pipeline stage through its public functions (plan, run) on the reference pipeline."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from branchops import runplan
from branchops.config import parse_config
from branchops.errors import ConfigError, StageFailed
from branchops.images import discover_components
from branchops.stages import kf_pipeline
from branchops.stages.base import StageContext

from .fake_kfp import FakeKfpClient, FakeKfpClientView
from .fake_registry import FakeRegistry, oci_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
APPROVERS = (
    "approvers: {build-components: [lead], kf-pipeline: [lead], training: [lead], deploy-model: [lead]}\n"
)
NAMES = ("consolidate", "validate", "features", "train", "evaluate", "export")


def context(tmp_path: Path, config_text: str = "", commit: str = "c0ffee" * 6 + "beef") -> StageContext:
    """The reference project's configuration, with ``config_text``'s sections laid over it."""
    from branchops.scaffold import deep_merge

    reference = yaml.safe_load((REPO_ROOT / "config" / "branchops.yaml").read_text())
    config = parse_config(yaml.safe_dump(deep_merge(reference, yaml.safe_load(APPROVERS + config_text))))
    return StageContext(
        stage="kf-pipeline",
        branch="kf-pipeline",
        workspace=REPO_ROOT,
        git_dir=tmp_path / "git",
        state_dir=tmp_path / "state",
        config=config,
        source_commit=commit,
        run_id="20261123T170000Z-c0ffee",
        record_dir="records/kf-pipeline/x",
        merge_request=None,
        forge=None,
        notifier=None,
        log=logging.getLogger("test.kf-pipeline"),
    )


def test_local_upload_then_a_rerun_uploads_nothing(tmp_path: Path):
    ctx = context(tmp_path)
    plan = kf_pipeline.plan(ctx)
    assert any("would upload pipeline djia-sentiment" in line for line in plan)
    assert any("no registry configured" in line for line in plan)

    result = kf_pipeline.run(ctx)
    assert result.outcome == "success" and result.outputs["uploaded"] is True
    outputs = result.outputs
    assert outputs["version_name"] == outputs["spec_hash"] and outputs["images"] == {}
    assert ctx.artifacts["pipeline.yaml"].startswith(b"# PIPELINE DEFINITION")

    ctx2 = context(tmp_path)
    again = kf_pipeline.run(ctx2)
    assert again.outputs["uploaded"] is False and "already uploaded" in again.summary
    assert (again.outputs["pipeline_id"], again.outputs["version_id"]) == (
        outputs["pipeline_id"],
        outputs["version_id"],
    )
    assert any("already uploaded" in line for line in kf_pipeline.plan(ctx2))

    # What the training stage does: compile the same commit again and find the version by its hash.
    compiled, _ = runplan.compile_workspace(ctx.config, REPO_ROOT)
    from branchops.engine import make_engine

    found = make_engine(ctx.config, ctx.state_dir, REPO_ROOT).find_version(
        "djia-sentiment", compiled.version_name
    )
    assert found is not None and found.version_id == outputs["version_id"]


def container_images(document) -> list[str]:
    """Every ``image`` value anywhere in a parsed YAML document."""
    if isinstance(document, dict):
        found = [document["image"]] if isinstance(document.get("image"), str) else []
        return found + [image for value in document.values() for image in container_images(value)]
    if isinstance(document, list):
        return [image for value in document for image in container_images(value)]
    return []


def test_kubeflow_upload_pins_every_image_by_digest(tmp_path: Path, monkeypatch):
    fake = FakeKfpClient(multi_user=True)
    monkeypatch.setattr("branchops.engine.kubeflow.make_client", lambda settings: FakeKfpClientView(fake))
    with FakeRegistry() as registry:
        settings = (
            f"registry: {{url: '{registry.host}/djia', insecure: true}}\n"
            "kubeflow: {backend: kubeflow, kubeflow: {host: 'https://kf.example.test', auth: none, "
            "namespace: team-a}}\n"
            "training: {gpu: {count: 1}}\n"
        )
        ctx = context(tmp_path, settings)
        # What build-components pushed for these sources: each component's image under its content tag,
        # each with a manifest (and so a digest) of its own.
        digests = {
            component.name: registry.push(
                f"djia/{component.name}", component.content_tag, oci_manifest(f"{component.name} image")
            )
            for component in discover_components(REPO_ROOT, ctx.config.registry.build_args)
        }
        assert set(digests) == {*NAMES, "train-gpu"} and len(set(digests.values())) == len(digests)
        expected = {name: f"{registry.host}/djia/{name}@{digest}" for name, digest in digests.items()}
        result = kf_pipeline.run(ctx)
        assert kf_pipeline.run(context(tmp_path, settings)).outputs["uploaded"] is False

    assert result.outputs["engine"] == "kubeflow" and result.outputs["uploaded"] is True
    assert result.outputs["images"] == expected
    [uploaded] = fake.uploaded_specs
    assert uploaded == ctx.artifacts["pipeline.yaml"]
    documents = [d for d in yaml.safe_load_all(uploaded) if d]
    executors = documents[0]["deploymentSpec"]["executors"]
    # Every step runs the image of its own component, pinned by the digest the registry reported; with a
    # GPU configured, training runs the train-gpu image.
    runs_image = {name: expected["train-gpu" if name == "train" else name] for name in NAMES}
    assert {executor: spec["container"]["image"] for executor, spec in executors.items()} == {
        f"exec-{name}": image for name, image in runs_image.items()
    }
    assert set(container_images(documents)) == set(runs_image.values())  # no tag-only reference anywhere
    assert executors["exec-train"]["container"]["resources"]["accelerator"]
    [pipeline] = fake.pipelines.values()
    assert pipeline.namespace == "team-a" and pipeline.display_name == "djia-sentiment"
    [version] = fake.versions.values()
    assert version.name == result.outputs["spec_hash"] and ctx.source_commit in version.description
    assert len(fake.uploaded_specs) == 1


def test_a_missing_component_image_fails_before_anything_is_uploaded(tmp_path: Path, monkeypatch):
    def missing(workspace, cfg):
        raise StageFailed(
            "component images for these sources are not in the registry: 127.0.0.1:5000/djia/train:"
            "abc. Merge these changes into build-components first; its stage builds and pushes them."
        )

    monkeypatch.setattr("branchops.images.image_digests", missing)
    ctx = context(tmp_path, "registry: {url: 127.0.0.1:5000/djia}\n")
    with pytest.raises(StageFailed, match="build-components first"):
        kf_pipeline.run(ctx)
    assert "pipeline.yaml" not in ctx.artifacts
    assert not (ctx.state_dir / ".branchops" / "kfp").exists()


def test_the_kubeflow_backend_without_a_registry_is_refused(tmp_path: Path):
    ctx = context(
        tmp_path, "kubeflow: {backend: kubeflow, kubeflow: {host: 'https://kf.example.test', auth: none}}\n"
    )
    with pytest.raises(ConfigError, match="needs registry.url"):
        kf_pipeline.run(ctx)
