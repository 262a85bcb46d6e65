"""Which builder is chosen, and the command lines each builder runs (their documented flags).

buildah and podman also run for real in test_build_real.py, docker in test_docker_real.py; kaniko only
here, as a command line (see its test).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from branchops.errors import ConfigError
from branchops.images.builders import BUILDERS, BuildRequest, select_builder
from branchops.images.builders.docker import DockerBuilder
from branchops.images.builders.kaniko import KanikoBuilder
from branchops.images.builders.podman import PodmanBuilder


def request(tmp_path: Path, insecure: bool = True, auth: bool = True) -> BuildRequest:
    return BuildRequest(
        workspace=tmp_path,
        dockerfile="docker/train/Dockerfile",
        image="reg:5000/ns/train:abc",
        build_args={"BASE_IMAGE": "python:3.11-slim"},
        labels={"io.branchops.component": "train"},
        insecure=insecure,
        auth_dir=tmp_path / "auth" if auth else None,
        digest_file=tmp_path / "train.digest",
    )


def test_podman_builds_with_layers_and_pushes_with_a_digest_file(tmp_path):
    build, push = PodmanBuilder(60).commands(request(tmp_path))
    assert build[:3] == ["podman", "build", "--layers"] and build[-1] == "."
    assert ["--build-arg", "BASE_IMAGE=python:3.11-slim"] == build[build.index("--build-arg") :][:2]
    assert push[:4] == ["podman", "push", "--digestfile", str(tmp_path / "train.digest")]
    assert "--tls-verify=false" in push and push[-1] == "docker://reg:5000/ns/train:abc"
    assert "--authfile" in build and "--authfile" in push
    assert "--tls-verify=false" not in PodmanBuilder(60).commands(request(tmp_path, insecure=False))[1]


def test_docker_reads_credentials_from_docker_config(tmp_path):
    builder = DockerBuilder(60)
    build, push = builder.commands(request(tmp_path))
    assert build[:2] == ["docker", "build"] and push == ["docker", "push", "reg:5000/ns/train:abc"]
    assert builder.environment(request(tmp_path)) == {"DOCKER_CONFIG": str(tmp_path / "auth")}


def test_kaniko_builds_and_pushes_in_one_call_one_at_a_time(tmp_path):
    # Checked as a command line only: the executor ships only inside the gcr.io/kaniko-project/executor
    # image, which cannot be pulled here, and it rewrites the root filesystem of the container it runs in.
    (argv,) = KanikoBuilder(60).commands(request(tmp_path))
    assert argv[argv.index("--context") + 1] == f"dir://{tmp_path}"
    assert argv[argv.index("--dockerfile") + 1] == str(tmp_path / "docker/train/Dockerfile")
    assert argv[argv.index("--destination") + 1] == "reg:5000/ns/train:abc"
    assert argv[argv.index("--digest-file") + 1] == str(tmp_path / "train.digest")
    assert "--insecure" in argv and "--cleanup" in argv
    assert KanikoBuilder.max_parallel == 1


def test_none_builds_nothing_and_unknown_or_missing_builders_are_config_errors(monkeypatch):
    assert select_builder("none", 60) is None
    with pytest.raises(ConfigError, match="unknown builder 'make'"):
        select_builder("make", 60)
    monkeypatch.setattr(KanikoBuilder, "available", classmethod(lambda cls: False))
    with pytest.raises(ConfigError, match="registry.builder is 'kaniko' but it is not installed"):
        select_builder("kaniko", 60)
    for builder in BUILDERS.values():
        monkeypatch.setattr(builder, "available", classmethod(lambda cls: False))
    with pytest.raises(ConfigError, match="none of buildah, podman, docker or kaniko"):
        select_builder("auto", 60)
