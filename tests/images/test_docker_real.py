"""The docker builder for real: the docker CLI against podman's Docker-compatible API, pushing to
docker-registry.

No Docker daemon runs here: ``podman system service`` serves the Docker Engine API on a unix socket and
DOCKER_HOST points the docker CLI at it, so ``docker build`` and ``docker push`` send the requests they
would send to dockerd. The images land in a real local registry and are checked there.

kaniko is not run for real: its executor ships only inside the gcr.io/kaniko-project/executor image,
which cannot be pulled here; test_builders.py checks its command line against kaniko's documented flags.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from branchops.config import RegistrySection, SecretRef
from branchops.images import build_components
from branchops.images.builders import BuildRequest, CommandFailed
from branchops.images.builders.docker import DockerBuilder

from .conftest import (
    BASE_IMAGE,
    allow_plain_http,
    assert_not_in_registry,
    bcrypt_htpasswd,
    registry_digest,
    skopeo_digest,
)
from .local_registry import LocalRegistry

pytestmark = [pytest.mark.containers, pytest.mark.slow]
USER, PASSWORD, PASSWORD_ENV = "docker-pusher", "d0cker-push-token", "BRANCHOPS_TEST_DOCKER_PASSWORD"


def _docker_cli_missing() -> str | None:
    if shutil.which("docker") is None:
        return "the docker CLI is not installed (run .ci/setup.d/containers.sh)"
    version = subprocess.run(["docker", "--version"], capture_output=True, text=True, check=False).stdout
    if not version.startswith("Docker version"):
        # podman-docker's `docker` is podman itself, which would test nothing of the docker CLI.
        return f"`docker` here is not the docker CLI: {version.strip()!r}"
    return None


@pytest.fixture(scope="module")
def docker_auth_registry(container_store: Path, tmp_path_factory) -> Iterator[LocalRegistry]:
    root = tmp_path_factory.mktemp("docker-auth-registry")
    htpasswd = bcrypt_htpasswd(root / "htpasswd", USER, PASSWORD)
    with LocalRegistry(root / "registry", htpasswd=htpasswd) as running:
        allow_plain_http(container_store, running)
        yield running


@pytest.fixture(scope="module")
def docker_host(
    container_store: Path, registry: LocalRegistry, docker_auth_registry: LocalRegistry, tmp_path_factory
) -> Iterator[str]:
    """``unix://...`` of a podman API service on the test store, started after both registries are in
    registries.conf (the service reads it once)."""
    missing = _docker_cli_missing()
    if missing:
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("podman-service")
    sock = root / "podman.sock"
    # No login stored on this machine may authenticate a push for the tests: only what the CLI sends counts.
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(root / "no-logins.json")}
    with (root / "service.log").open("ab") as log:
        service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{sock}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_for_socket(sock, service, root / "service.log")
        yield f"unix://{sock}"
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(timeout=10)


def _wait_for_socket(sock: Path, service: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.poll() is not None:
            pytest.fail(f"podman system service exited with {service.returncode}: {log.read_text()}")
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(sock))
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"podman system service did not listen on {sock} within {timeout_s:g}s: {log.read_text()}")


@pytest.fixture
def docker_env(docker_host: str, monkeypatch, tmp_path) -> str:
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    # podman's API has no BuildKit: a docker CLI with the buildx plugin would route `docker build` to
    # BuildKit and fail against it. DOCKER_BUILDKIT=0 keeps the classic build API, which podman serves.
    monkeypatch.setenv("DOCKER_BUILDKIT", "0")
    # The machine's ~/.docker/config.json (logins, credential helpers) stays out of it.
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    return docker_host


def image_labels(image: str) -> dict[str, str]:
    """The labels of ``image``'s config, as skopeo reads them from the registry."""
    done = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{image}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["Labels"] or {}


def test_docker_cli_builds_through_podman_and_pushes_what_the_registry_serves(
    make_workspace, registry, docker_env, tmp_path
):
    workspace = make_workspace(
        salt="docker-cli", names=("alpha", "beta")
    )  # alpha's Dockerfile has a RUN step
    cfg = RegistrySection(
        url=f"{registry.url}/docker-cli",
        insecure=True,
        builder="docker",
        max_parallel_builds=2,
        build_args={"BASE_IMAGE": BASE_IMAGE},
        timeout_s=300,
    )

    first = build_components(workspace, cfg, tmp_path / "logs1")

    assert first.ok, first.summary()
    assert first.builder == "docker"
    assert [c.name for c in first.built] == ["alpha", "beta"]
    for entry in first.built:
        assert registry_digest(registry.url, f"docker-cli/{entry.name}", entry.tag) == entry.digest
        assert skopeo_digest(entry.image) == entry.digest
        # The build arguments and labels reached the engine: the image is FROM the busybox base (a default
        # python:3.11-slim could not be pulled here) and carries the component's labels.
        labels = image_labels(entry.image)
        assert (labels["io.branchops.component"], labels["io.branchops.content-tag"]) == (
            entry.name,
            entry.tag,
        )
        log_text = Path(entry.log).read_text()
        assert f"$ docker build -f docker/{entry.name}/Dockerfile -t {entry.image}" in log_text
        assert f"$ docker push {entry.image}" in log_text
        assert f"digest: {entry.digest}" in log_text  # what docker push reported is what the registry serves

    second = build_components(workspace, cfg, tmp_path / "logs2")

    assert second.built == [] and [c.name for c in second.skipped] == ["alpha", "beta"]
    assert {c.name: c.digest for c in second.skipped} == {c.name: c.digest for c in first.built}


def test_docker_push_logs_in_with_docker_config_and_is_refused_without(
    make_workspace, docker_auth_registry, docker_env, monkeypatch, tmp_path
):
    url = docker_auth_registry.url
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    workspace = make_workspace(salt="docker-auth", names=("alpha",))
    cfg = RegistrySection(
        url=f"{url}/private",
        insecure=True,
        builder="docker",
        username=USER,
        password=SecretRef(env=PASSWORD_ENV),
        build_args={"BASE_IMAGE": BASE_IMAGE},
        timeout_s=300,
    )

    report = build_components(workspace, cfg, tmp_path / "logs")

    assert report.ok, report.summary()
    (alpha,) = report.built
    assert registry_digest(url, "private/alpha", alpha.tag, auth=(USER, PASSWORD)) == alpha.digest
    assert PASSWORD not in Path(alpha.log).read_text()

    # The same image pushed without the login (no DOCKER_CONFIG from the builder) is refused by the registry.
    anonymous = f"{url}/private/alpha:anonymous"
    request = BuildRequest(
        workspace=workspace,
        dockerfile="docker/alpha/Dockerfile",
        image=anonymous,
        build_args={"BASE_IMAGE": BASE_IMAGE},
        labels={},
        insecure=True,
        auth_dir=None,
        digest_file=tmp_path / "anonymous.digest",
    )
    with (
        (tmp_path / "anonymous.log").open("w") as log,
        pytest.raises(CommandFailed, match=r"'docker push' exited with 1: .*authentication required"),
    ):
        DockerBuilder(300).build_and_push(request, log)
    assert_not_in_registry(url, "private/alpha", "anonymous", auth=(USER, PASSWORD))
