"""Git plumbing for branchops: reading files at a commit, bot commits written without a checkout,
compare-and-swap ref updates locally and rebase-and-retry pushes to a remote.

Records are written by building a new tree from the branch tip plus the new files (a private index file,
so neither the user's working tree nor their index is touched), committing it on top of the tip, and
moving the branch only if it still points at that tip. When another writer got there first, the commit
is rebuilt on the new tip and tried again: the files are new paths, so this never conflicts.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import git

from branchops.errors import BranchopsError, ExternalError, NotFound

log = logging.getLogger(__name__)

ZERO_SHA = "0" * 40


@dataclass(frozen=True)
class Identity:
    name: str
    email: str

    def env(self) -> dict[str, str]:
        return {
            "GIT_AUTHOR_NAME": self.name,
            "GIT_AUTHOR_EMAIL": self.email,
            "GIT_COMMITTER_NAME": self.name,
            "GIT_COMMITTER_EMAIL": self.email,
        }


def open_repo(path: str | Path = ".") -> git.Repo:
    try:
        return git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise NotFound(f"{Path(path).resolve()}: not inside a git repository") from None


def main_worktree(repo: git.Repo) -> Path:
    """The repository's main working tree, also when ``repo`` is a linked worktree of it."""
    common = Path(repo.git.rev_parse("--git-common-dir"))
    if not common.is_absolute():
        common = (Path(repo.working_tree_dir or repo.git_dir) / common).resolve()
    return common.parent if common.name == ".git" else common


def state_dir(repo: git.Repo) -> Path:
    """Local, never-committed state beside the repository (merge requests, volumes, logs)."""
    path = main_worktree(repo) / ".branchops"
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve(repo: git.Repo, rev: str) -> str | None:
    try:
        return repo.git.rev_parse("--verify", "--quiet", f"{rev}^{{commit}}")
    except git.GitCommandError:
        return None


def branch_tip(repo: git.Repo, branch: str, remote: str | None = None) -> str | None:
    if remote:
        return resolve(repo, f"refs/remotes/{remote}/{branch}")
    return resolve(repo, f"refs/heads/{branch}")


def fetch_branches(repo: git.Repo, remote: str, branches: list[str]) -> list[str]:
    """Update the remote-tracking refs of ``branches`` from ``remote``, each by an explicit refspec (a CI
    checkout may fetch only the branch it builds, whatever else the remote holds). Returns the branches the
    remote does not have."""
    refspecs = {branch: f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}" for branch in branches}
    try:
        _run_git(repo, ["fetch", "--quiet", "--no-tags", remote, *refspecs.values()])
        return []
    except git.GitCommandError as exc:
        if "couldn't find remote ref" not in str(exc.stderr):
            raise ExternalError(
                f"git fetch {remote} {' '.join(branches)} failed: {str(exc.stderr).strip()}"
            ) from None
        if len(branches) == 1:
            return list(branches)
    missing = []  # one at a time, to learn which
    for branch, refspec in refspecs.items():
        try:
            _run_git(repo, ["fetch", "--quiet", "--no-tags", remote, refspec])
        except git.GitCommandError as exc:
            if "couldn't find remote ref" not in str(exc.stderr):
                raise ExternalError(
                    f"git fetch {remote} {branch} failed: {str(exc.stderr).strip()}"
                ) from None
            missing.append(branch)
    return missing


def read_file(repo: git.Repo, rev: str, path: str) -> bytes | None:
    try:
        blob = repo.commit(rev).tree / path
    except (KeyError, ValueError, git.BadName):
        return None
    return blob.data_stream.read() if blob.type == "blob" else None


def list_dir(repo: git.Repo, rev: str, path: str) -> list[str]:
    try:
        tree = repo.commit(rev).tree / path
    except (KeyError, ValueError, git.BadName):
        return []
    return sorted(item.name for item in tree) if tree.type == "tree" else []


def changed_paths(repo: git.Repo, old: str | None, new: str) -> list[str]:
    if old is None:
        return [item.path for item in repo.commit(new).tree.traverse() if item.type == "blob"]
    # --no-renames: a moved file changed both its paths (a rename lists only the new one, so a move out of
    # src/ into records/ would pass for a records-only commit)
    return [line for line in repo.git.diff("--name-only", "--no-renames", old, new).splitlines() if line]


def is_ancestor(repo: git.Repo, older: str, newer: str) -> bool:
    """Whether ``older`` is in the history of ``newer``; False also when this clone lacks ``older``."""
    try:
        return repo.is_ancestor(older, newer)
    except git.GitCommandError:
        return False


def trailer_marks(message: str, marker: str) -> bool:
    return any(line.strip().lower() == f"{marker.lower()}: true" for line in message.splitlines())


def _run_git(
    repo: git.Repo, args: list[str], *, input: bytes | None = None, env: dict[str, str] | None = None
) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=repo.git_dir, input=input, capture_output=True, env={**os.environ, **(env or {})}
    )
    if proc.returncode != 0:
        raise git.GitCommandError(["git", *args], proc.returncode, proc.stderr)
    return proc.stdout.decode().strip()


