"""The registry client against a real docker-registry (plain and with htpasswd basic auth)."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from branchops.config import RegistrySection, SecretRef
from branchops.errors import ConfigError, ExternalError
from branchops.images import build_components
from branchops.images.build import NO_BUILDER_NOTE
from branchops.images.registry import RegistryClient
from branchops.stages import build_components as stage

from .conftest import BASE_IMAGE, bcrypt_htpasswd, make_context, registry_digest, write_component
from .local_registry import LocalRegistry, free_port, registry_binary

pytestmark = pytest.mark.skipif(
    registry_binary() is None, reason="docker-registry is not installed (run .ci/setup.d/containers.sh)"
)
USER, PASSWORD_ENV = "ci-pusher", "BRANCHOPS_TEST_REGISTRY_PASSWORD"
PASSWORD = "s3cret-push-token"


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("plain-registry")) as running:
        yield running


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory) -> Iterator[LocalRegistry]:
    root = tmp_path_factory.mktemp("auth-registry")
    htpasswd = bcrypt_htpasswd(root / "htpasswd", USER, PASSWORD)
    with LocalRegistry(root / "registry", htpasswd=htpasswd) as running:
        yield running


def test_missing_tag_is_none(plain_registry):
    client = RegistryClient(RegistrySection(url=f"{plain_registry.url}/team", insecure=True))
    client.check()
    assert client.manifest_digest("nothing-here", "0123456789abcdef0123") is None
    assert client.location.reference("train") == f"{plain_registry.url}/team/train"


def test_registry_down_names_the_url():
    url = f"127.0.0.1:{free_port()}"
    client = RegistryClient(RegistrySection(url=url, insecure=True))
    with pytest.raises(
        ExternalError, match=rf"registry http://{url} is unreachable or failing \(4 attempts\)"
    ):
        client.manifest_digest("train", "abc")


def test_https_registry_is_the_default(plain_registry):
    # The registry speaks plain HTTP; without `insecure: true` the client insists on TLS and fails clearly.
    client = RegistryClient(RegistrySection(url=plain_registry.url))
    with pytest.raises(ExternalError, match=rf"https://{plain_registry.url}"):
        client.check()


def test_basic_auth(auth_registry, monkeypatch):
    url = auth_registry.url
    anonymous = RegistryClient(RegistrySection(url=url, insecure=True))
    with pytest.raises(ExternalError, match="refused .* for anonymous access .*check registry.username"):
        anonymous.manifest_digest("train", "abc")

    monkeypatch.setenv(PASSWORD_ENV, "wrong-password")
    wrong = RegistryClient(
        RegistrySection(url=url, insecure=True, username=USER, password=SecretRef(env=PASSWORD_ENV))
    )
    with pytest.raises(ExternalError, match=f"user '{USER}'") as caught:
        wrong.manifest_digest("train", "abc")
    assert "wrong-password" not in str(caught.value)

    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    right = RegistryClient(
        RegistrySection(url=url, insecure=True, username=USER, password=SecretRef(env=PASSWORD_ENV))
    )
    assert right.manifest_digest("train", "abc") is None


def test_password_reference_that_is_not_set_is_a_config_error(monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"registry.password: env {PASSWORD_ENV}: not set"):
        RegistryClient(
            RegistrySection(url="127.0.0.1:1", username=USER, password=SecretRef(env=PASSWORD_ENV))
        )


def record_process_arguments(monkeypatch) -> list[list[str]]:
    """The argv of every process started through subprocess from now on (the builders start theirs so)."""
    started: list[list[str]] = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            started.append(
                [os.fsdecode(args)] if isinstance(args, (str, bytes)) else [os.fsdecode(a) for a in args]
            )
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    return started


def files_containing(root: Path, secrets: tuple[str, ...]) -> list[Path]:
    return [
        path
        for path in root.rglob("*")
        if path.is_file()
        and not path.is_symlink()
        and any(secret.encode() in path.read_bytes() for secret in secrets)
    ]


@pytest.mark.containers
@pytest.mark.slow
def test_push_with_credentials_never_shows_the_password(
    auth_registry, container_store, make_workspace, monkeypatch, tmp_path, caplog
):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    # The login file is written with tempfile, which honours TMPDIR (and caches it in tempfile.tempdir):
    # point both at a folder of this test, so whatever is left behind is found where it really is.
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp_root))
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    # The forms the password could leak in: itself, and the base64 user:password of a docker config.json.
    secrets = (PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    workspace = make_workspace(salt="auth", names=("alpha",))
    cfg = RegistrySection(
        url=f"{auth_registry.url}/private",
        insecure=True,
        builder="buildah",
        username=USER,
        password=SecretRef(env=PASSWORD_ENV),
        build_args={"BASE_IMAGE": BASE_IMAGE},
    )
    ctx = make_context(workspace, tmp_path / "state", cfg)
    process_arguments = record_process_arguments(monkeypatch)
    caplog.set_level(logging.DEBUG)

    result = stage.run(ctx)

    assert result.outcome == "success", result.summary
    assert result.outputs["built"] == ["alpha"]
    (alpha,) = result.outputs["components"]
    assert (
        registry_digest(auth_registry.url, "private/alpha", alpha["tag"], auth=(USER, PASSWORD))
        == alpha["digest"]
    )
    # Nowhere: command lines, the record (outputs, summary, artifacts), the log messages, any file under this
    # test's folders (temp files, the stage's logs, the workspace), and no login folder left behind.
    for secret in secrets:
        assert not [argv for argv in process_arguments if secret in " ".join(argv)]
        assert secret not in json.dumps(result.outputs) + result.summary + (result.error or "")
        assert not [name for name, content in ctx.artifacts.items() if secret.encode() in content]
        assert secret not in caplog.text
    assert files_containing(tmp_path, secrets) == []
    assert list(temp_root.glob("branchops-auth-*")) == []
    # The login went through a file instead.
    push = next(argv for argv in process_arguments if argv[:2] == ["buildah", "push"])
    assert "--authfile" in push
    assert "--authfile" in ctx.artifacts["logs/alpha.log"].decode()


def test_builder_none_runs_the_tests_and_says_nothing_was_built(plain_registry, tmp_path):
    workspace = tmp_path / "ws"
    (workspace / "components" / "common").mkdir(parents=True)
    write_component(workspace, "alpha")
    cfg = RegistrySection(url=f"{plain_registry.url}/none", insecure=True, builder="none")

    report = build_components(workspace, cfg, tmp_path / "logs")

    assert report.ok and report.note == NO_BUILDER_NOTE and report.builder is None
    (alpha,) = report.components
    assert alpha.status == "not-built" and alpha.tests == "passed" and alpha.digest is None
    assert "is not in the registry" in alpha.reason
