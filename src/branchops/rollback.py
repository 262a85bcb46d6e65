"""``branchops rollback``: prepare, as a merge request into deploy-model, the revert that brings an
earlier release back. Nothing rolls back until an approver merges it: production follows git.
"""

from __future__ import annotations

import git
import yaml

from branchops import gitops
from branchops.errors import BadArgument, NotFound
from branchops.forge import make_forge
from branchops.forge.base import MergeRequest
from branchops.runner import working_config

ROLLBACK_BRANCH_PREFIX = "branchops/rollback-"


def release_merges(repo: git.Repo, tip: str, release_file: str) -> list[git.Commit]:
    """Merges on the deploy branch's first-parent line that changed the release, newest first.

    One ``git log``: along the first parents a commit touches a path when it differs from its first
    parent there, so git walks the branch's (many) record commits itself instead of this process."""
    found = repo.git.log("--first-parent", "--merges", "--format=%H", tip, "--", release_file)
    return [repo.commit(sha) for sha in found.split()]


def prepare_rollback(
    repo_path: str, user: str, to_merge_request: int | None = None
) -> tuple[MergeRequest, bool, str]:
    """Open (or update) the merge request that restores the release before the latest deploy merge
    (or the release as it was at merge request ``to_merge_request``)."""
    repo = gitops.open_repo(repo_path)
    config = working_config(repo)
    forge = make_forge(config, repo)
    release_file = config.serving.release_file
    deploy_branch = config.branch_for("deploy-model")
    tip = gitops.branch_tip(repo, deploy_branch, config.git.remote)
    if tip is None:
        raise NotFound(f"branch '{deploy_branch}' does not exist")
    current = gitops.read_file(repo, tip, release_file)
    if to_merge_request is not None:
        target = forge.get(to_merge_request)
        if target.state != "merged" or target.target != deploy_branch or not target.merge_commit:
            # the request exists (an unknown number is not found): the user named one that holds no release
            raise BadArgument(f"!{to_merge_request} is not a merge request merged into '{deploy_branch}'")
        wanted = gitops.read_file(repo, target.merge_commit, release_file)
        reason = f"back to the release of !{to_merge_request}"
    else:
        merges = release_merges(repo, tip, release_file)
        if not merges:
            # the earlier release to go back to does not exist
            raise NotFound(f"no merge into '{deploy_branch}' changed {release_file}: nothing to roll back")
        latest = merges[0]
        wanted = gitops.read_file(repo, latest.parents[0].hexsha, release_file)
        reason = f"revert {latest.hexsha[:12]} ({latest.summary})"
    if wanted is None:
        raise NotFound(f"there was no release before that merge: nothing to roll back to ({reason})")
    if wanted == current:
        # with --to, the user named the release already desired; without, no earlier release differs
        raise (BadArgument if to_merge_request is not None else NotFound)(
            f"{release_file} on '{deploy_branch}' already is that release ({reason})"
        )
    desired = yaml.safe_load(wanted)
    identity = gitops.Identity(user, f"{user}@users.local")
    message = f"Roll back {desired.get('model')} to version {desired.get('version')}\n\n{reason}\n"
    commit = gitops.build_commit(repo, tip, {release_file: wanted}, message, identity, overwrite=True)
    branch = ROLLBACK_BRANCH_PREFIX + config.serving.model_name
    gitops.set_branch(repo, branch, commit, config.git.remote)
    body = (
        f"Restores `{release_file}` to model **{desired.get('model')} version {desired.get('version')}** "
        f"({reason}).\n\nMerging this (after approval) makes that release the desired state again; the "
        "deploy-model stage then rolls serving back to it."
    )
    mr, created = forge.open_merge_request(branch, deploy_branch, message.splitlines()[0], body, user)
    return mr, created, reason
