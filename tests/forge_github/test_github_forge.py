"""GitHubForge's logic against a stateful fake of GitHub's REST API (PyGithub runs unchanged).

What GitHub itself accepts is checked separately, against Prism and GitHub's official description
(test_github_prism.py). These tests check our decisions: which review counts, which pull request a
merge commit came from, no duplicates, retries, rate limits, errors.
"""

from __future__ import annotations

import logging
import time

import pytest

from branchops.errors import ConfigError, ExternalError
from branchops.forge.base import Approval

from .conftest import TOKEN_ENV
from .fake_github import FakeGitHub

SHA_A = "a1" * 20
SHA_B = "b2" * 20
MERGE = "c3" * 20


def test_latest_review_per_user_counts(fake_github: FakeGitHub, make_forge) -> None:
    n = fake_github.add_pull("ds1", "build-components", head_sha=SHA_A)
    fake_github.review(n, "lead", "APPROVED", submitted_at="2026-01-02T10:00:00Z")
    fake_github.review(n, "lead", "CHANGES_REQUESTED", submitted_at="2026-01-02T11:00:00Z")
    fake_github.review(n, "head", "APPROVED", submitted_at="2026-01-02T12:00:00Z")
    fake_github.review(
        n, "head", "COMMENTED", submitted_at="2026-01-02T13:00:00Z"
    )  # leaves approval standing
    fake_github.review(n, "other", "APPROVED", submitted_at="2026-01-02T09:00:00Z")
    fake_github.review(n, "other", "DISMISSED", submitted_at="2026-01-02T14:00:00Z")

    mr = make_forge().get(n)

    assert mr.approvals == [Approval(user="head", head_sha=SHA_A, at="2026-01-02T12:00:00Z")]
    assert (mr.source, mr.target, mr.author, mr.state, mr.head_sha) == (
        "ds1",
        "build-components",
        "ds1",
        "open",
        SHA_A,
    )


def test_reapproval_after_changes_requested_counts(fake_github: FakeGitHub, make_forge) -> None:
    n = fake_github.add_pull("ds1", "training", head_sha=SHA_A)
    fake_github.review(n, "lead", "CHANGES_REQUESTED", submitted_at="2026-01-02T10:00:00Z")
    fake_github.review(n, "lead", "APPROVED", submitted_at="2026-01-02T11:00:00Z")
    assert [a.user for a in make_forge().get(n).approvals] == ["lead"]


def test_approval_before_last_push_keeps_its_commit(fake_github: FakeGitHub, make_forge) -> None:
    n = fake_github.add_pull("ds1", "training", head_sha=SHA_A)
    fake_github.review(n, "lead", "APPROVED")
    fake_github.push(n, SHA_B)

    mr = make_forge().get(n)

    assert mr.head_sha == SHA_B
    assert [(a.user, a.head_sha) for a in mr.approvals] == [("lead", SHA_A)]  # the gate refuses it


def test_merged_request_for_commit_picks_the_merge_not_a_containing_pr(
    fake_github: FakeGitHub, make_forge
) -> None:
    # Both pull requests contain SHA_A; only #2 was merged as MERGE.
    first = fake_github.add_pull("ds2", "training", head_sha=SHA_A)
    second = fake_github.add_pull("ds1", "training", head_sha=SHA_A)
    fake_github.review(second, "lead", "APPROVED")
    fake_github.merge(second, by="lead", merge_sha=MERGE)
    fake_github.merge(first, by="lead", merge_sha=SHA_B)
    forge = make_forge()

    mr = forge.merged_request_for_commit(MERGE)

    assert mr is not None and mr.number == second
    assert (mr.state, mr.merged_by, mr.merge_commit) == ("merged", "lead", MERGE)
    assert [a.user for a in mr.approvals] == ["lead"]
    assert forge.merged_request_for_commit(SHA_A) is None  # in a merged PR, but not its merge commit
    assert forge.merged_request_for_commit("d4" * 20) is None  # a direct push


