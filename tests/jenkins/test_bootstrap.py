"""`branchops bootstrap`: the plan, the dry run, idempotency and the preflight, with a recording admin
fake and the Jenkins REST fake (python-jenkins runs for real against it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from branchops.bootstrap import CODEOWNERS_PATH, bootstrap, codeowners_for, plan_bootstrap
from branchops.ci.jenkins.client import make_client
from branchops.ci.jenkins.job import PR_STATUS_CONTEXT
from branchops.errors import ConfigError, ExternalError

from .conftest import REPO_ROOT, WEBHOOK_SECRET_ENV, production_config
from .fake_jenkins import FakeJenkins

STAGE_BRANCHES = ["build-components", "kf-pipeline", "training", "deploy-model"]


@dataclass
class RecordingAdmin:
    """Follows GitHubAdmin's contract: ensure_* are idempotent and say whether they created."""

    branches: dict[str, str] = field(default_factory=lambda: {"main": "sha-main"})
    files: dict[tuple[str, str], str] = field(default_factory=dict)
    protections: dict[str, dict[str, Any]] = field(default_factory=dict)
    hooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    fail_on: str | None = None
    calls: list[str] = field(default_factory=list)

    def check_token_permissions(self) -> list[str]:
        self.calls.append("check_token_permissions")
        return list(self.missing)

    def ensure_branch(self, branch: str, from_branch: str) -> bool:
        self.calls.append(f"ensure_branch {branch}")
        if branch in self.branches:
            return False
        self.branches[branch] = self.branches[from_branch]
        return True

    def ensure_file(self, branch: str, path: str, content: str, message: str) -> bool:
        self.calls.append(f"ensure_file {branch}")
        if self.files.get((branch, path)) == content:
            return False
        self.files[(branch, path)] = content
        return True

    def protect_branch(
        self,
        branch: str,
        required_approvals: int,
        required_status_context: str,
        restrict_pushes: bool,
        *,
        require_code_owner_reviews: bool = False,
        bypass_bot: str | None = None,
    ) -> None:
        self.calls.append(f"protect_branch {branch}")
        if self.fail_on == branch:
            raise ExternalError(f"GitHub: protecting branch {branch} failed: 422")
        assert branch in self.branches, "protect an existing branch"
        assert (branch, CODEOWNERS_PATH) in self.files, "CODEOWNERS before protection"
        self.protections[branch] = {
            "approvals": required_approvals,
            "context": required_status_context,
            "restrict_pushes": restrict_pushes,
            "code_owners": require_code_owner_reviews,
            "bypass_bot": bypass_bot,
        }

    def ensure_webhook(self, url: str, secret_ref: Any, events: Sequence[str]) -> tuple[int, bool]:
        self.calls.append("ensure_webhook")
        secret = secret_ref.resolve()
        assert secret
        created = url not in self.hooks
        self.hooks[url] = {"events": list(events), "secret": secret}
        return len(self.hooks), created

    def mutations(self) -> list[str]:
        return [c for c in self.calls if c != "check_token_permissions"]


def run(fake: FakeJenkins, admin: RecordingAdmin, dry_run: bool = False, **overrides):
    config = production_config(fake.url, **overrides)
    return bootstrap(config, dry_run, admin=admin, jenkins=make_client(config), repo_root=REPO_ROOT)


def test_the_plan_lists_every_action_in_order() -> None:
    actions = plan_bootstrap(production_config("https://jenkins.example.com/"))
    kinds = [(a.kind, a.target) for a in actions]
    expected = []
    for branch in STAGE_BRANCHES:
        expected += [("ensure-branch", branch), ("write-codeowners", branch), ("protect-branch", branch)]
    expected += [
        ("ensure-webhook", "https://jenkins.example.com/github-webhook/"),
        ("sync-jenkins-job", "ml/djia/branchops"),
    ]
    assert sorted(kinds) == sorted(expected)
    assert kinds[-2:] == expected[-2:]
    for branch in STAGE_BRANCHES:  # each branch: created, then owned, then protected
        order = [k for k, t in kinds if t == branch]
        assert order == ["ensure-branch", "write-codeowners", "protect-branch"]
    protect = next(a for a in actions if a.kind == "protect-branch" and a.target == "training")
    assert protect.params == {
        "required_approvals": 1,
        "required_status_context": PR_STATUS_CONTEXT,
        "restrict_pushes": True,
        "require_code_owner_reviews": True,
        "bypass_bot": "branchops-bot",
    }
    assert "@lead @head-of-ds" in next(
        a.summary for a in actions if a.kind == "write-codeowners" and a.target == "training"
    )