def build_commit(
    repo: git.Repo,
    parent: str | None,
    files: dict[str, bytes],
    message: str,
    identity: Identity,
    *,
    overwrite: bool = False,
    extra_parents: tuple[str, ...] = (),
) -> str:
    """A commit of ``parent``'s tree plus ``files``, made without touching any working tree or index."""
    with tempfile.TemporaryDirectory(prefix="branchops-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if parent:
            _run_git(repo, ["read-tree", parent], env=env)
        for path, content in sorted(files.items()):
            if parent and not overwrite and read_file(repo, parent, path) is not None:
                raise BranchopsError(f"{path} already exists on the branch; records are append-only")
            blob = _run_git(repo, ["hash-object", "-w", "--stdin"], input=content)
            _run_git(repo, ["update-index", "--add", "--cacheinfo", f"100644,{blob},{path}"], env=env)
        tree = _run_git(repo, ["write-tree"], env=env)
    parents = [p for p in (parent, *extra_parents) if p]
    args = ["commit-tree", tree]
    for p in parents:
        args += ["-p", p]
    return _run_git(repo, args, input=message.encode(), env=identity.env())


def compare_and_swap(repo: git.Repo, branch: str, new: str, old: str | None) -> bool:
    """Move ``branch`` to ``new`` only if it still points at ``old`` (None: only if it does not exist)."""
    try:
        _run_git(repo, ["update-ref", f"refs/heads/{branch}", new, old or ZERO_SHA])
        return True
    except git.GitCommandError:
        return False


class BranchMoved(Exception):
    """The remote refused a push only because its branch moved since the fetch: rebuild and try again."""


# What `git push --porcelain` says of a ref the remote did not take because another writer moved it: the
# push was behind ([rejected]), or the branch moved while the remote was taking it (receive-pack then
# fails to lock or update the ref: [remote rejected] (failed to update ref), the "race" GitPython's flags
# would call a refusal). Everything else the remote refuses (a hook, branch protection, permissions)
# would be refused again.
_RACE_REASONS = ("non-fast-forward", "fetch first", "stale info", "failed to update ref", "failed to lock")


def push(repo: git.Repo, remote: str, refspec: str) -> None:
    """Push one refspec. Raises :class:`BranchMoved` when another writer got there first, and ExternalError
    with the remote's own words when it refuses the push (a hook, a protected branch) or cannot be reached.
    """
    proc = subprocess.run(
        ["git", "push", "--porcelain", remote, refspec],
        cwd=repo.git_dir,
        capture_output=True,
        text=True,
        errors="replace",  # a hook's message in another encoding is still reported, not a decoding error
    )
    # porcelain: one "<flag>\t<from>:<to>\t<summary>" line per ref; "!" is a ref the remote did not take
    statuses = [line.split("\t") for line in proc.stdout.splitlines() if line.count("\t") == 2]
    rejected = [summary for flag, _, summary in statuses if flag == "!"]
    if proc.returncode == 0 and statuses and not rejected:
        return
    if rejected and all(any(reason in summary for reason in _RACE_REASONS) for summary in rejected):
        raise BranchMoved("; ".join(rejected))
    said = [
        line.removeprefix("remote:").strip()
        for line in proc.stderr.splitlines()
        if line.startswith("remote:") and line.removeprefix("remote:").strip()
    ]
    if rejected:
        raise ExternalError(
            f"{remote} refused the push of {refspec.split(':')[-1]} ({'; '.join(rejected)}): "
            + (" ".join(said) or "it gave no reason")
        )
    raise ExternalError(
        f"git push {remote} {refspec.split(':')[-1]} failed: "
        + (" ".join(line.strip() for line in proc.stderr.splitlines() if line.strip()) or "no message")
    )


def commit_to_branch(
    repo: git.Repo,
    branch: str,
    files: dict[str, bytes],
    message: str,
    identity: Identity,
    *,
    remote: str | None = None,
    retries: int = 8,
    overwrite: bool = False,
) -> str:
    """Add ``files`` to ``branch`` in one commit, retrying on a newer tip (local CAS, or push to remote).

    Returns the new commit. With a remote, the commit is pushed and the local remote-tracking ref
    follows; without, the local branch is moved.
    """
    for attempt in range(1, retries + 1):
        if remote:
            fetch_branches(repo, remote, [branch])  # a branch the remote lacks yet is created by the push
        tip = branch_tip(repo, branch, remote)
        commit = build_commit(repo, tip, files, message, identity, overwrite=overwrite)
        if remote:
            try:
                push(repo, remote, f"{commit}:refs/heads/{branch}")
                _run_git(repo, ["update-ref", f"refs/remotes/{remote}/{branch}", commit])
                return commit
            except BranchMoved as moved:
                log.info(
                    "push to %s/%s rejected (attempt %d/%d), rebasing on the new tip: %s",
                    remote,
                    branch,
                    attempt,
                    retries,
                    moved,
                )
        elif compare_and_swap(repo, branch, commit, tip):
            return commit
        # Another writer moved the branch: back off a little (jittered) and rebuild on the new tip.
        time.sleep(min(2.0, 0.05 * attempt) * (0.5 + random.random()))
    raise ExternalError(f"could not write to branch '{branch}' after {retries} attempts (it keeps moving)")


def set_branch(repo: git.Repo, branch: str, commit: str, remote: str | None = None) -> None:
    """Point a branch that only branchops writes (e.g. its release branch) at ``commit``."""
    if remote:
        push(repo, remote, f"+{commit}:refs/heads/{branch}")
    _run_git(repo, ["update-ref", f"refs/heads/{branch}", commit])


def bot_message(summary: str, body: str, marker: str) -> str:
    """A commit message carrying branchops' bot trailer, so the commit never starts a stage."""
    text = summary.strip() + "\n\n"
    if body.strip():
        text += body.strip() + "\n\n"
    return text + f"{marker}: true\n"
