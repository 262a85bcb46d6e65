"""build-components with no registry (the demo default) and with registry.builder: none."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from branchops.config import RegistrySection
from branchops.images import build_components, discover_components, image_digests
from branchops.images.build import NO_REGISTRY_NOTE

from .conftest import write_component


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "components" / "common").mkdir(parents=True)
    (ws / "components" / "__init__.py").write_text("")
    (ws / "components" / "__main__.py").write_text("")
    (ws / "components" / "common" / "__init__.py").write_text("")
    write_component(ws, "alpha")
    write_component(ws, "beta", test_passes=False)
    return ws


def test_without_registry_tests_run_and_the_report_says_no_image_was_built(workspace, tmp_path):
    report = build_components(workspace, RegistrySection(), tmp_path / "logs")

    assert report.note == NO_REGISTRY_NOTE and "no image was built" in report.note
    by_name = {c.name: c for c in report.components}
    assert by_name["alpha"].status == "not-built" and by_name["alpha"].tests == "passed"
    assert by_name["alpha"].tag == discover_components(workspace)[0].content_tag
    assert by_name["alpha"].image is None and by_name["alpha"].digest is None
    assert by_name["beta"].status == "failed" and by_name["beta"].tests == "failed"
    assert not report.ok
    assert "assert 1 == 1001" in Path(by_name["beta"].log).read_text()
    assert sys.executable in Path(by_name["alpha"].log).read_text()  # the tests ran with this interpreter
    # Running the tests left no caches behind that would change a tag.
    assert not list(workspace.rglob("__pycache__")) and not list(workspace.rglob(".pytest_cache"))


def test_without_registry_dry_run_runs_nothing(workspace, tmp_path):
    report = build_components(workspace, RegistrySection(), tmp_path / "logs", dry_run=True)
    assert {c.status for c in report.components} == {"would-test"}
    assert "the component tests would run; no image would be built" in report.note
    assert all(c.tests == "not run" for c in report.components)
    assert not (tmp_path / "logs").exists()


def test_without_registry_nothing_is_pinned(workspace):
    assert image_digests(workspace, RegistrySection()) == {}


def test_a_component_without_tests_is_reported_as_such(workspace, tmp_path):
    for test_file in (workspace / "components" / "beta" / "tests").iterdir():
        test_file.unlink()
    (workspace / "components" / "beta" / "tests").rmdir()
    report = build_components(workspace, RegistrySection(), tmp_path / "logs")
    assert {c.name: c.tests for c in report.components} == {"alpha": "passed", "beta": "no tests"}
    assert report.ok
