"""The GitHub forge: pull requests, reviews, comments and commit statuses via PyGithub.

GitHub's words map onto the port's: a pull request is a merge request, an approving review is an
approval. :class:`GitHubRepositoryClient` is the connection to one repository that the forge shares
with the repository administration of ``branchops bootstrap`` (``branchops.forge.github_admin``).
PyGithub is imported inside the functions that use it, so importing this module is cheap.

Transport policy (documented GitHub behaviour, see "Rate limits for the REST API"):
- 5xx answers and connection errors are retried ``settings.retries`` times with exponential backoff;
- a rate-limited answer (403/429 with ``Retry-After``, or with ``X-RateLimit-Remaining: 0`` and
  ``X-RateLimit-Reset``, or a "secondary rate limit" message) waits for the reset, but never longer than
  ``settings.rate_limit_max_wait_s``; a longer wait fails at once with a message saying so;
- every failure reaches the caller as :class:`~branchops.errors.ExternalError` naming the repository,
  what was being done and GitHub's status and message. The token never appears in messages or logs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from branchops import secrets
from branchops.errors import ConfigError, ExternalError
from branchops.forge.base import Approval, CommitState, Forge, MergeRequest, MergeRequestState

if TYPE_CHECKING:  # pragma: no cover - typing only
    from branchops.config import GitHubSettings

log = logging.getLogger(__name__)

# GitHub refuses commit-status descriptions longer than this ("description is too long").
STATUS_DESCRIPTION_MAX = 140

# Review states that are a reviewer's verdict. A later COMMENTED review leaves an approval standing
# (as in GitHub's own UI); PENDING reviews are drafts that nobody else can see.
_VERDICT_STATES = ("APPROVED", "CHANGES_REQUESTED", "DISMISSED")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if (
        value.tzinfo is None
    ):  # PyGithub returns aware datetimes; be safe with naive ones (UTC by API contract)
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def latest_approvals(reviews: Sequence[Any]) -> list[Approval]:
    """Approvals that still stand: each reviewer's latest verdict, if it is APPROVED.

    ``reviews`` are PyGithub ``PullRequestReview`` objects (or anything with ``user.login``, ``state``,
    ``commit_id``, ``submitted_at`` and ``id``). A later CHANGES_REQUESTED or DISMISSED review cancels an
    earlier approval of the same user. The approval keeps the commit it was given on, so the gate can
    refuse approvals given before the last push.
    """

    def order(review: Any) -> tuple[str, int]:
        return (_iso(review.submitted_at) or "", int(review.id or 0))

    latest: dict[str, Any] = {}
    for review in sorted(reviews, key=order):
        if review.user is None or review.state not in _VERDICT_STATES:
            continue
        latest[review.user.login] = review
    return [
        Approval(user=login, head_sha=review.commit_id, at=_iso(review.submitted_at) or "")
        for login, review in latest.items()
        if review.state == "APPROVED"
    ]


def _make_retry(retries: int, max_wait_s: float, backoff_factor: float) -> Any:
    """A urllib3 Retry that follows GitHub's documented rate-limit headers, with a bounded wait."""
    from github.GithubException import RateLimitExceededExceedsMaxWait
    from github.GithubRetry import GithubRetry
    from urllib3.util.retry import Retry

    class RateLimitAwareRetry(GithubRetry):
        def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # type: ignore[override]
            if response is not None and response.status in (403, 429):
                wait = _documented_wait(response.headers)
                if wait is None and response.status == 429:
                    wait = float(self.secondary_rate_wait)  # GitHub: "wait at least one minute"
                if wait is not None:
                    if self.max_rate_limit_wait is not None and wait > self.max_rate_limit_wait:
                        raise RateLimitExceededExceedsMaxWait(
                            response.status,
                            {"message": f"rate limited; reset in {wait:.0f}s"},
                            dict(response.headers),
                            wait=wait,
                        )
                    log.info("GitHub rate limit on %s %s: waiting %.0fs", method, url, wait)
                    # Plain urllib3 accounting (counts the attempt, raises when exhausted) ...
                    retry = Retry.increment(self, method, url, response, error, _pool, _stacktrace)
                    # ... but sleep as GitHub says, not by the exponential backoff.
                    retry.get_backoff_time = lambda: wait  # type: ignore[method-assign]
                    return retry
            return super().increment(method, url, response, error, _pool, _stacktrace)

    allowed = Retry.DEFAULT_ALLOWED_METHODS.union({"GET", "POST", "PATCH"})
    return RateLimitAwareRetry(
        total=retries,
        backoff_factor=backoff_factor,
        max_rate_limit_wait=max_wait_s,
        status_forcelist=[429, *range(500, 600)],
        allowed_methods=allowed,
        # Hand the last error response to PyGithub, which turns it into a GithubException with status.
        raise_on_status=False,
        respect_retry_after_header=True,
    )


