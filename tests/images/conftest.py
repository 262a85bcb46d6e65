"""Fixtures for the image tests: an isolated container store, a local registry, test workspaces.

The real tools run here (Debian's buildah, podman, skopeo, docker-registry); nothing is pulled from Docker
Hub: the base image is committed from scratch with busybox-static. Container storage, containers.conf and
registries.conf live in a temporary directory (through CONTAINERS_STORAGE_CONF, CONTAINERS_CONF and
CONTAINERS_REGISTRIES_CONF), so the tests neither see nor change the machine's images.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from branchops.config import STAGES, BranchopsConfig, RegistrySection
from branchops.stages.base import StageContext

from .local_registry import LocalRegistry, make_busybox_base_image, registry_binary

BASE_IMAGE = "localhost/branchops-test-base:1"
COMPONENT_NAMES = ("alpha", "beta", "gamma")
# The manifest media types a client accepts (OCI image spec and Docker's image manifest v2, schema 2).
MANIFEST_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json"
)


def _missing_tools() -> list[str]:
    # skopeo: the independent client these tests read the registry with.
    missing = [tool for tool in ("buildah", "podman", "skopeo", "runc", "git") if shutil.which(tool) is None]
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
    (root / "storage.conf").write_text(
        textwrap.dedent(f"""\
        [storage]
        driver = "vfs"
        graphroot = "{root / 'graph'}"
        runroot = "{root / 'run'}"
        """)
    )
    (root / "containers.conf").write_text(
        textwrap.dedent("""\
        [containers]
        default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
        [engine]
        runtime = "runc"
        """)
    )
    # An unqualified name is never looked up on Docker Hub; the registry fixture adds its own entry.
    (root / "registries.conf").write_text('unqualified-search-registries = []\n')
    saved = {
        k: os.environ.get(k)
        for k in ("CONTAINERS_STORAGE_CONF", "CONTAINERS_CONF", "CONTAINERS_REGISTRIES_CONF")
    }
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
        subprocess.run(
            ["buildah", "rm", "--all"],
            env={**os.environ, "CONTAINERS_STORAGE_CONF": str(root / "storage.conf")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def registry(container_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as running:
        allow_plain_http(container_store, running)
        yield running


def allow_plain_http(container_store: Path, registry: LocalRegistry) -> None:
    """Let buildah, podman and skopeo reach ``registry`` over plain HTTP (a long-running podman service
    reads registries.conf once, so start it after this)."""
    with (container_store / "registries.conf").open("a") as conf:
        conf.write(f'[[registry]]\nlocation = "{registry.url}"\ninsecure = true\n')


def bcrypt_htpasswd(path: Path, user: str, password: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # the registry accepts only bcrypt entries; libxcrypt provides them
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("this libc's crypt() has no bcrypt")
    path.write_text(f"{user}:{hashed}\n")
    return path


# -- reading the registry without branchops ---------------------------------------------------------


def registry_api(registry_url: str, path: str, auth: tuple[str, str] | None = None) -> requests.Response:
    """``GET /v2/<path>`` on a plain-HTTP registry, as a client that shares no code with branchops."""
    return requests.get(
        f"http://{registry_url}/v2/{path}", headers={"Accept": MANIFEST_ACCEPT}, auth=auth, timeout=30
    )


def error_codes(response: requests.Response) -> list[str]:
    """The ``errors[].code`` of a registry error body (OCI distribution spec, "Error Codes")."""
    try:
        return [error["code"] for error in response.json()["errors"]]
    except (ValueError, KeyError, TypeError):
        return []


def registry_digest(registry_url: str, repository: str, tag: str, auth: tuple[str, str] | None = None) -> str:
    """The digest of the manifest the registry serves for ``repository:tag`` (which must exist)."""
    response = registry_api(registry_url, f"{repository}/manifests/{tag}", auth)
    assert response.status_code == 200, f"{repository}:{tag}: HTTP {response.status_code} {response.text}"
    digest = (
        "sha256:" + hashlib.sha256(response.content).hexdigest()
    )  # a manifest's digest is that of its bytes
    assert response.headers.get("Docker-Content-Digest") == digest
    return digest


def assert_not_in_registry(
    registry_url: str, repository: str, tag: str, auth: tuple[str, str] | None = None
) -> None:
    """The registry itself answers that ``repository:tag`` does not exist.

    The distribution spec's answer is HTTP 404 with MANIFEST_UNKNOWN (or NAME_UNKNOWN when the repository
    is unknown too). Anything else (no answer, 401, 5xx, a 404 without the error body) is a broken registry
    or client, not "nothing was pushed", and fails here.
    """
    manifest = registry_api(registry_url, f"{repository}/manifests/{tag}", auth)
    assert manifest.status_code == 404, f"{repository}:{tag}: HTTP {manifest.status_code} {manifest.text}"
    assert error_codes(manifest) and set(error_codes(manifest)) <= {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"}, (
        manifest.text
    )
    tags = registry_api(registry_url, f"{repository}/tags/list", auth)
    if tags.status_code == 404:
        assert error_codes(tags) == ["NAME_UNKNOWN"], tags.text
    else:
        assert tags.status_code == 200, f"{repository}: HTTP {tags.status_code} {tags.text}"
        assert tag not in (tags.json()["tags"] or [])


def skopeo_digest(image: str) -> str | None:
    """The digest as skopeo (an independent client) sees it, or None when the registry says the tag does
    not exist; any other skopeo failure fails the test."""
    done = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{image}"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace")
        if "manifest unknown" in error or "name unknown" in error:
            return None
        pytest.fail(f"skopeo could not read {image}: {error}")
    digest = subprocess.run(
        ["skopeo", "manifest-digest", "/dev/stdin"], input=done.stdout, capture_output=True, check=True
    )
    return digest.stdout.decode().strip()


def make_context(workspace: Path, state_dir: Path, registry_cfg: RegistrySection, dry_run: bool = False):
    config = BranchopsConfig(approvers={s: ["lead"] for s in STAGES}, registry=registry_cfg)
    return StageContext(
        stage="build-components",
        branch="build-components",
        workspace=workspace,
        git_dir=workspace,
        state_dir=state_dir,
        config=config,
        source_commit="0" * 40,
        run_id="20260101T000000Z-000000000000",
        record_dir="records/build-components/x",
        merge_request=None,
        forge=None,
        notifier=None,
        dry_run=dry_run,
    )  # type: ignore[arg-type]


def write_component(
    workspace: Path,
    name: str,
    value: int = 1,
    test_passes: bool = True,
    source_dir: str | None = None,
    run_step: bool = False,
) -> None:
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
        f"from components.{src} import VALUE\n\n\ndef test_value():\n    assert VALUE == {expected}\n"
    )
    dockerfile = workspace / "docker" / name / "Dockerfile"
    dockerfile.parent.mkdir(parents=True, exist_ok=True)
    dockerfile.write_text(
        textwrap.dedent(f"""\
        ARG BASE_IMAGE=python:3.11-slim
        FROM ${{BASE_IMAGE}}
        WORKDIR /app
        COPY components/__init__.py components/__main__.py components/
        COPY components/common/ components/common/
        COPY components/{src}/ components/{src}/
        """)
        + (f"RUN test -f /app/components/{src}/__init__.py\n" if run_step else "")
    )


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