def test_merged_request_found_while_github_has_not_linked_the_commit_yet(
    fake_github: FakeGitHub, make_forge
) -> None:
    n = fake_github.add_pull("ds1", "training", head_sha=SHA_A)
    fake_github.merge(n, by="lead", merge_sha=MERGE)
    fake_github.association_lag = True
    forge = make_forge()

    mr = forge.merged_request_for_commit(MERGE)

    assert mr is not None and mr.number == n
    assert forge.merged_request_for_commit("d4" * 20) is None


def test_merge_found_in_a_busy_repository(fake_github: FakeGitHub, make_forge) -> None:
    # A merge into 'training', then 150 other pull requests closed or merged after it (and into other
    # branches): it is no longer among the 100 most recently updated, and GitHub does not associate a
    # merge commit outside the default branch with its pull request. It is still the approved merge.
    n = fake_github.add_pull("ds1", "training", head_sha=SHA_A)
    fake_github.review(n, "lead", "APPROVED")
    fake_github.merge(n, by="lead", merge_sha=MERGE, at="2026-01-03T00:00:00Z")
    for i in range(150):
        other = fake_github.add_pull(f"ds-{i}", "training" if i % 3 else "kf-pipeline", head_sha=f"{i:040x}")
        at = f"2026-02-{1 + i // 10:02d}T{i % 10:02d}:00:00Z"
        if i % 2:
            fake_github.merge(other, by="lead", merge_sha=f"{i + 1000:040x}", at=at)
        else:
            fake_github.pulls[other].state = "closed"
            fake_github.touch(other, at)
    forge = make_forge()

    mr = forge.merged_request_into("training", MERGE)

    assert mr is not None and (mr.number, mr.target, mr.merge_commit) == (n, "training", MERGE)
    assert [a.user for a in mr.approvals] == ["lead"]
    lists = fake_github.calls("GET", r"/repos/octo/hello/pulls")
    # the closed pull requests into 'training', most recently updated first, page by page (GitHub's
    # per_page is at most 100): the merge is on the second page
    assert [{k: v[0] for k, v in c.query.items() if k != "page"} for c in lists] == [
        {"state": "closed", "base": "training", "sort": "updated", "direction": "desc", "per_page": "100"}
    ] * 2
    assert forge.merged_request_for_commit(MERGE).number == n  # into any branch: found as well
    assert forge.merged_request_into("kf-pipeline", MERGE) is None  # merged into another branch
    assert forge.merged_request_into("training", "d4" * 20) is None  # a direct push


def test_the_lookups_of_a_gated_range_read_each_page_once(fake_github: FakeGitHub, make_forge) -> None:
    # the gate asks for every commit of the range: the merge, and direct pushes that no pull request made
    n = fake_github.add_pull("ds1", "training", head_sha=SHA_A)
    fake_github.merge(n, by="lead", merge_sha=MERGE, at="2026-01-03T00:00:00Z")
    for i in range(4):
        other = fake_github.add_pull(f"ds-{i}", "training", head_sha=f"{i:040x}")
        fake_github.merge(other, by="lead", merge_sha=f"{i + 1000:040x}", at=f"2026-02-0{1 + i}T00:00:00Z")
    forge = make_forge(per_page=2)

    assert forge.merged_request_into("training", f"{3 + 1000:040x}") is not None  # the first page
    assert forge.merged_request_into("training", "d4" * 20) is None  # every page
    assert forge.merged_request_into("training", "d5" * 20) is None
    assert forge.merged_request_into("training", MERGE).number == n

    assert len(fake_github.calls("GET", r"/repos/octo/hello/pulls")) == 3  # 5 pull requests, 2 a page