def _documented_wait(headers: Any) -> float | None:
    """Seconds GitHub asks a rate-limited client to wait, from the response headers, or None."""
    retry_after = headers.get("Retry-After")
    if retry_after is not None and str(retry_after).strip().isdigit():
        return float(retry_after)
    if headers.get("X-RateLimit-Remaining") == "0":
        reset = headers.get("X-RateLimit-Reset")
        if reset is not None and str(reset).isdigit():
            # +1: the reset happens somewhere within that second
            return max(0.0, int(reset) - time.time()) + 1.0
    return None


class GitHubRepositoryClient:
    """One GitHub repository (github.com or GitHub Enterprise via ``base_url``) through PyGithub, with the
    transport policy above; the forge and the repository administration build on it."""

    def __init__(
        self,
        settings: GitHubSettings,
        *,
        per_page: int = 100,
        seconds_between_requests: float | None = 0.25,
        seconds_between_writes: float | None = 1.0,
        backoff_factor: float = 1.0,
    ) -> None:
        """``seconds_between_*`` are PyGithub's throttles (GitHub asks for >= 1 s between writes to stay
        clear of secondary rate limits); tests against a local server set them to 0."""
        token = settings.token.resolve()
        if not token:
            raise ConfigError(f"forge.github.token: no GitHub token ({settings.token.describe()})")
        import github

        self.settings = settings
        self._timeout_s = max(1, math.ceil(settings.timeout_s))  # PyGithub insists on whole seconds
        self.repository = settings.repository
        self.owner = settings.repository.split("/", 1)[0]
        self._github = github.Github(
            auth=github.Auth.Token(token),
            base_url=settings.base_url.rstrip("/"),
            timeout=self._timeout_s,
            retry=_make_retry(settings.retries, settings.rate_limit_max_wait_s, backoff_factor),
            per_page=per_page,
            seconds_between_requests=seconds_between_requests,
            seconds_between_writes=seconds_between_writes,
            # Objects are fetched when first read, so e.g. commenting on #7 is one POST, not GET + POST.
            lazy=True,
        )
        self._repo = self._github.get_repo(settings.repository)
        self._team_members: dict[str, list[str]] = {}
        # per base branch (None: any): the merged pull requests read so far, by merge commit, and the rest
        # of the listing, read on only as far as a lookup needs (see _merged_pull)
        self._merges: dict[str | None, tuple[dict[str, int], Iterator[Any]]] = {}

    # -- error translation --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        import requests
        from github.GithubException import GithubException, RateLimitExceededExceedsMaxWait

        where = f"GitHub {self.repository}"
        try:
            yield
        except RateLimitExceededExceedsMaxWait as exc:
            raise ExternalError(
                secrets.mask(
                    f"{where}: rate limit reached while {what}; the reset is {exc.wait:.0f}s away, "
                    "longer than "
                    f"forge.github.rate_limit_max_wait_s={self.settings.rate_limit_max_wait_s:g}s"
                )
            ) from None
        except GithubException as exc:
            raise ExternalError(
                secrets.mask(f"{where}: {what} failed: HTTP {exc.status} {_github_message(exc)}")
            ) from None
        except requests.exceptions.RequestException as exc:
            if not _is_timeout(exc):
                raise ExternalError(
                    secrets.mask(
                        f"{where}: {what} failed after {self.settings.retries} retries: "
                        f"{type(exc).__name__}: {exc}"
                    )
                ) from None
            raise ExternalError(
                f"{where}: no answer within {self._timeout_s}s while {what} "
                f"(forge.github.timeout_s, after {self.settings.retries} retries)"
            ) from None


