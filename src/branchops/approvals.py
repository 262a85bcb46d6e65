"""An approval checked when it is given, not only when the merge reaches the gate.

``branchops mr approve`` asks the gate's own question (:func:`branchops.gate.counted_approvals`) of the
approval about to be recorded, with the approvers the gate will read: those of the target branch's
configuration as the branch is now (the gate reads the branch as it was before the merge, which is this
unless something else enters it first). An approval by the author, or by someone the branch does not
designate, is refused where it is made instead of being found worthless at the merge. The gate still
checks every approval at the merge: on GitHub anyone with write access can approve.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

from branchops import gitops
from branchops.errors import ConfigError, GateRefused
from branchops.forge.base import Approval, Forge, MergeRequest
from branchops.gate import counted_approvals
from branchops.project import Project

log = logging.getLogger(__name__)


def designated_now(project: Project, mr: MergeRequest) -> dict[str, list[str]]:
    """Stage -> designated approvers for the stages a merge into ``mr.target`` would run, read from the
    target branch's tip (or, for a branch with no configuration yet, from what the merge brings, as the
    runner does for a branch's first configuration)."""
    tip = gitops.branch_tip(project.repo, mr.target)
    try:
        config = project.config_at(tip or mr.head_sha)
    except ConfigError:
        config = project.config_at(mr.head_sha)
    return {stage: list(config.approvers[stage]) for stage in config.stages_for_branch(mr.target)}  # type: ignore[index]


def check_approval(project: Project, forge: Forge, mr: MergeRequest, user: str) -> None:
    """Raise GateRefused when the gate would not count ``user``'s approval of ``mr`` for any stage it runs;
    warn when it would count for some of the branch's stages only (single-branch mode). Approvers named as
    a team are resolved through ``forge``, as the gate resolves them."""
    candidate = replace(
        mr,
        approvals=[
            Approval(user=user, head_sha=mr.head_sha, at=datetime.now(UTC).isoformat(timespec="seconds"))
        ],
    )
    if user == mr.author:
        _, reasons = counted_approvals(candidate, [user])
        raise GateRefused(f"{reasons[0]}; nothing was recorded")
    designated = designated_now(project, mr)
    if not designated:
        return  # no stage runs on this branch: the gate never reads its approvals
    refusals = {
        stage: counted_approvals(candidate, approvers, forge)[1] for stage, approvers in designated.items()
    }
    counting = [stage for stage, reasons in refusals.items() if not reasons]
    if not counting:
        approvers = sorted({a for names in designated.values() for a in names})
        first = next(iter(refusals.values()))[0]
        raise GateRefused(f"{first} (designated: {', '.join(approvers)}); nothing was recorded")
    if len(counting) < len(designated):
        log.warning(
            "%s's approval of !%d counts for %s only, not for %s",
            user,
            mr.number,
            ", ".join(counting),
            ", ".join(stage for stage in designated if stage not in counting),
        )
