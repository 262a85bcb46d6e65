"""buildah: daemonless, rootless-capable; the embedded default on a Linux agent."""

from __future__ import annotations

import shutil

from branchops.images.builders.base import Builder, BuildRequest, build_arg_flags


class BuildahBuilder(Builder):
    name = "buildah"
    build_verb = ("bud",)

    @classmethod
    def available(cls) -> bool:
        return shutil.which(cls.name) is not None

    def commands(self, request: BuildRequest) -> list[list[str]]:
        auth = ["--authfile", str(request.auth_dir / "config.json")] if request.auth_dir else []
        # --layers keeps intermediate layers so an unchanged step is a cache hit next time.
        build = [
            self.name,
            *self.build_verb,
            "--layers",
            "-f",
            request.dockerfile,
            "-t",
            request.image,
            *build_arg_flags(request),
            *auth,
            ".",
        ]
        push = [self.name, "push", "--digestfile", str(request.digest_file), *auth]
        if request.insecure:
            push.append("--tls-verify=false")
        push += [request.image, f"docker://{request.image}"]
        return [build, push]
