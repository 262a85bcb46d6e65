"""Forge port; the backend is chosen in config (forge.backend)."""

from __future__ import annotations


def make_forge(config, repo):
    if config.forge.backend == "github":
        from branchops.forge.github import GitHubForge

        return GitHubForge(config.forge.github)
    from branchops.forge.local import LocalForge

    return LocalForge(repo)
