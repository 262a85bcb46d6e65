"""Fixtures for the Jenkins backend and bootstrap: a production-like config and the Jenkins HTTP fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from branchops.config import BranchopsConfig, parse_config

from .fake_jenkins import FakeJenkins

REPO_ROOT = Path(__file__).resolve().parents[2]
JENKINS_TOKEN_ENV = "BRANCHOPS_TEST_JENKINS_TOKEN"
WEBHOOK_SECRET_ENV = "BRANCHOPS_TEST_WEBHOOK_SECRET"


def production_config(jenkins_url: str = "https://jenkins.example.com", **overrides: Any) -> BranchopsConfig:
    """The repository's own config/branchops.yaml switched to GitHub + Jenkins, as docs/setup.md says.

    ``overrides`` replace top-level sections (merged one level deep).
    """
    data = yaml.safe_load((REPO_ROOT / "config" / "branchops.yaml").read_text(encoding="utf-8"))
    data["forge"] = {
        "backend": "github",
        "github": {"repository": "acme/djia-mlops", "token": {"credential": "github-token"}},
    }
    data["git"] = {**data.get("git", {}), "remote": "origin"}
    data["ci"] = {
        "backend": "jenkins",
        "jenkins": {
            "url": jenkins_url,
            "user": "admin",
            "token": {"env": JENKINS_TOKEN_ENV},
            "folder": "ml/djia",
            "timeout_s": 5,
            "webhook_secret": {"env": WEBHOOK_SECRET_ENV},
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            merged = dict(data[key])
            for k, v in value.items():
                merged[k] = (
                    {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
                )
            data[key] = merged
        else:
            data[key] = value
    return parse_config(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def fake_jenkins(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeJenkins]:
    fake = FakeJenkins().start()
    monkeypatch.setenv(JENKINS_TOKEN_ENV, fake.token)
    monkeypatch.setenv(WEBHOOK_SECRET_ENV, "webhook-secret-value-42")
    try:
        yield fake
    finally:
        fake.stop()
