"""Component discovery and content tags (pure file-system logic, no container tools)."""

from __future__ import annotations

from pathlib import Path

import pytest

from branchops.errors import ConfigError
from branchops.images import discover_components
from branchops.images.discover import copied_sources

from .conftest import write_component


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "components" / "common").mkdir(parents=True)
    (tmp_path / "components" / "__init__.py").write_text("")
    (tmp_path / "components" / "__main__.py").write_text("")
    (tmp_path / "components" / "common" / "io.py").write_text("X = 1\n")
    for name in ("alpha", "beta"):
        write_component(tmp_path, name)
    return tmp_path


def tags(workspace: Path, **build_args: str) -> dict[str, str]:
    return {c.name: c.content_tag for c in discover_components(workspace, build_args)}


def test_discovers_components_with_their_sources(workspace):
    components = discover_components(workspace)
    assert [c.name for c in components] == ["alpha", "beta"]
    alpha = components[0]
    assert alpha.dockerfile == "docker/alpha/Dockerfile" and alpha.source_dir == "components/alpha"
    assert {
        "components/alpha/__init__.py",
        "components/alpha/requirements.txt",
        "components/common/io.py",
        "components/__init__.py",
        "components/__main__.py",
        "docker/alpha/Dockerfile",
    } <= set(alpha.files)
    assert not any(f.startswith("components/beta") for f in alpha.files)
    assert len(alpha.content_tag) >= 16 and int(alpha.content_tag, 16) >= 0


def test_changing_one_component_changes_exactly_its_tag(workspace):
    before = tags(workspace)
    (workspace / "components" / "beta" / "requirements.txt").write_text("numpy==2.1.0\n")
    after = tags(workspace)
    assert after["alpha"] == before["alpha"] and after["beta"] != before["beta"]


def test_shared_sources_dockerfile_and_build_args_change_every_tag_they_reach(workspace):
    before = tags(workspace)
    (workspace / "components" / "common" / "io.py").write_text("X = 2\n")
    assert all(before[n] != t for n, t in tags(workspace).items())
    before = tags(workspace)
    assert all(before[n] != t for n, t in tags(workspace, BASE_IMAGE="python:3.12-slim").items())
    (workspace / "docker" / "alpha" / "Dockerfile").write_text(
        (workspace / "docker" / "alpha" / "Dockerfile").read_text() + "ENV X=1\n"
    )
    after = tags(workspace)
    assert after["alpha"] != before["alpha"] and after["beta"] == before["beta"]


def test_test_caches_and_bytecode_never_change_a_tag(workspace):
    before = tags(workspace)
    cache = workspace / "components" / "alpha" / "tests" / "__pycache__"
    cache.mkdir()
    (cache / "test_alpha.cpython-311.pyc").write_bytes(b"\x00")
    (workspace / "components" / "alpha" / ".pytest_cache").mkdir()
    assert tags(workspace) == before


def test_a_renamed_file_changes_the_tag(workspace):
    before = tags(workspace)
    source = workspace / "components" / "alpha" / "requirements.txt"
    source.rename(source.with_name("requirements.in"))
    assert tags(workspace)["alpha"] != before["alpha"]


def test_variant_shares_sources_and_non_components_are_ignored(workspace):
    write_component(workspace, "alpha-gpu", source_dir="alpha")
    (workspace / "docker" / "ci-agent").mkdir()
    (workspace / "docker" / "ci-agent" / "Dockerfile").write_text("FROM scratch\n")
    components = {c.name: c for c in discover_components(workspace)}
    assert sorted(components) == ["alpha", "alpha-gpu", "beta"]
    assert components["alpha-gpu"].source_dir == "components/alpha"
    assert components["alpha-gpu"].tests_dir == "components/alpha/tests"
    assert components["alpha-gpu"].content_tag != components["alpha"].content_tag  # its Dockerfile differs


def test_files_the_dockerfile_copies_from_elsewhere_are_hashed(workspace):
    (workspace / "constraints.txt").write_text("pandas==3.0.0\n")
    dockerfile = workspace / "docker" / "beta" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "COPY --chown=1000 constraints.txt /app/\n")
    before = tags(workspace)
    (workspace / "constraints.txt").write_text("pandas==3.0.1\n")
    after = tags(workspace)
    assert after["beta"] != before["beta"] and after["alpha"] == before["alpha"]


def test_copy_sources_parsing():
    text = (
        'FROM x AS build\nCOPY --from=build /a /b\nCOPY ["a b.txt", "c/", "/dst/"]\n'
        "ADD https://example.com/f.tgz /f\nCOPY ./x \\\n  y/ /app/\n# COPY ignored /z\nCOPY $ARGDIR /q\n"
    )
    assert copied_sources(text) == ["a b.txt", "c", "x", "y"]


def test_copying_the_whole_context_is_refused_with_the_reason(workspace):
    (workspace / "docker" / "beta" / "Dockerfile").write_text("FROM scratch\nCOPY . /app\n")
    with pytest.raises(ConfigError, match="copies the whole build context"):
        discover_components(workspace)


def test_invalid_image_name_is_named(workspace):
    (workspace / "docker" / "Alpha").mkdir()
    (workspace / "docker" / "Alpha" / "Dockerfile").write_text("FROM scratch\n")
    (workspace / "components" / "Alpha").mkdir()
    with pytest.raises(ConfigError, match="docker/Alpha/Dockerfile: 'Alpha' is not a valid image name"):
        discover_components(workspace)


def test_no_docker_folder_means_no_components(tmp_path):
    assert discover_components(tmp_path) == []
