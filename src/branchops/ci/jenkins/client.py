"""Jenkins' REST API for the branchops job, through python-jenkins.

:class:`JenkinsClient` creates or updates the job idempotently (folders included), shows the last build
of every branch, triggers a repository scan and streams a build's console. python-jenkins fetches the
CSRF crumb from ``crumbIssuer/api/json`` before the first POST and authenticates with the user's API
token; it is imported only when a request is made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

from branchops.ci.jenkins.job import jenkins_settings, job_digest
from branchops.errors import ConfigError, ExternalError

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig, JenkinsSettings

log = logging.getLogger(__name__)

MULTIBRANCH_CLASS = "org.jenkinsci.plugins.workflow.multibranch.WorkflowMultiBranchProject"
# The monitor job (jenkins/jobs/monitor.yaml): a pipeline job, `flow-definition` in its config.xml.
PIPELINE_CLASS = "org.jenkinsci.plugins.workflow.job.WorkflowJob"


@dataclass(frozen=True)
class SyncResult:
    job: str  # full name, folders included
    outcome: Literal["created", "updated", "unchanged", "would create", "would update"]
    folders_created: tuple[str, ...] = ()
    url: str = ""
    # `branchops jenkins sync` provisions the periodic monitor job beside the multibranch job
    monitor: SyncResult | None = None


@dataclass(frozen=True)
class BranchBuild:
    branch: str  # the branch (or pull request, e.g. PR-12) as Jenkins shows it
    job: str  # the branch job's name inside the multibranch project
    number: int | None
    result: str | None  # SUCCESS, FAILURE, ABORTED, UNSTABLE, RUNNING, or None (never built)
    started_at: str | None = None  # ISO 8601 UTC
    duration_s: float | None = None
    url: str | None = None
    queued: bool = False
    queue_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def branch_job_name(branch: str) -> str:
    """The item name branch-api gives a branch (NameEncoder: '%' and '/' are percent-encoded)."""
    return branch.replace("%", "%25").replace("/", "%2F")


class JenkinsClient:
    """Jenkins' REST API for the branchops job, through python-jenkins.

    ``server`` is for tests and callers that already hold a ``jenkins.Jenkins``; by default one is
    made from ``settings`` with the API token read from ``settings.token`` (never the password).
    """

    def __init__(
        self,
        settings: JenkinsSettings,
        *,
        server: Any = None,
        poll_interval_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        self._server = server
        self.poll_interval_s = poll_interval_s
        self._sleep = sleep

    # names ----------------------------------------------------------------------------------------
    @property
    def job_name(self) -> str:
        folder = (self.settings.folder or "").strip("/")
        return f"{folder}/{self.settings.job}" if folder else self.settings.job

    @property
    def job_url(self) -> str:
        return self._url_of(self.job_name)

    @property
    def monitor_job_name(self) -> str:
        """The monitor job, in the multibranch job's folder and named after it (``<job>-monitor``)."""
        return f"{self.job_name}-monitor"

    def _url_of(self, name: str) -> str:
        parts = name.split("/")
        return self.settings.url.rstrip("/") + "/" + "".join(f"job/{_quote_segment(p)}/" for p in parts)

    @property
    def server(self) -> Any:
        if self._server is None:
            token = self.settings.token.resolve()
            if not token:
                raise ConfigError(
                    f"ci.jenkins.token: no Jenkins API token ({self.settings.token.describe()});"
                    f" create one for user '{self.settings.user}' under <jenkins>/me/configure"
                )
            import jenkins

            self._server = jenkins.Jenkins(
                self.settings.url,
                username=self.settings.user,
                password=token,
                timeout=self.settings.timeout_s,
            )
        return self._server

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Turn python-jenkins and requests failures into an ExternalError saying what to check."""
        import requests

        import jenkins

        try:
            yield
        except (ConfigError, ExternalError):
            raise
        except jenkins.TimeoutException as exc:
            raise ExternalError(
                f"Jenkins at {self.settings.url}: {what} timed out after "
                f"{self.settings.timeout_s:g}s ({exc}); check the URL and "
                "ci.jenkins.timeout_s"
            ) from None
        except jenkins.NotFoundException:
            raise ExternalError(f"Jenkins at {self.settings.url}: {what}: not found (404)") from None
        except jenkins.JenkinsException as exc:
            text = str(exc)
            hint = ""
            if "[401]" in text:
                hint = (
                    f"; the user '{self.settings.user}' or its API token is wrong "
                    f"({self.settings.token.describe()})"
                )
            elif "[403]" in text:
                hint = (
                    f"; user '{self.settings.user}' lacks the permission (Job/Create, Job/Configure, "
                    "Job/Build, Job/Read on the folder) or the CSRF crumb was refused"
                )
            first = text.splitlines()[0] if text else type(exc).__name__
            raise ExternalError(f"Jenkins at {self.settings.url}: {what} failed: {first}{hint}") from None
        except requests.RequestException as exc:
            raise ExternalError(
                f"Jenkins at {self.settings.url}: {what} failed: {type(exc).__name__}: {exc}"
            ) from None

    # checks ---------------------------------------------------------------------------------------
    def check(self) -> dict[str, str]:
        """Who we are and which Jenkins this is; fails before anything changes if the token is wrong."""
        with self._calling("checking the API token"):
            me = self.server.get_whoami()
            version = self.server.get_version()
        user = me.get("id") or me.get("fullName") or self.settings.user
        return {"user": str(user), "version": str(version)}

    # provisioning ---------------------------------------------------------------------------------
    def _info(self, name: str, what: str) -> dict[str, Any] | None:
        """Item JSON, or None when the item does not exist."""
        import jenkins

        with self._calling(what):
            try:
                return self.server.get_job_info(name)
            except jenkins.NotFoundException:
                return None
            except jenkins.JenkinsException as exc:
                if "does not exist" in str(exc):
                    return None
                raise

    def _ensure_folders(self, dry_run: bool) -> list[str]:
        created: list[str] = []
        parts = [p for p in (self.settings.folder or "").split("/") if p]
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth])
            info = self._info(path, f"reading folder {path}")
            if info is not None:
                if "jobs" not in info:
                    raise ExternalError(
                        f"Jenkins: '{path}' exists and is a {info.get('_class', 'job')}, "
                        "not a folder; change ci.jenkins.folder"
                    )
                continue
            created.append(path)
            if dry_run:
                continue
            with self._calling(f"creating folder {path}"):
                self.server.create_folder(path)
            if self._info(path, f"reading folder {path}") is None:
                raise ExternalError(
                    f"Jenkins: folder '{path}' was not created (is the Folders plugin installed?)"
                )
            log.info("created Jenkins folder %s", path)
        return created

    def sync(self, job_xml: str, *, dry_run: bool = False, scan: bool = True) -> SyncResult:
        """Create the job or update its configuration; a job already at this definition is left alone.

        After a change the repository is scanned at once, so new branches appear without waiting for
        the periodic scan.
        """
        result = self._provision(
            self.job_name, job_xml, MULTIBRANCH_CLASS, "a multibranch pipeline", dry_run=dry_run
        )
        if scan and result.outcome in ("created", "updated"):
            self.trigger_scan()
        return result

    def sync_monitor(self, job_xml: str, *, dry_run: bool = False) -> SyncResult:
        """Create the periodic monitor job or update its configuration, like :meth:`sync` (no scan: its
        schedule starts it)."""
        return self._provision(
            self.monitor_job_name, job_xml, PIPELINE_CLASS, "a pipeline job", dry_run=dry_run
        )

    def _provision(self, name: str, job_xml: str, kind: str, kind_name: str, *, dry_run: bool) -> SyncResult:
        folders = self._ensure_folders(dry_run)
        url = self._url_of(name)
        info = None if (dry_run and folders) else self._info(name, f"reading job {name}")
        wanted = job_digest(job_xml)
        if info is None:
            if dry_run:
                return SyncResult(name, "would create", tuple(folders), url)
            with self._calling(f"creating job {name}"):
                self.server.create_job(name, job_xml)
            outcome: Literal["created", "updated"] = "created"
        else:
            found = info.get("_class", "")
            if found != kind:
                raise ExternalError(
                    f"Jenkins: '{name}' exists and is a {found or 'different kind of item'}, "
                    f"not {kind_name}; rename it or set ci.jenkins.job to another name"
                )
            with self._calling(f"reading the configuration of {name}"):
                current = self.server.get_job_config(name)
            current_digest = job_digest(current)
            if current_digest is None:
                log.warning("job %s was not provisioned by branchops; its configuration is replaced", name)
            if wanted is not None and current_digest == wanted:
                return SyncResult(name, "unchanged", tuple(folders), url)
            if dry_run:
                return SyncResult(name, "would update", tuple(folders), url)
            with self._calling(f"updating job {name}"):
                self.server.reconfig_job(name, job_xml)
            outcome = "updated"
        log.info("Jenkins job %s %s", name, outcome)
        return SyncResult(name, outcome, tuple(folders), url)

    def trigger_scan(self) -> None:
        """Scan Repository Now: ``POST <job>/build`` on the multibranch project (ComputedFolder.doBuild)."""
        import requests

        with self._calling(f"triggering a scan of {self.job_name}"):
            self.server.jenkins_request(requests.Request("POST", self.job_url + "build?delay=0"))

    # watching -------------------------------------------------------------------------------------
    def status(self) -> list[BranchBuild]:
        """The last build of every branch and pull request the job knows, plus queued builds."""
        info = self._info(self.job_name, f"reading job {self.job_name}")
        if info is None:
            raise ExternalError(
                f"Jenkins: job '{self.job_name}' does not exist; run `branchops jenkins sync` first"
            )
        with self._calling("reading the build queue"):
            queue = self.server.get_queue_info()
        # A queued branch build's task URL is the branch job's URL, as the project lists it.
        queued = {(item.get("task") or {}).get("url"): item.get("why") or "waiting" for item in queue or []}
        rows: list[BranchBuild] = []
        for child in info.get("jobs", []):
            child_name = child["name"]
            full = f"{self.job_name}/{child_name}"
            child_info = self._info(full, f"reading {full}") or {}
            branch = child_info.get("displayName") or unquote(child_name)
            last = child_info.get("lastBuild")
            reason = queued.get(child.get("url"))
            if not last:
                rows.append(
                    BranchBuild(
                        branch, child_name, None, None, queued=reason is not None, queue_reason=reason
                    )
                )
                continue
            with self._calling(f"reading build {last['number']} of {full}"):
                build = self.server.get_build_info(full, last["number"])
            result = "RUNNING" if build.get("building") else build.get("result")
            started = build.get("timestamp")
            rows.append(
                BranchBuild(
                    branch=branch,
                    job=child_name,
                    number=build.get("number", last["number"]),
                    result=result,
                    started_at=(
                        datetime.fromtimestamp(started / 1000, tz=UTC).isoformat(timespec="seconds")
                        if started
                        else None
                    ),
                    duration_s=(build.get("duration") or 0) / 1000 if not build.get("building") else None,
                    url=build.get("url") or last.get("url"),
                    queued=reason is not None,
                    queue_reason=reason,
                )
            )
        return sorted(rows, key=lambda r: r.branch)

    def logs(self, branch: str, build: int | None = None, follow: bool = True) -> Iterator[str]:
        """The console text of a branch's build (the last one by default), chunk by chunk.

        Reads ``logText/progressiveText?start=N``: Jenkins answers the text from offset N, the next
        offset in ``X-Text-Size`` and ``X-More-Data: true`` while the build still runs. With
        ``follow`` it keeps polling until the build ends.
        """
        import requests

        child = branch_job_name(branch)
        full = f"{self.job_name}/{child}"
        if build is None:
            info = self._info(full, f"reading {full}")
            if info is None:
                project = self._info(self.job_name, "reading the job") or {}
                known = [j["name"] for j in project.get("jobs", [])]
                raise ExternalError(
                    f"Jenkins: no job for branch '{branch}' in {self.job_name} "
                    f"(known: {', '.join(unquote(k) for k in known) or 'none'}); "
                    "is it a stage branch, and has the repository been scanned?"
                )
            if not info.get("lastBuild"):
                raise ExternalError(f"Jenkins: branch '{branch}' has no build yet")
            build = int(info["lastBuild"]["number"])
        url = self.job_url + f"job/{_quote_segment(child)}/{build}/logText/progressiveText"
        start = 0
        while True:
            with self._calling(f"reading the console of {branch} #{build}"):
                try:
                    request = requests.Request("GET", url, params={"start": start})
                    response = self.server.jenkins_request(request)
                except Exception as exc:
                    import jenkins

                    if isinstance(exc, jenkins.NotFoundException):
                        raise ExternalError(
                            f"Jenkins: build #{build} of branch '{branch}' does not exist"
                        ) from None
                    raise
            if response.text:
                yield response.text
            start = int(response.headers.get("X-Text-Size", start + len(response.content)))
            more = response.headers.get("X-More-Data", "").lower() == "true"
            if not (follow and more):
                return
            self._sleep(self.poll_interval_s)


def _quote_segment(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def make_client(config: BranchopsConfig, *, server: Any = None) -> JenkinsClient:
    return JenkinsClient(jenkins_settings(config), server=server)
