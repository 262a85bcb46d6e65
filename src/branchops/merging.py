"""Merging a local merge request, then running what the merge starts, as CI would on the merge commit.

This is what ``branchops mr merge`` and ``branchops demo`` do with the embedded local forge: the merge
itself is the forge's (:meth:`LocalForge.merge`), the stages are the runner's (:func:`runner.run_branch`
on the merge commit), behind the same gate a Jenkins build of that commit would pass.
"""

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
