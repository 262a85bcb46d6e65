"""What every stage receives and returns. The runner (``branchops.runner``) does the gate,
idempotency, notifications and write-back; a stage module only does its own work.

A stage module ``branchops/stages/<name>.py``, registered in :data:`branchops.stages.REGISTRY`, defines:

* ``inputs(config)``: path prefixes whose change makes the stage run in single-branch mode;
* ``plan(ctx) -> list[str]``: what the stage would do (``--dry-run``), touching nothing;
* ``run(ctx) -> StageResult``: do the work; raise ``BranchopsError`` (or return outcome "failed").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig
    from branchops.forge.base import Forge, MergeRequest
    from branchops.notify.base import Notifier

Outcome = Literal["success", "failed"]


@dataclass
class StageContext:
    stage: str
    branch: str
    workspace: Path  # a checkout of ``source_commit``: read sources and config from here
    git_dir: Path  # the repository whose refs the records are written to
    state_dir: Path  # local, uncommitted state (volumes, registries, logs): <git common dir>/../.branchops
    config: "BranchopsConfig"
    source_commit: str
    run_id: str  # <UTC timestamp>-<short source commit>; names the record folder
    record_dir: str  # path inside the branch where this run's record and artifacts go
    merge_request: "MergeRequest | None"
    forge: "Forge"
    notifier: "Notifier"
    dry_run: bool = False
    # who signed the merge request off, as the gate counted them (designated approvers, not the author,
    # approvals of the last pushed commit): what records and lineage say approved the run
    approved_by: list[str] = field(default_factory=list)
    # every merge request whose content the run uses, with the approvers the gate counted for each
    included: list[tuple["MergeRequest", list[str]]] = field(default_factory=list)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("branchops.stage"))

    # Files (path relative to record_dir -> bytes) committed beside the record, e.g. metrics.json.
    artifacts: dict[str, bytes] = field(default_factory=dict)

    def add_artifact(self, relpath: str, content: bytes | str) -> None:
        self.artifacts[relpath] = content.encode() if isinstance(content, str) else content


class Stage(Protocol):
    """A stage module, as :data:`branchops.stages.REGISTRY` lists it."""

    def inputs(self, config: BranchopsConfig) -> tuple[str, ...]: ...

    def plan(self, ctx: StageContext) -> list[str]: ...

    def run(self, ctx: StageContext) -> StageResult: ...


@dataclass
class StageResult:
    outcome: Outcome
    summary: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    exit_code: int | None = None  # when a failure has a more telling exit code than 1 (bad data: 7)
