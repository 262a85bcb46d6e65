"""Configuration: every broken file gets a message naming the file, the line, the key and what was
expected."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from branchops.config import json_schema, load_config, parse_config
from branchops.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
APPROVERS = (
    "approvers: {build-components: [lead], kf-pipeline: [lead], training: [lead], deploy-model: [lead]}\n"
)

# (config text, the line reported, fragments the message must contain)
BROKEN = [
    (
        "approvers: {build-components: [a]}\n",
        1,
        ["approvers", "none for: kf-pipeline, training, deploy-model"],
    ),
    ("version: 1\n", None, ["approvers", "required key is missing"]),
    (
        APPROVERS + "storage:\n  snapshots: \"False\"\n",
        3,
        ["storage.snapshots", "expected a boolean", "'False'"],
    ),
    (APPROVERS + "storage:\n  snapshots: yes please\n", 3, ["storage.snapshots", "expected a boolean"]),
    (APPROVERS + "storge:\n  snapshots: true\n", 2, ["storge", "unknown key"]),
    (
        APPROVERS + "training:\n  max_parallel_runs: \"2\"\n",
        3,
        ["training.max_parallel_runs", "expected an integer"],
    ),
    (
        APPROVERS + "training:\n  max_parallel_runs: 0\n",
        3,
        ["training.max_parallel_runs", "greater than or equal to 1"],
    ),
    (APPROVERS + "forge:\n  backend: gitlab\n", 3, ["forge.backend", "'local' or 'github'"]),
    (APPROVERS + "forge:\n  backend: github\n", 2, ["forge", "needs a 'github' section"]),
    (
        APPROVERS
        + "forge:\n  backend: github\n  github:\n    repository: acme/ml\n    token: ghp_abcdefghijklmnop\n",
        6,
        ["forge.github.token", "inline secrets are refused"],
    ),
    (
        APPROVERS + "forge:\n  github:\n    repository: not-a-repo\n    token: {env: GITHUB_TOKEN}\n",
        4,
        ["forge.github.repository", "should match pattern"],
    ),
    (
        APPROVERS + "forge:\n  github:\n    repository: a/b\n    token: {env: A, credential: b}\n",
        5,
        ["forge.github.token", "exactly one of 'env' or 'credential'"],
    ),
    (
        APPROVERS + "notifications:\n  - kind: webhook\n    url: https://hooks.example/T0/B0/x\n",
        4,
        ["notifications.0.url", "inline secrets are refused"],
    ),
    (
        APPROVERS + "notifications:\n  - kind: pager\n",
        3,
        ["notifications.0", "'console', 'log_file', 'webhook', 'forge'"],
    ),
    (
        APPROVERS
        + "branches:\n  stages: {build-components: x, kf-pipeline: x, training: t, deploy-model: d}\n",
        3,
        ["branches.stages", "both map to branch 'x'", "single-branch"],
    ),
    (
        APPROVERS + "branches:\n  stages: {build-components: b, kf-pipeline: k, training: t}\n",
        3,
        ["branches.stages", "missing: deploy-model"],
    ),
    (APPROVERS + "branches:\n  main: 'bad..name'\n", 3, ["branches.main", "should match pattern"]),
    (
        APPROVERS + "training:\n  experiments:\n    - name: a\n    - name: a\n",
        3,
        ["training.experiments", "repeated: a"],
    ),
    # an experiment's params are the project's own (checked against its compiled pipeline), but the
    # inputs branchops sets for every run are not theirs to set
    (
        APPROVERS + "training:\n  experiments:\n    - name: a\n      params: {work_dir: /tmp}\n",
        5,
        ["training.experiments.0.params", "work_dir: set by branchops"],
    ),
    (
        APPROVERS + "training:\n  experiments:\n    - name: Bad_Name\n",
        4,
        ["training.experiments.0.name", "pattern"],
    ),
    (APPROVERS + "training:\n  experiments: []\n", 3, ["training.experiments", "at least 1 item"]),
    (
        APPROVERS + "training:\n  experiments:\n    - name: a\n      params: {learning-rate: 0.1}\n",
        5,
        ["training.experiments.0.params", "learning-rate"],
    ),
    (
        APPROVERS + "storage:\n  data_volume: {policy: clone}\n",
        3,
        ["storage.data_volume", "needs 'snapshot'"],
    ),
    (
        APPROVERS + "kubeflow:\n  backend: kubeflow\n  kubeflow: {host: 'https://kfp', auth: bearer}\n",
        4,
        ["kubeflow.kubeflow", "auth 'bearer' needs 'token'"],
    ),
    (APPROVERS + "registry:\n  url: 'https://registry.example.com'\n", 3, ["registry.url", "pattern"]),
    (APPROVERS + "data:\n  source: folder\n", 2, ["data", "needs 'folder'"]),
    # kfp's set_accelerator_limit takes only these counts: a 3 would pass until kf-pipeline compiles
    (
        APPROVERS + "training:\n  gpu:\n    count: 3\n",
        4,
        ["training.gpu.count", "3 GPUs", "1, 2, 4, 8, 16"],
    ),
    (APPROVERS + "training:\n  gpu: {count: 12}\n", 3, ["training.gpu.count", "12 GPUs"]),
    (APPROVERS + "training:\n  gpu: {count: 32}\n", 3, ["training.gpu.count", "less than or equal to 16"]),
    (
        APPROVERS + "kubeflow:\n  kubeflow: {host: 'https://kfp', service_account: Pipeline_Runner}\n",
        3,
        ["kubeflow.kubeflow.service_account", "pattern"],
    ),
    (
        APPROVERS + "data:\n  source: kaggle\n  kaggle: {dataset: a/b, secret: Kaggle_Creds}\n",
        4,
        ["data.kaggle.secret", "pattern"],
    ),
    (
        APPROVERS + "serving:\n  local: {port: 70000}\n",
        3,
        ["serving.local.port", "less than or equal to 65535"],
    ),
    (
        APPROVERS
        + "ci:\n  backend: jenkins\n  jenkins: {url: 'https://ci', user: bot, token: 'abc123secret'}\n",
        4,
        ["ci.jenkins.token", "inline secrets are refused"],
    ),
    # credentials inside a URL are an inline secret too (GitHub takes a token as the user name)
    (
        APPROVERS + "git:\n  remote: 'https://bob:ghp_abcdefghijklmnop@github.com/acme/ml.git'\n",
        3,
        ["git.remote", "credentials in a URL are refused"],
    ),
    (
        APPROVERS + "git:\n  remote: 'https://ghp_abcdefghijklmnop@github.com/acme/ml.git'\n",
        3,
        ["git.remote", "credentials in a URL are refused"],
    ),
    (
        APPROVERS
        + "kubeflow:\n  backend: kubeflow\n  kubeflow: {host: 'https://u:p@kf.example', auth: none}\n",
        4,
        ["kubeflow.kubeflow.host", "credentials in a URL are refused"],
    ),
    # numbers out of range name the range; a NaN or infinite threshold is not a number to compare with
    (
        APPROVERS + "training:\n  timeout_s: 1.0e+308\n",
        3,
        ["training.timeout_s", "less than or equal to 604800"],
    ),
    (
        APPROVERS + "training:\n  kpis: {thresholds: {accuracy: .nan}}\n",
        3,
        ["training.kpis.thresholds.accuracy", "finite number"],
    ),
    (
        APPROVERS + "training:\n  kpis: {thresholds: {accuracy: .inf}}\n",
        3,
        ["training.kpis.thresholds.accuracy", "finite number"],
    ),
    # a repeated key would silently win; too deep a nesting is refused before it can exhaust the parser
    (
        APPROVERS + "training:\n  timeout_s: 60\n  timeout_s: 6000\n",
        4,
        ["key 'timeout_s' appears twice (lines 3 and 4)"],
    ),
    (APPROVERS + "x: " + "[" * 500 + "]" * 500 + "\n", 2, ["nested more than 32 levels"]),
    ("- just\n- a list\n", 1, ["must be a mapping"]),
    ("approvers: [unclosed\n", None, ["not valid YAML"]),
]


@pytest.mark.parametrize("text,line,fragments", BROKEN, ids=[f"broken-{i}" for i in range(len(BROKEN))])
def test_broken_configuration_is_explained(text, line, fragments):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "config/branchops.yaml")
    message = str(err.value)
    assert "config/branchops.yaml" in message
    if line is not None:
        assert f"config/branchops.yaml:{line}:" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_the_secret_value_never_appears_in_the_error():
    text = APPROVERS + "forge:\n  github:\n    repository: a/b\n    token: ghp_supersecretvalue123\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.yaml")
    assert "ghp_supersecretvalue123" not in str(err.value)


def test_reference_config_is_valid_and_matches_the_exported_schema():
    config = load_config(REPO_ROOT)
    assert config.branch_for("training") == "training"
    data = yaml.safe_load((REPO_ROOT / "config" / "branchops.yaml").read_text())
    jsonschema.validate(data, json_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "unknown_section": 1}, json_schema())


def test_single_branch_mode_maps_every_stage_to_one_branch():
    config = parse_config(APPROVERS + "branches: {mode: single-branch, single_branch: trunk}\n")
    assert config.stages_for_branch("trunk") == [
        "build-components",
        "kf-pipeline",
        "training",
        "deploy-model",
    ]
    assert config.stages_for_branch("training") == []


def test_config_cli_validate_show_and_schema(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from branchops.cli import main

    monkeypatch.setenv("GITHUB_TOKEN", "value-that-must-not-show")
    cfg = tmp_path / "branchops.yaml"
    cfg.write_text(
        APPROVERS + "forge:\n  backend: github\n  github: {repository: a/b, token: {env: GITHUB_TOKEN}}\n"
    )
    runner = CliRunner()
    assert runner.invoke(main, ["config", "validate", "--offline", "--file", str(cfg)]).exit_code == 0
    shown = runner.invoke(main, ["config", "show", "--json", "--file", str(cfg)])
    assert shown.exit_code == 0
    assert "value-that-must-not-show" not in shown.output
    assert json.loads(shown.output)["forge"]["github"]["token"] == {"secret": "env GITHUB_TOKEN: set"}
    cfg.write_text(APPROVERS + "storage: {snapshots: 'False'}\n")
    bad = runner.invoke(main, ["config", "validate", "--offline", "--file", str(cfg)])
    assert bad.exit_code == 3 and "storage.snapshots" in bad.output
    schema = runner.invoke(main, ["config", "schema"])
    assert json.loads(schema.output)["title"].startswith("branchops configuration")


def test_an_oversized_configuration_is_refused_before_it_is_parsed():
    with pytest.raises(ConfigError, match=r"[0-9,]+ bytes; a configuration file is at most 1,048,576 bytes"):
        parse_config(APPROVERS + "# " + "x" * (2 << 20) + "\n", "config/branchops.yaml")


def test_stage_branches_must_exist_unless_offline(tmp_path):
    from tests.foundation.conftest import make_project

    project = make_project(
        tmp_path,
        APPROVERS + "branches:\n  stages: {build-components: build-components, "
        "kf-pipeline: kf-pipeline, training: trainig, deploy-model: deploy-model}\n",
    )
    result = project.run("config", "validate", expect=3)
    assert "trainig" in result.output and "do not exist" in result.output
    project.run("config", "validate", "--offline")


def test_kubernetes_serving_and_trident_snapshots_must_share_a_namespace():
    # The serving backend clones a model snapshot into a PVC in its own namespace, and a PVC's
    # dataSource names a VolumeSnapshot in that namespace only: said when the configuration is loaded.
    both = "storage:\n  backend: trident\nserving:\n  backend: kubernetes\n"
    with pytest.raises(ConfigError) as err:
        parse_config(APPROVERS + both, "config/branchops.yaml")
    message = str(err.value)
    for fragment in (
        "storage.trident.namespace is 'kubeflow-user'",
        "serving.kubernetes.namespace is 'serving'",
        "both are their defaults, which differ",
        "serving.backend 'kubernetes' and storage.backend 'trident'",
        "dataSource can only name a VolumeSnapshot in that same namespace",
    ):
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    chosen = "storage:\n  backend: trident\n  trident: {namespace: ml}\nserving:\n  backend: kubernetes\n"
    with pytest.raises(ConfigError, match="'ml' but serving.kubernetes.namespace is 'serving': ") as err:
        parse_config(APPROVERS + chosen, "config/branchops.yaml")
    assert "defaults" not in str(err.value)
    agreed = parse_config(
        APPROVERS + both + "  kubernetes: {namespace: kubeflow-user}\n", "config/branchops.yaml"
    )
    assert agreed.serving.kubernetes.namespace == agreed.storage.trident.namespace
    # Only that pair clones snapshots: either backend alone keeps its own namespace.
    parse_config(APPROVERS + "storage:\n  backend: trident\nserving:\n  backend: local\n", "c.yaml")
    parse_config(APPROVERS + "serving:\n  backend: kubernetes\n", "c.yaml")