def test_pagination_reads_every_page(fake_github: FakeGitHub, make_forge) -> None:
    for i in range(7):
        fake_github.add_pull(f"ds{i}", "training")
    n = fake_github.add_pull("dsx", "training", head_sha=SHA_A)
    for i in range(5):
        fake_github.review(n, f"reviewer{i}", "APPROVED", submitted_at=f"2026-01-02T1{i}:00:00Z")
    forge = make_forge(per_page=2)

    listed = forge.list(state="open", target="training")
    approvals = forge.get(n).approvals

    assert sorted(mr.number for mr in listed) == list(range(1, 9))
    assert sorted(a.user for a in approvals) == [f"reviewer{i}" for i in range(5)]
    assert len(fake_github.calls("GET", r"/repos/octo/hello/pulls")) == 4
    assert len(fake_github.calls("GET", r"/repos/octo/hello/pulls/\d+/reviews")) == 3


def test_list_filters_state_and_target(fake_github: FakeGitHub, make_forge) -> None:
    open_ = fake_github.add_pull("ds1", "training")
    merged = fake_github.add_pull("ds2", "training")
    fake_github.merge(merged, by="lead", merge_sha=MERGE)
    closed = fake_github.add_pull("ds3", "training", state="closed")
    fake_github.add_pull("ds4", "deploy-model")
    forge = make_forge()

    assert [m.number for m in forge.list("open", "training")] == [open_]
    assert [m.number for m in forge.list("merged", "training")] == [merged]
    assert [m.number for m in forge.list("closed", "training")] == [closed]
    assert len(forge.list()) == 4


def test_open_merge_request_creates_then_updates_never_duplicates(
    fake_github: FakeGitHub, make_forge
) -> None:
    forge = make_forge()

    first, created = forge.open_merge_request("training", "deploy-model", "Deploy run 1", "report 1")
    again, created_again = forge.open_merge_request("training", "deploy-model", "Deploy run 2", "report 2")

    assert (created, created_again) == (True, False)
    assert again.number == first.number
    assert len(fake_github.pulls) == 1
    pull = fake_github.pulls[first.number]
    assert (pull.title, pull.body) == ("Deploy run 2", "report 2")
    assert len(fake_github.calls("POST", r"/repos/octo/hello/pulls")) == 1


def test_open_merge_request_unchanged_makes_no_write(fake_github: FakeGitHub, make_forge) -> None:
    forge = make_forge()
    forge.open_merge_request("training", "deploy-model", "Deploy", "report")
    mr, created = forge.open_merge_request("training", "deploy-model", "Deploy", "report")
    assert not created and mr.title == "Deploy"
    assert fake_github.calls("PATCH", r"/repos/octo/hello/pulls/\d+") == []


def test_open_merge_request_race_uses_the_other_pull_request(fake_github: FakeGitHub, make_forge) -> None:
    # Our lookup sees nothing; by the time we create, another run has opened it (GitHub answers 422).
    forge = make_forge()
    fake_github.fail("GET", r"/repos/octo/hello/pulls", 200, body=[], times=1)
    other = fake_github.add_pull("training", "deploy-model", user="branchops-bot")

    mr, created = forge.open_merge_request("training", "deploy-model", "Deploy", "report")

    assert (mr.number, created) == (other, False)
    assert len(fake_github.pulls) == 1


def test_comment_and_commit_status(fake_github: FakeGitHub, make_forge) -> None:
    n = fake_github.add_pull("ds1", "training")
    forge = make_forge()

    forge.comment(n, "**training** finished: accuracy 0.61")
    forge.set_commit_status(
        SHA_A, "failure", "x" * 300, context="branchops/training", target_url="https://ci.example/job/1"
    )

    assert fake_github.pulls[n].comments == ["**training** finished: accuracy 0.61"]
    [status] = fake_github.statuses
    assert (status["state"], status["context"], status["sha"]) == ("failure", "branchops/training", SHA_A)
    assert len(status["description"]) == 140
    assert len(fake_github.requests) == 2  # one POST each: no needless reads


def test_server_errors_are_retried(fake_github: FakeGitHub, make_forge) -> None:
    n = fake_github.add_pull("ds1", "training")
    fake_github.fail("GET", rf"/repos/octo/hello/pulls/{n}", 502, times=2)
    assert make_forge(retries=2).get(n).number == n
    assert len(fake_github.calls("GET", rf"/repos/octo/hello/pulls/{n}")) == 3


