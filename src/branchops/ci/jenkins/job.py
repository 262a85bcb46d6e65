"""The Jenkins job: the multibranch project that builds main and the stage branches, rendered from config.

``jenkins/jobs/branchops.yaml`` is a jenkins-job-builder template; :func:`render_job_xml` fills it from
config (repository, stage branches, credential ids, scan interval) and renders Jenkins' ``config.xml``
with jenkins-job-builder itself, so what is provisioned is exactly what ``jenkins-jobs test`` shows. The
digest written into the job's description tells a later sync whether the job is already at this
definition. jenkins-job-builder is imported only while rendering.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from branchops.errors import ConfigError

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig, JenkinsSettings

JOB_TEMPLATE = Path("jenkins") / "jobs" / "branchops.yaml"

# The intervals cloudbees-folder's PeriodicFolderTrigger offers (and jenkins-job-builder accepts).
SCAN_INTERVALS = (
    "1m",
    "2m",
    "5m",
    "10m",
    "15m",
    "20m",
    "25m",
    "30m",
    "1h",
    "2h",
    "4h",
    "8h",
    "12h",
    "1d",
    "2d",
    "1w",
    "2w",
    "4w",
)

# GitHub branch source reports pull-request builds (built merged with their target) under this
# context; it is the status check branch protection requires.
PR_STATUS_CONTEXT = "continuous-integration/jenkins/pr-merge"
# The GitHub plugin's webhook endpoint, and the events GitHub branch source acts on.
WEBHOOK_PATH = "github-webhook/"
WEBHOOK_EVENTS = ("push", "pull_request")

# Marks the job's description with the digest of what rendered it: Jenkins rewrites config.xml
# (plugin versions, defaults), so comparing XML text would report a change on every sync.
DIGEST_MARKER = "branchops-job-digest:"


def jenkins_settings(config: BranchopsConfig) -> JenkinsSettings:
    """Config's Jenkins section; its absence is a configuration error, not a missing attribute."""
    if config.ci.jenkins is None:
        raise ConfigError("ci.jenkins: the Jenkins section is missing (url, user, token); see docs/setup.md")
    return config.ci.jenkins


def discovered_branches(config: BranchopsConfig) -> list[str]:
    """The branches (and targets of pull requests) the job builds: main and the stage branches."""
    if config.branches.mode == "single-branch":
        names = [config.branches.main, config.branches.single_branch]
    else:
        names = [config.branches.main, *config.branches.stages.values()]
    return list(dict.fromkeys(names))


def job_parameters(config: BranchopsConfig) -> dict[str, str]:
    """The values :data:`JOB_TEMPLATE`'s placeholders take for this configuration."""
    settings = jenkins_settings(config)
    github = config.forge.github
    if github is None:
        raise ConfigError(
            "forge.github: the Jenkins job's branch source needs forge.github.repository "
            "(owner/name) and the GitHub API URL"
        )
    if settings.scan_interval not in SCAN_INTERVALS:
        raise ConfigError(
            f"ci.jenkins.scan_interval: '{settings.scan_interval}' is not an interval Jenkins "
            f"offers for repository scans; use one of {', '.join(SCAN_INTERVALS)}"
        )
    if "github" not in settings.credentials:
        raise ConfigError("ci.jenkins.credentials: no 'github' entry; the job scans the repository with it")
    owner, repo = github.repository.split("/", 1)
    return {
        "job_name": settings.job,
        "api_uri": github.base_url.rstrip("/"),
        "repo_owner": owner,
        "repo": repo,
        "github_credentials_id": settings.credentials["github"],
        "scan_interval": settings.scan_interval,
        "branch_includes": " ".join(discovered_branches(config)),
    }


def jjb_project(config: BranchopsConfig, repo_root: str | Path = ".") -> tuple[Path, list[dict[str, Any]]]:
    """The job template and the jenkins-job-builder ``project`` that fills it from config.

    Write the project as YAML next to the template and ``jenkins-jobs test`` renders the same job.
    """
    params = job_parameters(config)
    template = Path(repo_root) / JOB_TEMPLATE
    try:
        template_text = template.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{template}: the job template is missing (it ships with the branchops layout)"
        ) from None
    try:  # the digest changes when the renderer might
        from importlib.metadata import PackageNotFoundError, version

        jjb_version = version("jenkins-job-builder")
    except PackageNotFoundError:
        jjb_version = "not installed"
    digest = hashlib.sha256(
        json.dumps({"template": template_text, "params": params, "jjb": jjb_version}, sort_keys=True).encode()
    ).hexdigest()[:16]
    params["description"] = (
        f"branchops stages of {params['repo_owner']}/{params['repo']}. Provisioned "
        "by `branchops jenkins sync` from config/branchops.yaml: change that, not "
        f"this job. {DIGEST_MARKER}{digest}"
    )
    return template, [{"project": {"name": "branchops", **params, "jobs": ["{job_name}"]}}]


def render_job_xml(config: BranchopsConfig, repo_root: str | Path = ".") -> str:
    """The job's ``config.xml``, rendered by jenkins-job-builder from :data:`JOB_TEMPLATE` and config."""
    template, project = jjb_project(config, repo_root)
    return _render_with_jjb(template, project)


def _render_with_jjb(template: Path, project: list[dict[str, Any]]) -> str:
    try:
        from jenkins_jobs.config import JJBConfig
        from jenkins_jobs.errors import JenkinsJobsException
        from jenkins_jobs.loader import load_files
        from jenkins_jobs.registry import ModuleRegistry
        from jenkins_jobs.roots import Roots
        from jenkins_jobs.xml_config import XmlJobGenerator
    except ImportError:
        raise ConfigError(
            "rendering the Jenkins job needs jenkins-job-builder: "
            "pip install 'branchops[jenkins]' (or jenkins-job-builder>=6)"
        ) from None
    import yaml

    quiet = logging.getLogger("jenkins_jobs")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "config file not found" warnings: we need no Jenkins connection here
    try:
        with tempfile.TemporaryDirectory(prefix="branchops-jjb-") as tmp:
            project_file = Path(tmp) / "project.yaml"
            project_file.write_text(yaml.safe_dump(project), encoding="utf-8")
            jjb_config = JJBConfig()
            jjb_config.validate()
            roots = Roots(jjb_config)
            load_files(jjb_config, roots, [template, project_file])
            registry = ModuleRegistry(jjb_config, None)
            registry.set_macros(roots.macros)
            jobs = roots.generate_jobs()
            registry.amend_job_dicts(jobs)
            xml_jobs = XmlJobGenerator(registry).generateXML(jobs)
    except JenkinsJobsException as exc:
        raise ConfigError(f"{template}: jenkins-job-builder cannot render the job: {exc}") from None
    finally:
        quiet.setLevel(level)
    if len(xml_jobs) != 1:
        raise ConfigError(f"{template}: expected exactly one job template, rendered {len(xml_jobs)} jobs")
    return xml_jobs[0].output().decode("utf-8")


def job_digest(config_xml: str) -> str | None:
    """The digest :func:`render_job_xml` wrote into a job's description (None for a hand-made job)."""
    try:
        root = ElementTree.fromstring(config_xml.encode("utf-8"))
    except ElementTree.ParseError:
        return None
    description = root.findtext("description") or ""
    match = re.search(re.escape(DIGEST_MARKER) + r"([0-9a-f]+)", description)
    return match.group(1) if match else None
