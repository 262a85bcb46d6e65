"""The forge port: what stages and the approval gate need from a code forge.

That is merge requests with their approvals, comments and commit statuses, and nothing else: setting a
repository up (branches, protection, webhooks) is bootstrap's business (``branchops.forge.github_admin``).
Backends: ``local`` (merge requests stored beside the repository) and ``github`` (PyGithub).
The stage runner's approval gate only reads :class:`MergeRequest` objects, so it is the same for both.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Literal

MergeRequestState = Literal["open", "merged", "closed"]
CommitState = Literal["pending", "success", "failure", "error"]


@dataclass(frozen=True)
class Approval:
    user: str
    # The head commit of the merge request when the approval was given: an approval counts only if
    # it was given on the commit that was merged (approvals before the last push do not count).
    head_sha: str
    at: str  # ISO 8601 UTC


@dataclass
class MergeRequest:
    number: int
    title: str
    source: str
    target: str
    author: str
    state: MergeRequestState
    head_sha: str
    body: str = ""
    created_at: str = ""
    merged_at: str | None = None
    merged_by: str | None = None
    merge_commit: str | None = None
    approvals: list[Approval] = field(default_factory=list)
    url: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MergeRequest:
        data = dict(data)
        data["approvals"] = [Approval(**a) for a in data.get("approvals", [])]
        return cls(**data)


class Forge(abc.ABC):
    """What branchops needs from a code forge."""

    name: str

    @abc.abstractmethod
    def open_merge_request(
        self, source: str, target: str, title: str, body: str, author: str | None = None
    ) -> tuple[MergeRequest, bool]:
        """Open a merge request, or update the open one with the same source and target.

        Returns the merge request and whether it was newly created (never a duplicate).
        """

    @abc.abstractmethod
    def get(self, number: int) -> MergeRequest: ...

    @abc.abstractmethod
    def list(
        self, state: MergeRequestState | None = None, target: str | None = None
    ) -> list[MergeRequest]: ...

    @abc.abstractmethod
    def merged_request_for_commit(self, sha: str) -> MergeRequest | None:
        """The merged merge request whose merge produced commit ``sha`` (None for a direct push)."""

    def merged_request_into(self, target: str, sha: str) -> MergeRequest | None:
        """The merged merge request into ``target`` whose merge produced commit ``sha`` (None: none did).

        The gate asks this for each commit on a stage branch. A forge that can search the merge requests
        into one branch (GitHub) overrides it; merge requests into other branches are found here too.
        """
        return self.merged_request_for_commit(sha)

    def team_members(self, team: str) -> list[str] | None:
        """Logins of the members of ``team`` ("org/team"), for approvers named as a team; None: this forge
        has no teams, so a team approves nothing."""
        return None

    def file_link(self, ref: str, path: str) -> str:
        """A link to the file ``path`` as it is at ``ref`` (a branch or commit) that the forge renders in a
        merge request's description, e.g. an image. Embedded forge: the repository path itself."""
        return path

    @abc.abstractmethod
    def update_body(self, number: int, markdown: str) -> None:
        """Replace the description of merge request ``number``, keeping its title, branches and
        approvals (e.g. a bot's merge request whose evidence is newer than when it was opened)."""

    @abc.abstractmethod
    def comment(self, number: int, markdown: str) -> None: ...

    @abc.abstractmethod
    def set_commit_status(
        self,
        sha: str,
        state: CommitState,
        description: str,
        context: str = "branchops",
        target_url: str | None = None,
    ) -> None: ...
