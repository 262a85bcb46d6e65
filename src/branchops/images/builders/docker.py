"""The docker CLI, against whatever engine DOCKER_HOST points to.

docker has no per-command switch for an insecure registry (that is the daemon's ``insecure-registries``)
and ``docker push`` writes no digest file, so the caller reads the digest from the registry.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping

from branchops.images.builders.base import Builder, BuildRequest, build_arg_flags


class DockerBuilder(Builder):
    name = "docker"

    @classmethod
    def available(cls) -> bool:
        return shutil.which("docker") is not None

    def environment(self, request: BuildRequest) -> Mapping[str, str]:
        return {"DOCKER_CONFIG": str(request.auth_dir)} if request.auth_dir else {}

    def commands(self, request: BuildRequest) -> list[list[str]]:
        build = [
            "docker",
            "build",
            "-f",
            request.dockerfile,
            "-t",
            request.image,
            *build_arg_flags(request),
            ".",
        ]
        return [build, ["docker", "push", request.image]]
