"""The approval gate (docs/architecture.md §4): a stage runs only on the merge of a merge request into its branch
that a designated approver of that branch approved, who is not its author, on the commit that was
merged. Everything else is refused before anything happens.
"""

from __future__ import annotations

from branchops.errors import GateRefused
from branchops.forge.base import Forge, MergeRequest


def check(forge: Forge, commit: str, branch: str, designated: list[str]) -> tuple[MergeRequest, list[str]]:
    """The merge request behind ``commit`` and the users whose approval counts; GateRefused otherwise."""
    mr = forge.merged_request_for_commit(commit)
    if mr is None:
        raise GateRefused(
            f"commit {commit[:12]} on '{branch}' is not the merge of a merge request (a direct push?). "
            f"Stages run only on approved merge requests: open one into '{branch}' and have it approved by "
            f"one of: {', '.join(designated)}."
        )
    if mr.target != branch:
        raise GateRefused(f"commit {commit[:12]} merged !{mr.number} into '{mr.target}', not into '{branch}'")
    counted, reasons = [], []
    for approval in mr.approvals:
        if approval.user == mr.author:
            reasons.append(f"{approval.user} is the author of !{mr.number} (no self-approval)")
        elif approval.user not in designated:
            reasons.append(f"{approval.user} is not a designated approver of '{branch}'")
        elif approval.head_sha != mr.head_sha:
            reasons.append(f"{approval.user} approved {approval.head_sha[:12]}, before the last push "
                           f"({mr.head_sha[:12]})")
        else:
            counted.append(approval.user)
    if not counted:
        why = "; ".join(reasons) if reasons else "nobody approved it"
        raise GateRefused(
            f"merge request !{mr.number} ({mr.source} into {branch}) was merged without a valid approval: {why}. "
            f"Designated approvers of '{branch}': {', '.join(designated)}. Nothing was run."
        )
    return mr, counted
