"""The periodic monitor job `branchops jenkins sync` provisions beside the multibranch job: rendered from
jenkins/jobs/monitor.yaml by jenkins-job-builder (real, offline), provisioned through python-jenkins
against the Jenkins REST fake (tests/jenkins/fake_jenkins.py), shown by `jenkins sync --dry-run`.

Where the XML is read, it is read as Jenkins reads it: a pipeline job (`flow-definition`) whose
PipelineTriggersJobProperty holds a TimerTrigger (hudson.triggers.TimerTrigger, `<spec>`), and whose
CpsFlowDefinition holds the pipeline script.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml
from click.testing import CliRunner

from branchops.ci.jenkins import sync_job
from branchops.ci.jenkins.job import job_digest, monitor_jjb_project, render_monitor_job_xml
from branchops.cli import main
from tests.conftest import git

from .conftest import JENKINS_TOKEN_ENV, REPO_ROOT, production_config
from .fake_jenkins import MULTIBRANCH, WORKFLOW_JOB, FakeJenkins, path_of
from .test_jenkinsfile import groovy_check
from .test_job_xml import jenkins_jobs_cli

TRIGGERS = "properties/org.jenkinsci.plugins.workflow.job.properties.PipelineTriggersJobProperty/triggers"
BINDING = re.compile(r"\b(?:usernamePassword|string|file|sshUserPrivateKey)\([^()]*\)")

# Every value differs from the defaults, so each one can only have come from this config.
RENAMED = {
    "branches": {
        "stages": {
            "build-components": "stage/build",
            "kf-pipeline": "stage/pipeline",
            "training": "stage/train",
            "deploy-model": "stage/deploy",
        },
        "main": "trunk",
    },
    "forge": {"github": {"repository": "ml-team/djia", "base_url": "https://ghe.example.com/api/v3/"}},
    "ci": {"jenkins": {"job": "djia-stages"}},
    "monitoring": {"schedule": "TZ=America/New_York\n# after the close, on trading days\nH 17 * * 1-5"},
}


def script_of(root: ElementTree.Element) -> str:
    definition = root.find("definition")
    assert definition.get("class") == "org.jenkinsci.plugins.workflow.cps.CpsFlowDefinition"
    return definition.findtext("script")


def credentials_block(script: str) -> str:
    """The text of the `withCredentials([...]) { ... }` step (the pipeline's only one)."""
    start = script.index("withCredentials([")
    assert script.count("withCredentials(") == 1
    depth, i = 0, script.index("{", script.index("])", start))
    for i in range(i, len(script)):
        depth += {"{": 1, "}": -1}.get(script[i], 0)
        if depth == 0:
            break
    return script[start : i + 1]


@pytest.fixture(scope="module")
def renamed_xml() -> ElementTree.Element:
    return ElementTree.fromstring(render_monitor_job_xml(production_config(**RENAMED), REPO_ROOT).encode())


def test_the_job_runs_on_the_configured_schedule(renamed_xml: ElementTree.Element) -> None:
    assert renamed_xml.tag == "flow-definition"  # XStream's name for a pipeline job (WorkflowJob)
    timers = renamed_xml.findall(f"{TRIGGERS}/hudson.triggers.TimerTrigger")
    assert [t.findtext("spec") for t in timers] == [RENAMED["monitoring"]["schedule"]]
    assert len(renamed_xml.findall(f"{TRIGGERS}/*")) == 1, "the schedule is its only trigger"
    default = ElementTree.fromstring(render_monitor_job_xml(production_config(), REPO_ROOT).encode())
    assert default.findtext(f"{TRIGGERS}/hudson.triggers.TimerTrigger/spec") == "H */6 * * *"
    # One check at a time: each reads the log from where the last one's record stopped.
    assert (
        renamed_xml.find(
            "properties/org.jenkinsci.plugins.workflow.job.properties.DisableConcurrentBuildsJobProperty"
        )
        is not None
    )


def test_the_job_checks_out_the_deploy_branch_and_runs_monitor_with_the_stage_credentials(
    renamed_xml: ElementTree.Element,
) -> None:
    script = script_of(renamed_xml)
    assert renamed_xml.findtext("definition/sandbox") == "true"
    checkout = re.search(r"checkout scmGit\((.*?)\n\s*\)", script, re.DOTALL).group(1)
    assert "branches: [[name: 'refs/heads/stage/deploy']]" in checkout
    assert "url: 'https://ghe.example.com/ml-team/djia.git'" in checkout
    assert "credentialsId: 'github-token'" in checkout and "name: 'origin'" in checkout
    assert "DEPLOY_BRANCH = 'stage/deploy'" in script

    block = credentials_block(script)
    assert ".venv/bin/branchops monitor --json > reports/monitor/monitor.json" in block
    assert len(re.findall(r"\.venv/bin/branchops monitor\b", script)) == 1, "monitor runs once"
    assert (
        script.index("checkout scmGit(")
        < script.index("pip install")
        < script.index(".venv/bin/branchops monitor")
    )

    # Bound exactly as the stage builds bind them (the Jenkinsfile's withCredentials), to the same
    # variables, and copied to the same names.
    jenkinsfile = (REPO_ROOT / "Jenkinsfile").read_text(encoding="utf-8")
    stage_bindings = BINDING.findall(jenkinsfile)
    assert stage_bindings and sorted(BINDING.findall(block)) == sorted(stage_bindings)
    exports = re.compile(r'export [A-Z_]+="\$BRANCHOPS_CRED_[A-Z_]+"')
    assert sorted(exports.findall(block)) == sorted(exports.findall(jenkinsfile))
    assert 'export GIT_ASKPASS="$WORKSPACE/jenkins/git-askpass.sh"' in block

    # Masked, never echoed: every sh script in the block has its own #! line (Jenkins runs the others
    # with `sh -xe`, whose trace prints values), no tracing, nothing Groovy interpolates.
    scripts = re.findall(
        r"^\s*sh\s*\(?\s*(?:script\s*:\s*)?(?:'''|\"\"\"|'|\")(.{0,12})", block, re.MULTILINE
    )
    assert scripts and all(s.startswith("#!/bin/bash") for s in scripts)
    assert not re.search(r"set\s+-[a-wyzA-Z]*x", script)
    assert not re.search(r'^\s*sh\s*\(?\s*(?:script\s*:\s*)?"', block, re.MULTILINE)

    # The monitor's output and the record it pushed are archived.
    assert "archiveArtifacts allowEmptyArchive: true, artifacts: 'reports/**'" in script


def test_the_job_holds_credential_ids_never_values(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "BRANCHOPS_CRED_GITHUB_TOKEN": "test-github-credential-value",
        "BRANCHOPS_CRED_KUBEFLOW_TOKEN": "test-kubeflow-credential-value",
        JENKINS_TOKEN_ENV: "test-jenkins-credential-value",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    xml = render_monitor_job_xml(production_config(), REPO_ROOT)
    for value in secrets.values():
        assert value not in xml


def test_the_agent_is_the_stage_builds_pod_without_the_privileged_builder(
    renamed_xml: ElementTree.Element,
) -> None:
    script = script_of(renamed_xml)
    pod_text = re.search(r"yaml '''(.*?)'''", script, re.DOTALL).group(1).replace("\\'", "'")
    pod = yaml.safe_load(pod_text)
    stage_pod = yaml.safe_load((REPO_ROOT / "jenkins" / "agent-pod.yaml").read_text(encoding="utf-8"))
    python = next(c for c in stage_pod["spec"]["containers"] if c["name"] == "python")
    assert pod["spec"]["containers"] == [python]
    assert pod["spec"]["serviceAccountName"] == stage_pod["spec"]["serviceAccountName"]
    assert not any(c.get("securityContext", {}).get("privileged") for c in pod["spec"]["containers"])
    mounted = {m["name"] for m in python.get("volumeMounts", [])}
    assert {v["name"] for v in pod["spec"].get("volumes", [])} == mounted
    assert "defaultContainer 'python'" in script


def test_groovy_parses_the_rendered_pipeline(renamed_xml: ElementTree.Element, tmp_path: Path) -> None:
    pipeline = tmp_path / "monitor.groovy"
    pipeline.write_text(script_of(renamed_xml), encoding="utf-8")
    result = groovy_check(pipeline)
    assert result.returncode == 0, result.stderr


def test_jenkins_jobs_test_renders_the_same_job(tmp_path: Path) -> None:
    config = production_config(**RENAMED)
    template, project = monitor_jjb_project(config, REPO_ROOT)
    assert template == REPO_ROOT / "jenkins" / "jobs" / "monitor.yaml"
    project_file = tmp_path / "project.yaml"
    project_file.write_text(yaml.safe_dump(project), encoding="utf-8")
    out = tmp_path / "out"
    result = subprocess.run(
        [jenkins_jobs_cli(), "test", "--config-xml", "-o", str(out), f"{template}:{project_file}"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["djia-stages-monitor"]
    rendered = (out / "djia-stages-monitor" / "config.xml").read_text(encoding="utf-8")
    assert rendered == render_monitor_job_xml(config, REPO_ROOT)


def test_every_plugin_the_job_uses_is_in_plugins_txt() -> None:
    listed = {
        line.split(":")[0]
        for line in (REPO_ROOT / "jenkins" / "plugins.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    xml = render_monitor_job_xml(production_config(), REPO_ROOT)
    used = {p.split("@")[0] for p in re.findall(r'plugin="([^"]+)"', xml)}
    # The pipeline job itself comes with workflow-aggregator.
    assert used <= {"workflow-job", "workflow-cps"} and "workflow-aggregator" in listed
    # Steps: checkout scmGit (git), withCredentials (credentials-binding), the pod agent (kubernetes),
    # timestamps() (timestamper).
    script = script_of(ElementTree.fromstring(xml.encode()))
    for step, plugin in {
        "scmGit(": "git",
        "withCredentials(": "credentials-binding",
        "kubernetes {": "kubernetes",
        "timestamps()": "timestamper",
    }.items():
        assert step in script and plugin in listed


def test_the_digest_follows_the_schedule_the_template_and_the_pipeline(tmp_path: Path) -> None:
    base = job_digest(render_monitor_job_xml(production_config(), REPO_ROOT))
    assert base and base == job_digest(render_monitor_job_xml(production_config(), REPO_ROOT))
    changed = production_config(monitoring={"schedule": "@daily"})
    assert job_digest(render_monitor_job_xml(changed, REPO_ROOT)) != base

    copy = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "jenkins", copy / "jenkins")
    shutil.copy(REPO_ROOT / "Jenkinsfile", copy / "Jenkinsfile")
    assert job_digest(render_monitor_job_xml(production_config(), copy)) == base
    pipeline = copy / "jenkins" / "jobs" / "monitor.groovy"
    pipeline.write_text(pipeline.read_text().replace("timeout(time: 1,", "timeout(time: 2,"))
    assert job_digest(render_monitor_job_xml(production_config(), copy)) != base


# -- provisioning -----------------------------------------------------------------------------------------


def test_sync_creates_the_monitor_job_in_the_same_folder(fake_jenkins: FakeJenkins) -> None:
    config = production_config(fake_jenkins.url)
    result = sync_job(config, REPO_ROOT)

    assert (result.job, result.outcome) == ("ml/djia/branchops", "created")
    assert result.monitor is not None
    assert (result.monitor.job, result.monitor.outcome) == ("ml/djia/branchops-monitor", "created")
    assert result.monitor.url == fake_jenkins.url + "job/ml/job/djia/job/branchops-monitor/"
    assert fake_jenkins.item("ml/djia/branchops").cls == MULTIBRANCH
    monitor = fake_jenkins.item("ml/djia/branchops-monitor")
    assert monitor is not None and monitor.cls == WORKFLOW_JOB
    stored = ElementTree.fromstring(monitor.config_xml.encode())
    assert stored.findtext(f"{TRIGGERS}/hudson.triggers.TimerTrigger/spec") == "H */6 * * *"
    assert "branchops monitor --json" in script_of(stored)
    assert monitor.scans == 0 and monitor.builds == [], "its schedule starts it, not the sync"


def test_a_second_sync_changes_nothing(fake_jenkins: FakeJenkins) -> None:
    config = production_config(fake_jenkins.url)
    sync_job(config, REPO_ROOT)
    before = len(fake_jenkins.posts())

    again = sync_job(production_config(fake_jenkins.url), REPO_ROOT)

    assert again.outcome == "unchanged" and again.monitor.outcome == "unchanged"
    assert fake_jenkins.posts()[before:] == []
    assert fake_jenkins.item("ml/djia/branchops").scans == 1


def test_a_new_schedule_updates_only_the_monitor_job(fake_jenkins: FakeJenkins) -> None:
    sync_job(production_config(fake_jenkins.url), REPO_ROOT)
    before = len(fake_jenkins.posts())

    result = sync_job(
        production_config(fake_jenkins.url, monitoring={"schedule": "H H(0-5) * * 1-5"}), REPO_ROOT
    )

    assert (result.outcome, result.monitor.outcome) == ("unchanged", "updated")
    assert [path_of(p) for p in fake_jenkins.posts()[before:]] == ["ml/djia/branchops-monitor"]
    stored = ElementTree.fromstring(fake_jenkins.item("ml/djia/branchops-monitor").config_xml.encode())
    assert stored.findtext(f"{TRIGGERS}/hudson.triggers.TimerTrigger/spec") == "H H(0-5) * * 1-5"
    assert fake_jenkins.item("ml/djia/branchops").scans == 1, "an unchanged multibranch job is not rescanned"


def test_an_item_of_another_kind_is_never_overwritten(fake_jenkins: FakeJenkins) -> None:
    from branchops.errors import ExternalError

    from .fake_jenkins import FREESTYLE, Item

    sync_job(production_config(fake_jenkins.url), REPO_ROOT)
    folder = fake_jenkins.item("ml/djia")
    folder.children["branchops-monitor"] = Item("branchops-monitor", FREESTYLE, config_xml="<project/>")

    with pytest.raises(
        ExternalError,
        match="'ml/djia/branchops-monitor' exists and is a hudson.model.FreeStyleProject, not a pipeline job",
    ):
        sync_job(production_config(fake_jenkins.url, monitoring={"schedule": "@hourly"}), REPO_ROOT)
    assert folder.children["branchops-monitor"].config_xml == "<project/>"


# -- the command ------------------------------------------------------------------------------------------


def project_repo(root: Path, jenkins_url: str, **overrides) -> Path:
    """A repository laid out like this one, configured for Jenkins at ``jenkins_url``."""
    root.mkdir()
    shutil.copy(REPO_ROOT / "Jenkinsfile", root / "Jenkinsfile")
    shutil.copytree(REPO_ROOT / "jenkins", root / "jenkins")
    config = production_config(jenkins_url, **overrides)
    (root / "config").mkdir()
    (root / "config" / "branchops.yaml").write_text(
        yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False), encoding="utf-8"
    )
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "project")
    return root


def sync_command(repo: Path, *args: str) -> dict:
    result = CliRunner().invoke(main, ["-C", str(repo), "jenkins", "sync", *args, "--json"])
    assert result.exit_code == 0, (result.output, result.stderr if hasattr(result, "stderr") else "")
    return json.loads(result.stdout)


def test_dry_run_shows_the_monitor_job_and_changes_nothing(fake_jenkins: FakeJenkins, tmp_path: Path) -> None:
    repo = project_repo(tmp_path / "repo", fake_jenkins.url)

    shown = sync_command(repo, "--dry-run")

    assert shown["outcome"] == "would create" and shown["folders_created"] == ["ml", "ml/djia"]
    assert shown["monitor"] == {
        "job": "ml/djia/branchops-monitor",
        "outcome": "would create",
        "url": fake_jenkins.url + "job/ml/job/djia/job/branchops-monitor/",
    }
    assert fake_jenkins.posts() == []

    assert sync_command(repo)["monitor"]["outcome"] == "created"
    assert sync_command(repo, "--dry-run")["monitor"]["outcome"] == "unchanged"

    text = CliRunner().invoke(main, ["-C", str(repo), "jenkins", "sync", "--dry-run"])
    assert text.exit_code == 0
    assert "ml/djia/branchops-monitor: unchanged" in text.stdout


def test_the_guides_production_settings_give_the_monitor_job_its_schedule() -> None:
    from branchops.config import parse_config

    from .test_setup_guide import GUIDE, production_settings

    data = yaml.safe_load((REPO_ROOT / "config" / "branchops.yaml").read_text(encoding="utf-8"))
    data.update(production_settings())
    config = parse_config(yaml.safe_dump(data), "docs/setup.md")
    root = ElementTree.fromstring(render_monitor_job_xml(config, REPO_ROOT).encode())
    schedule = production_settings()["monitoring"]["schedule"]
    assert root.findtext(f"{TRIGGERS}/hudson.triggers.TimerTrigger/spec") == schedule
    assert f"`{config.ci.jenkins.job}-monitor`" in GUIDE or "`<ci.jenkins.job>-monitor`" in GUIDE
    assert "[monitoring.md](monitoring.md)" in GUIDE and "jenkins/rbac/serving.yaml" in GUIDE
