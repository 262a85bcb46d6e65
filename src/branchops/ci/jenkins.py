"""The Jenkins backend of the CI port: the multibranch job, its provisioning, and the Jenkinsfile's checks.

Three concerns, one backend:

- **The job definition.** ``jenkins/jobs/branchops.yaml`` is a jenkins-job-builder template;
  :func:`render_job_xml` fills it from config (repository, stage branches, credential ids, scan
  interval) and renders Jenkins' ``config.xml`` with jenkins-job-builder itself, so what is provisioned
  is exactly what ``jenkins-jobs test`` shows.
- **The REST client.** :class:`JenkinsClient` creates or updates that job idempotently (folders
  included), shows the last build of every branch, triggers a repository scan and streams a build's
  console, through python-jenkins (which fetches the CSRF crumb from ``crumbIssuer/api/json`` before
  the first POST and authenticates with the user's API token).
- **The Jenkinsfile's contract with config.** The Jenkinsfile names its credential ids literally, so a
  reviewer sees which secrets a build can reach; :func:`check_jenkinsfile` reads its declarative
  structure and lists every way it drifts from config. ``sync`` refuses to provision a drifted job.

Nothing here imports python-jenkins or jenkins-job-builder at module level: the CLI stays fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote
from xml.etree import ElementTree

from branchops.errors import ConfigError, ExternalError
from branchops.secrets import credential_env_name

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig, JenkinsSettings

log = logging.getLogger(__name__)

JENKINSFILE = Path("Jenkinsfile")
JOB_TEMPLATE = Path("jenkins") / "jobs" / "branchops.yaml"
AGENT_POD = Path("jenkins") / "agent-pod.yaml"

# The intervals cloudbees-folder's PeriodicFolderTrigger offers (and jenkins-job-builder accepts).
SCAN_INTERVALS = ("1m", "2m", "5m", "10m", "15m", "20m", "25m", "30m", "1h", "2h", "4h", "8h", "12h",
                  "1d", "2d", "1w", "2w", "4w")

# GitHub branch source reports pull-request builds (built merged with their target) under this
# context; it is the status check branch protection requires.
PR_STATUS_CONTEXT = "continuous-integration/jenkins/pr-merge"
# The GitHub plugin's webhook endpoint, and the events GitHub branch source acts on.
WEBHOOK_PATH = "github-webhook/"
WEBHOOK_EVENTS = ("push", "pull_request")

MULTIBRANCH_CLASS = "org.jenkinsci.plugins.workflow.multibranch.WorkflowMultiBranchProject"
FOLDER_CLASS = "com.cloudbees.hudson.plugins.folder.Folder"
# Marks the job's description with the digest of what rendered it: Jenkins rewrites config.xml
# (plugin versions, defaults), so comparing XML text would report a change on every sync.
DIGEST_MARKER = "branchops-job-digest:"

# How the Jenkinsfile binds each logical credential of `ci.jenkins.credentials`: the kind of Jenkins
# credential it must be, since a binding of the wrong kind fails only at build time.
CREDENTIAL_KINDS = {
    "github": "usernamePassword",  # a token as password, or a GitHub App credential
    "kaggle": "usernamePassword",  # Kaggle username and API key
    "registry": "usernamePassword",
    "kubeconfig": "file",
    "kubeflow": "string",
}
# Only the admin's machine uses these references (sync, bootstrap); a build never resolves them.
_NOT_USED_IN_BUILDS = ("ci.jenkins.",)

TIME_UNITS = {"SECONDS": 1, "MINUTES": 60, "HOURS": 3600, "DAYS": 86400}


# -- the job definition -------------------------------------------------------------------------------

def _jenkins_settings(config: BranchopsConfig) -> JenkinsSettings:
    if config.ci.jenkins is None:
        raise ConfigError("ci.jenkins: the Jenkins section is missing (url, user, token); see docs/setup.md")
    return config.ci.jenkins


def default_credentials() -> dict[str, str]:
    from branchops.config import JenkinsSettings
    return dict(JenkinsSettings.model_fields["credentials"].default_factory())  # type: ignore[misc]


def credential_ids(config: BranchopsConfig) -> dict[str, str]:
    """The Jenkins credential ids config names (the schema's defaults when there is no Jenkins section)."""
    return dict(config.ci.jenkins.credentials) if config.ci.jenkins else default_credentials()


def discovered_branches(config: BranchopsConfig) -> list[str]:
    """The branches (and targets of pull requests) the job builds: main and the stage branches."""
    if config.branches.mode == "single-branch":
        names = [config.branches.main, config.branches.single_branch]
    else:
        names = [config.branches.main, *config.branches.stages.values()]
    return list(dict.fromkeys(names))


def job_parameters(config: BranchopsConfig) -> dict[str, str]:
    """The values :data:`JOB_TEMPLATE`'s placeholders take for this configuration."""
    settings = _jenkins_settings(config)
    github = config.forge.github
    if github is None:
        raise ConfigError("forge.github: the Jenkins job's branch source needs forge.github.repository "
                          "(owner/name) and the GitHub API URL")
    if settings.scan_interval not in SCAN_INTERVALS:
        raise ConfigError(f"ci.jenkins.scan_interval: '{settings.scan_interval}' is not an interval Jenkins "
                          f"offers for repository scans; use one of {', '.join(SCAN_INTERVALS)}")
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
        raise ConfigError(f"{template}: the job template is missing (it ships with the branchops layout)"
                          ) from None
    try:  # the digest changes when the renderer might
        from importlib.metadata import PackageNotFoundError, version
        jjb_version = version("jenkins-job-builder")
    except PackageNotFoundError:
        jjb_version = "not installed"
    digest = hashlib.sha256(json.dumps({"template": template_text, "params": params, "jjb": jjb_version},
                                       sort_keys=True).encode()).hexdigest()[:16]
    params["description"] = (f"branchops stages of {params['repo_owner']}/{params['repo']}. Provisioned "
                             "by `branchops jenkins sync` from config/branchops.yaml: change that, not "
                             f"this job. {DIGEST_MARKER}{digest}")
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
        raise ConfigError("rendering the Jenkins job needs jenkins-job-builder: "
                          "pip install 'branchops[jenkins]' (or jenkins-job-builder>=6)") from None
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


# -- the REST client ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyncResult:
    job: str  # full name, folders included
    outcome: Literal["created", "updated", "unchanged", "would create", "would update"]
    folders_created: tuple[str, ...] = ()
    url: str = ""


@dataclass(frozen=True)
class BranchBuild:
    branch: str          # the branch (or pull request, e.g. PR-12) as Jenkins shows it
    job: str             # the branch job's name inside the multibranch project
    number: int | None
    result: str | None   # SUCCESS, FAILURE, ABORTED, UNSTABLE, RUNNING, or None (never built)
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

    def __init__(self, settings: JenkinsSettings, *, server: Any = None, poll_interval_s: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep):
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
        parts = self.job_name.split("/")
        return self.settings.url.rstrip("/") + "/" + "".join(f"job/{_quote_segment(p)}/" for p in parts)

    @property
    def server(self) -> Any:
        if self._server is None:
            token = self.settings.token.resolve()
            if not token:
                raise ConfigError(f"ci.jenkins.token: no Jenkins API token ({self.settings.token.describe()});"
                                  f" create one for user '{self.settings.user}' under <jenkins>/me/configure")
            import jenkins
            self._server = jenkins.Jenkins(self.settings.url, username=self.settings.user, password=token,
                                           timeout=self.settings.timeout_s)
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
            raise ExternalError(f"Jenkins at {self.settings.url}: {what} timed out after "
                                f"{self.settings.timeout_s:g}s ({exc}); check the URL and "
                                "ci.jenkins.timeout_s") from None
        except jenkins.NotFoundException:
            raise ExternalError(f"Jenkins at {self.settings.url}: {what}: not found (404)") from None
        except jenkins.JenkinsException as exc:
            text = str(exc)
            hint = ""
            if "[401]" in text:
                hint = (f"; the user '{self.settings.user}' or its API token is wrong "
                        f"({self.settings.token.describe()})")
            elif "[403]" in text:
                hint = (f"; user '{self.settings.user}' lacks the permission (Job/Create, Job/Configure, "
                        "Job/Build, Job/Read on the folder) or the CSRF crumb was refused")
            first = text.splitlines()[0] if text else type(exc).__name__
            raise ExternalError(f"Jenkins at {self.settings.url}: {what} failed: {first}{hint}") from None
        except requests.RequestException as exc:
            raise ExternalError(f"Jenkins at {self.settings.url}: {what} failed: "
                                f"{type(exc).__name__}: {exc}") from None

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
                    raise ExternalError(f"Jenkins: '{path}' exists and is a {info.get('_class', 'job')}, "
                                        "not a folder; change ci.jenkins.folder")
                continue
            created.append(path)
            if dry_run:
                continue
            with self._calling(f"creating folder {path}"):
                self.server.create_folder(path)
            if self._info(path, f"reading folder {path}") is None:
                raise ExternalError(f"Jenkins: folder '{path}' was not created "
                                    "(is the Folders plugin installed?)")
            log.info("created Jenkins folder %s", path)
        return created

    def sync(self, job_xml: str, *, dry_run: bool = False, scan: bool = True) -> SyncResult:
        """Create the job or update its configuration; a job already at this definition is left alone.

        After a change the repository is scanned at once, so new branches appear without waiting for
        the periodic scan.
        """
        folders = self._ensure_folders(dry_run)
        name = self.job_name
        info = None if (dry_run and folders) else self._info(name, f"reading job {name}")
        wanted = job_digest(job_xml)
        if info is None:
            if dry_run:
                return SyncResult(name, "would create", tuple(folders), self.job_url)
            with self._calling(f"creating job {name}"):
                self.server.create_job(name, job_xml)
            outcome: Literal["created", "updated"] = "created"
        else:
            kind = info.get("_class", "")
            if kind != MULTIBRANCH_CLASS:
                raise ExternalError(f"Jenkins: '{name}' exists and is a {kind or 'different kind of item'}, "
                                    "not a multibranch pipeline; rename it or set ci.jenkins.job to another name")
            with self._calling(f"reading the configuration of {name}"):
                current = self.server.get_job_config(name)
            current_digest = job_digest(current)
            if current_digest is None:
                log.warning("job %s was not provisioned by branchops; its configuration is replaced", name)
            if wanted is not None and current_digest == wanted:
                return SyncResult(name, "unchanged", tuple(folders), self.job_url)
            if dry_run:
                return SyncResult(name, "would update", tuple(folders), self.job_url)
            with self._calling(f"updating job {name}"):
                self.server.reconfig_job(name, job_xml)
            outcome = "updated"
        if scan:
            self.trigger_scan()
        log.info("Jenkins job %s %s", name, outcome)
        return SyncResult(name, outcome, tuple(folders), self.job_url)

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
            raise ExternalError(f"Jenkins: job '{self.job_name}' does not exist; "
                                "run `branchops jenkins sync` first")
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
                rows.append(BranchBuild(branch, child_name, None, None, queued=reason is not None,
                                        queue_reason=reason))
                continue
            with self._calling(f"reading build {last['number']} of {full}"):
                build = self.server.get_build_info(full, last["number"])
            result = "RUNNING" if build.get("building") else build.get("result")
            started = build.get("timestamp")
            rows.append(BranchBuild(
                branch=branch, job=child_name, number=build.get("number", last["number"]), result=result,
                started_at=(datetime.fromtimestamp(started / 1000, tz=UTC).isoformat(timespec="seconds")
                            if started else None),
                duration_s=(build.get("duration") or 0) / 1000 if not build.get("building") else None,
                url=build.get("url") or last.get("url"), queued=reason is not None, queue_reason=reason))
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
                raise ExternalError(f"Jenkins: no job for branch '{branch}' in {self.job_name} "
                                    f"(known: {', '.join(unquote(k) for k in known) or 'none'}); "
                                    "is it a stage branch, and has the repository been scanned?")
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
                        raise ExternalError(f"Jenkins: build #{build} of branch '{branch}' "
                                            "does not exist") from None
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
    return JenkinsClient(_jenkins_settings(config), server=server)


def sync_job(config: BranchopsConfig, repo_root: str | Path = ".", *, client: JenkinsClient | None = None,
             dry_run: bool = False) -> SyncResult:
    """``branchops jenkins sync``: check the Jenkinsfile against config, render the job, provision it."""
    problems = check_jenkinsfile(config, repo_root)
    if problems:
        raise ConfigError("the Jenkinsfile does not match config/branchops.yaml; fix it before "
                          "provisioning:\n  " + "\n  ".join(problems))
    xml = render_job_xml(config, repo_root)
    return (client or make_client(config)).sync(xml, dry_run=dry_run)


# -- the Jenkinsfile ----------------------------------------------------------------------------------

@dataclass
class Block:
    """A ``header { ... }`` of a Groovy/declarative file: statements and nested blocks, in order."""

    header: str
    items: list[Block | str] = field(default_factory=list)

    @property
    def name(self) -> str:
        match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", self.header)
        return match.group(0) if match else ""

    @property
    def argument(self) -> str | None:
        match = re.match(r"[A-Za-z_]\w*\s*\(\s*'([^']*)'", self.header) or \
            re.match(r'[A-Za-z_]\w*\s*\(\s*"([^"]*)"', self.header)
        return match.group(1) if match else None

    def blocks(self, name: str | None = None) -> list[Block]:
        return [b for b in self.items if isinstance(b, Block) and (name is None or b.name == name)]

    def block(self, name: str) -> Block | None:
        found = self.blocks(name)
        return found[0] if found else None

    def statements(self) -> list[str]:
        return [s for s in self.items if isinstance(s, str)]

    def walk(self) -> Iterator[Block]:
        yield self
        for child in self.blocks():
            yield from child.walk()

    def text(self) -> str:
        """Everything inside, headers and statements, as one string (for searching)."""
        parts = [self.header]
        for item in self.items:
            parts.append(item.text() if isinstance(item, Block) else item)
        return "\n".join(parts)


def parse_groovy_blocks(text: str, source: str = "Jenkinsfile") -> Block:
    """Split Groovy source into nested blocks and statements; strings and comments are respected.

    Not a Groovy parser (Debian's groovy checks the syntax in CI): enough structure to read a
    declarative pipeline's sections and steps.
    """
    root = Block("<file>")
    stack = [root]
    buf: list[str] = []
    depth = 0  # () and [] nesting: newlines and braces inside them belong to the statement
    i, n, line = 0, len(text), 1

    def flush() -> None:
        text_ = "".join(buf)
        # One-line statements are normalised; multi-line ones (scripts) keep their layout.
        statement = " ".join(text_.split()) if "\n" not in text_ else text_.strip()
        if statement:
            stack[-1].items.append(statement)
        buf.clear()

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ConfigError(f"{source}:{line}: unterminated /* comment")
            line += text.count("\n", i, j)
            i = j + 2
            continue
        if c in "'\"":
            quote = text[i:i + 3] if text[i:i + 3] in ("'''", '"""') else c
            j = i + len(quote)
            while True:
                if j >= n:
                    raise ConfigError(f"{source}:{line}: unterminated string")
                if text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(quote, j):
                    j += len(quote)
                    break
                if len(quote) == 1 and text[j] == "\n":
                    raise ConfigError(f"{source}:{line}: newline in a single-line string")
                j += 1
            buf.append(text[i:j])
            line += text.count("\n", i, j)
            i = j
            continue
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"{source}:{line}: unbalanced '{c}'")
        if depth == 0 and c == "{":
            header = " ".join("".join(buf).split())
            buf.clear()
            block = Block(header)
            stack[-1].items.append(block)
            stack.append(block)
        elif depth == 0 and c == "}":
            flush()
            if len(stack) == 1:
                raise ConfigError(f"{source}:{line}: unbalanced '}}'")
            stack.pop()
        elif depth == 0 and c in "\n;":
            flush()
        else:
            buf.append(c)
        if c == "\n":
            line += 1
        i += 1
    flush()
    if len(stack) != 1 or depth != 0:
        raise ConfigError(f"{source}: unbalanced braces or brackets at the end of the file")
    return root


