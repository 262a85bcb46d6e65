"""Every GitHub call of GitHubForge and GitHubAdmin, sent to Prism serving GitHub's official REST
description.

Prism rejects any request that does not match the description (path, method, parameters, body) and
answers valid ones with the description's examples. So these tests show that (1) each request we send
is one GitHub documents, and (2) we parse the documented response shapes. They say nothing about
GitHub's behaviour over several calls: that is for the tests against the fake (test_github_forge.py,
test_github_admin.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from branchops.config import SecretRef
from branchops.errors import ExternalError
from branchops.forge.base import Approval, MergeRequest

from .conftest import TOKEN_ENV, github_settings
from .prism import GITHUB_OPERATIONS, PrismGitHub, described_example

# Values from the examples in GitHub's description (components/examples/pull-request*, review, ...).
EXAMPLE_SOURCE, EXAMPLE_TARGET = "new-topic", "master"
EXAMPLE_MERGE_COMMIT = "e5bd3914e2e596debea16f433f57875b5b90bcd6"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
# components/examples/pull-request-review-items: octocat approved commit ecdd80bb...
EXAMPLE_APPROVAL = Approval(
    user="octocat", head_sha="ecdd80bb57125d7ba9641ffaa4d7d2c19d3f3091", at="2019-11-17T17:43:43Z"
)
# components/examples/branch-get: the tip of the branch asked for
EXAMPLE_BRANCH_TIP = "7fd1a60b01f91b314f59955a4e4d4e80d8edf11d"


@pytest.fixture
def on_prism(prism_github: PrismGitHub, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[type], Any]]:
    """Makes a GitHub client (GitHubForge, GitHubAdmin) that talks to Prism."""
    monkeypatch.setenv(TOKEN_ENV, "test-prism-token-0000")
    prism_github.prefer.clear()

    def connect(client_class: type) -> Any:
        return client_class(
            github_settings(prism_github.url, retries=0),
            per_page=30,
            seconds_between_requests=0,
            seconds_between_writes=0,
            backoff_factor=0,
        )

    yield connect
    prism_github.prefer.clear()  # the session's Prism answers the next test with the default examples


@pytest.fixture
def forge(on_prism: Callable[[type], Any]) -> Any:
    from branchops.forge.github import GitHubForge

    return on_prism(GitHubForge)


@pytest.fixture
def admin(on_prism: Callable[[type], Any]) -> Any:
    from branchops.forge.github_admin import GitHubAdmin

    return on_prism(GitHubAdmin)


@pytest.fixture
def calls(prism_github: PrismGitHub) -> Callable[[], list[str]]:
    """Asserts that everything sent since the test started was valid; returns 'METHOD path' of each."""
    mark = prism_github.mark()

    def check() -> list[str]:
        # Follow-up calls use the URLs in the description's examples (octocat/Hello-World).
        return [
            f"{e.method} {re.sub(r'^/repos/[^/]+/[^/]+', '/repos/R', e.path.split('?')[0])}"
            for e in prism_github.assert_valid(mark)
        ]

    return check


def _query(exchange: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(exchange.path).query).items()}


def test_get_reads_pull_request_and_reviews(forge, calls) -> None:
    mr = forge.get(1347)
    # components/examples/pull-request: merged_at is set (its "state" says "open", as a merged pull
    # request's never does; merged_at is what says it was merged), merged by octocat.
    assert mr == MergeRequest(
        number=1347,
        title="Amazing new feature",
        source=EXAMPLE_SOURCE,
        target=EXAMPLE_TARGET,
        author="octocat",
        state="merged",
        head_sha=SHA,
        body="Please pull these awesome changes in!",
        created_at="2011-01-26T19:01:12Z",
        merged_at="2011-01-26T19:01:12Z",
        merged_by="octocat",
        merge_commit=EXAMPLE_MERGE_COMMIT,
        approvals=[EXAMPLE_APPROVAL],
        url="https://github.com/octocat/Hello-World/pull/1347",
    )
    assert calls() == ["GET /repos/R/pulls/1347", "GET /repos/R/pulls/1347/reviews"]


def test_open_merge_request_finds_and_updates_the_open_one(forge, calls, prism_github: PrismGitHub) -> None:
    mark = prism_github.mark()
    mr, created = forge.open_merge_request(EXAMPLE_SOURCE, EXAMPLE_TARGET, "Deploy run 7", "**metrics**")
    assert (mr.number, created) == (1347, False)
    assert (mr.source, mr.target) == (EXAMPLE_SOURCE, EXAMPLE_TARGET)
    assert mr.approvals == [EXAMPLE_APPROVAL]
    lookup, patch = prism_github.since(mark)[:2]
    # GitHub's "head" filter is "user:ref-name"; a bare branch name would not filter at all.
    assert _query(lookup) == {"state": "open", "head": f"octo:{EXAMPLE_SOURCE}", "base": EXAMPLE_TARGET}
    assert (patch.method, patch.request_body) == ("PATCH", {"title": "Deploy run 7", "body": "**metrics**"})
    assert "PATCH /repos/R/pulls/1347" in calls()
    assert "POST /repos/R/pulls" not in calls()


def test_open_merge_request_creates(forge, calls, prism_github: PrismGitHub) -> None:
    # The example open pull request is new-topic -> master, so training -> deploy-model is not open yet.
    mark = prism_github.mark()
    mr, created = forge.open_merge_request("training", "deploy-model", "Deploy run 7", "**metrics**")
    assert created and mr.number == 1347
    [post] = [e for e in prism_github.since(mark) if e.method == "POST"]
    assert post.request_body == {
        "head": "training",
        "base": "deploy-model",
        "title": "Deploy run 7",
        "body": "**metrics**",
    }
    assert calls() == ["GET /repos/R/pulls", "POST /repos/R/pulls", "GET /repos/R/pulls/1347/reviews"]


def test_list(forge, calls, prism_github: PrismGitHub) -> None:
    # Every list answer is the example: #1347, merged (merged_at set). The forge asks GitHub for the
    # states it knows ("merged" is a closed pull request) and keeps only what was asked for.
    mark = prism_github.mark()
    listed = {
        state: [(mr.number, mr.state) for mr in forge.list(state, target="training")]
        for state in ("open", "merged", None)
    }
    assert listed == {"open": [], "merged": [(1347, "merged")], None: [(1347, "merged")]}
    assert [_query(e) for e in prism_github.since(mark)] == [
        {"state": "open", "base": "training"},
        {"state": "closed", "base": "training"},
        {"state": "all", "base": "training"},
    ]
    assert set(calls()) == {"GET /repos/R/pulls"}


def test_merged_request_for_commit(forge, calls, prism_github: PrismGitHub) -> None:
    mark = prism_github.mark()
    mr = forge.merged_request_into(EXAMPLE_TARGET, EXAMPLE_MERGE_COMMIT)
    assert mr is not None
    assert (mr.number, mr.state, mr.merge_commit, mr.merged_by) == (
        1347,
        "merged",
        EXAMPLE_MERGE_COMMIT,
        "octocat",
    )
    assert mr.approvals == [EXAMPLE_APPROVAL]
    # SHA is the example pull request's head: in it, but not what its merge produced.
    assert forge.merged_request_for_commit(SHA) is None
    assert calls() == [
        "GET /repos/R/pulls",
        "GET /repos/R/pulls/1347",
        "GET /repos/R/pulls/1347/reviews",
        "GET /repos/R/pulls",
    ]
    into, _, _, anywhere = prism_github.since(mark)
    by_update = {"state": "closed", "sort": "updated", "direction": "desc"}
    assert (_query(into), _query(anywhere)) == ({**by_update, "base": EXAMPLE_TARGET}, by_update)


def test_team_members(forge, calls, prism_github: PrismGitHub) -> None:
    # components/examples/team-member-items: octocat
    assert forge.team_members("@octo/ml-leads") == ["octocat"]
    assert calls() == ["GET /orgs/octo/teams/ml-leads/members"]


def test_file_link_is_on_the_repository_web_address(forge, calls) -> None:
    # components/examples/full-repository: html_url https://github.com/octocat/Hello-World
    link = forge.file_link("training", "records/training/r1/plots/roc curve.png")
    assert (
        link
        == "https://github.com/octocat/Hello-World/blob/training/records/training/r1/plots/roc%20curve.png?raw=true"
    )
    assert calls() == ["GET /repos/R"]


def test_comment_and_status(forge, calls, prism_github: PrismGitHub) -> None:
    mark = prism_github.mark()
    report = "## training\n| metric | value |\n|---|---|\n| accuracy | 0.61 |"
    forge.comment(1347, report)
    forge.set_commit_status(
        SHA, "success", "d" * 200, context="branchops/training", target_url="https://ci.example/job/1"
    )
    forge.set_commit_status(SHA, "pending", "started")
    assert calls() == [
        "POST /repos/R/issues/1347/comments",
        f"POST /repos/R/statuses/{SHA}",
        f"POST /repos/R/statuses/{SHA}",
    ]
    comment, success, pending = (e.request_body for e in prism_github.since(mark))
    assert comment == {"body": report}
    # GitHub refuses a status description over 140 characters ("description is too long").
    assert success == {
        "state": "success",
        "description": "d" * 139 + "…",
        "context": "branchops/training",
        "target_url": "https://ci.example/job/1",
    }
    assert pending == {"state": "pending", "description": "started", "context": "branchops"}


def test_ensure_branch_exists(admin, calls) -> None:
    assert admin.ensure_branch("training", "main") is False
    assert calls() == ["GET /repos/R/branches/training"]


def test_ensure_branch_creates(admin, calls, prism_github: PrismGitHub) -> None:
    prism_github.prefer[("GET", r"/repos/octo/hello/branches/training")] = "code=404"
    assert admin.ensure_branch("training", "main") is True
    assert calls() == [
        "GET /repos/R/branches/training",
        "GET /repos/R/branches/main",
        "POST /repos/R/git/refs",
    ]
    # GitHub's "ref" is the fully qualified name; the sha is main's tip as GitHub reported it.
    assert prism_github.exchanges[-1].request_body == {
        "ref": "refs/heads/training",
        "sha": EXAMPLE_BRANCH_TIP,
    }


@pytest.mark.parametrize(("bot", "actor_type"), [("branchops-bot", "User"), ("octoapp[bot]", "Integration")])
def test_protect_branch(admin, calls, prism_github: PrismGitHub, bot: str, actor_type: str) -> None:
    mark = prism_github.mark()
    # The example rulesets are someone else's: ours is created. The branch has the example classic
    # protection, which would refuse the bot: it is removed.
    outcome = admin.protect_branch(
        "training", 2, "branchops/training", True, require_code_owner_reviews=True, bypass_bot=bot
    )
    assert outcome == "created"
    lookup = "GET /apps/octoapp" if actor_type == "Integration" else "GET /users/branchops-bot"
    assert calls() == [
        lookup,
        "GET /repos/R/rulesets",
        "POST /repos/R/rulesets",
        "GET /repos/R/branches/training/protection",
        "DELETE /repos/R/branches/training/protection",
    ]
    exchanges = prism_github.since(mark)
    assert _query(exchanges[1]) == {"includes_parents": "false", "per_page": "100", "page": "1"}
    body = exchanges[2].request_body
    # the example user and app (components/examples/public-user-default-response, integration) are id 1
    assert body["bypass_actors"] == [{"actor_id": 1, "actor_type": actor_type, "bypass_mode": "always"}]
    assert (body["name"], body["target"], body["enforcement"]) == ("branchops: training", "branch", "active")
    assert body["conditions"] == {"ref_name": {"include": ["refs/heads/training"], "exclude": []}}
    rules = {rule["type"]: rule.get("parameters") for rule in body["rules"]}
    assert rules == {
        "deletion": None,
        "non_fast_forward": None,
        "pull_request": {
            "required_approving_review_count": 2,
            "dismiss_stale_reviews_on_push": True,
            "require_code_owner_review": True,
            "require_last_push_approval": False,
            "required_review_thread_resolution": False,
            "allowed_merge_methods": ["merge", "squash"],
        },
        "required_status_checks": {
            "strict_required_status_checks_policy": False,
            "required_status_checks": [{"context": "branchops/training"}],
        },
    }


def test_protect_branch_updates_its_ruleset(admin, calls, prism_github: PrismGitHub, monkeypatch) -> None:
    # Finding our ruleset by name is the fake's to test (the examples hold none of ours); here the update
    # itself: a PUT of the same body to the ruleset (the example's id, 42), valid by the description.
    prism_github.prefer[("GET", r"/repos/octo/hello/branches/training/protection")] = "code=404"
    monkeypatch.setattr(admin, "_ruleset_id", lambda name: 42)
    outcome = admin.protect_branch("training", 1, "branchops/training", False)
    assert outcome == "updated"
    assert calls() == ["PUT /repos/R/rulesets/42", "GET /repos/R/branches/training/protection"]
    body = prism_github.exchanges[-2].request_body
    # without restrict_pushes, repository administrators may push past as well
    assert body["bypass_actors"] == [{"actor_id": 5, "actor_type": "RepositoryRole", "bypass_mode": "always"}]


def test_ensure_webhook_updates_and_creates(
    admin, calls, prism_github: PrismGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "hook-secret-value")
    ref = SecretRef(env="HOOK_SECRET")
    mark = prism_github.mark()
    # The description's example hook (id 12345678) points at https://example.com/webhook.
    hook_id, created = admin.ensure_webhook("https://example.com/webhook", ref, ["push", "pull_request"])
    assert (hook_id, created) == (12345678, False)
    _, created = admin.ensure_webhook("https://jenkins.example/github-webhook/", ref, ["push"])
    assert created
    assert calls() == [
        "GET /repos/R/hooks",
        "PATCH /repos/R/hooks/12345678",
        "GET /repos/R/hooks",
        "POST /repos/R/hooks",
    ]
    _, patch, _, post = (e.request_body for e in prism_github.since(mark))
    # GitHub never returns a hook's secret, so it is sent on every update as well as on create.
    assert patch["config"] == {
        "url": "https://example.com/webhook",
        "content_type": "json",
        "secret": "hook-secret-value",
        "insecure_ssl": "0",
    }
    assert (patch["events"], patch["active"]) == (["push", "pull_request"], True)
    assert post["config"]["url"] == "https://jenkins.example/github-webhook/"
    assert post["config"]["secret"] == "hook-secret-value"
    assert (post["name"], post["events"], post["active"]) == ("web", ["push"], True)


def test_ensure_file_creates(admin, calls, prism_github: PrismGitHub) -> None:
    prism_github.prefer[("GET", r"/repos/octo/hello/contents/\.github/CODEOWNERS")] = "code=404"
    assert admin.ensure_file("training", ".github/CODEOWNERS", "* @lead\n", "Set code owners") is True
    assert calls() == ["GET /repos/R/contents/.github/CODEOWNERS", "PUT /repos/R/contents/.github/CODEOWNERS"]
    assert prism_github.exchanges[-2].path.endswith("?ref=training")
    body = prism_github.exchanges[-1].request_body
    assert body == {"message": "Set code owners", "content": "KiBAbGVhZAo=", "branch": "training"}


def test_ensure_file_updates_with_the_blob_sha(admin, calls, prism_github: PrismGitHub) -> None:
    # The description's example file (octokit.rb's README.md, sha 3d21ec53...) differs from ours.
    assert admin.ensure_file("training", ".github/CODEOWNERS", "* @lead\n", "Set code owners") is True
    assert calls() == ["GET /repos/R/contents/.github/CODEOWNERS", "PUT /repos/R/contents/.github/CODEOWNERS"]
    body = prism_github.exchanges[-1].request_body
    assert body["sha"] == "3d21ec53a331a6f037a91c368710b99387d012c1" and body["branch"] == "training"


def test_check_token_permissions(admin, calls) -> None:
    # Prism answers with components/examples/full-repository-default-response and no X-OAuth-Scopes
    # header (so: not a classic token, nothing to say about scopes). That example grants the token's
    # user read access only: pushing (pull requests, statuses, comments) and administering (branch
    # protection, webhooks; bootstrap only) are missing. Token scopes are varied against the fake
    # (test_github_admin.py), since Prism's answer has no headers to vary.
    assert described_example("full-repository-default-response")["permissions"] == {
        "pull": True,
        "push": False,
        "admin": False,
    }
    missing = admin.check_token_permissions()
    assert len(missing) == 2, missing
    assert "push (write) permission on octo/hello" in missing[0]
    assert "admin permission on octo/hello" in missing[1]
    assert admin.check_token_permissions(admin=False) == [missing[0]]  # without bootstrap: no admin needed
    assert calls() == ["GET /repos/R"]  # the repository is read once per client


@pytest.mark.parametrize("status", [403, 404])
def test_check_token_permissions_on_a_repository_the_token_cannot_read(
    admin, calls, prism_github: PrismGitHub, status: int
) -> None:
    # GitHub answers 404 for a private repository the token cannot see, 403 when it may not read it:
    # the check must fail loudly, naming what it was doing, not report a short list.
    prism_github.prefer[("GET", r"/repos/octo/hello")] = f"code={status}"
    with pytest.raises(
        ExternalError, match=rf"octo/hello: checking the token's permissions failed: HTTP {status}"
    ):
        admin.check_token_permissions()
    assert calls() == ["GET /repos/R"]


def test_prism_rejects_a_request_github_would_reject(prism_github: PrismGitHub) -> None:
    """The harness can fail: a pull request without "head" is refused and reported as a violation."""
    import requests

    mark = prism_github.mark()
    response = requests.post(
        f"{prism_github.url}/repos/octo/hello/pulls",
        json={"title": "x", "base": "main"},
        headers={"Authorization": "token test-prism-token-0000"},
        timeout=30,
    )
    assert response.status_code in (400, 422)
    with pytest.raises(AssertionError, match=r"request\.body: .*'head'"):
        prism_github.assert_valid(mark)


def test_prism_refuses_an_operation_that_is_not_listed(prism_github: PrismGitHub) -> None:
    """The harness can fail: a call to an operation missing from GITHUB_OPERATIONS is not served."""
    import requests

    mark = prism_github.mark()
    response = requests.get(
        f"{prism_github.url}/repos/octo/hello/collaborators",
        headers={"Authorization": "token test-prism-token-0000"},
        timeout=30,
    )
    assert response.status_code == 404
    assert prism_github.operation_of(prism_github.exchanges[-1]) is None
    with pytest.raises(AssertionError, match=r"GET /repos/octo/hello/collaborators -> 404"):
        prism_github.assert_valid(mark)


def test_every_listed_operation_was_exercised(
    forge, admin, prism_github: PrismGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every GitHubForge and GitHubAdmin call once: each operation in GITHUB_OPERATIONS is sent and Prism
    finds it valid, and nothing else is sent (an unlisted operation would get Prism's 404)."""
    monkeypatch.setenv("HOOK_SECRET", "hook-secret-value")
    prism_github.prefer[("GET", r"/repos/octo/hello/branches/training")] = "code=404"
    mark = prism_github.mark()

    forge.get(1347)
    forge.open_merge_request(EXAMPLE_SOURCE, EXAMPLE_TARGET, "Deploy run 7", "**metrics**")  # updates #1347
    forge.open_merge_request("training", "deploy-model", "Deploy run 7", "**metrics**")  # creates
    forge.list("open", target="training")
    forge.merged_request_for_commit(EXAMPLE_MERGE_COMMIT)
    forge.comment(1347, "**training** finished")
    forge.set_commit_status(SHA, "success", "done", context="branchops/training")
    admin.ensure_branch("training", "main")
    admin.protect_branch("training", 1, "branchops/training", True, bypass_bot="octoapp[bot]")
    admin.protect_branch("kf-pipeline", 1, "branchops/kf-pipeline", True, bypass_bot="branchops-bot")
    admin._ruleset_id = lambda name: 42  # the example ruleset: updated
    admin.protect_branch("deploy-model", 1, "branchops/deploy-model", True)
    forge.team_members("octo/ml-leads")
    admin.ensure_file("training", ".github/CODEOWNERS", "* @lead\n", "Set code owners")
    ref = SecretRef(env="HOOK_SECRET")
    admin.ensure_webhook("https://example.com/webhook", ref, ["push"])  # the example hook: updated
    admin.ensure_webhook("https://jenkins.example/github-webhook/", ref, ["push"])  # created
    admin.check_token_permissions()

    made = prism_github.assert_valid(mark)
    exercised = {prism_github.operation_of(e) for e in made}
    listed = {
        (method.upper(), template) for template, methods in GITHUB_OPERATIONS.items() for method in methods
    }
    assert exercised == listed, (
        f"listed but not sent: {sorted(listed - exercised)}; "
        f"sent but not listed: {sorted(map(str, exercised - listed))}"
    )
