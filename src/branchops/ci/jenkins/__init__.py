"""The Jenkins backend of the CI port: the multibranch job that runs ``branchops run --for-branch``, and the
periodic job beside it that runs ``branchops monitor``.

Three concerns, one module each: :mod:`~branchops.ci.jenkins.job` renders the jobs from config,
:mod:`~branchops.ci.jenkins.client` provisions and watches them through Jenkins' REST API, and
:mod:`~branchops.ci.jenkins.jenkinsfile` checks the Jenkinsfile against config. :func:`sync_job` (``branchops
jenkins sync``) puts them together. Nothing here imports python-jenkins or jenkins-job-builder at module
level: the CLI stays fast.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from branchops.ci.jenkins.client import JenkinsClient, SyncResult, make_client
from branchops.ci.jenkins.jenkinsfile import check_jenkinsfile
from branchops.ci.jenkins.job import render_job_xml, render_monitor_job_xml
from branchops.errors import ConfigError

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig


def sync_job(
    config: BranchopsConfig,
    repo_root: str | Path = ".",
    *,
    client: JenkinsClient | None = None,
    dry_run: bool = False,
) -> SyncResult:
    """``branchops jenkins sync``: check the Jenkinsfile against config, render both jobs, provision them.

    The result is the multibranch job's, with the monitor job's as ``monitor``. Both are rendered before
    either is provisioned, so a definition that does not render changes nothing.
    """
    problems = check_jenkinsfile(config, repo_root)
    if problems:
        raise ConfigError(
            "the Jenkinsfile does not match config/branchops.yaml; fix it before "
            "provisioning:\n  " + "\n  ".join(problems)
        )
    xml = render_job_xml(config, repo_root)
    # The monitor job binds the credentials the Jenkinsfile binds: read after the check above.
    monitor_xml = render_monitor_job_xml(config, repo_root)
    client = client or make_client(config)
    result = client.sync(xml, dry_run=dry_run)
    return replace(result, monitor=client.sync_monitor(monitor_xml, dry_run=dry_run))
