"""The image-builder port: build one component image from the workspace and push it.

One flavour per file (buildah, podman, docker, kaniko), chosen by ``registry.builder``. A builder turns
a component into command lines; running them, streaming their output into the component's log and
timing out is shared here.
"""

from __future__ import annotations

import os
import shlex
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from branchops.progress import run_streaming
from branchops.secrets import mask


class CommandFailed(Exception):
    """A build or push command exited non-zero or timed out; the message says which and how."""


@dataclass(frozen=True)
class BuildRequest:
    workspace: Path  # the build context (repository root)
    dockerfile: str  # relative to the workspace
    image: str  # host[:port]/namespace/name:tag — the destination
    build_args: Mapping[str, str]
    labels: Mapping[str, str]
    insecure: bool  # push over plain HTTP / without TLS verification
    auth_dir: Path | None  # a directory holding a docker-style config.json with the registry login
    digest_file: Path  # where the builder writes the pushed manifest's digest (when it can)


class Builder(ABC):
    name: str = ""
    # Builders that rewrite their own container's filesystem (kaniko) cannot build two images at once.
    max_parallel: int | None = None

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s

    @classmethod
    @abstractmethod
    def available(cls) -> bool:
        """Whether this builder's tool is installed where the stage runs."""

    @abstractmethod
    def commands(self, request: BuildRequest) -> list[list[str]]:
        """The command lines that build and push ``request.image``, in order."""

    def environment(self, request: BuildRequest) -> Mapping[str, str]:
        """Extra environment variables for the commands."""
        return {}

    def build_and_push(self, request: BuildRequest, log: IO[str]) -> str | None:
        """Run the commands (their output also on the console at ``-v``); return the pushed digest if
        the tool reported it (else the caller asks the registry)."""
        env = {**os.environ, **self.environment(request)}
        for argv in self.commands(request):
            run_logged(argv, log, cwd=request.workspace, env=env, timeout_s=self.timeout_s)
        if request.digest_file.exists():
            digest = request.digest_file.read_text(encoding="utf-8").strip()
            if digest.startswith("sha256:"):
                return digest
        return None


def run_logged(
    argv: Sequence[str],
    log: IO[str],
    cwd: Path,
    env: Mapping[str, str] | None,
    timeout_s: float,
) -> None:
    """Run ``argv`` with its output appended to ``log`` line by line as it runs (a build's log shows
    each step while it happens); raise CommandFailed on a non-zero exit or a timeout."""
    log.write(f"$ {mask(shlex.join(argv))}\n")
    log.flush()
    try:
        done = run_streaming(
            argv,
            log,
            cwd=cwd,
            env=env,
            timeout_s=timeout_s,
            label=Path(argv[0]).name,
            transform=mask,
        )
    except FileNotFoundError:
        log.write(f"[{argv[0]}: command not found]\n")
        raise CommandFailed(f"'{argv[0]}' is not installed") from None
    if done.timed_out:
        log.write(f"[timed out after {timeout_s:g}s]\n")
        log.flush()
        raise CommandFailed(f"'{argv[0]}' timed out after {timeout_s:g}s")
    log.write(f"[exit {done.returncode} after {done.seconds:.1f}s]\n")
    log.flush()
    if done.returncode != 0:
        detail = f": {done.tail[-1]}" if done.tail else ""
        raise CommandFailed(f"'{shlex.join(argv[:2])}' exited with {done.returncode}{detail}")


def build_arg_flags(request: BuildRequest) -> list[str]:
    flags: list[str] = []
    for key in sorted(request.build_args):
        flags += ["--build-arg", f"{key}={request.build_args[key]}"]
    for key in sorted(request.labels):
        flags += ["--label", f"{key}={request.labels[key]}"]
    return flags
