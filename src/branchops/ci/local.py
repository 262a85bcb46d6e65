"""The local CI runner: merging a merge request into a stage branch runs that branch's stage right away,
as a Jenkins multibranch job would on the merge commit."""

from __future__ import annotations

from pathlib import Path

from branchops import gitops, runner
from branchops.forge.base import MergeRequest
from branchops.forge.local import LocalForge


def merge_and_run(repo_path: str | Path, number: int, user: str, *, run: bool = True
                  ) -> tuple[MergeRequest, list[runner.RunReport]]:
    repo = gitops.open_repo(repo_path)
    mr = LocalForge(repo).merge(number, user)
    if not run:
        return mr, []
    return mr, runner.run_branch(repo_path, mr.target, commit=mr.merge_commit)
