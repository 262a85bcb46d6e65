"""Every GitHub call of GitHubForge, sent to Prism serving GitHub's official REST description.

Prism rejects any request that does not match the description (path, method, parameters, body) and
answers valid ones with the description's examples. So these tests show that (1) each request we send
is one GitHub documents, and (2) we parse the documented response shapes. They say nothing about
GitHub's behaviour over several calls: that is the fake's job (test_github_forge.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from branchops.config import SecretRef
from branchops.forge.base import MergeRequest

from .conftest import TOKEN_ENV, github_settings
from .prism import GITHUB_OPERATIONS, PrismGitHub

# Values from the examples in GitHub's description (components/examples/pull-request*, review, ...).
EXAMPLE_SOURCE, EXAMPLE_TARGET = "new-topic", "master"
EXAMPLE_MERGE_COMMIT = "e5bd3914e2e596debea16f433f57875b5b90bcd6"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


@pytest.fixture
def forge(prism_github: PrismGitHub, monkeypatch: pytest.MonkeyPatch) -> Any:
    from branchops.forge.github import GitHubForge

    monkeypatch.setenv(TOKEN_ENV, "test-prism-token-0000")
    prism_github.prefer.clear()
    return GitHubForge(github_settings(prism_github.url, retries=0), per_page=30,
                       seconds_between_requests=0, seconds_between_writes=0, backoff_factor=0)


@pytest.fixture
def calls(prism_github: PrismGitHub) -> Callable[[], list[str]]:
    """Asserts that everything sent since the test started was valid; returns 'METHOD path' of each."""
    mark = prism_github.mark()

    def check() -> list[str]:
        # Follow-up calls use the URLs in the description's examples (octocat/Hello-World).
        return [f"{e.method} {re.sub(r'^/repos/[^/]+/[^/]+', '/repos/R', e.path.split('?')[0])}"
                for e in prism_github.assert_valid(mark)]

    return check


def _assert_shape(mr: MergeRequest) -> None:
    assert mr.number > 0 and mr.source and mr.target and mr.author and len(mr.head_sha) == 40
    assert mr.state in ("open", "merged", "closed")
    assert mr.created_at.endswith("Z")


def test_get_reads_pull_request_and_reviews(forge, calls) -> None:
    mr = forge.get(1347)
    _assert_shape(mr)
    assert all(a.user and len(a.head_sha) == 40 and a.at for a in mr.approvals)
    assert calls() == ["GET /repos/R/pulls/1347", "GET /repos/R/pulls/1347/reviews"]


def test_find_open_and_update_existing(forge, calls) -> None:
    found = forge.find_open(EXAMPLE_SOURCE, EXAMPLE_TARGET)
    assert found is not None and (found.source, found.target) == (EXAMPLE_SOURCE, EXAMPLE_TARGET)
    mr, created = forge.open_merge_request(EXAMPLE_SOURCE, EXAMPLE_TARGET, "Deploy run 7", "**metrics**")
    assert not created
    _assert_shape(mr)
    assert "PATCH /repos/R/pulls/1347" in calls()


def test_open_merge_request_creates(forge, calls) -> None:
    mr, created = forge.open_merge_request("training", "deploy-model", "Deploy run 7", "**metrics**")
    assert created
    _assert_shape(mr)
    assert "POST /repos/R/pulls" in calls()


def test_list(forge, calls) -> None:
    for state in ("open", "merged", None):
        for mr in forge.list(state, target="training"):
            _assert_shape(mr)
    assert set(calls()) == {"GET /repos/R/pulls"}


def test_merged_request_for_commit(forge, calls) -> None:
    mr = forge.merged_request_for_commit(EXAMPLE_MERGE_COMMIT)
    assert mr is not None and mr.merge_commit == EXAMPLE_MERGE_COMMIT and mr.merged_by
    assert forge.merged_request_for_commit(SHA) is None
    assert calls()[0] == f"GET /repos/R/commits/{EXAMPLE_MERGE_COMMIT}/pulls"


def test_comment_and_status(forge, calls) -> None:
    forge.comment(1347, "## training\n| metric | value |\n|---|---|\n| accuracy | 0.61 |")
    forge.set_commit_status(SHA, "success", "d" * 200, context="branchops/training",
                            target_url="https://ci.example/job/1")
    forge.set_commit_status(SHA, "pending", "started")
    assert calls() == ["POST /repos/R/issues/1347/comments", f"POST /repos/R/statuses/{SHA}",
                       f"POST /repos/R/statuses/{SHA}"]


def test_ensure_branch_exists(forge, calls) -> None:
    assert forge.ensure_branch("training", "main") is False
    assert calls() == ["GET /repos/R/branches/training"]


def test_ensure_branch_creates(forge, calls, prism_github: PrismGitHub) -> None:
    prism_github.prefer[("GET", r"/repos/octo/hello/branches/training")] = "code=404"
    assert forge.ensure_branch("training", "main") is True
    assert calls() == ["GET /repos/R/branches/training", "GET /repos/R/branches/main",
                       "POST /repos/R/git/refs"]


@pytest.mark.parametrize("restrict_pushes", [True, False])
def test_protect_branch(forge, calls, prism_github: PrismGitHub, restrict_pushes: bool) -> None:
    forge.protect_branch("training", 2, "branchops/training", restrict_pushes,
                         require_code_owner_reviews=True, bypass_users=["branchops-bot"])
    assert calls()[-1] == "PUT /repos/R/branches/training/protection"
    body = prism_github.exchanges[-1].request_body
    assert body["required_pull_request_reviews"]["required_approving_review_count"] == 2


def test_ensure_webhook_updates_and_creates(forge, calls, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "hook-secret-value")
    ref = SecretRef(env="HOOK_SECRET")
    # The description's example hook points at https://example.com/webhook.
    _, created = forge.ensure_webhook("https://example.com/webhook", ref, ["push", "pull_request"])
    assert not created
    _, created = forge.ensure_webhook("https://jenkins.example/github-webhook/", ref, ["push"])
    assert created
    assert calls() == ["GET /repos/R/hooks", "PATCH /repos/R/hooks/12345678",
                       "GET /repos/R/hooks", "POST /repos/R/hooks"]


def test_ensure_file_creates(forge, calls, prism_github: PrismGitHub) -> None:
    prism_github.prefer[("GET", r"/repos/octo/hello/contents/\.github/CODEOWNERS")] = "code=404"
    assert forge.ensure_file("training", ".github/CODEOWNERS", "* @lead\n", "Set code owners") is True
    assert calls() == ["GET /repos/R/contents/.github/CODEOWNERS", "PUT /repos/R/contents/.github/CODEOWNERS"]
    assert prism_github.exchanges[-2].path.endswith("?ref=training")
    body = prism_github.exchanges[-1].request_body
    assert body == {"message": "Set code owners", "content": "KiBAbGVhZAo=", "branch": "training"}


def test_ensure_file_updates_with_the_blob_sha(forge, calls, prism_github: PrismGitHub) -> None:
    # The description's example file (octokit.rb's README.md, sha 3d21ec53...) differs from ours.
    assert forge.ensure_file("training", ".github/CODEOWNERS", "* @lead\n", "Set code owners") is True
    assert calls() == ["GET /repos/R/contents/.github/CODEOWNERS", "PUT /repos/R/contents/.github/CODEOWNERS"]
    body = prism_github.exchanges[-1].request_body
    assert body["sha"] == "3d21ec53a331a6f037a91c368710b99387d012c1" and body["branch"] == "training"


def test_check_token_permissions(forge, calls) -> None:
    missing = forge.check_token_permissions()
    assert isinstance(missing, list)
    assert calls() == ["GET /repos/R"]


def test_prism_rejects_a_request_github_would_reject(prism_github: PrismGitHub) -> None:
    """The harness can fail: a pull request without "head" is refused and reported as a violation."""
    import requests

    mark = prism_github.mark()
    response = requests.post(f"{prism_github.url}/repos/octo/hello/pulls", json={"title": "x", "base": "main"},
                             headers={"Authorization": "token test-prism-token-0000"}, timeout=30)
    assert response.status_code in (400, 422)
    with pytest.raises(AssertionError, match=r"request\.body: .*'head'"):
        prism_github.assert_valid(mark)


def test_every_listed_operation_was_exercised(prism_github: PrismGitHub, request: pytest.FixtureRequest) -> None:
    """The cut description holds no operation that no test sent (runs last in this module)."""
    selected = {item.nodeid for item in request.session.items if item.module is request.module}
    defined = {name for name in globals() if name.startswith("test_")}
    if {nodeid.split("::")[1].split("[")[0] for nodeid in selected} != defined:
        pytest.skip("needs every test of this module selected")
    # {path} (contents API) is GitHub's one multi-segment parameter among ours: .github/CODEOWNERS
    templates = {(m.upper(), re.sub(r"\{[^}]+\}", "[^/]+", t.replace("{path}", "(?:.+)")))
                 for t, ms in GITHUB_OPERATIONS.items() for m in ms}
    sent = {(e.method, e.path.split("?")[0]) for e in prism_github.exchanges}
    unused = sorted(f"{m} {t}" for m, t in templates if not any(sm == m and re.fullmatch(t, sp) for sm, sp in sent))
    assert not unused, f"operations listed in GITHUB_OPERATIONS but never sent by a test: {unused}"
