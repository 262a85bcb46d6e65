"""The repository branchops works on, opened once: the git repository, its configuration (of the checkout,
and as merged at any commit) and its local state folder. Commands and stages take a :class:`Project` (or a
path, opened here), so a run reads the repository and parses its configuration once instead of at every
step it passes through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import git

from branchops import gitops
from branchops.config import CONFIG_PATH, BranchopsConfig, load_config, parse_config
from branchops.errors import ConfigError


def working_config(repo: git.Repo) -> BranchopsConfig:
    """The configuration of the checkout (or, in a bare clone, of the main branch's tip)."""
    if repo.working_tree_dir and (Path(repo.working_tree_dir) / CONFIG_PATH).exists():
        return load_config(repo.working_tree_dir)
    for rev in ("HEAD", "main", "master"):
        raw = gitops.resolve(repo, rev) and gitops.read_file(repo, rev, str(CONFIG_PATH))
        if raw:
            return parse_config(raw.decode(), f"{rev}:{CONFIG_PATH}")
    raise ConfigError(f"no {CONFIG_PATH} in this repository (run 'branchops init')")


def config_at(repo: git.Repo, commit: str) -> BranchopsConfig:
    """The configuration as reviewed and merged: read from the commit being built, not the checkout."""
    raw = gitops.read_file(repo, commit, str(CONFIG_PATH))
    if raw is None:
        raise ConfigError(
            f"{commit[:12]}:{CONFIG_PATH}: configuration file not found in the commit being built"
        )
    return parse_config(raw.decode("utf-8", errors="replace"), f"{CONFIG_PATH} @ {commit[:12]}")


@dataclass
class Project:
    repo: git.Repo
    _merged: dict[str, BranchopsConfig] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, where: str | Path | Project = ".") -> Project:
        return where if isinstance(where, Project) else cls(gitops.open_repo(where))

    @cached_property
    def config(self) -> BranchopsConfig:
        """The checkout's configuration (what says which branch is which stage)."""
        return working_config(self.repo)

    def config_at(self, commit: str) -> BranchopsConfig:
        """The configuration merged at ``commit`` (parsed once per commit)."""
        if commit not in self._merged:
            self._merged[commit] = config_at(self.repo, commit)
        return self._merged[commit]

    @cached_property
    def state_dir(self) -> Path:
        return gitops.state_dir(self.repo)

    @property
    def root(self) -> Path:
        return Path(self.repo.working_tree_dir or ".")

    def branch_tip(self, branch: str) -> str | None:
        return gitops.branch_tip(self.repo, branch, self.config.git.remote)
