"""The Jenkins jobs: the multibranch project that builds main and the stage branches, and the periodic
monitor job beside it, rendered from config.

``jenkins/jobs/branchops.yaml`` is a jenkins-job-builder template; :func:`render_job_xml` fills it from
config (repository, stage branches, credential ids, scan interval) and renders Jenkins' ``config.xml``
with jenkins-job-builder itself, so what is provisioned is exactly what ``jenkins-jobs test`` shows.
``jenkins/jobs/monitor.yaml`` (with its pipeline, ``monitor.groovy``) is rendered the same way by
:func:`render_monitor_job_xml`: ``branchops monitor --json`` on the deploy-model branch, on the schedule
``monitoring.schedule``, with the Jenkinsfile's credential bindings. The digest written into a job's
description tells a later sync whether the job is already at this definition. jenkins-job-builder is
imported only while rendering.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

from branchops.errors import ConfigError

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig, JenkinsSettings

JOB_TEMPLATE = Path("jenkins") / "jobs" / "branchops.yaml"
MONITOR_JOB_TEMPLATE = Path("jenkins") / "jobs" / "monitor.yaml"
# The pipeline monitor.yaml includes (``!include-raw-expand:``): part of what the digest covers.
MONITOR_PIPELINE = Path("jenkins") / "jobs" / "monitor.groovy"
AGENT_POD = Path("jenkins") / "agent-pod.yaml"
# The agent pod's container every stage but build-components runs in (the Jenkinsfile's defaultContainer).
AGENT_CONTAINER = "python"

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


def _read_template(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: the job template is missing (it ships with the branchops layout)"
        ) from None


def _definition_digest(templates: list[str], params: dict[str, str]) -> str:
    """What a job's definition is made of: its template files, their parameters, the renderer's version."""
    try:  # the digest changes when the renderer might
        from importlib.metadata import PackageNotFoundError, version

        jjb_version = version("jenkins-job-builder")
    except PackageNotFoundError:
        jjb_version = "not installed"
    inputs = {"template": "\n".join(templates), "params": params, "jjb": jjb_version}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def jjb_project(config: BranchopsConfig, repo_root: str | Path = ".") -> tuple[Path, list[dict[str, Any]]]:
    """The job template and the jenkins-job-builder ``project`` that fills it from config.

    Write the project as YAML next to the template and ``jenkins-jobs test`` renders the same job.
    """
    params = job_parameters(config)
    template = Path(repo_root) / JOB_TEMPLATE
    digest = _definition_digest([_read_template(template)], params)
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


def repository_url(config: BranchopsConfig) -> str:
    """The HTTPS clone URL of ``forge.github.repository`` (github.com, or a GitHub Enterprise host)."""
    github = config.forge.github
    if github is None:
        raise ConfigError(
            "forge.github: the monitor job checks out the repository; it needs forge.github.repository "
            "(owner/name) and the GitHub API URL"
        )
    api = urlsplit(github.base_url.rstrip("/"))
    if api.netloc == "api.github.com":
        web = f"{api.scheme}://github.com"
    else:  # GitHub Enterprise Server: the API is <host>/api/v3
        web = f"{api.scheme}://{api.netloc}{api.path.removesuffix('/api/v3')}"
    return f"{web}/{github.repository}.git"


def _groovy_quoted(value: str) -> str:
    """``value`` as the inside of a Groovy single-quoted string (plain or triple): nothing interpolates."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _jjb_literal(value: str) -> str:
    """``value`` as a jenkins-job-builder parameter kept as written (its braces are no placeholders)."""
    return value.replace("{", "{{").replace("}", "}}")


