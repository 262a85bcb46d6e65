"""bootstrap through the real GitHubAdmin (PyGithub) and python-jenkins, each against its REST fake.

Both are fakes at the HTTP boundary (tests/forge_github/fake_github.py, tests/jenkins/fake_jenkins.py):
this checks that bootstrap drives the real clients with the right calls, twice, without duplicates.
The admin's requests themselves are checked against GitHub's OpenAPI description with Prism in
tests/forge_github.
"""

from __future__ import annotations

import pytest

from branchops.bootstrap import CODEOWNERS_PATH, bootstrap, codeowners_for
from branchops.ci.jenkins.client import make_client
from branchops.ci.jenkins.job import PR_STATUS_CONTEXT
from branchops.errors import ExternalError
from tests.forge_github.fake_github import FakeGitHub

from .conftest import REPO_ROOT, production_config
from .fake_jenkins import FakeJenkins

# forge.github.token is {credential: github-token}, as in production: Jenkins binds it to this variable.
TOKEN_ENV = "BRANCHOPS_CRED_GITHUB_TOKEN"


BOT_ID = 4242  # bot.name in config/branchops.yaml is branchops-bot: the GitHub user whose token pushes


@pytest.fixture
def fake_github(monkeypatch: pytest.MonkeyPatch):
    with FakeGitHub("acme/djia-mlops") as fake:
        monkeypatch.setenv(TOKEN_ENV, fake.token)
        fake.users.update({"branchops-bot": BOT_ID, "lead": 7, "ds1": 8})
        fake.admins.add("lead")
        yield fake


def ruleset_of(fake: FakeGitHub, branch: str) -> dict:
    [ruleset] = [
        r for r in fake.rulesets.values() if f"refs/heads/{branch}" in r["conditions"]["ref_name"]["include"]
    ]
    return ruleset


def run(fake_github, fake_jenkins: FakeJenkins, dry_run: bool = False, **overrides):
    from branchops.forge.github_admin import GitHubAdmin

    config = production_config(
        fake_jenkins.url,
        forge={"github": {"base_url": fake_github.url, "timeout_s": 5, "retries": 0}},
        **overrides,
    )
    admin = GitHubAdmin(
        config.forge.github, seconds_between_requests=0, seconds_between_writes=0, backoff_factor=0
    )
    return bootstrap(config, dry_run, admin=admin, jenkins=make_client(config), repo_root=REPO_ROOT)


def test_bootstrap_with_the_real_clients_is_idempotent(fake_github, fake_jenkins: FakeJenkins) -> None:
    report = run(fake_github, fake_jenkins, dry_run=True)
    assert report.problems == []
    assert set(fake_github.branches) == {"main"} and fake_github.hooks == {} and fake_jenkins.posts() == []
    assert not [r for r in fake_github.requests if r.method != "GET"]

    run(fake_github, fake_jenkins)

    stage_branches = {"build-components", "kf-pipeline", "training", "deploy-model"}
    assert set(fake_github.branches) == {"main"} | stage_branches
    created_at = {
        r.body["sha"] for r in fake_github.requests if r.method == "POST" and r.path.endswith("/git/refs")
    }
    assert created_at == {"a" * 40}  # every stage branch starts at main's tip
    assert len(fake_github.rulesets) == len(stage_branches) and fake_github.protections == {}
    ruleset = ruleset_of(fake_github, "training")
    assert (ruleset["name"], ruleset["enforcement"]) == ("branchops: training", "active")
    rules = {rule["type"]: rule.get("parameters") for rule in ruleset["rules"]}
    assert rules["required_status_checks"]["required_status_checks"] == [{"context": PR_STATUS_CONTEXT}]
    reviews = rules["pull_request"]
    assert reviews["required_approving_review_count"] == 1 and reviews["require_code_owner_review"] is True
    assert reviews["dismiss_stale_reviews_on_push"] is True
    assert reviews["allowed_merge_methods"] == ["merge", "squash"]  # no rebase: see bootstrap.py
    assert {"deletion", "non_fast_forward"} <= set(rules)
    assert ruleset["bypass_actors"] == [{"actor_id": BOT_ID, "actor_type": "User", "bypass_mode": "always"}]
    (hook,) = fake_github.hooks.values()
    assert hook["config"]["url"] == fake_jenkins.url + "github-webhook/"
    assert set(hook["events"]) == {"push", "pull_request"} and hook["config"]["secret"]
    assert fake_jenkins.item("ml/djia/branchops") is not None

    # Each stage branch carries its own CODEOWNERS (one commit each, on that branch only), written
    # before the branch was protected.
    config = production_config(fake_jenkins.url)
    for branch in stage_branches:
        assert fake_github.files(branch) == {CODEOWNERS_PATH: codeowners_for(config, branch).encode()}
    assert fake_github.files("main") == {}
    writes = [
        i
        for i, r in enumerate(fake_github.requests)
        if r.method == "PUT" and r.path.endswith("/contents/.github/CODEOWNERS")
    ]
    assert sorted(fake_github.requests[i].body["branch"] for i in writes) == sorted(stage_branches)
    for i in writes:
        branch = fake_github.requests[i].body["branch"]
        protect = next(
            j for j, r in enumerate(fake_github.requests) if r.path.endswith(f"/{branch}/protection")
        )
        assert i < protect
    assert {o.outcome for o in report.outcomes if o.action.kind == "write-codeowners"} == {"planned"}

    heads = dict(fake_github.branches)
    second = run(fake_github, fake_jenkins)

    assert fake_github.branches == heads  # nothing committed again
    assert {o.outcome for o in second.outcomes if o.action.kind == "write-codeowners"} == {"unchanged"}
    assert len(fake_github.hooks) == 1
    assert len([r for r in fake_github.requests if r.method == "POST" and r.path.endswith("/git/refs")]) == 4
    assert len(fake_github.rulesets) == 4  # updated, not duplicated
    assert {o.outcome for o in second.outcomes if o.action.kind == "protect-branch"} == {"updated"}
    assert next(o.outcome for o in second.outcomes if o.action.kind == "sync-jenkins-job") == "unchanged"


