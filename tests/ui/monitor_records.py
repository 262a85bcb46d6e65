"""Monitoring checks for the dashboard's tests: ``records/monitor/<run id>/`` on the deploy-model branch, a
record.json and the two plots ``branchops monitor`` records beside it, in one bot commit (git fast-import).

A record is laid out as ``branchops.monitoring.monitor.check`` writes it: a run record whose ``outputs`` are
``MonitorResult.to_dict()`` (verdict, rows, features {name: {psi, ks_statistic, ks_pvalue, drifted}}, the
prediction's, consecutive_drifted_checks, live_metric as ``LiveMetric.to_dict()``, alarm and its reasons, the
retraining proposal as ``RetrainProposal.to_dict()``, the thresholds applied) and whose artifacts are the
two plots."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tests.ui import stand_in_stages

DRIFT_PNG = stand_in_stages.png(64, 48, (200, 60, 60))
LIVE_METRIC_PNG = stand_in_stages.png(64, 48, (60, 60, 200))
FEATURES = ("return_1d", "volatility_20d", "volume_ratio")


def check_time(i: int) -> datetime:
    return datetime(2026, 3, 2, tzinfo=timezone.utc) + timedelta(hours=6 * i)


def run_id(i: int) -> str:
    return f"{check_time(i).strftime('%Y%m%dT%H%M%S%fZ')}-{'%012x' % (0xC0FFEE + i)}"


def check(
    i: int,
    version: int,
    psi: dict[str, float],
    *,
    streak: int,
    rows: int = 250,
    live_metric: dict[str, Any] | None = None,
    merge_request: dict[str, Any] | None = None,
    psi_threshold: float = 0.25,
    ks_alpha: float = 0.01,
) -> dict[str, Any]:
    """Check ``i`` (six hours apart) of ``version``: a feature drifts when its PSI is over the threshold, and
    its KS p-value follows (tiny when it drifts)."""

    def drift(value: float) -> dict[str, Any]:
        over = value >= psi_threshold
        return {
            "psi": value,
            "ks_statistic": 0.3 if over else 0.05,
            "ks_pvalue": 1e-7 if over else 0.42,
            "drifted": over,
        }

    features = {name: drift(value) for name, value in psi.items()}
    drifted_names = [name for name, found in features.items() if found["drifted"]]
    drifted = bool(drifted_names)
    when = check_time(i).isoformat(timespec="seconds")
    reasons = [f"drift on {streak} consecutive checks"] if merge_request else []
    outputs = {
        "model": "djia",
        "version": version,
        "verdict": "drift" if drifted else "no drift",
        "dry_run": False,
        "run_id": run_id(i),
        "record": f"records/monitor/{run_id(i)}",
        "rows": rows,
        "requests": rows,
        "cursor": when,
        "previous_cursor": None,
        "drifted": drifted,
        "drifted_features": drifted_names,
        "consecutive_drifted_checks": streak,
        "features": features,
        "prediction": {
            **drift(0.25 if drifted else 0.05),
            "ks_pvalue": 0.003 if drifted else 0.2,
            "drifted": False,
        },
        "live_metric": live_metric,
        "alarm": bool(reasons),
        "alarm_reasons": reasons,
        "merge_request": merge_request,
        "data_until": None,
        "thresholds": {
            "psi_threshold": psi_threshold,
            "ks_alpha": ks_alpha,
            "min_rows": 100,
            "consecutive_checks": 2,
            "min_drifted_features": 1,
        },
    }
    return {
        "stage": "monitor",
        "run_id": run_id(i),
        "branch": "deploy-model",
        "source_commit": None,
        "outcome": "succeeded",
        "summary": f"{outputs['verdict']} on version {version}: {rows} logged rows",
        "error": None,
        "started_at": when,
        "finished_at": when,
        "duration_s": 1.5,
        "outputs": outputs,
        "artifacts": ["drift.png", "live_metric.png"],
    }


def write(repo: Path, checks: list[dict[str, Any]], branch: str = "deploy-model") -> None:
    """The checks' folders on ``branch`` in one commit, as monitor writes them back."""
    parent = subprocess.run(
        ["git", "rev-parse", f"refs/heads/{branch}"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    message = b"monitor: checks\n\nBranchops-Bot: true\n"
    stream = [
        f"commit refs/heads/{branch}\ncommitter branchops-bot <bot@users.local> 1772409600 +0000\n".encode()
        + f"data {len(message)}\n".encode()
        + message
        + f"from {parent}\n".encode()
    ]
    for found in checks:
        folder = f"records/monitor/{found['run_id']}"
        files = {"record.json": (json.dumps(found, indent=2, sort_keys=True) + "\n").encode()}
        files["drift.png"] = DRIFT_PNG
        files["live_metric.png"] = LIVE_METRIC_PNG
        for name, content in files.items():
            stream.append(
                f"M 100644 inline {folder}/{name}\ndata {len(content)}\n".encode() + content + b"\n"
            )
    subprocess.run(
        ["git", "fast-import", "--quiet", "--force"],
        cwd=repo,
        input=b"".join(stream),
        check=True,
        capture_output=True,
    )
