"""Setting up a GitHub repository for the branch workflow; only ``branchops bootstrap`` uses it.

:class:`GitHubAdmin` creates stage branches, writes files such as CODEOWNERS, protects branches (rulesets),
configures the webhook and says what the token lacks for all that. Stages and the approval gate never
need these calls, so they are not part of the forge port (``branchops.forge.base``). The connection —
retries, rate limits, timeouts and errors as :class:`~branchops.errors.ExternalError` — is the forge's
own (:class:`~branchops.forge.github.GitHubRepositoryClient`). PyGithub is imported inside the methods.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from branchops.errors import ConfigError, ExternalError
from branchops.forge.github import GitHubRepositoryClient

if TYPE_CHECKING:  # pragma: no cover - typing only
    from branchops.config import SecretRef

log = logging.getLogger(__name__)

# Token scopes (classic personal access tokens) that grant what the forge does; fine-grained tokens
# and GitHub Apps send no X-OAuth-Scopes header and are checked through the repository permissions.
# "public_repo" grants only public repositories, and there, like "repo", repository hooks too.
_REPO_SCOPES = ("repo", "public_repo")
_HOOK_SCOPES = ("repo", "admin:repo_hook", "write:repo_hook")
# The rulesets bootstrap owns are found again by name: "branchops: <branch>".
RULESET_PREFIX = "branchops: "


class GitHubAdmin(GitHubRepositoryClient):
    """Repository setup on one GitHub repository: every call is idempotent, so bootstrap can run again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bypass_actors: dict[str, dict[str, Any]] = {}  # by bot name: bootstrap asks once per branch

    def ensure_branch(self, branch: str, from_branch: str) -> bool:
        """Create ``branch`` at the tip of ``from_branch`` unless it exists. Returns whether it was
        created."""
        from github.GithubException import GithubException

        with self._calling(f"creating branch {branch} from {from_branch}"):
            try:
                self._repo.get_branch(branch)
                return False
            except GithubException as exc:
                if exc.status != 404:
                    raise
            sha = self._repo.get_branch(from_branch).commit.sha
            self._repo.create_git_ref(ref=f"refs/heads/{branch}", sha=sha)
            log.info("created branch %s at %s (%s)", branch, sha, from_branch)
            return True

    def ensure_file(self, branch: str, path: str, content: str, message: str) -> bool:
        """Make ``path`` on ``branch`` hold exactly ``content`` (UTF-8), committing ``message`` if it must.

        Returns True when it created or updated the file, False when the file already had that content
        (no commit). Uses the contents API: an update names the blob sha it replaces, so a file changed
        by someone else in between is never overwritten blindly; on such a conflict the file is read
        once more and the write retried against what is there now.
        """
        from github.GithubException import GithubException

        if not path or path.startswith("/") or path.endswith("/") or ".." in path.split("/"):
            raise ConfigError(
                f"ensure_file: path must be a relative file path inside the repository, got {path!r}"
            )
        wanted = content.encode("utf-8")
        with self._calling(f"writing {path} on branch {branch}"):
            same, sha = self._compare_file(branch, path, wanted)
            if same:
                return False
            try:
                self._write_file(branch, path, content, message, sha)
            except GithubException as exc:
                # 409: the sha is no longer the file's (someone committed in between); 422: the file
                # appeared since we looked ('"sha" wasn't supplied'). Read again and retry once.
                if exc.status not in (409, 422):
                    raise
                same, fresh = self._compare_file(branch, path, wanted)
                if same:
                    return True  # it became what we wanted during this call
                if fresh == sha:
                    raise  # no race: GitHub refuses the write itself (e.g. a repository rule)
                self._write_file(branch, path, content, message, fresh)
            return True

    def _compare_file(self, branch: str, path: str, wanted: bytes) -> tuple[bool, str | None]:
        """Whether ``path`` on ``branch`` holds exactly ``wanted``, and its blob sha (None: no such file)."""
        import binascii

        from github.GithubException import GithubException

        try:
            found = self._repo.get_contents(path, ref=branch)
        except GithubException as exc:
            if exc.status != 404:
                raise
            return False, None
        if isinstance(found, list) or found.type != "file":
            kind = "a directory" if isinstance(found, list) else f"a {found.type}"
            raise ExternalError(
                f"GitHub {self.repository}: {path} on branch {branch} is {kind}, not a file; "
                "refusing to replace it"
            )
        try:
            current: bytes | None = found.decoded_content
        except (AssertionError, binascii.Error, ValueError):
            # Files over 1 MB come back with encoding "none" and no content; a body we cannot decode
            # counts as different: the update names its sha, so nothing is overwritten blindly.
            current = None
        return current == wanted, found.sha

    def _write_file(self, branch: str, path: str, content: str, message: str, sha: str | None) -> None:
        if sha is None:
            self._repo.create_file(path, message, content, branch=branch)
            log.info("created %s on %s", path, branch)
        else:
            self._repo.update_file(path, message, content, sha, branch=branch)
            log.info("updated %s on %s (was blob %s)", path, branch, sha)

    def bypass_actor(self, bot: str) -> dict[str, Any]:
        """The ruleset bypass actor for ``bot``, the account whose token pushes the stage records: a GitHub
        App when it is written as the app's bot account ("<app-slug>[bot]", the name GitHub gives an
        app's commits), else a user (its login)."""
        from github.GithubException import GithubException

        if bot in self._bypass_actors:
            return dict(self._bypass_actors[bot])
        app = bot.endswith("[bot]")
        name = bot.removesuffix("[bot]")
        base = self._github.requester.base_url
        url = f"{base}/apps/{quote(name, safe='')}" if app else f"{base}/users/{quote(name, safe='')}"
        with self._calling(f"looking up the bot account {bot}"):
            try:
                _, data = self._github.requester.requestJsonAndCheck("GET", url)
            except GithubException as exc:
                if exc.status != 404:
                    raise
                raise ConfigError(
                    f"bot.name: GitHub knows no {'app' if app else 'user'} {name!r}; bot.name names the "
                    "account whose token pushes the stage records: its login, or '<app-slug>[bot]' for a "
                    "GitHub App"
                ) from None
        self._bypass_actors[bot] = {
            "actor_id": int(data["id"]),
            "actor_type": "Integration" if app else "User",
            "bypass_mode": "always",
        }
        return dict(self._bypass_actors[bot])

    def protect_branch(
        self,
        branch: str,
        required_approvals: int,
        required_status_context: str,
        restrict_pushes: bool,
        *,
        require_code_owner_reviews: bool = False,
        bypass_bot: str | None = None,
        allowed_merge_methods: Sequence[str] = ("merge", "squash"),
    ) -> str:
        """Protect ``branch`` with a repository ruleset of its own (created, or updated: idempotent).

        Its rules: changes arrive by pull request with ``required_approvals`` approvals (stale ones
        dismissed on a new push, code owners' if ``require_code_owner_reviews``), merged by one of
        ``allowed_merge_methods``, with the status ``required_status_context`` passing; no force-push,
        no deletion. ``bypass_bot`` (see :meth:`bypass_actor`) pushes past every rule: stages write their
        records back to their branch. A ruleset, not classic branch protection, because classic
        protection lets only administrators push past required reviews and checks, and never a GitHub
        App; a classic protection left on the branch (by an earlier bootstrap) would still refuse the
        bot, so it is removed. Without ``restrict_pushes``, repository administrators may push past too.
        Returns "created" or "updated".
        """
        from github.GithubException import GithubException

        if required_approvals < 1:
            raise ConfigError(
                f"protect_branch({branch!r}): required_approvals must be >= 1, got {required_approvals}"
            )
        actors = [self.bypass_actor(bypass_bot)] if bypass_bot else []
        if not restrict_pushes:
            # 5: the id GitHub gives the built-in repository admin role (its REST description does not
            # list role ids; the API reports this one for "Repository admin")
            actors.append({"actor_id": 5, "actor_type": "RepositoryRole", "bypass_mode": "always"})
        body = {
            "name": f"{RULESET_PREFIX}{branch}",
            "target": "branch",
            "enforcement": "active",
            "bypass_actors": actors,
            "conditions": {"ref_name": {"include": [f"refs/heads/{branch}"], "exclude": []}},
            "rules": [
                {"type": "deletion"},
                {"type": "non_fast_forward"},
                {
                    "type": "pull_request",
                    "parameters": {
                        "required_approving_review_count": required_approvals,
                        "dismiss_stale_reviews_on_push": True,
                        "require_code_owner_review": require_code_owner_reviews,
                        "require_last_push_approval": False,
                        "required_review_thread_resolution": False,
                        "allowed_merge_methods": list(allowed_merge_methods),
                    },
                },
                {
                    "type": "required_status_checks",
                    "parameters": {
                        "strict_required_status_checks_policy": False,
                        "required_status_checks": [{"context": required_status_context}],
                    },
                },
            ],
        }
        requester = self._github.requester
        with self._calling(f"protecting branch {branch}"):
            existing = self._ruleset_id(body["name"])
            if existing is None:
                requester.requestJsonAndCheck("POST", f"{self._repo.url}/rulesets", input=body)
                outcome = "created"
            else:
                requester.requestJsonAndCheck("PUT", f"{self._repo.url}/rulesets/{existing}", input=body)
                outcome = "updated"
            classic = f"{self._repo.url}/branches/{quote(branch, safe='')}/protection"
            try:
                requester.requestJsonAndCheck("GET", classic)
            except GithubException as exc:
                if exc.status != 404:
                    raise
            else:
                requester.requestJsonAndCheck("DELETE", classic)
                log.info("removed the classic branch protection of %s (the ruleset replaces it)", branch)
        return outcome

    def _ruleset_id(self, name: str) -> int | None:
        """The id of this repository's own ruleset called ``name`` (not one inherited from the
        organisation), reading every page."""
        page = 1
        while True:
            _, found = self._github.requester.requestJsonAndCheck(
                "GET",
                f"{self._repo.url}/rulesets",
                parameters={"includes_parents": "false", "per_page": 100, "page": page},
            )
            for ruleset in found or []:
                if ruleset.get("name") == name and ruleset.get("source_type", "Repository") == "Repository":
                    return int(ruleset["id"])
            if len(found or []) < 100:
                return None
            page += 1

    def ensure_webhook(self, url: str, secret_ref: SecretRef, events: Sequence[str]) -> tuple[int, bool]:
        """The repository webhook delivering ``events`` to ``url``: created, or the existing one updated.

        Returns ``(hook id, created)``. The secret is written every time (GitHub never returns it, so it
        cannot be compared); the hook is never duplicated.
        """
        secret = secret_ref.resolve()
        if not secret:
            raise ConfigError(f"webhook secret is not set ({secret_ref.describe()})")
        config = {"url": url, "content_type": "json", "secret": secret, "insecure_ssl": "0"}
        with self._calling(f"configuring the webhook to {url}"):
            for hook in self._repo.get_hooks():
                if hook.config.get("url") == url:
                    hook.edit(name="web", config=config, events=list(events), active=True)
                    return hook.id, False
            hook = self._repo.create_hook(name="web", config=config, events=list(events), active=True)
            log.info("created webhook %s -> %s", hook.id, url)
            return hook.id, True

    def check_token_permissions(self, *, admin: bool = True) -> list[str]:
        """What the token lacks for the forge (and, with ``admin``, for bootstrap); empty when all is
        there."""
        with self._calling("checking the token's permissions"):
            self._repo.complete()
            permissions = self._repo.permissions
            private = self._repo.private
            scopes = self._github.oauth_scopes  # None unless a classic token (X-OAuth-Scopes header)
        missing: list[str] = []
        if scopes is not None:
            granted = {s.strip() for s in scopes if s.strip()}
            repo_scopes = ("repo",) if private else _REPO_SCOPES
            if not granted.intersection(repo_scopes):
                missing.append(
                    f"token scope {' or '.join(repr(s) for s in repo_scopes)} "
                    "(pull requests, statuses, comments)"
                )
            hook_scopes = _HOOK_SCOPES if private else (*_HOOK_SCOPES, "public_repo")
            if admin and not granted.intersection(hook_scopes):
                missing.append("token scope 'admin:repo_hook' (webhooks)")
        if permissions is None:
            missing.append(f"repository permissions of the token's user on {self.repository} (not reported)")
        else:
            if not permissions.push:
                missing.append(f"push (write) permission on {self.repository}")
            if admin and not permissions.admin:
                missing.append(f"admin permission on {self.repository} (branch protection, webhooks)")
        return missing