def monitor_agent_pod(repo_root: str | Path = ".") -> str:
    """The stage builds' agent pod (jenkins/agent-pod.yaml) reduced to the container the monitor needs,
    the unprivileged ``python`` one, and the volumes it mounts."""
    import yaml

    path = Path(repo_root) / AGENT_POD
    try:
        pod = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = pod["spec"]
        containers = [c for c in spec["containers"] if c.get("name") == AGENT_CONTAINER]
    except FileNotFoundError:
        raise ConfigError(f"{path}: the agent pod is missing (it ships with the branchops layout)") from None
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a pod with spec.containers ({exc})") from None
    if not containers:
        raise ConfigError(f"{path}: no container named '{AGENT_CONTAINER}' (the stage builds' default)")
    mounted = {m.get("name") for c in containers for m in c.get("volumeMounts", [])}
    spec["containers"] = containers
    volumes = [v for v in spec.get("volumes", []) if v.get("name") in mounted]
    if volumes:
        spec["volumes"] = volumes
    else:
        spec.pop("volumes", None)
    return yaml.safe_dump(pod, sort_keys=False)


def monitor_credential_bindings(repo_root: str | Path = ".") -> tuple[list[str], list[str]]:
    """The Jenkinsfile's ``withCredentials`` bindings and the exports that copy them to the names libraries
    read, as Groovy and bash lines: the monitor job binds exactly what the stage builds bind (sync has
    checked the Jenkinsfile against ``ci.jenkins.credentials`` first)."""
    from branchops.ci.jenkins.jenkinsfile import JENKINSFILE, read_jenkinsfile

    path = Path(repo_root) / JENKINSFILE
    try:
        model = read_jenkinsfile(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing (it ships with the branchops layout)") from None
    bindings = []
    for binding in model.bindings:
        arguments = [f"credentialsId: '{_groovy_quoted(binding.credentials_id)}'"] + [
            f"{role}: '{_groovy_quoted(variable)}'" for role, variable in binding.variables.items()
        ]
        bindings.append(f"{binding.kind}({', '.join(arguments)}),")
    exports = [f'export {name}="${bound}"' for name, bound in model.exported.items()]
    return bindings, exports


def monitor_job_parameters(config: BranchopsConfig, repo_root: str | Path = ".") -> dict[str, str]:
    """The values :data:`MONITOR_JOB_TEMPLATE`'s placeholders take for this configuration."""
    settings = jenkins_settings(config)
    if "github" not in settings.credentials:
        raise ConfigError("ci.jenkins.credentials: no 'github' entry; the monitor job checks out with it")
    bindings, exports = monitor_credential_bindings(repo_root)
    return {
        "job_name": _jjb_literal(settings.job),
        "schedule": _jjb_literal(config.monitoring.schedule),
        "deploy_branch": _jjb_literal(_groovy_quoted(config.branch_for("deploy-model"))),
        "repository_url": _jjb_literal(_groovy_quoted(repository_url(config))),
        "github_credentials_id": _jjb_literal(_groovy_quoted(settings.credentials["github"])),
        "agent_pod": _jjb_literal(_groovy_quoted(monitor_agent_pod(repo_root))),
        "credential_bindings": _jjb_literal("\n".join(" " * 20 + line for line in bindings)),
        "credential_exports": _jjb_literal("\n".join(" " * 24 + line for line in exports)),
    }


def monitor_jjb_project(
    config: BranchopsConfig, repo_root: str | Path = "."
) -> tuple[Path, list[dict[str, Any]]]:
    """The monitor job's template and the jenkins-job-builder ``project`` that fills it from config."""
    params = monitor_job_parameters(config, repo_root)
    template = Path(repo_root) / MONITOR_JOB_TEMPLATE
    texts = [_read_template(template), _read_template(Path(repo_root) / MONITOR_PIPELINE)]
    digest = _definition_digest(texts, params)
    github = config.forge.github
    assert github is not None  # repository_url refused its absence
    params["description"] = (
        f"branchops monitor of {github.repository}: serving drift and live metric, on the schedule "
        "monitoring.schedule. Provisioned by `branchops jenkins sync` from config/branchops.yaml: change "
        f"that, not this job. {DIGEST_MARKER}{digest}"
    )
    return template, [{"project": {"name": "branchops-monitor", **params, "jobs": ["{job_name}-monitor"]}}]


def render_monitor_job_xml(config: BranchopsConfig, repo_root: str | Path = ".") -> str:
    """The monitor job's ``config.xml``, rendered by jenkins-job-builder from :data:`MONITOR_JOB_TEMPLATE`."""
    template, project = monitor_jjb_project(config, repo_root)
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
