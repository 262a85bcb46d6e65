from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from branchops.stages import REGISTRY
from tests.conftest import git
from tests.foundation import recording_stage

STAGES = ("build-components", "kf-pipeline", "training", "deploy-model")

MINIMAL_CONFIG = """\
approvers:
  build-components: [lead]
  kf-pipeline: [lead]
  training: [lead, head-of-ds]
  deploy-model: [head-of-ds]
notifications:
  - kind: log_file
  - kind: forge
"""


class Project:
    """A small git repository set up like a scaffolded branchops project, driven through the CLI."""

    def __init__(self, path: Path):
        self.path = path
        self.cli = CliRunner()

    def run(self, *args: str, expect: int | None = 0):
        from branchops.cli import main

        result = self.cli.invoke(main, ["-C", str(self.path), *args], catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, f"{args}: exit {result.exit_code}\n{result.output}"
        return result

    def commit(
        self, branch: str, path: str, content: str, user: str = "ds1", message: str | None = None
    ) -> str:
        git(self.path, "checkout", "-q", branch)
        file = self.path / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(content)
        git(self.path, "add", path)
        git(self.path, "commit", "-q", "-m", message or f"change {path}", user=user)
        return git(self.path, "rev-parse", "HEAD")

    def tip(self, branch: str) -> str:
        return git(self.path, "rev-parse", branch)

    def refs(self) -> str:
        return git(self.path, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads")

    def files(self, branch: str, prefix: str = "records/") -> list[str]:
        out = git(self.path, "ls-tree", "-r", "--name-only", branch)
        return [line for line in out.splitlines() if line.startswith(prefix)]

    def open_mr(self, target: str, author: str = "ds1", source: str = "ds1", title: str = "change") -> int:
        result = self.run(
            "mr", "open", "--source", source, "--target", target, "--title", title, "--as", author, "--json"
        )
        import json

        return json.loads(result.output)["number"]


def make_project(tmp_path: Path, config: str = MINIMAL_CONFIG) -> Project:
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "config").mkdir()
    (path / "config" / "branchops.yaml").write_text(textwrap.dedent(config))
    (path / ".gitignore").write_text(".branchops/\n")
    (path / "src").mkdir()
    (path / "src" / "model.py").write_text("VERSION = 1\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial project")
    for branch in (*STAGES, "ds1"):
        git(path, "branch", branch)
    git(path, "checkout", "-q", "ds1")
    return Project(path)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """A project whose stages run the recording test stage instead of the real ones: these tests are
    about the runner's contract (gate, idempotency, write-back), not about what a stage does."""
    for stage in STAGES:
        monkeypatch.setitem(REGISTRY, stage, recording_stage)
    monkeypatch.setenv("BRANCHOPS_TEST_STAGE_LOG", str(tmp_path / "stage-calls.log"))
    return make_project(tmp_path)


@pytest.fixture
def stage_calls(tmp_path: Path):
    def read() -> list[str]:
        path = tmp_path / "stage-calls.log"
        return path.read_text().splitlines() if path.exists() else []

    return read
