"""Merging a local merge request, then running what the merge starts, as CI would on the merge commit.

This is what ``branchops mr merge`` and ``branchops demo`` do with the embedded local forge: the merge
itself is the forge's (:meth:`LocalForge.merge`), the stages are the runner's (:func:`runner.run_branch`
on the merge commit), behind the same gate a Jenkins build of that commit would pass.
"""

from __future__ import annotations

from pathlib import Path

from branchops import runner
from branchops.forge.base import MergeRequest
from branchops.forge.local import LocalForge
from branchops.project import Project


def merge_and_run(
    repo_path: str | Path | Project, number: int, user: str, *, run: bool = True
) -> tuple[MergeRequest, list[runner.RunReport]]:
    project = Project.open(repo_path)
    mr = LocalForge(project.repo).merge(number, user)
    if not run:
        return mr, []
    return mr, runner.run_branch(project, mr.target, commit=mr.merge_commit)
