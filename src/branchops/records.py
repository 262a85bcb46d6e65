"""Append-only run records on stage branches, and the typed view of what they hold.

Each run writes a new folder ``records/<stage>/<run_id>/`` holding ``record.json`` and the run's
artifacts (metrics, plots, reports, logs). Nothing is ever rewritten, so stage branches merge without
conflicts, and a run is found again by its source commit (the run id ends with it).

Reading scales with the history: a stage's records folder is listed once (``git ls-tree``), which gives
every run id and the tree of its folder, and the records wanted are then read in one ``git cat-file
--batch`` process, ``<folder tree>:record.json`` each. Run ids begin with a UTC timestamp, so the
newest run is the greatest name: ``status`` reads that one record only, and searches that want the
newest match read newest first in growing batches. (Opening each record by its path instead walks the
N-entry folder again for every record: O(N²).)

The records are JSON that people and the Jenkins side read, and those already in git stay there
forever, so the models below read leniently (unknown keys are ignored, a missing optional key is None,
a missing list or mapping is empty) and write back the shape the stages have always written: keys a
model lists in ``OMIT_WHEN_NONE`` are left out, not null, when they do not apply.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any, ClassVar, Iterator, TypeVar

import git
from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer

from branchops.errors import BranchopsError

RECORDS_ROOT = "records"
RECORD_FILE = "record.json"
SHORT_SHA = 12
# Newest-first searches read this many records first, then four times as many each round: a match
# among the latest runs costs one small read, and a search through everything still only O(log N) reads.
FIRST_BATCH = 16


def new_run_id(source_commit: str, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{source_commit[:SHORT_SHA]}"


def record_dir(stage: str, run_id: str) -> str:
    return f"{RECORDS_ROOT}/{stage}/{run_id}"


# -- the typed records ---------------------------------------------------------------------------------


class RecordPart(BaseModel):
    """A part of a record as its JSON holds it: read leniently, written back in the same shape."""

    model_config = ConfigDict(extra="ignore")
    # Keys the JSON leaves out, rather than writing null, when they do not apply (e.g. an experiment
    # that failed has no metrics, model or data).
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_out_what_does_not_apply(self, handler) -> dict[str, Any]:
        return {
            key: value
            for key, value in handler(self).items()
            if value is not None or key not in self.OMIT_WHEN_NONE
        }

    def to_dict(self) -> dict[str, Any]:
        # plain Python (values of free-form fields as they are): the runner writes it with json.dumps
        return self.model_dump()


class MergeRequestRef(RecordPart):
    number: int | None = None
    title: str | None = None
    source: str | None = None
    author: str | None = None
    approved_by: list[str] = []  # the approvals the gate counted
    merged_by: str | None = None
    url: str | None = None


class IncludedMergeRequest(RecordPart):
    number: int | None = None
    title: str | None = None
    author: str | None = None
    approved_by: list[str] = []
    merge_commit: str | None = None


class RunRecord(RecordPart):
    """``record.json``: one run of one stage, as ``runner.write_record`` writes it."""

    stage: str
    run_id: str
    branch: str | None = None
    source_commit: str | None = None
    outcome: str | None = None  # succeeded | failed | interrupted | abandoned
    summary: str | None = None
    error: str | None = None
    started_at: str | None = None  # ISO 8601, UTC, to the second
    finished_at: str | None = None
    duration_s: float | None = None
    merge_request: MergeRequestRef | None = None
    # every merge request whose content the run used (``merge_request`` first), as the gate counted them
    included_merge_requests: list[IncludedMergeRequest] = []
    config_digest: str | None = None
    branchops_version: str | None = None
    outputs: dict[str, Any] = {}  # the stage's own: read them typed with the stage's outputs model
    artifacts: list[str] = []


# training


class ModelRef(RecordPart):
    """A trained model: its export directory inside the model volume, and the snapshot taken of it."""

    OMIT_WHEN_NONE = frozenset({"snapshot"})
    volume: str | None = None
    path: str | None = None
    version: int | None = None
    snapshot: str | None = None


class DataRef(RecordPart):
    OMIT_WHEN_NONE = frozenset({"until"})
    volume: str | None = None
    snapshot: str | None = None  # None when storage.snapshots is false
    until: str | None = None  # the data window's last day (data.until) the run used; left out: all the data


class ExperimentEntry(RecordPart):
    """One experiment's pipeline run; metrics, model and data only when it succeeded."""

    OMIT_WHEN_NONE = frozenset({"metrics", "model", "data"})
    experiment: str
    run_name: str | None = None
    run_id: str | None = None
    state: str | None = None
    error: str | None = None
    duration_s: float | None = None
    reused_run: bool | None = None
    params: dict[str, Any] = {}
    metrics: dict[str, Any] | None = None
    model: ModelRef | None = None
    data: DataRef | None = None

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"

    def metric(self, name: str) -> Any:
        return (self.metrics or {}).get(name)


