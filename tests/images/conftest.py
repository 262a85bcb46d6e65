"""Fixtures for the image tests: an isolated container store, a local registry, test workspaces.

The real tools run here (Debian's buildah, podman, docker-registry); nothing is pulled from Docker Hub:
the base image is committed from scratch with busybox-static. Container storage, containers.conf and
registries.conf live in a temporary directory (through CONTAINERS_STORAGE_CONF, CONTAINERS_CONF and
CONTAINERS_REGISTRIES_CONF), so the tests neither see nor change the machine's images.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from branchops.images.local_registry import LocalRegistry, make_busybox_base_image, registry_binary

BASE_IMAGE = "localhost/branchops-test-base:1"
COMPONENT_NAMES = ("alpha", "beta", "gamma")


def _missing_tools() -> list[str]:
    missing = [tool for tool in ("buildah", "podman", "runc") if shutil.which(tool) is None]
    if registry_binary() is None:
        missing.append("docker-registry")
    if not any(os.path.exists(p) for p in ("/bin/busybox", "/usr/bin/busybox")):
        missing.append("busybox-static")
    return missing


@pytest.fixture(scope="session")
def container_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private container store (vfs: works in any sandbox) with the busybox base image in it."""
    missing = _missing_tools()
    if missing:
        pytest.skip(f"container tools not installed: {', '.join(missing)} (run .ci/setup.d/containers.sh)")
    root = tmp_path_factory.mktemp("containers")
    (root / "storage.conf").write_text(textwrap.dedent(f"""\
        [storage]
        driver = "vfs"
        graphroot = "{root / 'graph'}"
        runroot = "{root / 'run'}"
        """))
    (root / "containers.conf").write_text(textwrap.dedent("""\
        [containers]
        default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
        [engine]
        runtime = "runc"
        """))
    # An unqualified name is never looked up on Docker Hub; the registry fixture adds its own entry.
    (root / "registries.conf").write_text('unqualified-search-registries = []\n')
    saved = {k: os.environ.get(k) for k in ("CONTAINERS_STORAGE_CONF", "CONTAINERS_CONF", "CONTAINERS_REGISTRIES_CONF")}
    os.environ["CONTAINERS_STORAGE_CONF"] = str(root / "storage.conf")
    os.environ["CONTAINERS_CONF"] = str(root / "containers.conf")
    os.environ["CONTAINERS_REGISTRIES_CONF"] = str(root / "registries.conf")
    try:
        make_busybox_base_image(BASE_IMAGE)
        yield root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        # vfs layers are plain directories; unmount anything buildah left mounted, then remove.
        subprocess.run(["buildah", "rm", "--all"], env={**os.environ, "CONTAINERS_STORAGE_CONF": str(root / "storage.conf")},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def registry(container_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as running:
        with (container_store / "registries.conf").open("a") as conf:
            conf.write(f'[[registry]]\nlocation = "{running.url}"\ninsecure = true\n')
        yield running


def write_component(workspace: Path, name: str, value: int = 1, test_passes: bool = True,
                    source_dir: str | None = None, run_step: bool = False) -> None:
    """A component package, its tests and its Dockerfile (FROM ${BASE_IMAGE}, copies its sources).

    ``run_step`` adds a RUN instruction (a real container started by runc during the build); only one
    component per workspace has one, to keep the suite quick on busy machines.
    """
    src = source_dir or name
    package = workspace / "components" / src
    (package / "tests").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(f"VALUE = {value}\n")
    (package / "requirements.txt").write_text("# pins of this component\n")
    expected = value if test_passes else value + 1000
    (package / "tests" / f"test_{src}.py").write_text(
        f"from components.{src} import VALUE\n\n\ndef test_value():\n    assert VALUE == {expected}\n")
    dockerfile = workspace / "docker" / name / "Dockerfile"
    dockerfile.parent.mkdir(parents=True, exist_ok=True)
    dockerfile.write_text(textwrap.dedent(f"""\
        ARG BASE_IMAGE=python:3.11-slim
        FROM ${{BASE_IMAGE}}
        WORKDIR /app
        COPY components/__init__.py components/__main__.py components/
        COPY components/common/ components/common/
        COPY components/{src}/ components/{src}/
        """) + (f"RUN test -f /app/components/{src}/__init__.py\n" if run_step else ""))


@pytest.fixture
def make_workspace(tmp_path: Path) -> Callable[..., Path]:
    """A git workspace with components alpha, beta, gamma; ``salt`` makes its tags unique to one test."""

    def make(salt: str, names: tuple[str, ...] = COMPONENT_NAMES) -> Path:
        workspace = tmp_path / "ws"
        (workspace / "components" / "common").mkdir(parents=True)
        (workspace / "components" / "__init__.py").write_text("")
        (workspace / "components" / "__main__.py").write_text("print('components')\n")
        (workspace / "components" / "common" / "__init__.py").write_text(f"SALT = {salt!r}\n")
        for index, name in enumerate(names):
            write_component(workspace, name, run_step=index == 0)
        git = ["git", "-C", str(workspace), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
        subprocess.run(["git", "init", "-q", str(workspace)], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "components"], check=True)
        return workspace

    return make