def test_codeowners_names_the_stage_approvers_as_github_owners() -> None:
    config = production_config(
        approvers={
            "build-components": ["alice", "@acme/ml-leads"],
            "kf-pipeline": ["bob@example.com"],
            "training": ["carol"],
            "deploy-model": ["dave", "alice"],
        }
    )
    assert codeowners_for(config, "build-components").splitlines()[-1] == "* @alice @acme/ml-leads"
    assert codeowners_for(config, "kf-pipeline").splitlines()[-1] == "* bob@example.com"
    assert codeowners_for(config, "deploy-model").splitlines()[-1] == "* @dave @alice"
    with pytest.raises(ConfigError, match="'ds1' is not a stage branch"):
        codeowners_for(config, "ds1")


def test_single_branch_mode_protects_one_branch_owned_by_every_approver() -> None:
    config = production_config(branches={"mode": "single-branch", "single_branch": "main"})
    actions = plan_bootstrap(config)
    assert [(a.kind, a.target) for a in actions][:2] == [
        ("write-codeowners", "main"),
        ("protect-branch", "main"),
    ]
    assert not any(a.kind == "ensure-branch" for a in actions)
    assert codeowners_for(config, "main").splitlines()[-1] == "* @lead @head-of-ds"


def test_dry_run_lists_everything_and_changes_nothing(fake_jenkins: FakeJenkins) -> None:
    admin = RecordingAdmin()
    report = run(fake_jenkins, admin, dry_run=True)

    assert report.problems == []
    assert admin.mutations() == [] and fake_jenkins.posts() == []
    outcomes = {(o.action.kind, o.action.target): o.outcome for o in report.outcomes}
    assert len(outcomes) == 14
    assert outcomes[("sync-jenkins-job", "ml/djia/branchops")] == "would create"
    assert {v for k, v in outcomes.items() if k[0] != "sync-jenkins-job"} == {"planned"}
    text = "\n".join(report.lines())
    assert "dry run: nothing changed" in text and "github-webhook/" in text


def test_a_real_run_sets_everything_up_and_a_second_run_changes_nothing(fake_jenkins: FakeJenkins) -> None:
    admin = RecordingAdmin()
    first = run(fake_jenkins, admin)

    assert set(admin.branches) == {"main", *STAGE_BRANCHES}
    assert admin.files[("deploy-model", CODEOWNERS_PATH)].endswith("* @head-of-ds\n")
    assert admin.protections["training"] == {
        "approvals": 1,
        "context": PR_STATUS_CONTEXT,
        "restrict_pushes": True,
        "code_owners": True,
        "bypass_bot": "branchops-bot",
    }
    hook_url = fake_jenkins.url + "github-webhook/"
    assert admin.hooks[hook_url] == {"events": ["push", "pull_request"], "secret": "webhook-secret-value-42"}
    assert fake_jenkins.item("ml/djia/branchops") is not None
    assert {o.outcome for o in first.outcomes if o.action.kind == "ensure-branch"} == {"created"}
    assert {o.outcome for o in first.outcomes if o.action.kind == "write-codeowners"} == {"written"}
    assert next(o.outcome for o in first.outcomes if o.action.kind == "sync-jenkins-job") == "created"
    state = (dict(admin.branches), dict(admin.files), dict(admin.protections), dict(admin.hooks))
    job_xml = fake_jenkins.item("ml/djia/branchops").config_xml

    second = run(fake_jenkins, admin)

    assert (admin.branches, admin.files, admin.protections, admin.hooks) == state
    assert fake_jenkins.item("ml/djia/branchops").config_xml == job_xml
    outcomes = {(o.action.kind, o.action.target): o.outcome for o in second.outcomes}
    assert {outcomes[("ensure-branch", b)] for b in STAGE_BRANCHES} == {"unchanged"}
    assert {outcomes[("write-codeowners", b)] for b in STAGE_BRANCHES} == {"unchanged"}
    assert outcomes[("ensure-webhook", hook_url)] == "updated"
    assert outcomes[("sync-jenkins-job", "ml/djia/branchops")] == "unchanged"
    assert len(admin.hooks) == 1


