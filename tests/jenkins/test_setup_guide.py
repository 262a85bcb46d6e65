"""docs/setup.md: its production settings are a valid configuration that the shipped Jenkinsfile,
job template and bootstrap accept as they are, and it names every credential id."""

from __future__ import annotations

import re

import yaml

from branchops.bootstrap import plan_bootstrap
from branchops.ci.jenkins.jenkinsfile import check_jenkinsfile, default_credentials
from branchops.ci.jenkins.job import render_job_xml
from branchops.config import json_schema, parse_config

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


def schema_has(schema: dict, path: list[str]) -> bool:
    """Whether the configuration's JSON Schema has the key ``path`` (``<name>`` stands for any key of a
    mapping, ``*`` for everything below)."""

    def alternatives(node: dict) -> list[dict]:
        if "$ref" in node:
            return alternatives(schema["$defs"][node["$ref"].rsplit("/", 1)[-1]])
        if "anyOf" in node:
            return [found for option in node["anyOf"] for found in alternatives(option)]
        return [node]

    def walk(node: dict, rest: list[str]) -> bool:
        if not rest or rest[0] == "*":
            return True
        key, below = rest[0], rest[1:]
        for option in alternatives(node):
            named = option.get("properties", {})
            if key in named and walk(named[key], below):
                return True
            mapping = option.get("additionalProperties")
            allowed = option.get("propertyNames", {}).get("enum")
            any_key = key.startswith("<") and key.endswith(">")
            if isinstance(mapping, dict) and (any_key or allowed is None or key in allowed):
                if walk(mapping, below):
                    return True
        return False

    return walk(schema, path)


def test_every_configuration_key_the_guide_names_is_in_the_schema() -> None:
    """A key the guide tells a platform team to set (`data.kaggle.secret`, `kubeflow.kubeflow.ui_url`,
    ...) is one `branchops config validate` accepts: a renamed key fails here, not on their cluster."""
    schema = json_schema()
    top_level = set(schema["properties"])
    named = {
        key
        for key in re.findall(r"`([a-z_]+(?:\.[A-Za-z0-9_<>*-]+)+)`", GUIDE)
        if key.split(".")[0] in top_level
    }
    assert {"data.kaggle.secret", "storage.trident.reader_image", "kubeflow.kubeflow.ui_url"} <= named
    assert not schema_has(schema, ["kubeflow", "kubeflow", "heartbeat"]), "the check accepts any key"
    assert not schema_has(schema, ["approvers", "nightly"]), "the check accepts any stage"
    unknown = sorted(key for key in named if not schema_has(schema, key.split(".")))
    assert unknown == [], f"docs/setup.md names keys the configuration does not have: {unknown}"
