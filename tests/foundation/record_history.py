"""Stage histories for tests: many records on a stage branch in one commit, in the JSON shape the stages
write (docs/architecture.md §5), so that a test of 200 runs takes a second instead of 200 runs."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

FIRST_VERSION = 1_760_000_000
SUMMARY_PADDING = "x" * 600  # every record well over this size: reading a record costs more than listing it


def commit_of(i: int) -> str:
    return hashlib.sha1(f"commit-{i}".encode()).hexdigest()


def run_id(i: int) -> str:
    when = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=i)
    return f"{when.strftime('%Y%m%dT%H%M%S%fZ')}-{commit_of(i)[:12]}"


def spec_hash(i: int) -> str:
    return hashlib.sha256(f"spec-{i}".encode()).hexdigest()


def image_digest(i: int) -> str:
    return "sha256:" + hashlib.sha256(f"image-{i}".encode()).hexdigest()


def record(stage: str, i: int, outputs: dict[str, Any], **changes: Any) -> dict[str, Any]:
    data = {
        "stage": stage,
        "branch": stage,
        "run_id": run_id(i),
        "source_commit": commit_of(i),
        "outcome": "succeeded",
        "summary": f"{stage} run {i} {SUMMARY_PADDING}",
        "error": None,
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
        "duration_s": 60.0,
        "merge_request": {
            "number": i + 1,
            "title": f"change {i}",
            "source": "ds1",
            "author": "ds1",
            "approved_by": ["lead"],
            "merged_by": "lead",
            "url": None,
        },
        "config_digest": "c" * 64,
        "branchops_version": "0.1.0",
        "outputs": outputs,
        "artifacts": [],
    }
    return data | changes


def model(i: int) -> dict[str, Any]:
    version = FIRST_VERSION + i
    return {
        "volume": "models",
        "path": f"runs/{i}/export/{version}",
        "version": version,
        "snapshot": f"models-{i}",
    }


def training(i: int) -> dict[str, Any]:
    best = {
        "experiment": "wide",
        "run_name": f"{i}-wide",
        "run_id": f"kfp-{i}",
        "state": "SUCCEEDED",
        "error": None,
        "duration_s": 3.0,
        "reused_run": False,
        "params": {"units": 64},
        "metrics": {
            "accuracy": 0.54,
            "roc_auc": 0.55,
            "precision": 0.5,
            "recall": 0.5,
            "f1": 0.5,
            "beats_baselines": {"all": True},
        },
        "model": model(i),
        "data": {"volume": "data", "snapshot": f"data-{i}"},
    }
    lineage = {
        "source_commit": commit_of(i),
        "config_digest": "c" * 64,
        "run_id": run_id(i),
        "pipeline": {
            "name": "p",
            "id": "p-1",
            "version_id": f"v-{i}",
            "spec_hash": spec_hash(i),
            "engine": "local",
        },
        "images": {"train": f"registry.local/train@{image_digest(i)}"},
        "approved_by": ["lead"],
        "best": {"experiment": "wide", "data": best["data"], "model": best["model"]},
    }
    return record(
        "training",
        i,
        {
            "experiments": [best],
            "best": best,
            "lineage": lineage,
            "synthetic_data": False,
            "kpi": {"passed": True, "failures": []},
            "production": {"version": None, "metrics": None},
            "deploy_merge_request": {"number": 1000 + i, "created": True},
        },
    )


def pipeline_upload(i: int) -> dict[str, Any]:
    return record(
        "kf-pipeline",
        i,
        {
            "engine": "local",
            "pipeline_name": "p",
            "pipeline_id": "p-1",
            "version_id": f"v-{i}",
            "version_name": spec_hash(i),
            "spec_hash": spec_hash(i),
            "uploaded": True,
            "images": {},
        },
    )


def build(i: int) -> dict[str, Any]:
    return record(
        "build-components",
        i,
        {
            "registry": "registry.local",
            "builder": "buildah",
            "note": None,
            "components": [
                {
                    "name": "train",
                    "status": "built",
                    "tag": f"t{i}",
                    "image": f"registry.local/train:t{i}",
                    "digest": image_digest(i),
                    "tests": "passed",
                    "durations": {},
                    "reason": None,
                }
            ],
        },
    )


def deployment(i: int, version: int | None = None, before: int | None = None) -> dict[str, Any]:
    """deploy-model run ``i`` rolling serving from ``before`` to ``version`` (by default: model i, from
    i-1)."""
    version = FIRST_VERSION + i if version is None else version
    before = (version - 1 if i else None) if before is None else before
    release = {
        "model": "djia",
        "version": version,
        "source": {"snapshot": f"models-{i}", "path": f"runs/{i}"},
        "training": {"run_id": run_id(i), "commit": commit_of(i)},
    }
    result = {
        "model": "djia",
        "version": version,
        "strategy": "rolling",
        "outcome": "deployed",
        "before": before,
        "after": version,
        "reason": None,
        "checks": [],
        "canary_steps": [],
        "timings": {},
        "ok": True,
    }
    return record(
        "deploy-model",
        i,
        {
            "backend": "local",
            "release": release,
            "model_source": "/volumes/models",
            "deployment": result,
            "approved_by": ["head-of-ds"],
            "seconds": 1.0,
        },
        summary=f"model djia: version {before} -> version {version} (rolling) {SUMMARY_PADDING}",
    )


STAGE_RECORDS = {
    "build-components": build,
    "kf-pipeline": pipeline_upload,
    "training": training,
    "deploy-model": deployment,
}


def add_records(repo: Path, branch: str, stage: str, records: list[dict[str, Any]]) -> None:
    """One commit on ``branch`` adding ``records/<stage>/<run_id>/record.json`` for each record (git
    fast-import)."""
    parent = subprocess.run(
        ["git", "rev-parse", f"refs/heads/{branch}"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    stream = [
        f"commit refs/heads/{branch}\ncommitter bot <bot@users.local> 1767225600 +0000\n"
        f"data 8\nrecords\nfrom {parent}\n".encode()
    ]
    for data in records:
        content = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        stream.append(
            f"M 100644 inline records/{stage}/{data['run_id']}/record.json\ndata {len(content)}\n".encode()
            + content
            + b"\n"
        )
    subprocess.run(
        ["git", "fast-import", "--quiet", "--force"],
        cwd=repo,
        input=b"".join(stream),
        check=True,
        capture_output=True,
    )


def fill_history(repo: Path, count: int) -> None:
    """``count`` runs on each stage branch: training run i made model version FIRST_VERSION + i from pipeline
    upload i and build i, and deploy-model run i deployed it."""
    if count:
        for stage, make in STAGE_RECORDS.items():
            add_records(repo, stage, stage, [make(i) for i in range(count)])
