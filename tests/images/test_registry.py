"""The registry client against a real docker-registry (plain and with htpasswd basic auth)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from branchops.config import RegistrySection, SecretRef
from branchops.errors import ConfigError, ExternalError
from branchops.images import build_components
from branchops.images.build import NO_BUILDER_NOTE
from branchops.images.local_registry import LocalRegistry, free_port, registry_binary
from branchops.images.registry import RegistryClient

from .conftest import BASE_IMAGE, write_component

pytestmark = pytest.mark.skipif(registry_binary() is None,
                                reason="docker-registry is not installed (run .ci/setup.d/containers.sh)")
USER, PASSWORD_ENV = "ci-pusher", "BRANCHOPS_TEST_REGISTRY_PASSWORD"


def bcrypt_htpasswd(path: Path, user: str, password: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # the registry accepts only bcrypt entries; libxcrypt provides them
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("this libc's crypt() has no bcrypt")
    path.write_text(f"{user}:{hashed}\n")
    return path


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("plain-registry")) as running:
        yield running


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory) -> Iterator[LocalRegistry]:
    root = tmp_path_factory.mktemp("auth-registry")
    htpasswd = bcrypt_htpasswd(root / "htpasswd", USER, "s3cret-push-token")
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
    with pytest.raises(ExternalError, match=rf"registry http://{url} is unreachable or failing \(4 attempts\)"):
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
    wrong = RegistryClient(RegistrySection(url=url, insecure=True, username=USER,
                                           password=SecretRef(env=PASSWORD_ENV)))
    with pytest.raises(ExternalError, match=f"user '{USER}'") as caught:
        wrong.manifest_digest("train", "abc")
    assert "wrong-password" not in str(caught.value)

    monkeypatch.setenv(PASSWORD_ENV, "s3cret-push-token")
    right = RegistryClient(RegistrySection(url=url, insecure=True, username=USER,
                                           password=SecretRef(env=PASSWORD_ENV)))
    assert right.manifest_digest("train", "abc") is None


def test_password_reference_that_is_not_set_is_a_config_error(monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"registry.password: env {PASSWORD_ENV}: not set"):
        RegistryClient(RegistrySection(url="127.0.0.1:1", username=USER, password=SecretRef(env=PASSWORD_ENV)))


@pytest.mark.containers
@pytest.mark.slow
def test_push_with_credentials_never_shows_the_password(auth_registry, container_store, make_workspace,
                                                        monkeypatch, tmp_path):
    monkeypatch.setenv(PASSWORD_ENV, "s3cret-push-token")
    workspace = make_workspace(salt="auth", names=("alpha",))
    cfg = RegistrySection(url=f"{auth_registry.url}/private", insecure=True, builder="buildah",
                          username=USER, password=SecretRef(env=PASSWORD_ENV), build_args={"BASE_IMAGE": BASE_IMAGE})

    report = build_components(workspace, cfg, tmp_path / "logs")

    assert report.ok, report.summary()
    assert [c.name for c in report.built] == ["alpha"]
    log_text = Path(report.built[0].log).read_text()
    assert "s3cret-push-token" not in log_text and "--authfile" in log_text
    assert not list(Path("/tmp").glob("branchops-auth-*/config.json"))  # the login file is removed


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
