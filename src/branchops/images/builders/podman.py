"""podman: the same engine as buildah behind a docker-compatible command line."""

from __future__ import annotations

from branchops.images.builders.buildah import BuildahBuilder


class PodmanBuilder(BuildahBuilder):
    name = "podman"
    build_verb = ("build",)
