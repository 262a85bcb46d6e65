"""The image-builder port: build one component image from the workspace and push it.

One flavour per file (buildah, podman, docker, kaniko), chosen by ``registry.builder``. A builder turns
a component into command lines; running them, logging their output and timing out is shared here.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

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
        """Run the commands; return the pushed digest if the tool reported it (else the caller asks the
        registry)."""
        env = {**os.environ, **self.environment(request)}
        for argv in self.commands(request):
            run_logged(argv, log, cwd=request.workspace, env=env, timeout_s=self.timeout_s)
        if request.digest_file.exists():
            digest = request.digest_file.read_text(encoding="utf-8").strip()
            if digest.startswith("sha256:"):
                return digest
        return None


def run_logged(
    argv: Sequence[str], log: IO[str], cwd: Path, env: Mapping[str, str] | None, timeout_s: float
) -> None:
    """Run ``argv`` with its output appended to ``log``; raise CommandFailed on a non-zero exit or a
    timeout."""
    log.write(f"$ {mask(shlex.join(argv))}\n")
    log.flush()
    started = time.monotonic()
    try:
        completed = subprocess.run(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        log.write(mask((exc.stdout or b"").decode(errors="replace")))
        log.write(f"\n[timed out after {timeout_s:g}s]\n")
        raise CommandFailed(f"'{argv[0]}' timed out after {timeout_s:g}s") from None
    except FileNotFoundError:
        log.write(f"[{argv[0]}: command not found]\n")
        raise CommandFailed(f"'{argv[0]}' is not installed") from None
    log.write(mask(completed.stdout.decode(errors="replace")))
    log.write(f"[exit {completed.returncode} after {time.monotonic() - started:.1f}s]\n")
    log.flush()
    if completed.returncode != 0:
        last = [line for line in completed.stdout.decode(errors="replace").splitlines() if line.strip()][-1:]
        detail = f": {mask(last[0])}" if last else ""
        raise CommandFailed(f"'{shlex.join(argv[:2])}' exited with {completed.returncode}{detail}")


def build_arg_flags(request: BuildRequest) -> list[str]:
    flags: list[str] = []
    for key in sorted(request.build_args):
        flags += ["--build-arg", f"{key}={request.build_args[key]}"]
    for key in sorted(request.labels):
        flags += ["--label", f"{key}={request.labels[key]}"]
    return flags