def test_persistent_server_error_becomes_external_error(fake_github: FakeGitHub, make_forge) -> None:
    n = fake_github.add_pull("ds1", "training")
    fake_github.fail(
        "GET", rf"/repos/octo/hello/pulls/{n}", 503, body={"message": "Service Unavailable"}, times=10
    )
    with pytest.raises(ExternalError) as err:
        make_forge(retries=2).get(n)
    assert "octo/hello" in str(err.value) and "HTTP 503" in str(err.value)
    assert f"pull request #{n}" in str(err.value)
    assert len(fake_github.calls("GET", rf"/repos/octo/hello/pulls/{n}")) == 3


def test_not_found_is_external_error_naming_the_call(fake_github: FakeGitHub, make_forge) -> None:
    with pytest.raises(ExternalError, match=r"reading pull request #42 failed: HTTP 404"):
        make_forge().get(42)


def test_primary_rate_limit_waits_for_reset(fake_github: FakeGitHub, make_forge) -> None:
    n = fake_github.add_pull("ds1", "training")
    fake_github.fail(
        "GET",
        rf"/repos/octo/hello/pulls/{n}",
        403,
        times=1,
        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()))},
        body={"message": "API rate limit exceeded for user ID 1."},
    )
    assert make_forge().get(n).number == n
    assert [r.status for r in fake_github.calls("GET", rf"/repos/octo/hello/pulls/{n}")] == [403, 200]


def test_secondary_rate_limit_honours_retry_after(fake_github: FakeGitHub, make_forge) -> None:
    n = fake_github.add_pull("ds1", "training")
    fake_github.fail(
        "POST",
        rf"/repos/octo/hello/issues/{n}/comments",
        429,
        times=1,
        headers={"Retry-After": "1"},
        body={"message": "You have exceeded a secondary rate limit."},
    )
    make_forge().comment(n, "hello")
    assert fake_github.pulls[n].comments == ["hello"]
    assert len(fake_github.calls("POST", rf"/repos/octo/hello/issues/{n}/comments")) == 2


def test_rate_limit_longer_than_allowed_fails_at_once(fake_github: FakeGitHub, make_forge) -> None:
    n = fake_github.add_pull("ds1", "training")
    fake_github.fail(
        "GET",
        rf"/repos/octo/hello/pulls/{n}",
        403,
        times=5,
        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 3600)},
        body={"message": "API rate limit exceeded for user ID 1."},
    )
    with pytest.raises(ExternalError, match=r"rate limit .*rate_limit_max_wait_s=10s"):
        make_forge(rate_limit_max_wait_s=10.0).get(n)
    assert len(fake_github.calls("GET", rf"/repos/octo/hello/pulls/{n}")) == 1


def test_timeout_becomes_external_error(fake_github: FakeGitHub, make_forge) -> None:
    n = fake_github.add_pull("ds1", "training")
    fake_github.fail("GET", rf"/repos/octo/hello/pulls/{n}", 200, times=5, delay_s=1.3)
    with pytest.raises(ExternalError, match=r"no answer within 1s"):
        make_forge(timeout_s=0.5, retries=1).get(n)


def test_bad_token_is_external_error_without_the_token(
    fake_github: FakeGitHub, make_forge, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "ghp_wrongtoken987654321"
    monkeypatch.setenv(TOKEN_ENV, wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ExternalError, match="HTTP 401 Bad credentials") as err:
        make_forge().get(1)
    assert wrong not in str(err.value)
    assert wrong not in caplog.text


def test_missing_token_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from branchops.forge.github import GitHubForge

    from .conftest import github_settings

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match=rf"forge.github.token: .*{TOKEN_ENV}.*not set"):
        GitHubForge(github_settings("http://127.0.0.1:9"))


def test_importing_the_backend_does_not_import_pygithub() -> None:
    import subprocess
    import sys

    code = "import sys, branchops.forge.github; print('github' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