def test_missing_permissions_are_reported_before_anything_changes(
    fake_jenkins: FakeJenkins, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = RecordingAdmin(missing=["admin permission on acme/djia-mlops (branch protection, webhooks)"])
    monkeypatch.delenv(WEBHOOK_SECRET_ENV)
    monkeypatch.setenv("BRANCHOPS_TEST_JENKINS_TOKEN", "wrong")
    with pytest.raises(ExternalError) as err:
        run(fake_jenkins, admin)
    message = str(err.value)
    assert message.startswith("bootstrap changed nothing")
    assert "GitHub token lacks admin permission on acme/djia-mlops" in message
    assert f"ci.jenkins.webhook_secret: no value (env {WEBHOOK_SECRET_ENV}: not set)" in message
    assert "401" in message
    assert admin.mutations() == [] and fake_jenkins.posts() == []

    report = run(fake_jenkins, admin, dry_run=True)  # a dry run shows the same problems with the plan
    assert len(report.problems) == 3 and len(report.outcomes) == 14


def test_a_drifted_jenkinsfile_stops_bootstrap_before_any_change(fake_jenkins: FakeJenkins) -> None:
    admin = RecordingAdmin()
    with pytest.raises(ExternalError, match="Jenkinsfile: credentials: ci.jenkins.credentials.kubeflow"):
        run(
            fake_jenkins,
            admin,
            ci={
                "jenkins": {
                    "credentials": {
                        "github": "github-token",
                        "kaggle": "kaggle-api",
                        "registry": "registry-push",
                        "kubeconfig": "kubeconfig",
                        "kubeflow": "kfp",
                    }
                }
            },
        )
    assert admin.mutations() == []


def test_a_failure_midway_says_what_was_done_and_a_rerun_completes(fake_jenkins: FakeJenkins) -> None:
    admin = RecordingAdmin(fail_on="training")
    with pytest.raises(ExternalError) as err:
        run(fake_jenkins, admin)
    message = str(err.value)
    assert "bootstrap stopped at: protect training" in message
    assert "protect kf-pipeline" in message and "[done]" in message
    assert "training" in admin.branches and "training" not in admin.protections
    assert fake_jenkins.item("ml/djia/branchops") is None

    admin.fail_on = None
    run(fake_jenkins, admin)
    assert set(admin.protections) == set(STAGE_BRANCHES)


def test_without_a_file_writer_codeowners_is_a_manual_step(fake_jenkins: FakeJenkins) -> None:
    class NoFiles(RecordingAdmin):
        def protect_branch(self, branch, *args, **kwargs):  # CODEOWNERS is committed by hand here
            self.files[(branch, CODEOWNERS_PATH)] = "by hand"
            return super().protect_branch(branch, *args, **kwargs)

    admin = NoFiles()
    NoFiles.ensure_file = property(lambda self: (_ for _ in ()).throw(AttributeError("ensure_file")))
    try:
        report = run(fake_jenkins, admin)
    finally:
        del NoFiles.ensure_file
    manual = [o for o in report.outcomes if o.action.kind == "write-codeowners"]
    assert {o.outcome for o in manual} == {"manual"} and "* @head-of-ds" in manual[-1].detail
    assert any("cannot write files" in w for w in report.warnings)


def test_bootstrap_needs_github_and_jenkins_sections() -> None:
    with pytest.raises(ConfigError, match="forge.github"):
        plan_bootstrap(production_config(forge={"backend": "local", "github": None}))
    with pytest.raises(ConfigError, match="ci.jenkins"):
        plan_bootstrap(production_config(ci={"backend": "local", "jenkins": None}))