def test_changed_approvers_update_codeowners_on_their_branch_only(
    fake_github, fake_jenkins: FakeJenkins
) -> None:
    run(fake_github, fake_jenkins)
    before = dict(fake_github.branches)
    approvers = dict(production_config(fake_jenkins.url).approvers)
    approvers["training"] = ["carol", "@acme/ml-leads"]

    report = run(fake_github, fake_jenkins, approvers=approvers)

    outcomes = {o.action.target: o.outcome for o in report.outcomes if o.action.kind == "write-codeowners"}
    assert outcomes == {
        "build-components": "unchanged",
        "kf-pipeline": "unchanged",
        "training": "written",
        "deploy-model": "unchanged",
    }
    assert fake_github.files("training")[CODEOWNERS_PATH].decode().endswith("\n* @carol @acme/ml-leads\n")
    assert {b for b in fake_github.branches if fake_github.branches[b] != before[b]} == {"training"}


# -- the bot's record pushes ----------------------------------------------------------------------------


@pytest.mark.parametrize("bot", ["user", "app"])
def test_the_bot_may_push_records_to_every_stage_branch_and_nobody_else(
    fake_github, fake_jenkins: FakeJenkins, bot: str
) -> None:
    # Neither the bot user nor the GitHub App is a repository administrator: the rules must name them.
    if bot == "app":
        fake_github.apps["djia-records"] = 99
        run(fake_github, fake_jenkins, bot={"name": "djia-records[bot]"})
    else:
        run(fake_github, fake_jenkins)

    for branch in ("build-components", "kf-pipeline", "training", "deploy-model"):
        if bot == "app":
            assert fake_github.push_allowed(branch, "djia-records", app=True), branch
        else:
            assert fake_github.push_allowed(branch, "branchops-bot"), branch
        assert not fake_github.push_allowed(branch, "ds1")
        assert not fake_github.push_allowed(branch, "lead")  # administrators too: pull requests only
    if bot == "app":
        actors = ruleset_of(fake_github, "training")["bypass_actors"]
        assert actors == [{"actor_id": 99, "actor_type": "Integration", "bypass_mode": "always"}]


def test_classic_protection_from_an_earlier_bootstrap_is_replaced(
    fake_github, fake_jenkins: FakeJenkins
) -> None:
    # What bootstrap used to set: classic protection, which refuses a bot that is no administrator.
    run(fake_github, fake_jenkins)
    for branch in ("training", "deploy-model"):
        fake_github.protections[branch] = {
            "required_status_checks": {"strict": False, "contexts": [PR_STATUS_CONTEXT]},
            "enforce_admins": False,
            "required_pull_request_reviews": {"required_approving_review_count": 1},
        }
    assert not fake_github.push_allowed("training", "branchops-bot")

    run(fake_github, fake_jenkins)

    assert fake_github.protections == {}
    assert fake_github.push_allowed("training", "branchops-bot")
    assert len(fake_github.calls("DELETE", r".*/branches/[^/]+/protection")) == 2


def test_a_bot_github_does_not_know_stops_bootstrap_before_any_change(
    fake_github, fake_jenkins: FakeJenkins
) -> None:
    with pytest.raises(ExternalError) as err:
        run(fake_github, fake_jenkins, bot={"name": "djia-records[bot]"})  # no such app
    assert "bot.name: GitHub knows no app 'djia-records'" in str(err.value)
    assert [r for r in fake_github.requests if r.method != "GET"] == []