class PipelineRef(RecordPart):
    name: str | None = None
    id: str | None = None
    version_id: str | None = None
    spec_hash: str | None = None
    engine: str | None = None


class BestRef(RecordPart):
    experiment: str | None = None
    data: DataRef | None = None
    model: ModelRef | None = None


class TrainingLineage(RecordPart):
    source_commit: str | None = None
    config_digest: str | None = None
    run_id: str | None = None
    pipeline: PipelineRef | None = None
    # component -> image@digest, or a sentence saying why there are none (no registry configured)
    images: dict[str, str] | str | None = None
    approved_by: list[str] = []
    best: BestRef | None = None


class KpiVerdict(RecordPart):
    passed: bool | None = None
    failures: list[str] = []


class ProductionRef(RecordPart):
    """What served when the run was judged: the release's version and its training run's metrics."""

    version: int | None = None
    metrics: dict[str, Any] | None = None


class OpenedMergeRequest(RecordPart):
    number: int | None = None
    created: bool | None = None


class TrainingOutputs(RecordPart):
    OMIT_WHEN_NONE = frozenset({"deploy_merge_request"})
    experiments: list[ExperimentEntry] = []
    best: ExperimentEntry | None = None
    lineage: TrainingLineage | None = None
    kpi: KpiVerdict | None = None
    production: ProductionRef | None = None
    synthetic_data: bool | None = None
    deploy_merge_request: OpenedMergeRequest | None = None  # only when the KPI gate passed

    @property
    def model_version(self) -> int | None:
        return self.best.model.version if self.best and self.best.model else None


# deploy-model


class ReleaseSourceRef(RecordPart):
    OMIT_WHEN_NONE = frozenset({"volume", "snapshot"})
    volume: str | None = None
    snapshot: str | None = None
    path: str | None = None


class TrainingRunRef(RecordPart):
    run_id: str | None = None
    commit: str | None = None


class ReleaseRef(RecordPart):
    """The release file the run deployed (``serving.release.Release``, as written, None left out)."""

    OMIT_WHEN_NONE = frozenset({"strategy", "training"})
    model: str | None = None
    version: int | None = None
    source: ReleaseSourceRef | None = None
    strategy: str | None = None
    training: TrainingRunRef | None = None


class CheckRecord(RecordPart):
    name: str | None = None
    ok: bool | None = None
    detail: str | None = None
    seconds: float | None = None


class DeploymentRecord(RecordPart):
    """``serving.base.DeployResult.to_dict()``: what the rollout did, from which version to which."""

    model: str | None = None
    version: int | None = None
    strategy: str | None = None
    outcome: str | None = None  # deployed | unchanged | rolled_back
    before: int | None = None  # stable version before the rollout
    after: int | None = None  # stable version after it (== before when rolled back)
    reason: str | None = None
    checks: list[CheckRecord] = []
    canary_steps: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    ok: bool | None = None


class DeployOutputs(RecordPart):
    # Before the first release file exists the stage deploys nothing and records only deployment: null.
    OMIT_WHEN_NONE = frozenset({"backend", "release", "model_source", "approved_by", "seconds"})
    backend: str | None = None
    release: ReleaseRef | None = None
    model_source: str | None = None
    deployment: DeploymentRecord | None = None
    approved_by: list[str] | None = None
    seconds: float | None = None

    @property
    def release_version(self) -> int | None:
        return self.release.version if self.release else None


# kf-pipeline and build-components (read by lineage)


class PipelineUploadOutputs(RecordPart):
    engine: str | None = None
    pipeline_name: str | None = None
    pipeline_id: str | None = None
    version_id: str | None = None
    version_name: str | None = None
    spec_hash: str | None = None
    uploaded: bool | None = None
    images: dict[str, str] = {}


class ComponentBuild(RecordPart):
    name: str | None = None
    status: str | None = None  # built, skipped, failed, ...
    tag: str | None = None
    image: str | None = None
    digest: str | None = None


