"""Append-only run records on stage branches.

Each run writes a new folder ``records/<stage>/<run_id>/`` holding ``record.json`` and the run's
artifacts (metrics, plots, reports, logs). Nothing is ever rewritten, so stage branches merge without
conflicts, and a run is found again by its source commit (the run id ends with it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import git

from branchops import gitops

RECORDS_ROOT = "records"
SHORT_SHA = 12


def new_run_id(source_commit: str, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{source_commit[:SHORT_SHA]}"


def record_dir(stage: str, run_id: str) -> str:
    return f"{RECORDS_ROOT}/{stage}/{run_id}"


@dataclass(frozen=True)
class StoredRecord:
    stage: str
    run_id: str
    path: str
    data: dict[str, Any]

    @property
    def outcome(self) -> str:
        return self.data.get("outcome", "unknown")


def list_records(repo: git.Repo, rev: str, stage: str, source_commit: str | None = None) -> list[StoredRecord]:
    """The records of ``stage`` at ``rev``, oldest first; only those of ``source_commit`` if given."""
    records = []
    for run_id in gitops.list_dir(repo, rev, f"{RECORDS_ROOT}/{stage}"):
        if source_commit and not run_id.endswith(source_commit[:SHORT_SHA]):
            continue
        path = f"{record_dir(stage, run_id)}/record.json"
        raw = gitops.read_file(repo, rev, path)
        if raw is None:
            continue
        data = json.loads(raw)
        if source_commit and data.get("source_commit") != source_commit:
            continue
        records.append(StoredRecord(stage, run_id, path, data))
    return records


def find_run(repo: git.Repo, revs: list[str], run_id: str) -> StoredRecord | None:
    """A record by run id (or a unique prefix of it) on any of ``revs``."""
    for rev in revs:
        for stage in gitops.list_dir(repo, rev, RECORDS_ROOT):
            for candidate in gitops.list_dir(repo, rev, f"{RECORDS_ROOT}/{stage}"):
                if candidate == run_id or candidate.startswith(run_id):
                    raw = gitops.read_file(repo, rev, f"{record_dir(stage, candidate)}/record.json")
                    if raw is not None:
                        return StoredRecord(stage, candidate, f"{record_dir(stage, candidate)}/record.json",
                                            json.loads(raw))
    return None


def to_json(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()
