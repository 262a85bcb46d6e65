"""The approval gate (docs/architecture.md §4): a stage runs only when everything that entered its branch
since its last gated run came in through merge requests into that branch, each approved by a designated
approver of the branch who is not its author, on the commit that was merged. Everything else is refused
before anything happens, naming the commits at fault.

Why the whole change and not only the commit being built: a direct push that was refused stays on the
branch, and the next approved merge would otherwise carry it into a run that lineage calls approved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import git

from branchops import gitops
from branchops.errors import GateRefused
from branchops.forge.base import Forge, MergeRequest
from branchops.records import RECORDS_ROOT

# bootstrap writes each stage branch's code owners as the bot (before the branch is protected); the file
# names who reviews on GitHub and runs nothing, and the gate reads approvers from config, not from it
CODEOWNERS_PATH = ".github/CODEOWNERS"

# A gated range longer than this is not walked commit by commit: that many unrecorded commits on a stage
# branch means its history was rewritten or never gated, and a person should look.
MAX_COMMITS = 500
_REVERTS = re.compile(r"This reverts commit ([0-9a-f]{7,40})")


@dataclass(frozen=True)
class Verdict:
    """What the gate let through: the merge request of the commit being built and the approvers it
    counted, and every merge request whose content the run uses (newest first, that one included)."""

    merge_request: MergeRequest
    approved_by: list[str]
    included: list[tuple[MergeRequest, list[str]]]


def is_own_commit(repo: git.Repo, sha: str, bot_marker: str) -> bool:
    """Whether ``sha`` is branchops' own record commit, which never starts a stage and is not gated.

    The trailer alone does not say so: a squash or rebase merge of the release merge request lands the
    bot's release commit, trailer and all, as a new commit on deploy-model, and a person can write the
    trailer too. What branchops itself pushes to a stage branch is a single-parent commit that adds
    records (or bootstrap's code owners) and changes nothing else; anything more is someone's change, gated
    like any other.
    """
    commit = repo.commit(sha)
    if not gitops.trailer_marks(commit.message, bot_marker) or len(commit.parents) != 1:
        return False
    changed = gitops.changed_paths(repo, commit.parents[0].hexsha, commit.hexsha)
    return all(path.startswith(f"{RECORDS_ROOT}/") or path == CODEOWNERS_PATH for path in changed)


def is_team(name: str) -> bool:
    """An approver written "org/team" (or "@org/team", as in CODEOWNERS) names a team of the forge."""
    return "/" in name


def designates(forge: Forge | None, designated: list[str], user: str) -> bool:
    """Whether ``user`` is a designated approver: named, or a member of a named team. Teams are asked of
    the forge only when the user is not named, so an approval by a named approver costs no lookup."""
    if user in designated:
        return True
    if forge is None:
        return False
    return any(user in (forge.team_members(name) or []) for name in designated if is_team(name))


def counted_approvals(
    mr: MergeRequest, designated: list[str], forge: Forge | None = None
) -> tuple[list[str], list[str]]:
    """The approvals of ``mr`` that count (designated, not the author, on the merged head) and, for the
    others, why they do not. Teams among ``designated`` are resolved through ``forge``."""
    counted, reasons = [], []
    for approval in mr.approvals:
        if approval.user == mr.author:
            reasons.append(f"{approval.user} is the author of !{mr.number} (no self-approval)")
        elif not designates(forge, designated, approval.user):
            teams = [name for name in designated if is_team(name)]
            reasons.append(
                f"{approval.user} is not a designated approver of '{mr.target}'"
                + (f" (nor a member of {', '.join(teams)})" if teams else "")
            )
        elif approval.head_sha != mr.head_sha:
            reasons.append(
                f"{approval.user} approved {approval.head_sha[:12]}, before the last push "
                f"({mr.head_sha[:12]})"
            )
        elif approval.user not in counted:
            counted.append(approval.user)
    return counted, reasons


def _approved_merge(
    forge: Forge, commit: str, branch: str, designated: list[str]
) -> tuple[MergeRequest | None, list[str], str]:
    """(merge request, counted approvers, why not) for one commit on the branch's first-parent line."""
    mr = forge.merged_request_into(branch, commit)
    if mr is None:
        return None, [], "not the merge of a merge request (a direct push?)"
    if mr.target != branch:
        return mr, [], f"merged !{mr.number} into '{mr.target}', not into '{branch}'"
    counted, reasons = counted_approvals(mr, designated, forge)
    if not counted:
        return (
            mr,
            [],
            (
                f"merge request !{mr.number} ({mr.source} into {branch}) was merged without a valid "
                f"approval: {'; '.join(reasons) if reasons else 'nobody approved it'}"
            ),
        )
    return mr, counted, ""


def check(
    forge: Forge,
    repo: git.Repo,
    commit: str,
    branch: str,
    designated: list[str],
    since: str | None,
    bot_marker: str,
) -> Verdict:
    """Gate the run of ``commit`` on ``branch``: ``commit`` and every commit on the branch's first-parent
    line after ``since`` (the source of the last gated run; None: only ``commit``) must be an approved merge
    of a merge request into ``branch`` or branchops' own commit. GateRefused names every one that is not."""
    mr, counted, why = _approved_merge(forge, commit, branch, designated)
    if mr is None or not counted:
        if mr is None:
            raise GateRefused(
                f"commit {commit[:12]} on '{branch}' is {why}. Stages run only on approved merge "
                f"requests: open one into '{branch}' and have it approved by one of: "
                f"{', '.join(designated)}."
            )
        raise GateRefused(
            f"commit {commit[:12]}: {why}. Designated approvers of '{branch}': "
            f"{', '.join(designated)}. Nothing was run."
        )
    included = [(mr, counted)]
    refused: dict[str, tuple[git.Commit, str]] = {}
    for earlier in _first_parent_line(repo, commit, since)[1:]:
        if is_own_commit(repo, earlier.hexsha, bot_marker):
            continue
        other, others_counted, why = _approved_merge(forge, earlier.hexsha, branch, designated)
        if other is None or not others_counted:
            refused[earlier.hexsha] = (earlier, why)
        else:
            included.append((other, others_counted))
    _drop_reverted_pairs(repo, refused)
    unapproved = [f"{c.hexsha[:12]} {c.summary!r} by {c.author.name}: {why}" for c, why in refused.values()]
    if unapproved:
        raise GateRefused(
            f"!{mr.number} is approved, but '{branch}' also holds commits that no approved merge request "
            f"brought in since its last gated run{f' ({since[:12]})' if since else ''}:\n  "
            + "\n  ".join(unapproved)
            + f"\nRevert them on '{branch}' (git revert, through a merge request), "
            "or bring the change in through "
            f"a merge request approved by one of: {', '.join(designated)}. Nothing was run."
        )
    return Verdict(mr, counted, included)


def _drop_reverted_pairs(repo: git.Repo, refused: dict[str, tuple[git.Commit, str]]) -> None:
    """An unapproved commit and the ``git revert`` of it cancel out: together they change nothing, and
    reverting is how a team takes a direct push back out of a stage branch."""
    for sha, (revert, _) in list(refused.items()):
        match = _REVERTS.search(revert.message)
        target = match and next((s for s in refused if s.startswith(match.group(1))), None)
        if not target or target == sha or sha not in refused or len(revert.parents) != 1:
            continue
        original = refused[target][0]
        # against the first parent: a merge is reverted with `git revert -m 1`
        if original.parents and _diff(repo, original.parents[0].hexsha, original.hexsha) == _diff(
            repo, revert.hexsha, revert.parents[0].hexsha
        ):
            del refused[sha], refused[target]


def _diff(repo: git.Repo, old: str, new: str) -> str:
    return repo.git.diff("--no-color", "--full-index", old, new)


def _first_parent_line(repo: git.Repo, commit: str, since: str | None) -> list[git.Commit]:
    """``commit`` and its first parents down to (not including) ``since``."""
    if since is None or since == commit:
        return [repo.commit(commit)]
    if not gitops.is_ancestor(repo, since, commit):
        raise GateRefused(
            f"the last gated run's commit {since[:12]} is no longer in the history of {commit[:12]}: "
            "the branch was rewritten. Restore it, or have an administrator start over on a new "
            "branch. Nothing was run."
        )
    line = list(repo.iter_commits(f"{since}..{commit}", first_parent=True, max_count=MAX_COMMITS + 1))
    if len(line) > MAX_COMMITS:
        raise GateRefused(
            f"more than {MAX_COMMITS} commits since the last gated run ({since[:12]}): too many to "
            "gate one by one. Nothing was run."
        )
    return line
