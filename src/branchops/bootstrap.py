"""``branchops bootstrap``: set up a GitHub repository and its Jenkins job for the branch workflow.

For each stage branch: create it from main, give it a ``.github/CODEOWNERS`` naming the stage's
designated approvers, and protect it with a ruleset (a reviewed pull request, a review from a code owner,
Jenkins' pull-request check passing, stale approvals dismissed, merge or squash merges only; the bot may
push). Then the webhook to Jenkins, and the Jenkins multibranch job.

Every step is idempotent (the ``ensure_*``/PUT calls of ``branchops.forge.github_admin`` and the job
digest), so bootstrap is safe to run again after changing config. Before anything changes, every
precondition is checked — the GitHub token's permissions, the Jenkins API token, the webhook secret,
the Jenkinsfile against config, the job definition — and all problems are reported together.

Why a ruleset with the bot as its bypass actor: stages write their records back to their own branch as
the bot (docs/architecture.md §4). Classic branch protection lets nobody but administrators push past
required reviews and status checks, and a GitHub App never; a ruleset names who may (``bot.name``: the
login of the account whose token pushes, or ``<app-slug>[bot]`` for a GitHub App), and nobody else does,
administrators included. Humans push through reviewed pull requests; a direct push that still lands
starts nothing, because the approval gate of ``branchops run`` refuses it.

Why no rebase merges: a rebase lands each commit of a pull request on the stage branch and GitHub names
only the last one as the merge; the gate would take the others for direct pushes. A squash lands one
commit that GitHub names as the merge, which the gate judges by its pull request like a merge commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from branchops.ci.jenkins.client import JenkinsClient, make_client
from branchops.ci.jenkins.jenkinsfile import check_jenkinsfile
from branchops.ci.jenkins.job import PR_STATUS_CONTEXT, WEBHOOK_EVENTS, WEBHOOK_PATH, render_job_xml
from branchops.errors import BranchopsError, ConfigError, ExternalError
from branchops.gate import CODEOWNERS_PATH
from branchops.gitops import bot_message

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig, SecretRef

log = logging.getLogger(__name__)

ActionKind = Literal[
    "ensure-branch", "write-codeowners", "protect-branch", "ensure-webhook", "sync-jenkins-job"
]


class RepositoryAdmin(Protocol):
    """What bootstrap needs to set up the repository (``branchops.forge.github_admin.GitHubAdmin``
    provides it).

    ``ensure_file(branch, path, content, message) -> bool`` (True: committed, False: already so) is
    optional: without it, the CODEOWNERS content is reported for a manual commit.
    """

    def check_token_permissions(self) -> list[str]: ...

    def ensure_branch(self, branch: str, from_branch: str) -> bool: ...

    def protect_branch(
        self,
        branch: str,
        required_approvals: int,
        required_status_context: str,
        restrict_pushes: bool,
        *,
        require_code_owner_reviews: bool = False,
        bypass_bot: str | None = None,
    ) -> Any: ...

    def ensure_webhook(self, url: str, secret_ref: SecretRef, events: Sequence[str]) -> Any: ...


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    target: str  # branch, webhook URL or job name
    summary: str
    params: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ActionOutcome:
    action: Action
    outcome: str  # planned, created, updated, unchanged, done, would create, would update, manual
    detail: str = ""


@dataclass
class BootstrapReport:
    dry_run: bool
    repository: str
    outcomes: list[ActionOutcome] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # preflight findings (a real run refuses on any)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = f"bootstrap of {self.repository}" + (" (dry run: nothing changed)" if self.dry_run else "")
        out = [head]
        for problem in self.problems:
            out.append(f"  problem: {problem}")
        for item in self.outcomes:
            detail = f" — {item.detail}" if item.detail else ""
            out.append(f"  [{item.outcome}] {item.action.summary}{detail}")
        for warning in self.warnings:
            out.append(f"  warning: {warning}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "repository": self.repository,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "actions": [
                {
                    "kind": o.action.kind,
                    "target": o.action.target,
                    "summary": o.action.summary,
                    "outcome": o.outcome,
                    "detail": o.detail,
                }
                for o in self.outcomes
            ],
        }


# -- what to do ---------------------------------------------------------------------------------------


def stage_branches(config: BranchopsConfig) -> dict[str, list[str]]:
    """Each protected branch and the stages that run on it, in workflow order."""
    from branchops.config import STAGES

    branches: dict[str, list[str]] = {}
    for stage in STAGES:
        branches.setdefault(config.branch_for(stage), []).append(stage)
    return branches


def _github_owner(name: str) -> str:
    # Approvers are GitHub logins (alice) or teams (org/team); CODEOWNERS wants @alice, @org/team.
    # An e-mail address is a valid owner as it is.
    return name if name.startswith("@") or "@" in name else f"@{name}"


def codeowners_for(config: BranchopsConfig, branch: str) -> str:
    """``.github/CODEOWNERS`` for a stage branch: its designated approvers own every file.

    GitHub reads CODEOWNERS from a pull request's base branch, so each stage branch carries its own.
    """
    stages = stage_branches(config).get(branch)
    if not stages:
        raise ConfigError(f"'{branch}' is not a stage branch; CODEOWNERS is only written to stage branches")
    owners: list[str] = []
    for stage in stages:
        for approver in config.approvers[stage]:  # type: ignore[index]
            owner = _github_owner(approver)
            if owner not in owners:
                owners.append(owner)
    return (
        "# Generated by `branchops bootstrap` from config/branchops.yaml (approvers: "
        f"{', '.join(stages)}).\n"
        "# Edit the config and run bootstrap again, not this file. GitHub requires a review from one of\n"
        f"# these owners on every pull request into '{branch}'.\n"
        f"* {' '.join(owners)}\n"
    )


def codeowners_message(branch: str, marker: str) -> str:
    """The commit message of bootstrap's code owners commit. It carries the bot trailer: the commit sits on
    the stage branch between main and its first merge, and the gate (gate.is_own_commit) and the
    Jenkinsfile's bot-commit check must know it for branchops' own, not a direct push."""
    return bot_message(f"Set code owners of {branch} from config/branchops.yaml", "", marker)


def webhook_url(config: BranchopsConfig) -> str:
    if config.ci.jenkins is None:
        raise ConfigError("ci.jenkins: bootstrap provisions a Jenkins job; the Jenkins section is missing")
    return config.ci.jenkins.url.rstrip("/") + "/" + WEBHOOK_PATH


def plan_bootstrap(config: BranchopsConfig) -> list[Action]:
    """Every action bootstrap takes, in order; computed from config alone (no network)."""
    if config.forge.github is None:
        raise ConfigError(
            "forge.github: bootstrap sets up a GitHub repository; set forge.github.repository "
            "and forge.github.token"
        )
    settings = config.ci.jenkins
    if settings is None:
        raise ConfigError("ci.jenkins: bootstrap provisions a Jenkins job; the Jenkins section is missing")
    main = config.branches.main
    actions: list[Action] = []
    for branch, stages in stage_branches(config).items():
        if branch != main:
            actions.append(
                Action(
                    "ensure-branch",
                    branch,
                    f"create branch {branch} from {main} (if missing)",
                    {"from_branch": main},
                )
            )
        approvers = codeowners_for(config, branch).splitlines()[-1][2:]
        actions.append(
            Action(
                "write-codeowners",
                branch,
                f"write {CODEOWNERS_PATH} on {branch}: {approvers}",
                {"content": codeowners_for(config, branch)},
            )
        )
        actions.append(
            Action(
                "protect-branch",
                branch,
                f"protect {branch} (stage{'s' if len(stages) > 1 else ''} {', '.join(stages)}): pull request "
                "with 1 approval from a code owner, "
                f"stale approvals dismissed, status check '{PR_STATUS_CONTEXT}' required, merge or squash "
                f"merges only, no force-push or deletion; only {config.bot.name} pushes past it (records)",
                {
                    "required_approvals": 1,
                    "required_status_context": PR_STATUS_CONTEXT,
                    "restrict_pushes": True,
                    "require_code_owner_reviews": True,
                    "bypass_bot": config.bot.name,
                },
            )
        )
    actions.append(
        Action(
            "ensure-webhook",
            webhook_url(config),
            f"webhook to {webhook_url(config)} for {', '.join(WEBHOOK_EVENTS)} (signed)",
            {"events": list(WEBHOOK_EVENTS)},
        )
    )
    folder = (settings.folder or "").strip("/")
    job = f"{folder}/{settings.job}" if folder else settings.job
    actions.append(
        Action(
            "sync-jenkins-job",
            job,
            f"Jenkins multibranch job {job} at {settings.url} (folders created if missing), then a "
            "repository scan",
        )
    )
    return actions


# -- doing it -----------------------------------------------------------------------------------------


def _preflight(
    config: BranchopsConfig, admin: RepositoryAdmin, jenkins: JenkinsClient, repo_root: str | Path
) -> tuple[list[str], str | None]:
    """Every reason bootstrap would fail, found without changing anything; and the rendered job."""
    problems: list[str] = []
    settings = config.ci.jenkins
    assert settings is not None
    if settings.webhook_secret is None:
        problems.append(
            "ci.jenkins.webhook_secret: not set; GitHub signs webhook deliveries with it and Jenkins "
            "verifies them (credential github-webhook-secret in jenkins/casc.yaml)"
        )
    elif not settings.webhook_secret.resolve():
        problems.append(f"ci.jenkins.webhook_secret: no value ({settings.webhook_secret.describe()})")
    try:
        missing = admin.check_token_permissions()
        problems += [f"GitHub token lacks {m}" for m in missing]
    except BranchopsError as exc:
        problems.append(f"GitHub: {exc}")
    bypass_actor = getattr(admin, "bypass_actor", None)
    if bypass_actor is not None:
        try:
            bypass_actor(config.bot.name)  # the ruleset names it: it must be an account GitHub knows
        except BranchopsError as exc:
            problems.append(str(exc))
    try:
        jenkins.check()
    except BranchopsError as exc:
        problems.append(str(exc))
    problems += [f"Jenkinsfile: {p}" for p in check_jenkinsfile(config, repo_root)]
    job_xml = None
    try:
        job_xml = render_job_xml(config, repo_root)
    except BranchopsError as exc:
        problems.append(f"job definition: {exc}")
    return problems, job_xml


def _outcome_of(result: Any, created: str = "created", existing: str = "unchanged") -> str:
    if isinstance(result, bool):
        return created if result else existing
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], bool):  # (id, created)
        return created if result[1] else "updated"
    if isinstance(result, str):
        return result
    return "done"


def bootstrap(
    config: BranchopsConfig,
    dry_run: bool = False,
    *,
    admin: RepositoryAdmin | None = None,
    jenkins: JenkinsClient | None = None,
    repo_root: str | Path = ".",
) -> BootstrapReport:
    """Run (or, with ``dry_run``, only check and list) the plan of :func:`plan_bootstrap`.

    A real run refuses with an ExternalError listing every preflight problem before it changes
    anything; a dry run reports them alongside the plan.
    """
    actions = plan_bootstrap(config)
    github = config.forge.github
    assert github is not None and config.ci.jenkins is not None
    report = BootstrapReport(dry_run=dry_run, repository=github.repository)
    if admin is None:
        from branchops.forge.github_admin import GitHubAdmin

        try:
            admin = GitHubAdmin(github)
        except ConfigError as exc:
            if not dry_run:
                raise
            report.problems.append(str(exc))
    jenkins = jenkins or make_client(config)

    job_xml = None
    if admin is not None:
        problems, job_xml = _preflight(config, admin, jenkins, repo_root)
        report.problems += problems
    if report.problems and not dry_run:
        raise ExternalError("bootstrap changed nothing; fix these first:\n  " + "\n  ".join(report.problems))

    if admin is not None and not hasattr(admin, "ensure_file"):
        report.warnings.append(
            f"this forge cannot write files: commit each branch's {CODEOWNERS_PATH} shown "
            "by `branchops bootstrap --dry-run --json` yourself, before protecting it"
        )
    report.warnings.append(
        f"stage records are pushed past the stage branches' rulesets by {config.bot.name} (bot.name) only: "
        "it must be the account of the Jenkins github credential's token (for a GitHub App: "
        "<app-slug>[bot])"
    )

    for action in actions:
        if dry_run:
            outcome, detail = "planned", ""
            if action.kind == "sync-jenkins-job" and job_xml is not None:
                try:
                    outcome = jenkins.sync(job_xml, dry_run=True).outcome
                except BranchopsError as exc:
                    detail = f"could not read the current job: {exc}"
            report.outcomes.append(ActionOutcome(action, outcome, detail))
            continue
        assert admin is not None and job_xml is not None
        try:
            report.outcomes.append(_execute(action, config, admin, jenkins, job_xml))
        except BranchopsError as exc:
            done = "; ".join(f"{o.action.summary} [{o.outcome}]" for o in report.outcomes) or "nothing"
            raise ExternalError(
                f"bootstrap stopped at: {action.summary}: {exc}\n  already done (and kept, "
                f"a re-run continues from here): {done}"
            ) from None
    return report


def _execute(
    action: Action, config: BranchopsConfig, admin: RepositoryAdmin, jenkins: JenkinsClient, job_xml: str
) -> ActionOutcome:
    p = action.params
    if action.kind == "ensure-branch":
        return ActionOutcome(action, _outcome_of(admin.ensure_branch(action.target, p["from_branch"])))
    if action.kind == "write-codeowners":
        ensure_file = getattr(admin, "ensure_file", None)
        if ensure_file is None:
            return ActionOutcome(action, "manual", f"commit this to {CODEOWNERS_PATH}: {p['content']!r}")
        result = ensure_file(
            action.target,
            CODEOWNERS_PATH,
            p["content"],
            codeowners_message(action.target, config.bot.marker),
        )
        return ActionOutcome(action, _outcome_of(result, "written"))
    if action.kind == "protect-branch":
        result = admin.protect_branch(
            action.target,
            p["required_approvals"],
            p["required_status_context"],
            p["restrict_pushes"],
            require_code_owner_reviews=p["require_code_owner_reviews"],
            bypass_bot=p["bypass_bot"],
        )
        return ActionOutcome(action, _outcome_of(result, existing="done"))
    if action.kind == "ensure-webhook":
        assert config.ci.jenkins is not None and config.ci.jenkins.webhook_secret is not None
        result = admin.ensure_webhook(action.target, config.ci.jenkins.webhook_secret, p["events"])
        return ActionOutcome(action, _outcome_of(result))
    if action.kind == "sync-jenkins-job":
        result = jenkins.sync(job_xml)
        folders = ", ".join(result.folders_created)
        detail = f"folders created: {folders}" if folders else result.url
        return ActionOutcome(action, result.outcome, detail)
    raise AssertionError(action.kind)
