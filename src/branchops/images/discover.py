"""Find the pipeline components of a workspace and tag each by a hash of everything in its image.

A component is ``docker/<name>/Dockerfile`` whose sources are ``components/<name>/``. A variant such as
``docker/train-gpu/`` shares the sources of the longest existing prefix (``components/train/``).
Folders under ``docker/`` with no matching sources (a CI agent image, say) are not components.

The content tag hashes, as sorted relative paths and bytes: the component's folder, the shared
``components/common/``, ``components/__init__.py`` and ``__main__.py``, the ``docker/<name>/`` folder,
every other file its Dockerfile COPYs or ADDs from the build context, and the build args. Caches that
tests leave behind (``__pycache__``, ``.pytest_cache``) are not sources and are ignored, so running the
tests never changes a tag.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from branchops.errors import ConfigError

COMPONENTS_DIR = "components"
DOCKER_DIR = "docker"
SHARED_SOURCES = ("components/common", "components/__init__.py", "components/__main__.py")
TAG_LENGTH = 20  # hex characters of sha256: 80 bits, far beyond any collision risk for one project

_IGNORED_DIRS = frozenset(
    {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git", ".hypothesis"}
)
_IGNORED_SUFFIXES = (".pyc", ".pyo")
_IMAGE_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")  # one path component of an OCI repository name


@dataclass(frozen=True)
class Component:
    name: str  # the image name, e.g. "train-gpu"
    source_dir: str  # e.g. "components/train" (relative to the workspace)
    dockerfile: str  # e.g. "docker/train-gpu/Dockerfile"
    files: tuple[str, ...]  # every file hashed into content_tag, sorted, relative to the workspace
    content_tag: str
    build_args: Mapping[str, str] = field(default_factory=dict)

    @property
    def tests_dir(self) -> str:
        return f"{self.source_dir}/tests"


def _wanted(path: Path) -> bool:
    return not (set(path.parts) & _IGNORED_DIRS) and not path.name.endswith(_IGNORED_SUFFIXES)


def _files_under(workspace: Path, relative: str) -> Iterable[str]:
    target = workspace / relative
    if target.is_file():
        yield relative
    elif target.is_dir():
        for path in target.rglob("*"):
            rel = path.relative_to(workspace)
            if path.is_file() and _wanted(rel):
                yield rel.as_posix()


def _dockerfile_instructions(text: str) -> Iterable[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, rest = logical.partition(" ")
        yield keyword.upper(), rest.strip()
        logical = ""
    if logical:
        keyword, _, rest = logical.partition(" ")
        yield keyword.upper(), rest.strip()


def copied_sources(dockerfile_text: str) -> list[str]:
    """The build-context paths a Dockerfile's COPY/ADD instructions read (not ``--from`` stages, not URLs)."""
    sources: list[str] = []
    for keyword, rest in _dockerfile_instructions(dockerfile_text):
        if keyword not in ("COPY", "ADD"):
            continue
        if rest.startswith("["):
            try:
                args = json.loads(rest)
            except json.JSONDecodeError:
                continue
        else:
            try:
                args = shlex.split(rest)
            except ValueError:
                continue
        flags = [a for a in args if a.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue
        paths = [a for a in args if not a.startswith("--")]
        for src in paths[:-1]:
            # A source built from an ARG cannot be resolved here; the folders hashed anyway cover the
            # reference components, and such a path is rare enough to leave to the review.
            if "://" in src or "$" in src:
                continue
            sources.append(src.lstrip("/").removeprefix("./").rstrip("/") or ".")
    return sources


def _expand(workspace: Path, pattern: str) -> Iterable[str]:
    if pattern == ".":
        raise ConfigError(
            "a component Dockerfile copies the whole build context (COPY . ...); "
            "copy only the folders the component needs so its content tag stays precise"
        )
    if any(ch in pattern for ch in "*?["):
        for match in sorted(workspace.glob(pattern)):
            yield from _files_under(workspace, match.relative_to(workspace).as_posix())
    else:
        yield from _files_under(workspace, pattern)


def content_hash(workspace: Path, files: Iterable[str], build_args: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(set(files)):
        data = (workspace / rel).read_bytes()
        # Length-prefixed so that no two different file sets can produce the same byte stream.
        digest.update(f"file {len(rel.encode())}:{rel} {len(data)}:".encode())
        digest.update(data)
    for key in sorted(build_args):
        value = build_args[key]
        digest.update(f"arg {len(key)}:{key} {len(value.encode())}:{value}".encode())
    return digest.hexdigest()


def _source_dir_for(workspace: Path, name: str) -> str | None:
    """``components/<name>`` or, for a variant ``<base>-<suffix>``, the longest existing
    ``components/<base>``."""
    parts = name.split("-")
    for end in range(len(parts), 0, -1):
        candidate = "-".join(parts[:end])
        if candidate in ("common", "tests"):
            continue
        if (workspace / COMPONENTS_DIR / candidate).is_dir():
            return f"{COMPONENTS_DIR}/{candidate}"
    return None


def discover_components(workspace: Path, build_args: Mapping[str, str] | None = None) -> list[Component]:
    """Every component of the workspace with its content tag, sorted by name."""
    workspace = Path(workspace)
    args = dict(build_args or {})
    docker_root = workspace / DOCKER_DIR
    components: list[Component] = []
    if not docker_root.is_dir():
        return components
    for dockerfile in sorted(docker_root.glob("*/Dockerfile")):
        name = dockerfile.parent.name
        source_dir = _source_dir_for(workspace, name)
        if source_dir is None:
            continue
        if not _IMAGE_NAME.match(name):
            raise ConfigError(
                f"{dockerfile.relative_to(workspace)}: '{name}' is not a valid image name "
                "(lower-case letters, digits and single '.', '_' or '-' between them)"
            )
        text = dockerfile.read_text(encoding="utf-8")
        files: set[str] = set(_files_under(workspace, source_dir))
        files.update(_files_under(workspace, f"{DOCKER_DIR}/{name}"))
        for shared in SHARED_SOURCES:
            files.update(_files_under(workspace, shared))
        for pattern in copied_sources(text):
            files.update(_expand(workspace, pattern))
        ordered = tuple(sorted(files))
        tag = content_hash(workspace, ordered, args)[:TAG_LENGTH]
        components.append(
            Component(
                name=name,
                source_dir=source_dir,
                dockerfile=dockerfile.relative_to(workspace).as_posix(),
                files=ordered,
                content_tag=tag,
                build_args=args,
            )
        )
    return components
