"""The multibranch job definition: rendered from jenkins/jobs/branchops.yaml and config, checked with
jenkins-job-builder's own `jenkins-jobs test` (real, offline)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from branchops.ci.jenkins.job import DIGEST_MARKER, job_digest, render_job_xml
from branchops.errors import ConfigError

from .conftest import REPO_ROOT, production_config

GH = "org.jenkinsci.plugins.github__branch__source"


def jenkins_jobs_cli() -> str:
    found = Path(sys.executable).with_name("jenkins-jobs")
    if found.exists():
        return str(found)
    which = shutil.which("jenkins-jobs")
    if which is None:
        pytest.skip("jenkins-job-builder's `jenkins-jobs` is not installed (pip install jenkins-job-builder)")
    return which


@pytest.fixture(scope="module")
def rendered() -> str:
    return render_job_xml(production_config(), REPO_ROOT)


def test_rendered_xml_is_what_jenkins_jobs_test_produces(tmp_path: Path) -> None:
    # Every value differs from the defaults, so each one can only have come from this config.
    config = production_config(
        branches={
            "stages": {
                "build-components": "stage/build",
                "kf-pipeline": "stage/pipeline",
                "training": "stage/train",
                "deploy-model": "stage/deploy",
            },
            "main": "trunk",
        },
        forge={"github": {"repository": "ml-team/djia", "base_url": "https://ghe.example.com/api/v3/"}},
        ci={
            "jenkins": {
                "job": "djia-stages",
                "credentials": {"github": "gh-scan-token"},
                "scan_interval": "30m",
            }
        },
    )
    rendered = render_job_xml(config, REPO_ROOT)
    root = ElementTree.fromstring(rendered.encode())

    # The repository's job definition filled in by hand with what that config says, as an admin would
    # before running `jenkins-jobs test`; only the digest of the rendering inputs is taken over.
    digest = re.search(re.escape(DIGEST_MARKER) + "([0-9a-f]{16})", root.findtext("description")).group(1)
    description = (
        "branchops stages of ml-team/djia. Provisioned by `branchops jenkins sync` from "
        f"config/branchops.yaml: change that, not this job. {DIGEST_MARKER}{digest}"
    )
    project = [
        {
            "project": {
                "name": "branchops",
                "jobs": ["{job_name}"],
                "job_name": "djia-stages",
                "description": description,
                "api_uri": "https://ghe.example.com/api/v3",
                "repo_owner": "ml-team",
                "repo": "djia",
                "github_credentials_id": "gh-scan-token",
                "scan_interval": "30m",
                "branch_includes": "trunk stage/build stage/pipeline stage/train stage/deploy",
            }
        }
    ]
    project_file = tmp_path / "project.yaml"
    project_file.write_text(yaml.safe_dump(project), encoding="utf-8")
    out = tmp_path / "out"
    # `path` is a colon-separated list of YAML files.
    result = subprocess.run(
        [
            jenkins_jobs_cli(),
            "test",
            "--config-xml",
            "-o",
            str(out),
            f"{REPO_ROOT / 'jenkins' / 'jobs' / 'branchops.yaml'}:{project_file}",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["djia-stages"]
    assert (out / "djia-stages" / "config.xml").read_text(encoding="utf-8") == rendered

    # And what Jenkins does with it: scan this repository with this credential, build these branches
    # (and pull requests into them) from the repository's Jenkinsfile, rescan every 30 minutes.
    assert root.tag == "org.jenkinsci.plugins.workflow.multibranch.WorkflowMultiBranchProject"
    source = root.find("sources/data/jenkins.branch.BranchSource/source")
    assert source.get("class") == "org.jenkinsci.plugins.github_branch_source.GitHubSCMSource"
    assert (source.findtext("repoOwner"), source.findtext("repository")) == ("ml-team", "djia")
    assert source.findtext("apiUri") == "https://ghe.example.com/api/v3"
    assert source.findtext("credentialsId") == "gh-scan-token"
    head_filter = source.find("traits/net.gleske.scmfilter.impl.trait.WildcardSCMHeadFilterTrait")
    assert head_filter.findtext("includes").split() == [
        "trunk",
        "stage/build",
        "stage/pipeline",
        "stage/train",
        "stage/deploy",
    ]
    assert not head_filter.findtext("excludes") and head_filter.findtext("tagExcludes") == "*"
    script_path = root.findtext("factory/scriptPath")
    assert script_path == "Jenkinsfile" and (REPO_ROOT / script_path).is_file()
    assert root.findtext("triggers/*/interval") == str(30 * 60 * 1000)


def test_the_job_is_a_github_multibranch_pipeline_limited_to_the_stage_branches(rendered: str) -> None:
    root = ElementTree.fromstring(rendered.encode())
    assert root.tag == "org.jenkinsci.plugins.workflow.multibranch.WorkflowMultiBranchProject"
    source = root.find("sources/data/jenkins.branch.BranchSource/source")
    assert source.get("class") == "org.jenkinsci.plugins.github_branch_source.GitHubSCMSource"
    assert (source.findtext("repoOwner"), source.findtext("repository")) == ("acme", "djia-mlops")
    assert source.findtext("credentialsId") == "github-token"
    assert source.findtext("apiUri") == "https://api.github.com"
    traits = source.find("traits")
    assert traits.findtext(f"{GH}.BranchDiscoveryTrait/strategyId") == "3"  # all branches
    assert traits.findtext(f"{GH}.OriginPullRequestDiscoveryTrait/strategyId") == "1"  # merged with target
    assert traits.find(f"{GH}.ForkPullRequestDiscoveryTrait") is None
    head_filter = traits.find("net.gleske.scmfilter.impl.trait.WildcardSCMHeadFilterTrait")
    assert set(head_filter.findtext("includes").split()) == {
        "main",
        "build-components",
        "kf-pipeline",
        "training",
        "deploy-model",
    }
    assert head_filter.findtext("tagExcludes") == "*"
    trigger = root.find("triggers/com.cloudbees.hudson.plugins.folder.computed.PeriodicFolderTrigger")
    assert trigger.findtext("interval") == str(3600 * 1000)
    orphans = root.find("orphanedItemStrategy")
    assert orphans.findtext("pruneDeadBranches") == "true" and orphans.findtext("numToKeep") == "10"
    assert root.findtext("factory/scriptPath") == "Jenkinsfile"
    assert re.search(re.escape(DIGEST_MARKER) + "[0-9a-f]{16}", root.findtext("description"))


def test_branch_names_and_ids_come_from_config() -> None:
    config = production_config(
        branches={
            "stages": {
                "build-components": "stage/build",
                "kf-pipeline": "stage/pipeline",
                "training": "stage/train",
                "deploy-model": "stage/deploy",
            },
            "main": "trunk",
        },
        forge={"github": {"repository": "other/repo", "base_url": "https://ghe.example.com/api/v3"}},
        ci={"jenkins": {"credentials": {"github": "gh-app"}, "scan_interval": "30m"}},
    )
    root = ElementTree.fromstring(render_job_xml(config, REPO_ROOT).encode())
    source = root.find("sources/data/jenkins.branch.BranchSource/source")
    assert source.findtext("credentialsId") == "gh-app"
    assert source.findtext("apiUri") == "https://ghe.example.com/api/v3"
    assert source.findtext("repoOwner") == "other"
    includes = source.findtext("traits/net.gleske.scmfilter.impl.trait.WildcardSCMHeadFilterTrait/includes")
    assert includes.split() == ["trunk", "stage/build", "stage/pipeline", "stage/train", "stage/deploy"]
    assert root.findtext("triggers/*/interval") == str(30 * 60 * 1000)


def test_single_branch_mode_builds_only_main() -> None:
    config = production_config(branches={"mode": "single-branch", "single_branch": "main"})
    xml = render_job_xml(config, REPO_ROOT)
    assert re.search(r"<includes>main</includes>", xml)


def test_the_digest_is_stable_and_follows_the_config(rendered: str) -> None:
    assert job_digest(render_job_xml(production_config(), REPO_ROOT)) == job_digest(rendered)
    changed = production_config(ci={"jenkins": {"scan_interval": "1d"}})
    assert job_digest(render_job_xml(changed, REPO_ROOT)) != job_digest(rendered)
    assert job_digest("<project><description>made by hand</description></project>") is None
    assert job_digest("not xml") is None


def test_a_scan_interval_jenkins_does_not_offer_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ci.jenkins.scan_interval: '3h' .*1h, 2h, 4h"):
        render_job_xml(production_config(ci={"jenkins": {"scan_interval": "3h"}}), REPO_ROOT)


def test_without_a_github_repository_there_is_no_branch_source() -> None:
    config = production_config(forge={"backend": "local", "github": None})
    with pytest.raises(ConfigError, match="forge.github"):
        render_job_xml(config, REPO_ROOT)


def test_a_missing_template_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"jenkins/jobs/branchops.yaml: the job template is missing"):
        render_job_xml(production_config(), tmp_path)


def test_every_plugin_the_job_uses_is_in_plugins_txt(rendered: str) -> None:
    listed = {
        line.split(":")[0]
        for line in (REPO_ROOT / "jenkins" / "plugins.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    used = {p.split("@")[0] for p in re.findall(r'plugin="([^"]+)"', rendered)}
    # Dependencies jenkins-plugin-cli installs with workflow-aggregator and github-branch-source.
    transitive = {"workflow-multibranch", "branch-api", "cloudbees-folder", "scm-api"}
    assert used - transitive <= listed, f"add to jenkins/plugins.txt: {sorted(used - transitive - listed)}"
    assert {
        "github-branch-source",
        "scm-filter-branch-pr",
        "kubernetes",
        "credentials-binding",
        "timestamper",
        "junit",
        "workflow-aggregator",
    } <= listed
    for line in (REPO_ROOT / "jenkins" / "plugins.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[a-z0-9-]+:[0-9][0-9A-Za-z._-]*", line.strip()), f"unpinned: {line}"
