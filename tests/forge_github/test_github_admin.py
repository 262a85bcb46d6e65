"""GitHubAdmin (repository setup for ``branchops bootstrap``) against a stateful fake of GitHub's REST API.

What GitHub itself accepts is checked separately, against Prism and GitHub's official description
(test_github_prism.py). These tests check our decisions: idempotent calls, which token and repository
permissions are enough, files compared byte for byte and never overwritten blindly.
"""

from __future__ import annotations

import pytest

from branchops.config import SecretRef
from branchops.errors import ConfigError, ExternalError

from .fake_github import FakeGitHub


def test_ensure_branch_protect_and_webhook_are_idempotent(
    fake_github: FakeGitHub, make_admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cret-value")
    admin = make_admin()

    assert admin.ensure_branch("training", "main") is True
    assert admin.ensure_branch("training", "main") is False
    assert fake_github.branches["training"] == fake_github.branches["main"]

    fake_github.users["branchops-bot"] = 4242
    assert (
        admin.protect_branch("training", 1, "branchops/training", True, bypass_bot="branchops-bot")
        == "created"
    )
    assert (
        admin.protect_branch("training", 1, "branchops/training", True, bypass_bot="branchops-bot")
        == "updated"
    )
    [ruleset] = fake_github.rulesets.values()
    assert ruleset["conditions"]["ref_name"]["include"] == ["refs/heads/training"]
    rules = {rule["type"]: rule.get("parameters") for rule in ruleset["rules"]}
    assert rules["pull_request"]["required_approving_review_count"] == 1
    assert rules["pull_request"]["dismiss_stale_reviews_on_push"] is True
    assert rules["required_status_checks"]["required_status_checks"] == [{"context": "branchops/training"}]
    assert {"deletion", "non_fast_forward"} <= set(rules)  # no force-push, no deletion
    assert ruleset["bypass_actors"] == [{"actor_id": 4242, "actor_type": "User", "bypass_mode": "always"}]
    assert fake_github.push_allowed("training", "branchops-bot")
    fake_github.admins.add("lead")
    assert not fake_github.push_allowed("training", "lead")  # restrict_pushes: administrators too
    admin.protect_branch("training", 1, "branchops/training", False, bypass_bot="branchops-bot")
    assert fake_github.push_allowed("training", "lead")
    assert len(fake_github.rulesets) == 1
    assert len(fake_github.calls("GET", r"/users/branchops-bot")) == 1  # looked up once, not per branch

    ref = SecretRef(env="HOOK_SECRET")
    hook_id, created = admin.ensure_webhook("https://jenkins.example/github-webhook/", ref, ["push"])
    same_id, created_again = admin.ensure_webhook(
        "https://jenkins.example/github-webhook/", ref, ["push", "pull_request"]
    )
    assert (created, created_again, same_id) == (True, False, hook_id)
    assert list(fake_github.hooks) == [hook_id]
    assert fake_github.hooks[hook_id]["events"] == ["push", "pull_request"]
    assert fake_github.hooks[hook_id]["config"]["secret"] == "s3cret-value"


def test_protect_branch_refuses_zero_approvals(make_admin) -> None:
    with pytest.raises(ConfigError, match="required_approvals"):
        make_admin().protect_branch("training", 0, "branchops", True)


# GitHub's docs ("Scopes for OAuth apps"): a classic token's scopes come in X-OAuth-Scopes ("repo, user";
# empty for a token without scopes). "repo" covers public and private repositories, "public_repo" public
# ones only; both include repository hooks, which "admin:repo_hook" / "write:repo_hook" grant alone.
# Fine-grained tokens and GitHub Apps send no such header; the repository's "permissions" say what
# they may do.
@pytest.mark.parametrize(
    ("scopes", "private", "permissions", "admin", "expected"),
    [
        ("repo, admin:repo_hook", True, {"admin": True, "push": True}, True, []),
        ("repo", True, {"admin": True, "push": True}, True, []),
        ("public_repo, admin:repo_hook", False, {"admin": True, "push": True}, True, []),
        (
            "public_repo",
            True,
            {"admin": True, "push": True},
            True,
            ["token scope 'repo'", "'admin:repo_hook'"],
        ),
        ("public_repo", False, {"admin": True, "push": True}, True, []),
        (
            "admin:repo_hook",
            False,
            {"admin": True, "push": True},
            True,
            ["token scope 'repo' or 'public_repo'"],
        ),
        (
            "read:repo_hook",
            True,
            {"admin": True, "push": True},
            False,
            ["token scope 'repo'"],
        ),  # no bootstrap: no hooks
        ("", True, {"admin": True, "push": True}, True, ["token scope 'repo'", "'admin:repo_hook'"]),
        ("read:org", True, {"admin": True, "push": True}, False, ["token scope 'repo'"]),
        ("repo", True, {"admin": False, "push": True}, True, ["admin permission"]),
        ("repo", True, {"admin": False, "push": True}, False, []),
        (None, True, {"admin": True, "push": False}, True, ["push (write) permission"]),
        (None, True, {"admin": False, "push": False}, True, ["push (write) permission", "admin permission"]),
        (None, True, {"admin": True, "push": True}, True, []),
    ],
)
def test_check_token_permissions(
    fake_github: FakeGitHub, make_admin, scopes, private, permissions, admin, expected
) -> None:
    fake_github.oauth_scopes = scopes
    fake_github.private = private
    fake_github.permissions = {"maintain": False, "triage": True, "pull": True, **permissions}
    missing = make_admin().check_token_permissions(admin=admin)
    assert len(missing) == len(expected), missing
    for text, fragment in zip(missing, expected):
        assert fragment in text


# -- ensure_file (the contents API) ---------------------------------------------------------------------

CODEOWNERS = ".github/CODEOWNERS"
CONTENTS = r"/repos/octo/hello/contents/\.github/CODEOWNERS"


def test_ensure_file_creates_then_leaves_unchanged(fake_github: FakeGitHub, make_admin) -> None:
    fake_github.commit_file("main", "README.md", "hello\n")
    admin = make_admin()
    assert admin.ensure_branch("training", "main") is True

    assert admin.ensure_file("training", CODEOWNERS, "* @lead\n", "Set code owners") is True

    assert fake_github.files("training") == {"README.md": b"hello\n", CODEOWNERS: b"* @lead\n"}
    assert CODEOWNERS not in fake_github.files("main")  # only the named branch moved
    assert fake_github.commit_messages[fake_github.branches["training"]] == "Set code owners"
    [put] = fake_github.calls("PUT", CONTENTS)
    assert put.body["branch"] == "training" and "sha" not in put.body  # a create names no blob
    assert fake_github.calls("GET", CONTENTS)[0].query == {"ref": ["training"]}

    head = fake_github.branches["training"]
    assert admin.ensure_file("training", CODEOWNERS, "* @lead\n", "Set code owners") is False
    assert fake_github.branches["training"] == head  # no empty commit
    assert len(fake_github.calls("PUT", CONTENTS)) == 1


def test_ensure_file_updates_naming_the_blob_it_replaces(fake_github: FakeGitHub, make_admin) -> None:
    from .fake_github import git_blob_sha

    fake_github.commit_file("main", CODEOWNERS, "* @someone-else\n")
    admin = make_admin()

    assert admin.ensure_file("main", CODEOWNERS, "* @lead @head-of-ds\n", "Update code owners") is True

    assert fake_github.files("main")[CODEOWNERS] == b"* @lead @head-of-ds\n"
    [put] = fake_github.calls("PUT", CONTENTS)
    assert put.body["sha"] == git_blob_sha(b"* @someone-else\n")
    assert admin.ensure_file("main", CODEOWNERS, "* @lead @head-of-ds\n", "Update code owners") is False


def test_ensure_file_compares_bytes_exactly(fake_github: FakeGitHub, make_admin) -> None:
    # A trailing newline or non-ASCII text is content too; long files arrive in 60-character base64 lines.
    text = "# Équipe données\n" + "* @lead\n" * 40
    fake_github.commit_file("main", CODEOWNERS, text.rstrip("\n"))
    admin = make_admin()
    assert admin.ensure_file("main", CODEOWNERS, text, "m") is True
    assert admin.ensure_file("main", CODEOWNERS, text, "m") is False
    assert fake_github.files("main")[CODEOWNERS] == text.encode("utf-8")


def test_ensure_file_retries_once_when_someone_commits_in_between(
    fake_github: FakeGitHub, make_admin
) -> None:
    fake_github.commit_file("main", CODEOWNERS, "* @old\n")
    # Between our read and our write, someone else changes the file: GitHub answers 409.
    fake_github.before("PUT", CONTENTS, lambda: fake_github.commit_file("main", CODEOWNERS, "* @theirs\n"))

    assert make_admin().ensure_file("main", CODEOWNERS, "* @lead\n", "m") is True

    assert fake_github.files("main")[CODEOWNERS] == b"* @lead\n"
    assert [r.status for r in fake_github.calls("PUT", CONTENTS)] == [409, 200]


def test_ensure_file_created_concurrently_is_updated(fake_github: FakeGitHub, make_admin) -> None:
    # The file appears after our read: the create without a sha is refused (422), the retry updates it.
    fake_github.before("PUT", CONTENTS, lambda: fake_github.commit_file("main", CODEOWNERS, "* @theirs\n"))
    assert make_admin().ensure_file("main", CODEOWNERS, "* @lead\n", "m") is True
    assert [r.status for r in fake_github.calls("PUT", CONTENTS)] == [422, 200]
    assert fake_github.files("main")[CODEOWNERS] == b"* @lead\n"


def test_ensure_file_conflict_that_is_no_race_is_an_external_error(
    fake_github: FakeGitHub, make_admin
) -> None:
    fake_github.commit_file("main", CODEOWNERS, "* @old\n")
    fake_github.fail(
        "PUT",
        CONTENTS,
        409,
        times=5,
        body={"message": "Repository rule violations found\n\nChanges must be made through a pull request."},
    )
    with pytest.raises(ExternalError) as err:
        make_admin().ensure_file("main", CODEOWNERS, "* @lead\n", "m")
    message = str(err.value)
    assert "octo/hello" in message and "writing .github/CODEOWNERS on branch main" in message
    assert "HTTP 409" in message and "pull request" in message
    assert len(fake_github.calls("PUT", CONTENTS)) == 1  # the file did not change: no pointless retry
    assert fake_github.files("main")[CODEOWNERS] == b"* @old\n"


def test_ensure_file_on_a_missing_branch_is_an_external_error(fake_github: FakeGitHub, make_admin) -> None:
    with pytest.raises(ExternalError, match=r"writing \.github/CODEOWNERS on branch nope failed: HTTP 404"):
        make_admin().ensure_file("nope", CODEOWNERS, "* @lead\n", "m")
    assert "nope" not in fake_github.branches


def test_ensure_file_large_file_without_content_is_replaced(fake_github: FakeGitHub, make_admin) -> None:
    # GitHub sends no content for files over 1 MB (encoding "none"); we cannot compare, so we update.
    fake_github.large_file_bytes = 10
    fake_github.commit_file("main", CODEOWNERS, "* @someone-else-entirely\n")
    assert make_admin().ensure_file("main", CODEOWNERS, "* @lead\n", "m") is True
    assert fake_github.files("main")[CODEOWNERS] == b"* @lead\n"


def test_ensure_file_refuses_a_directory_and_bad_paths(fake_github: FakeGitHub, make_admin) -> None:
    fake_github.commit_file("main", ".github/workflows/ci.yml", "on: push\n")
    admin = make_admin()
    with pytest.raises(ExternalError, match=r"\.github/workflows on branch main is a directory"):
        admin.ensure_file("main", ".github/workflows", "x", "m")
    for bad in ("", "/etc/passwd", "a/../b", "dir/"):
        with pytest.raises(ConfigError, match="relative file path"):
            admin.ensure_file("main", bad, "x", "m")
    assert fake_github.calls("PUT", r".*/contents/.*") == []


def test_importing_the_admin_does_not_import_pygithub() -> None:
    # bootstrap's --help and dry-run planning must not pay for PyGithub, as with the forge.
    import subprocess
    import sys

    code = "import sys, branchops.forge.github_admin; print('github' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