@dataclass(frozen=True)
class CredentialBinding:
    kind: str                 # usernamePassword, string, file, sshUserPrivateKey
    credentials_id: str
    variables: dict[str, str]  # role (variable, usernameVariable, passwordVariable) -> env name

    @property
    def secret_variable(self) -> str | None:
        return self.variables.get("passwordVariable") or self.variables.get("variable") \
            or self.variables.get("keyFileVariable")


@dataclass
class JenkinsfileModel:
    """What the checks need from a declarative Jenkinsfile."""

    agent_yaml_file: str | None
    options: list[str]
    timeout_s: int | None
    stages: list[str]
    bindings: list[CredentialBinding]
    exported: dict[str, str]   # NAME -> the bound variable it copies (inside the credentials block)
    run_commands: list[str]    # sh scripts that call `branchops run`
    run_stage_guarded: bool    # the stage that runs branchops sits behind `when { not { changeRequest() } }`
    run_inside_credentials: bool
    post_conditions: list[str]
    junit_patterns: list[str]
    junitxml_paths: list[str]
    archived: list[str]
    groovy_interpolated_secrets: list[str]  # double-quoted sh strings inside a credentials block
    traced_scripts: list[str]  # sh scripts inside a credentials block that Jenkins runs with `sh -xe`
    uses_set_x: bool