class BuildOutputs(RecordPart):
    registry: str | None = None
    builder: str | None = None
    note: str | None = None
    components: list[ComponentBuild] = []

    def built_digests(self) -> set[str]:
        return {c.digest for c in self.components if c.status == "built" and c.digest}


# A record read with its stage's outputs typed: one parse of the JSON, straight into the models.


class TrainingRun(RunRecord):
    outputs: TrainingOutputs = TrainingOutputs()


class DeployRun(RunRecord):
    outputs: DeployOutputs = DeployOutputs()


class PipelineUploadRun(RunRecord):
    outputs: PipelineUploadOutputs = PipelineUploadOutputs()


class BuildRun(RunRecord):
    outputs: BuildOutputs = BuildOutputs()


# Narrow views: the one field a search through the history compares, parsed from a record's JSON without
# building the rest of it (several times faster than the whole record, which matters over 10,000 of them).


class _Version(RecordPart):
    version: int | None = None


class _BestModel(RecordPart):
    model: _Version | None = None


class _TrainingBest(RecordPart):
    best: _BestModel | None = None


class TrainingVersionView(RecordPart):
    outputs: _TrainingBest = _TrainingBest()

    @property
    def model_version(self) -> int | None:
        best = self.outputs.best
        return best.model.version if best and best.model else None


class _DeployRelease(RecordPart):
    release: _Version | None = None


class DeployVersionView(RecordPart):
    outputs: _DeployRelease = _DeployRelease()

    @property
    def release_version(self) -> int | None:
        return self.outputs.release.version if self.outputs.release else None


class _SpecHash(RecordPart):
    spec_hash: str | None = None


class PipelineSpecView(RecordPart):
    outputs: _SpecHash = _SpecHash()


class _Components(RecordPart):
    components: list[ComponentBuild] = []


class BuildDigestsView(RecordPart):
    outputs: _Components = _Components()

    def built_digests(self) -> set[str]:
        return BuildOutputs(components=self.outputs.components).built_digests()


Parsed = TypeVar("Parsed", bound=RecordPart)


# -- reading -------------------------------------------------------------------------------------------


@dataclass
class StoredRecord:
    """A record as found on a branch; parsed only when asked, into the typed model the reader wants."""

    stage: str
    run_id: str
    path: str
    raw: bytes = field(repr=False)
    _parsed: dict[type, RecordPart] = field(default_factory=dict, repr=False, compare=False)

    def read_as(self, model: type[Parsed]) -> Parsed:
        """The record parsed as ``model``: a typed run (``TrainingRun``...) or a narrow view."""
        if model not in self._parsed:
            try:
                self._parsed[model] = model.model_validate_json(self.raw)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or '(record)'}: {e['msg']}" for e in exc.errors()
                )
                raise BranchopsError(f"{self.path}: not a readable branchops record: {problems}") from None
        return self._parsed[model]  # type: ignore[return-value]

    @property
    def record(self) -> RunRecord:
        return self.read_as(RunRecord)

    @cached_property
    def data(self) -> dict[str, Any]:
        """The record as plain JSON; ``record`` reads it typed."""
        return json.loads(self.raw)

    @property
    def outcome(self) -> str:
        return self.record.outcome or "unknown"

    @property
    def training_outputs(self) -> TrainingOutputs:
        return self.read_as(TrainingRun).outputs

    @property
    def deploy_outputs(self) -> DeployOutputs:
        return self.read_as(DeployRun).outputs

    @property
    def pipeline_outputs(self) -> PipelineUploadOutputs:
        return self.read_as(PipelineUploadRun).outputs

    @property
    def build_outputs(self) -> BuildOutputs:
        return self.read_as(BuildRun).outputs


def _git(repo: git.Repo, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo.git_dir, capture_output=True)


# A folder in ``git ls-tree -z`` output: "040000 tree <id>\t<name>\0"
_TREE_ENTRY = re.compile(rb"\d+ tree ([0-9a-f]+)\t([^\0]+)\0")


def _list_tree(repo: git.Repo, rev: str, path: str) -> dict[str, str]:
    """The folders in ``path`` at ``rev``: name -> tree id, from one ``git ls-tree``; {} if there is none."""
    done = _git(repo, ["ls-tree", "-z", f"{rev}:{path}"])
    if done.returncode != 0:  # no such folder (yet) at that revision
        return {}
    return {name.decode(): tree.decode() for tree, name in _TREE_ENTRY.findall(done.stdout)}


