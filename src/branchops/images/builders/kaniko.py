"""kaniko: builds inside an unprivileged Kubernetes pod (the CI agent's kaniko container).

The executor unpacks the base image over its own container's root filesystem, so one pod builds one
image at a time (``--cleanup`` between builds) and the caller runs kaniko builds one after another.
Registry credentials come from ``$DOCKER_CONFIG/config.json``, like docker's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from branchops.images.builders.base import Builder, BuildRequest, build_arg_flags

EXECUTOR = os.environ.get("BRANCHOPS_KANIKO_EXECUTOR", "/kaniko/executor")


class KanikoBuilder(Builder):
    name = "kaniko"
    max_parallel = 1

    @classmethod
    def available(cls) -> bool:
        return os.access(EXECUTOR, os.X_OK)

    def environment(self, request: BuildRequest) -> Mapping[str, str]:
        return {"DOCKER_CONFIG": str(request.auth_dir)} if request.auth_dir else {}

    def commands(self, request: BuildRequest) -> list[list[str]]:
        argv = [
            EXECUTOR,
            "--context",
            f"dir://{request.workspace}",
            "--dockerfile",
            str(request.workspace / request.dockerfile),
            "--destination",
            request.image,
            "--digest-file",
            str(request.digest_file),
            "--cleanup",
            *build_arg_flags(request),
        ]
        if request.insecure:
            argv += ["--insecure", "--skip-tls-verify"]
        return [argv]