class GitHubForge(GitHubRepositoryClient, Forge):
    """The forge port on one GitHub repository."""

    name = "github"

    # -- mapping ---------------------------------------------------------------------------------------

    def _to_merge_request(self, pr: Any, *, details: bool = True) -> MergeRequest:
        """``details``: also read the reviews and ``merged_by`` (one or two more requests per pull
        request)."""
        merged = pr.merged_at is not None
        state: MergeRequestState = "merged" if merged else ("closed" if pr.state == "closed" else "open")
        merged_by = None
        approvals: list[Approval] = []
        if details:
            merged_by = pr.merged_by.login if merged and pr.merged_by is not None else None
            approvals = latest_approvals(list(pr.get_reviews()))
        return MergeRequest(
            number=pr.number,
            title=pr.title or "",
            source=pr.head.ref,
            target=pr.base.ref,
            author=pr.user.login if pr.user is not None else "",
            state=state,
            head_sha=pr.head.sha,
            body=pr.body or "",
            created_at=_iso(pr.created_at) or "",
            merged_at=_iso(pr.merged_at),
            merged_by=merged_by,
            merge_commit=pr.merge_commit_sha if merged else None,
            approvals=approvals,
            url=pr.html_url,
        )

    def _find_open_pull(self, source: str, target: str) -> Any | None:
        # GitHub filters by "owner:branch" for head; branches of forks are not ours to pick up.
        for pr in self._repo.get_pulls(state="open", head=f"{self.owner}:{source}", base=target):
            if pr.head.ref == source and pr.base.ref == target:
                return pr
        return None

    # -- the port -----------------------------------------------------------------------------------

    def open_merge_request(
        self, source: str, target: str, title: str, body: str, author: str | None = None
    ) -> tuple[MergeRequest, bool]:
        """Open a pull request ``source`` → ``target``, or update the open one's title and body.

        ``author`` is ignored: on GitHub the author is the token's user.
        """
        from github.GithubException import GithubException

        with self._calling(f"opening a pull request {source} -> {target}"):
            pr = self._find_open_pull(source, target)
            created = False
            if pr is None:
                try:
                    pr = self._repo.create_pull(base=target, head=source, title=title, body=body)
                    created = True
                except GithubException as exc:
                    # Someone opened it between our lookup and our create: use theirs, never a duplicate.
                    pr = self._find_open_pull(source, target) if exc.status == 422 else None
                    if pr is None:
                        raise
            if created:
                log.info("opened pull request #%s %s -> %s", pr.number, source, target)
            elif pr.title != title or (pr.body or "") != body:
                pr.edit(title=title, body=body)
                log.info("updated pull request #%s %s -> %s", pr.number, source, target)
            return self._to_merge_request(pr), created

    def get(self, number: int) -> MergeRequest:
        with self._calling(f"reading pull request #{number}"):
            return self._to_merge_request(self._repo.get_pull(number))

    def list(self, state: MergeRequestState | None = None, target: str | None = None) -> list[MergeRequest]:
        """Pull requests, newest first, without approvals and ``merged_by`` (use :meth:`get` for those)."""
        api_state = {"open": "open", "merged": "closed", "closed": "closed", None: "all"}[state]
        kwargs: dict[str, Any] = {"state": api_state}
        if target is not None:
            kwargs["base"] = target
        with self._calling("listing pull requests"):
            found = [self._to_merge_request(pr, details=False) for pr in self._repo.get_pulls(**kwargs)]
        return [mr for mr in found if state is None or mr.state == state]

    def merged_request_for_commit(self, sha: str) -> MergeRequest | None:
        """The merged pull request whose merge commit is ``sha``, into any branch; None for a direct push."""
        return self._merged_pull(sha, None)

    def merged_request_into(self, target: str, sha: str) -> MergeRequest | None:
        """The merged pull request into ``target`` whose merge commit is ``sha``; None for a direct push.

        Searched among the closed pull requests into ``target``, most recently updated first, page after
        page until found: a merge updates its pull request, so a recent one is on the first page, and one
        merged long ago is still found in a busy repository. Not through "list pull requests associated
        with a commit", which GitHub fills after the merge and documents differently for commits outside
        the default branch, where the stage branches are.
        """
        return self._merged_pull(sha, target)

    def _merged_pull(self, sha: str, target: str | None) -> MergeRequest | None:
        """The lookups of one forge share one listing per ``target``: the gate asks for each commit of a
        range, and each page is read once, not once per commit (nor every page again per direct push)."""
        with self._calling(f"looking for the pull request merged as {sha}"):
            if target not in self._merges:
                filters: dict[str, Any] = {"state": "closed", "sort": "updated", "direction": "desc"}
                if target is not None:
                    filters["base"] = target
                # PaginatedList: the next page is read only when the ones before did not hold it.
                self._merges[target] = ({}, iter(self._repo.get_pulls(**filters)))
            merged, rest = self._merges[target]
            while sha not in merged:
                try:
                    pr = next(rest, None)
                except BaseException:
                    del self._merges[target]  # a listing that failed has ended: the next lookup starts anew
                    raise
                if pr is None:
                    return None
                # a merged pull request whose merge produced the commit, not one that merely holds it
                if pr.merged_at is not None and pr.merge_commit_sha:
                    merged.setdefault(pr.merge_commit_sha, pr.number)
            return self._to_merge_request(self._repo.get_pull(merged[sha]))

    def team_members(self, team: str) -> list[str]:
        """Logins of the members of ``team`` ("org/team" or "@org/team"; child teams' members included,
        as GitHub lists them), every page; read once per forge."""
        from github.GithubException import GithubException
        from github.NamedUser import NamedUser
        from github.PaginatedList import PaginatedList

        org, _, slug = team.removeprefix("@").partition("/")
        if not org or not slug or "/" in slug:
            raise ConfigError(f"approvers: {team!r} is no team; a team approver is written org/team")
        name = f"{org}/{slug}"
        if name not in self._team_members:
            url = f"{self._github.requester.base_url}/orgs/{quote(org, safe='')}/teams/{quote(slug, safe='')}"
            members = PaginatedList(NamedUser, self._github.requester, f"{url}/members", None)
            with self._calling(f"reading the members of team {name}"):
                try:
                    self._team_members[name] = [user.login for user in members]
                except GithubException as exc:
                    if exc.status != 404:
                        raise
                    # GitHub answers 404 alike for a team that does not exist and one the token cannot see.
                    raise ExternalError(
                        f"GitHub: team {name} (an approver in config) was not found, or the token cannot "
                        "see it: check the name (org/team-slug) and that the token may read the "
                        "organisation's teams (classic token: read:org; app or fine-grained token: "
                        "organisation Members read)"
                    ) from None
        return list(self._team_members[name])

    def file_link(self, ref: str, path: str) -> str:
        """The file on GitHub's web, served raw (``?raw=true``): an image that renders in a pull request's
        description, also in a private repository (the browser follows it with the viewer's session)."""
        with self._calling("reading the repository's web address"):
            web = self._repo.html_url.rstrip("/")
        return f"{web}/blob/{quote(ref)}/{quote(path)}?raw=true"

    def update_body(self, number: int, markdown: str) -> None:
        """One PATCH of the pull request's ``body`` ("Update a pull request"); the title is left as it is."""
        with self._calling(f"updating the description of pull request #{number}"):
            # Lazy: the pull request's URL is built from its number, so this is the PATCH alone.
            self._repo.get_pull(number).edit(body=markdown)

    def comment(self, number: int, markdown: str) -> None:
        with self._calling(f"commenting on pull request #{number}"):
            self._repo.get_issue(number).create_comment(markdown)

    def set_commit_status(
        self,
        sha: str,
        state: CommitState,
        description: str,
        context: str = "branchops",
        target_url: str | None = None,
    ) -> None:
        if len(description) > STATUS_DESCRIPTION_MAX:
            description = description[: STATUS_DESCRIPTION_MAX - 1] + "…"
        kwargs: dict[str, Any] = {"state": state, "description": description, "context": context}
        if target_url:
            kwargs["target_url"] = target_url
        with self._calling(f"setting commit status '{context}' on {sha}"):
            # Lazy: the commit's sha is taken from its URL, so this is one POST.
            self._repo.get_commit(sha).create_status(**kwargs)


def _is_timeout(exc: BaseException) -> bool:
    """requests reports a timeout that survived the retries as ConnectionError(MaxRetryError(reason=...))."""
    import requests
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    if isinstance(exc, requests.exceptions.Timeout):
        return True
    cause = exc.args[0] if exc.args else None
    return isinstance(getattr(cause, "reason", None), Urllib3Timeout)


def _github_message(exc: Any) -> str:
    data = exc.data if isinstance(exc.data, dict) else {}
    message = str(data.get("message") or "").strip()
    details = [
        str(e.get("message") or e.get("code") or "") for e in data.get("errors") or [] if isinstance(e, dict)
    ]
    text = message + (f" ({'; '.join(d for d in details if d)})" if any(details) else "")
    return text or "(no message)"
