"""build-components against the real tools: buildah/podman build and push to a real docker-registry.

Each test uses its own registry namespace and its own sources (``salt``), so tests do not see each
other's images.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from branchops.config import RegistrySection
from branchops.errors import ExternalError, StageFailed
from branchops.images import build_components, discover_components, image_digests
from branchops.stages import build_components as stage

from .conftest import (
    BASE_IMAGE,
    assert_not_in_registry,
    error_codes,
    make_context,
    registry_api,
    registry_digest,
    skopeo_digest,
    write_component,
)
from .local_registry import LocalRegistry, free_port

pytestmark = [pytest.mark.containers, pytest.mark.slow]


def registry_config(registry: LocalRegistry, namespace: str, builder: str = "buildah") -> RegistrySection:
    return RegistrySection(
        url=f"{registry.url}/{namespace}",
        insecure=True,
        builder=builder,
        max_parallel_builds=2,
        build_args={"BASE_IMAGE": BASE_IMAGE},
        timeout_s=300,
    )


@pytest.mark.parametrize(
    ("builder", "names"), [("buildah", ("alpha", "beta", "gamma")), ("podman", ("alpha",))]
)
def test_first_run_pushes_every_image_and_a_second_run_builds_nothing(
    make_workspace, registry, tmp_path, builder, names
):
    workspace = make_workspace(salt=f"first-{builder}", names=names)
    cfg = registry_config(registry, f"first-{builder}", builder)

    first = build_components(workspace, cfg, tmp_path / "logs1")

    assert first.ok, first.summary()
    assert first.builder == builder
    assert [c.name for c in first.built] == list(names)
    for entry in first.built:
        assert entry.tests == "passed"
        assert entry.digest == skopeo_digest(entry.image)  # what the registry really serves
        assert entry.tag != "latest" and entry.image.endswith(f":{entry.tag}")
        assert "build and push" in Path(entry.log).read_text()
    assert image_digests(workspace, cfg) == {c.name: c.pinned for c in first.built}

    second = build_components(workspace, cfg, tmp_path / "logs2")

    assert second.built == [] and [c.name for c in second.skipped] == list(names)
    assert all(c.tests == "not run" for c in second.skipped)  # an unchanged component is not even tested
    assert {c.name: c.digest for c in second.skipped} == {c.name: c.digest for c in first.built}
    assert not (tmp_path / "logs2").exists()


def test_changing_one_component_rebuilds_exactly_that_one(make_workspace, registry, tmp_path):
    workspace = make_workspace(salt="change-one")
    cfg = registry_config(registry, "change-one")
    before = build_components(workspace, cfg, tmp_path / "logs1")
    assert before.ok, before.summary()

    write_component(workspace, "beta", value=2)
    after = build_components(workspace, cfg, tmp_path / "logs2")

    assert [c.name for c in after.built] == ["beta"]
    assert [c.name for c in after.skipped] == ["alpha", "gamma"]
    old = {c.name: c for c in before.components}
    new = {c.name: c for c in after.components}
    assert new["beta"].tag != old["beta"].tag and new["beta"].digest != old["beta"].digest
    assert new["alpha"].digest == old["alpha"].digest
    assert skopeo_digest(new["beta"].image) == new["beta"].digest
    assert skopeo_digest(old["beta"].image) == old["beta"].digest  # the old image stays for older pipelines


def test_failing_component_test_pushes_nothing_and_fails_the_stage(make_workspace, registry, tmp_path):
    workspace = make_workspace(salt="failing-test")
    cfg = registry_config(registry, "failing-test")
    write_component(workspace, "beta", value=3, test_passes=False)
    ctx = make_context(workspace, tmp_path / "state", cfg)

    result = stage.run(ctx)

    by_name = {c["name"]: c for c in result.outputs["components"]}
    # The registry is asked directly: no repository for beta at all (404 NAME_UNKNOWN), and its tag has no
    # manifest. A registry or client that does not answer fails here instead of passing for "not found".
    beta_tags = registry_api(registry.url, "failing-test/beta/tags/list")
    assert (beta_tags.status_code, error_codes(beta_tags)) == (404, ["NAME_UNKNOWN"]), beta_tags.text
    assert_not_in_registry(registry.url, "failing-test/beta", by_name["beta"]["tag"])
    assert skopeo_digest(f"{registry.url}/failing-test/beta:{by_name['beta']['tag']}") is None
    # The same questions about alpha, built in the same run, are answered with its manifest.
    assert (
        registry_digest(registry.url, "failing-test/alpha", by_name["alpha"]["tag"])
        == by_name["alpha"]["digest"]
    )
    assert result.outcome == "failed"
    assert by_name["beta"]["status"] == "failed" and by_name["beta"]["tests"] == "failed"
    assert "tests failed" in result.error
    assert by_name["alpha"]["status"] == "built"  # the others are still built and recorded
    assert "assert 3 == 1003" in ctx.artifacts["logs/beta.log"].decode()
    with pytest.raises(StageFailed, match="merge these changes into build-components first|Merge these"):
        image_digests(workspace, cfg)


def test_stage_records_what_it_built_and_dry_run_touches_nothing(make_workspace, registry, tmp_path):
    workspace = make_workspace(salt="stage-record", names=("alpha",))
    write_component(workspace, "alpha-gpu", source_dir="alpha")  # a variant sharing components/alpha
    cfg = registry_config(registry, "stage-record")

    planned = stage.plan(make_context(workspace, tmp_path / "state", cfg, dry_run=True))
    assert any(line.startswith("alpha: would-build") for line in planned)
    assert any(line.startswith("alpha-gpu: would-build") for line in planned)
    assert image_digests_missing(workspace, cfg)

    ctx = make_context(workspace, tmp_path / "state", cfg)
    result = stage.run(ctx)

    assert result.outcome == "success", result.summary
    assert result.outputs["built"] == ["alpha", "alpha-gpu"]
    record = json.loads(json.dumps(result.outputs))  # the record is plain JSON
    for component in record["components"]:
        assert component["digest"].startswith("sha256:") and component["tests"] == "passed"
        assert set(component["durations"]) == {"tests_s", "build_s"}
    assert sorted(ctx.artifacts) == ["logs/alpha-gpu.log", "logs/alpha.log"]

    rerun = stage.plan(make_context(workspace, tmp_path / "state", cfg, dry_run=True))
    assert all(": skipped" in line for line in rerun)


def image_digests_missing(workspace: Path, cfg: RegistrySection) -> bool:
    try:
        image_digests(workspace, cfg)
    except StageFailed:
        return True
    return False


def test_registry_down_is_a_clear_error_and_nothing_runs(make_workspace, container_store, tmp_path):
    workspace = make_workspace(salt="registry-down")
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    cfg = RegistrySection(
        url=f"{down}/ns", insecure=True, builder="buildah", build_args={"BASE_IMAGE": BASE_IMAGE}
    )
    ctx = make_context(workspace, tmp_path / "state", cfg)

    with pytest.raises(ExternalError, match=rf"registry http://{down} is unreachable") as caught:
        stage.run(ctx)

    assert caught.value.exit_code == 6  # the runner records a failed stage with this exit code
    assert ctx.artifacts == {} and not (tmp_path / "state").exists()
    with pytest.raises(ExternalError, match=down):
        image_digests(workspace, cfg)
    assert len(discover_components(workspace, cfg.build_args)) == 3
