"""The desired serving state in git: ``serving/tfserve/release.yaml``.

The merge request from training into deploy-model changes only this file; merging it makes the
release the desired state and the deploy-model stage makes serving match it. Reverting the merge
brings the previous release back, and the stage rolls back to it. The schema is strict: unknown
keys are errors, versions are integers, paths stay inside their volume or snapshot.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RELEASE_HEADER = (
    "# Desired state of model serving (branchops deploy-model stage).\n"
    "# Changed by the merge request from training into deploy-model; revert that merge to roll back.\n"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelSource(_Strict):
    """Where the SavedModel version directory comes from: a path inside a volume or a snapshot."""

    volume: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    snapshot: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    # The SavedModel version directory (the one holding saved_model.pb), relative to the volume.
    path: str = Field(min_length=1)

    @field_validator("path")
    @classmethod
    def _relative_inside(cls, path: str) -> str:
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts or "\\" in path:
            raise ValueError(f"must be a relative POSIX path inside the volume or snapshot, got {path!r}")
        return path

    @model_validator(mode="after")
    def _exactly_one_origin(self) -> ModelSource:
        if (self.volume is None) == (self.snapshot is None):
            raise ValueError("a model source names exactly one of 'volume' or 'snapshot' (plus 'path')")
        return self

    def describe(self) -> str:
        origin = f"snapshot {self.snapshot}" if self.snapshot else f"volume {self.volume}"
        return f"{origin}:{self.path}"


class TrainingRef(_Strict):
    run_id: str = Field(min_length=1)
    commit: str = Field(pattern=r"^[0-9a-f]{7,64}$")


class Release(_Strict):
    model: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    version: int = Field(ge=1, le=2**63 - 1)
    source: ModelSource
    # None: the configured default (serving.rollout.strategy).
    strategy: Literal["rolling", "canary"] | None = None
    training: TrainingRef | None = None
    # Why this version may break the serving version's clients (its inputs or outputs changed); without
    # it such a release is refused. Written into the release file, so the approver sees it.
    breaking_change: str | None = Field(default=None, min_length=1)

    def strategy_or(self, default: str) -> str:
        return self.strategy or default


def parse_release(text: str, source: str | Path = "<string>") -> Release:
    """Validate release text; a ConfigError names the file, the line, the key and what was expected."""
    from branchops.config import validate_yaml

    return validate_yaml(
        Release,
        text,
        source,
        what="release file",
        shape="a release must be a mapping (model, version, source, strategy)",
    )


def read_release(path: str | Path) -> Release:
    from branchops.files import read_text

    file = Path(path)
    return parse_release(
        read_text(file, missing="release file not found (the training stage's merge request creates it)"),
        file,
    )


def render_release(release: Release) -> str:
    body = yaml.safe_dump(release.model_dump(mode="json", exclude_none=True), sort_keys=False)
    return RELEASE_HEADER + body


def write_release(path: str | Path, release: Release) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a release."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp")
    tmp.write_text(render_release(release), encoding="utf-8")
    tmp.replace(file)
