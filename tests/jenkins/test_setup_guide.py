"""docs/setup.md: its production settings are a valid configuration that the shipped Jenkinsfile,
job template and bootstrap accept as they are, and it names every credential id."""

from __future__ import annotations

import re

import yaml

from branchops.bootstrap import plan_bootstrap
from branchops.ci.jenkins.jenkinsfile import check_jenkinsfile, default_credentials
from branchops.ci.jenkins.job import render_job_xml
from branchops.config import parse_config

from .conftest import REPO_ROOT

GUIDE = (REPO_ROOT / "docs" / "setup.md").read_text(encoding="utf-8")


def production_settings() -> dict:
    blocks = re.findall(r"```yaml\n(# docs/setup.md: production settings.*?)```", GUIDE, re.DOTALL)
    assert len(blocks) == 1, "the production settings block of docs/setup.md is missing"
    return yaml.safe_load(blocks[0])


def test_the_guides_production_settings_are_valid_and_in_step_with_the_jenkinsfile() -> None:
    data = yaml.safe_load((REPO_ROOT / "config" / "branchops.yaml").read_text(encoding="utf-8"))
    data.update(production_settings())
    config = parse_config(yaml.safe_dump(data), "docs/setup.md")

    assert config.ci.backend == "jenkins" and config.forge.backend == "github"
    assert check_jenkinsfile(config, REPO_ROOT) == []
    assert "<repository>djia-mlops</repository>" in render_job_xml(config, REPO_ROOT)
    assert len(plan_bootstrap(config)) == 14


def test_the_guide_names_every_credential_id_and_the_commands_it_promises() -> None:
    for key, cred_id in default_credentials().items():
        assert f"`{cred_id}` (`{key}`)" in GUIDE
    for command in (
        "branchops jenkins sync",
        "branchops jenkins status",
        "branchops jenkins trigger",
        "branchops jenkins logs",
        "branchops bootstrap --dry-run",
    ):
        assert command in GUIDE