_BINDING = re.compile(r"\b(usernamePassword|string|file|sshUserPrivateKey)\s*\(([^()]*)\)")
_NAMED = re.compile(r"(\w+)\s*:\s*'([^']*)'")


def read_jenkinsfile(text: str, source: str = "Jenkinsfile") -> JenkinsfileModel:
    root = parse_groovy_blocks(text, source)
    pipeline = root.block("pipeline")
    if pipeline is None:
        raise ConfigError(f"{source}: no declarative `pipeline {{ ... }}` block")
    agent_text = pipeline.block("agent").text() if pipeline.block("agent") else ""
    yaml_file = re.search(r"yamlFile\s+'([^']+)'", agent_text)
    options_block = pipeline.block("options")
    options = options_block.statements() if options_block else []
    timeout = None
    for option in options:
        m = re.match(r"timeout\s*\(\s*time\s*:\s*(\d+)\s*,\s*unit\s*:\s*'(\w+)'", option)
        if m and m.group(2) in TIME_UNITS:
            timeout = int(m.group(1)) * TIME_UNITS[m.group(2)]
        elif re.match(r"timeout\s*\(\s*(\d+)\s*\)", option):  # minutes by default
            timeout = int(re.match(r"timeout\s*\(\s*(\d+)", option).group(1)) * 60
    stages_block = pipeline.block("stages")
    stages = [b for b in stages_block.blocks("stage")] if stages_block else []

    bindings: list[CredentialBinding] = []
    exported: dict[str, str] = {}
    run_commands: list[str] = []
    interpolated: list[str] = []
    traced: list[str] = []
    run_inside = False
    for block in pipeline.walk():
        if block.name != "withCredentials":
            continue
        for kind, args in _BINDING.findall(block.header):
            named = dict(_NAMED.findall(args))
            cred_id = named.pop("credentialsId", "")
            bindings.append(CredentialBinding(kind, cred_id, named))
        inner = block.text()[len(block.header):]
        exported.update(dict(re.findall(r'export\s+([A-Za-z_]\w*)="\$\{?([A-Za-z_]\w*)\}?"', inner)))
        for statement in [s for b in block.walk() for s in b.statements()]:
            if re.match(r'sh\s*\(?\s*(script\s*:\s*)?"', statement):
                interpolated.append(statement.splitlines()[0])
            # Jenkins runs an sh script with `-xe` (tracing every command, values expanded) unless
            # the script starts with its own #! line.
            script = re.match(r"sh\s*\(?\s*(?:script\s*:\s*)?('''|'|\"\"\"|\")", statement)
            if script and not statement[script.end():].startswith("#!"):
                traced.append(statement.splitlines()[0])
            if "branchops run" in statement:
                run_inside = True
    guarded = False
    for stage in stages:
        text_of_stage = stage.text()
        if "branchops run" in text_of_stage:
            run_commands += [line.strip() for line in text_of_stage.splitlines() if "branchops run" in line]
            when = stage.block("when")
            guarded = guarded or bool(when and "changeRequest" in when.text() and "not" in when.text())
    post = pipeline.block("post")
    post_conditions = [b.name for b in post.blocks()] if post else []
    everything = pipeline.text()
    return JenkinsfileModel(
        agent_yaml_file=yaml_file.group(1) if yaml_file else None,
        options=[re.match(r"\w*", o).group(0) for o in options],
        timeout_s=timeout,
        stages=[s.argument or "" for s in stages],
        bindings=bindings,
        exported=exported,
        run_commands=run_commands,
        run_stage_guarded=guarded,
        run_inside_credentials=run_inside,
        post_conditions=post_conditions,
        junit_patterns=re.findall(r"junit\b[^\n]*testResults\s*:\s*'([^']+)'", everything),
        junitxml_paths=re.findall(r"--junitxml[= ]([^\s'\"]+)", everything),
        archived=[p.strip() for a in re.findall(r"archiveArtifacts\b[^\n]*artifacts\s*:\s*'([^']+)'",
                                                everything) for p in a.split(",")],
        groovy_interpolated_secrets=interpolated,
        traced_scripts=traced,
        uses_set_x=bool(re.search(r"set\s+-[a-wyzA-Z]*x|set\s+-o\s+xtrace", everything)),
    )


