"""Shared fixtures: the real DJIA data folder, and small branchops repositories to act on."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def djia_data_dir() -> Path | None:
    env = os.environ.get("BRANCHOPS_DJIA_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "djia"
    return path if (path / "AAPL_2006-01-01_to_2018-01-01.csv").exists() else None


@pytest.fixture(scope="session")
def djia_dir() -> Path:
    path = djia_data_dir()
    if path is None:
        pytest.skip(
            "the real DJIA files are not at ../shared/data/djia (set BRANCHOPS_DJIA_DATA to point at them)"
        )
    return path


def git(cwd: Path, *args: str, user: str = "ds1") -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": user,
        "GIT_AUTHOR_EMAIL": f"{user}@users.local",
        "GIT_COMMITTER_NAME": user,
        "GIT_COMMITTER_EMAIL": f"{user}@users.local",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
