"""The embedded forge: merge requests stored beside the repository, in ``.branchops/merge-requests/``.

Merge requests are JSON files (one per request, written atomically under a lock). Merging makes a
real two-parent merge commit with ``git merge-tree`` and moves the target branch by compare-and-swap,
so a conflict is reported with nothing half merged and the user's working tree is never touched.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import git

from branchops import gitops
from branchops.errors import MergeError, NotFound
from branchops.forge.base import Approval, CommitState, Forge, MergeRequest, MergeRequestState

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def local_identity(user: str) -> gitops.Identity:
    return gitops.Identity(user, f"{user}@users.local")


class LocalForge(Forge):
    name = "local"

    def __init__(self, repo: git.Repo):
        self.repo = repo
        self.root = gitops.state_dir(repo) / "merge-requests"
        self.root.mkdir(parents=True, exist_ok=True)
        self.statuses = gitops.state_dir(repo) / "commit-statuses"
        self.statuses.mkdir(parents=True, exist_ok=True)

    # -- storage -----------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _path(self, number: int) -> Path:
        return self.root / f"{number}.json"

    def _save(self, mr: MergeRequest) -> None:
        tmp = self._path(mr.number).with_suffix(".tmp")
        tmp.write_text(json.dumps(mr.to_dict(), indent=2))
        os.replace(tmp, self._path(mr.number))

    def _load_all(self) -> list[MergeRequest]:
        items = [MergeRequest.from_dict(json.loads(p.read_text())) for p in self.root.glob("*.json")]
        return sorted(items, key=lambda mr: mr.number)

    def _refresh_head(self, mr: MergeRequest) -> MergeRequest:
        """An open request follows its source branch, as on a real forge."""
        if mr.state == "open":
            tip = gitops.branch_tip(self.repo, mr.source)
            if tip:
                mr.head_sha = tip
        return mr

    # -- Forge -------------------------------------------------------------------------------------
    def open_merge_request(
        self, source: str, target: str, title: str, body: str, author: str | None = None
    ) -> tuple[MergeRequest, bool]:
        head = gitops.branch_tip(self.repo, source)
        if head is None:
            raise MergeError(f"source branch '{source}' does not exist")
        if gitops.branch_tip(self.repo, target) is None:
            raise MergeError(f"target branch '{target}' does not exist")
        if source == target:
            raise MergeError("source and target are the same branch")
        with self._locked():
            existing = next(
                (
                    mr
                    for mr in self._load_all()
                    if mr.state == "open" and mr.source == source and mr.target == target
                ),
                None,
            )
            if existing:
                existing.title, existing.body, existing.head_sha = title, body, head
                self._save(existing)
                return existing, False
            number = max((mr.number for mr in self._load_all()), default=0) + 1
            mr = MergeRequest(
                number=number,
                title=title,
                source=source,
                target=target,
                author=author or "unknown",
                state="open",
                head_sha=head,
                body=body,
                created_at=_now(),
                url=str(self._path(number)),
            )
            self._save(mr)
            return mr, True

    def get(self, number: int) -> MergeRequest:
        path = self._path(number)
        if not path.exists():
            raise NotFound(f"merge request !{number} does not exist")
        return self._refresh_head(MergeRequest.from_dict(json.loads(path.read_text())))

    def list(self, state: MergeRequestState | None = None, target: str | None = None) -> list[MergeRequest]:
        return [
            self._refresh_head(mr)
            for mr in self._load_all()
            if (state is None or mr.state == state) and (target is None or mr.target == target)
        ]

    def merged_request_for_commit(self, sha: str) -> MergeRequest | None:
        return next((mr for mr in self._load_all() if mr.state == "merged" and mr.merge_commit == sha), None)

    def update_body(self, number: int, markdown: str) -> None:
        with self._locked():
            mr = self.get(number)  # a closed or merged request's description can be edited too, as on GitHub
            mr.body = markdown
            self._save(mr)

    def comment(self, number: int, markdown: str, author: str = "branchops-bot") -> None:
        with self._locked():
            self.get(number)  # existence check
            comments = self.root / f"{number}.comments.jsonl"
            with open(comments, "a") as fh:
                fh.write(json.dumps({"author": author, "at": _now(), "body": markdown}) + "\n")

    def comments(self, number: int) -> list[dict]:
        path = self.root / f"{number}.comments.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def set_commit_status(
        self,
        sha: str,
        state: CommitState,
        description: str,
        context: str = "branchops",
        target_url: str | None = None,
    ) -> None:
        path = self.statuses / f"{sha}.json"
        statuses = json.loads(path.read_text()) if path.exists() else {}
        statuses[context] = {
            "state": state,
            "description": description,
            "target_url": target_url,
            "at": _now(),
        }
        path.write_text(json.dumps(statuses, indent=2))

    # -- local-only actions (on GitHub these happen in its UI) --------------------------------------
    def approve(self, number: int, user: str) -> MergeRequest:
        with self._locked():
            mr = self.get(number)
            if mr.state != "open":
                raise MergeError(f"merge request !{number} is {mr.state}; only open requests can be approved")
            mr.approvals = [a for a in mr.approvals if a.user != user]
            mr.approvals.append(Approval(user=user, head_sha=mr.head_sha, at=_now()))
            self._save(mr)
            return mr

    def close(self, number: int) -> MergeRequest:
        with self._locked():
            mr = self.get(number)
            if mr.state != "open":
                raise MergeError(f"merge request !{number} is already {mr.state}")
            mr.state = "closed"
            self._save(mr)
            return mr

    def merge(self, number: int, user: str) -> MergeRequest:
        """A real merge commit of source into target; a conflict leaves everything as it was."""
        with self._locked():
            mr = self.get(number)
            if mr.state != "open":
                raise MergeError(f"merge request !{number} is {mr.state}; only open requests can be merged")
            target_tip = gitops.branch_tip(self.repo, mr.target)
            if target_tip is None:
                raise MergeError(f"target branch '{mr.target}' no longer exists")
            source_tip = mr.head_sha
            try:
                tree = self.repo.git.merge_tree("--write-tree", "--name-only", target_tip, source_tip)
            except git.GitCommandError as exc:
                lines = exc.stdout.strip().strip("'").splitlines() if exc.stdout else []
                files = [
                    line for line in lines[1:] if line and not line.startswith(("Auto-merging", "CONFLICT"))
                ]
                conflicts = "\n  ".join(files) or str(exc.stderr).strip()
                raise MergeError(
                    f"merge request !{number} ({mr.source} into {mr.target}) has conflicts; nothing "
                    f"was merged. Conflicting files:\n  {conflicts}"
                ) from None
            tree = tree.splitlines()[0]
            message = f"Merge request !{number} from {mr.source} into {mr.target}\n\n{mr.title}\n"
            identity = local_identity(user)
            commit = self.repo.git.commit_tree(
                tree, "-p", target_tip, "-p", source_tip, "-m", message, env=identity.env()
            )
            if not gitops.compare_and_swap(self.repo, mr.target, commit, target_tip):
                raise MergeError(
                    f"'{mr.target}' moved while merging !{number}; nothing was merged, try again"
                )
            mr.state, mr.merge_commit, mr.merged_by, mr.merged_at = "merged", commit, user, _now()
            self._save(mr)
            log.info("merged !%d (%s into %s) as %s", number, mr.source, mr.target, commit[:12])
            return mr