def _cat_files(repo: git.Repo, specs: list[str]) -> list[bytes | None]:
    """The blobs named by ``specs`` (``<tree>:<path>``), read by one ``git cat-file --batch``; None where
    there is no such blob."""
    if not specs:
        return []
    # Into a file, not a pipe: git writes the records without waiting for this process to empty a 64 KiB
    # pipe over and over (a third faster for 10,000 records).
    with tempfile.TemporaryFile() as output:
        done = subprocess.run(
            ["git", "cat-file", "--batch"],
            cwd=repo.git_dir,
            stdout=output,
            stderr=subprocess.PIPE,
            input="".join(f"{spec}\n" for spec in specs).encode(),
        )
        if done.returncode != 0:
            raise BranchopsError(
                f"git cat-file failed reading {len(specs)} records: {done.stderr.decode().strip()}"
            )
        output.seek(0)
        out = output.read()
    pos, blobs = 0, []
    for _ in specs:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        if len(header) != 3:  # "<spec> missing" (or ambiguous)
            blobs.append(None)
            pos = end + 1
            continue
        size = int(header[2])
        blobs.append(out[end + 1 : end + 1 + size] if header[1] == b"blob" else None)
        pos = end + 1 + size + 1  # the content is followed by a newline
    return blobs


@dataclass(frozen=True)
class StageHistory:
    """The records of one stage at one revision, listed once: read them by run id, the newest, or all."""

    repo: git.Repo
    rev: str
    stage: str
    folders: dict[str, str]  # run id -> tree of its record folder

    @cached_property
    def run_ids(self) -> list[str]:
        """Oldest first: run ids begin with their UTC start time."""
        return sorted(self.folders)

    def read(self, run_ids: list[str]) -> list[StoredRecord]:
        """These runs' records, in the order given, in one read; runs without a record.json are left out."""
        blobs = _cat_files(self.repo, [f"{self.folders[run_id]}:{RECORD_FILE}" for run_id in run_ids])
        return [
            StoredRecord(self.stage, run_id, f"{record_dir(self.stage, run_id)}/{RECORD_FILE}", raw)
            for run_id, raw in zip(run_ids, blobs)
            if raw is not None
        ]

    def latest(self) -> StoredRecord | None:
        for record in self.newest_first(batch=1):
            return record
        return None

    def newest_first(self, batch: int = FIRST_BATCH, *, until: str | None = None) -> Iterator[StoredRecord]:
        """Newest first (those that started no later than the run id ``until``, if given), read in batches
        that grow fourfold: stopping early reads little."""
        pending = [run_id for run_id in reversed(self.run_ids) if until is None or run_id <= until]
        while pending:
            chunk, pending = pending[:batch], pending[batch:]
            yield from self.read(chunk)
            batch *= 4

    def all(self) -> list[StoredRecord]:
        return self.read(self.run_ids)


def stage_history(repo: git.Repo, rev: str | None, stage: str) -> StageHistory:
    folders = _list_tree(repo, rev, f"{RECORDS_ROOT}/{stage}") if rev else {}
    return StageHistory(repo, rev or "", stage, folders)


def latest_record(repo: git.Repo, rev: str | None, stage: str) -> StoredRecord | None:
    """The newest record of ``stage`` at ``rev``: one listing and one record read, whatever the history."""
    return stage_history(repo, rev, stage).latest()


def list_records(
    repo: git.Repo, rev: str, stage: str, source_commit: str | None = None
) -> list[StoredRecord]:
    """The records of ``stage`` at ``rev``, oldest first; only those of ``source_commit`` if given."""
    history = stage_history(repo, rev, stage)
    run_ids = [r for r in history.run_ids if not source_commit or r.endswith(source_commit[:SHORT_SHA])]
    found = history.read(run_ids)
    return [r for r in found if r.record.source_commit == source_commit] if source_commit else found


def find_run(repo: git.Repo, revs: list[str], run_id: str) -> StoredRecord | None:
    """A record by run id (or a unique prefix of it) on any of ``revs``."""
    for rev in revs:
        for stage in sorted(_list_tree(repo, rev, RECORDS_ROOT)):
            history = stage_history(repo, rev, stage)
            for candidate in history.run_ids:
                if candidate == run_id or candidate.startswith(run_id):
                    found = history.read([candidate])
                    if found:
                        return found[0]
    return None


def to_json(record: RunRecord | dict[str, Any]) -> bytes:
    data = record.to_dict() if isinstance(record, RunRecord) else record
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()
