"""Image builders, one per file; :func:`select_builder` picks the one ``registry.builder`` names."""

from __future__ import annotations

from branchops.errors import ConfigError
from branchops.images.builders.base import Builder, BuildRequest, CommandFailed
from branchops.images.builders.buildah import BuildahBuilder
from branchops.images.builders.docker import DockerBuilder
from branchops.images.builders.kaniko import KanikoBuilder
from branchops.images.builders.podman import PodmanBuilder

BUILDERS: dict[str, type[Builder]] = {
    "buildah": BuildahBuilder,
    "podman": PodmanBuilder,
    "docker": DockerBuilder,
    "kaniko": KanikoBuilder,
}
# kaniko comes last: an agent that has it (a kaniko pod) has none of the others.
AUTO_ORDER = ("buildah", "podman", "docker", "kaniko")

__all__ = ["BUILDERS", "BuildRequest", "Builder", "CommandFailed", "select_builder"]


def select_builder(choice: str, timeout_s: float) -> Builder | None:
    """The configured builder (None for ``none``); ConfigError if it is not installed here."""
    if choice == "none":
        return None
    if choice == "auto":
        for name in AUTO_ORDER:
            if BUILDERS[name].available():
                return BUILDERS[name](timeout_s)
        raise ConfigError(
            "registry.builder is 'auto' but none of buildah, podman, docker or kaniko "
            "(/kaniko/executor) is installed on this agent; install one (see .ci/setup.d/"
            "containers.sh) or set registry.builder: none to only run the tests"
        )
    if choice not in BUILDERS:
        raise ConfigError(
            f"registry.builder: unknown builder '{choice}'; expected one of auto, none, {', '.join(BUILDERS)}"
        )
    builder = BUILDERS[choice]
    if not builder.available():
        raise ConfigError(f"registry.builder is '{choice}' but it is not installed on this agent")
    return builder(timeout_s)
