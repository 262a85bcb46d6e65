"""Fixtures for the GitHub forge and its repository administration: a stateful fake GitHub (logic
tests) and Prism (contract tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from branchops.config import GitHubSettings

from .fake_github import FakeGitHub
from .prism import prism_github  # noqa: F401  (session fixture: Prism serving @octokit/openapi)

TOKEN_ENV = "BRANCHOPS_TEST_GITHUB_TOKEN"


@pytest.fixture
def fake_github(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGitHub]:
    with FakeGitHub("octo/hello") as fake:
        monkeypatch.setenv(TOKEN_ENV, fake.token)
        yield fake


def github_settings(base_url: str, **overrides: Any) -> GitHubSettings:
    values: dict[str, Any] = {
        "repository": "octo/hello",
        "token": {"env": TOKEN_ENV},
        "base_url": base_url,
        "timeout_s": 5.0,
        "retries": 2,
        "rate_limit_max_wait_s": 10.0,
    }
    values.update(overrides)
    return GitHubSettings.model_validate(values)


@pytest.fixture
def make_forge(fake_github: FakeGitHub) -> Callable[..., Any]:
    """A GitHubForge on the fake, without PyGithub's write throttle and with instant retries."""
    from branchops.forge.github import GitHubForge

    def make(per_page: int = 100, **overrides: Any) -> GitHubForge:
        return GitHubForge(
            github_settings(fake_github.url, **overrides),
            per_page=per_page,
            seconds_between_requests=0,
            seconds_between_writes=0,
            backoff_factor=0,
        )

    return make


@pytest.fixture
def make_admin(fake_github: FakeGitHub) -> Callable[..., Any]:
    """A GitHubAdmin on the fake, without PyGithub's write throttle and with instant retries."""
    from branchops.forge.github_admin import GitHubAdmin

    def make(**overrides: Any) -> GitHubAdmin:
        return GitHubAdmin(
            github_settings(fake_github.url, **overrides),
            seconds_between_requests=0,
            seconds_between_writes=0,
            backoff_factor=0,
        )

    return make