def _secret_refs(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    from pydantic import BaseModel

    from branchops.config import SecretRef
    if isinstance(value, SecretRef):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_refs(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_refs(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_refs(item, f"{path}[{index}]")


def required_run_command() -> str:
    return 'branchops run --for-branch "$BRANCH_NAME"'


def check_jenkinsfile(config: BranchopsConfig, repo_root: str | Path = ".",
                      text: str | None = None) -> list[str]:
    """Every way the Jenkinsfile drifts from config or from the stage contract (empty: in step)."""
    path = Path(repo_root) / JENKINSFILE
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return [f"{path}: missing (it ships with the branchops layout)"]
    model = read_jenkinsfile(text, str(path))
    problems: list[str] = []

    if model.agent_yaml_file is None:
        problems.append("agent: expected `kubernetes { yamlFile 'jenkins/agent-pod.yaml' }`")
    elif not (Path(repo_root) / model.agent_yaml_file).is_file():
        problems.append(f"agent: yamlFile '{model.agent_yaml_file}' does not exist")
    for option in ("disableConcurrentBuilds", "timeout", "buildDiscarder", "timestamps"):
        if option not in model.options:
            problems.append(f"options: `{option}` is missing")
    training = config.training
    rounds = -(-len(training.experiments) // training.max_parallel_runs)
    needed = int(training.timeout_s * rounds + 1800)
    if model.timeout_s is not None and model.timeout_s < needed:
        problems.append(f"options: timeout {model.timeout_s}s is shorter than the training stage may take "
                        f"({rounds} round(s) of training.timeout_s={training.timeout_s:g}s plus 30 min); Jenkins "
                        "would kill the run before branchops can record its outcome")

    runs = [c for c in model.run_commands if required_run_command() in c]
    if not runs:
        problems.append(f"stages: no step runs `{required_run_command()}` "
                        "(the branch -> stage map lives in config)")
    if len(model.run_commands) != len(runs) or len(runs) > 1:
        problems.append("stages: `branchops run` must be called exactly once, as "
                        f"`{required_run_command()}`; found: {model.run_commands}")
    if runs and not model.run_inside_credentials:
        problems.append("stages: `branchops run` is not inside the withCredentials block")
    if runs and not model.run_stage_guarded:
        problems.append("stages: the stage running branchops must be skipped for pull requests "
                        "(`when { not { changeRequest() } }`)")

    wanted = credential_ids(config)
    bound = {b.credentials_id: b for b in model.bindings}
    for key, cred_id in wanted.items():
        binding = bound.get(cred_id)
        if binding is None:
            problems.append(f"credentials: ci.jenkins.credentials.{key} = '{cred_id}' is not bound by "
                            "withCredentials")
            continue
        kind = CREDENTIAL_KINDS.get(key)
        if kind and binding.kind != kind:
            problems.append(f"credentials: '{cred_id}' ({key}) is bound as {binding.kind}, expected {kind}")
        if binding.secret_variable != credential_env_name(cred_id):
            problems.append(f"credentials: '{cred_id}' must be bound to {credential_env_name(cred_id)} "
                            f"(branchops reads {{credential: {cred_id}}} there), not {binding.secret_variable}")
    for cred_id in sorted(set(bound) - set(wanted.values())):
        problems.append(f"credentials: the Jenkinsfile binds '{cred_id}', which ci.jenkins.credentials "
                        "does not name")

    available = {v for b in model.bindings for v in b.variables.values()} | set(model.exported)
    for where, ref in _secret_refs(config):
        if where.startswith(_NOT_USED_IN_BUILDS):
            continue
        if ref.credential and ref.credential not in bound:
            problems.append(f"{where}: {{credential: {ref.credential}}} is not bound in the Jenkinsfile; add it to "
                            "ci.jenkins.credentials and to withCredentials")
        elif ref.env and ref.env not in available:
            problems.append(f"{where}: {{env: {ref.env}}} is not set by the Jenkinsfile's "
                            "withCredentials block")

    for condition in ("always", "success", "failure"):
        if condition not in model.post_conditions:
            problems.append(f"post: `{condition}` is missing")
    if not model.junit_patterns:
        problems.append("post: no `junit` step publishes the test results")
    for report in model.junitxml_paths:
        if not any(fnmatch(report, pattern) for pattern in model.junit_patterns):
            problems.append(f"post: junit does not pick up {report}")
    if not any(fnmatch("records/x/y.json", p) for p in model.archived):
        problems.append("post: archiveArtifacts does not archive records/**")
    if model.uses_set_x:
        problems.append("shell tracing (`set -x`) would print the bound secrets")
    for statement in model.traced_scripts:
        problems.append("credentials: an sh script inside withCredentials without a #! line runs with "
                        f"`sh -xe`, whose trace prints the secrets; start it with #!/bin/bash: {statement}")
    for statement in model.groovy_interpolated_secrets:
        problems.append(f"credentials: a double-quoted sh string inside withCredentials lets Groovy interpolate "
                        f"secrets; use single quotes: {statement}")
    return problems
