"""Monitoring checks for the dashboard's tests: ``records/monitor/<run id>/`` on the deploy-model branch, a
record.json and the two plots ``branchops monitor`` records beside it, in one bot commit (git fast-import).

A check's outputs are monitor.json's fields (docs/monitoring.md: time, model, version, rows, drifted,
features {name: {psi, ks_pvalue, drifted}}, prediction {psi, ks_pvalue}, live_metric {name, value, low,
high, validated, n} or null) with the check's alarm, drift streak and the retraining merge request it
opened or updated (monitoring.retrain's RetrainProposal: number, url, action)."""

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
    features = {
        name: {
            "psi": value,
            "ks_pvalue": 1e-7 if value > psi_threshold else 0.42,
            "drifted": value > psi_threshold,
        }
        for name, value in psi.items()
    }
    drifted_names = [name for name, found in features.items() if found["drifted"]]
    drifted = bool(drifted_names)
    time = check_time(i).isoformat().replace("+00:00", "Z")
    return {
        "stage": "monitor",
        "run_id": run_id(i),
        "branch": "deploy-model",
        "outcome": "succeeded",
        "summary": f"{rows} rows checked: "
        + (f"drift in {', '.join(drifted_names)}" if drifted else "no drift"),
        "started_at": time,
        "finished_at": time,
        "duration_s": 1.5,
        "outputs": {
            "time": time,
            "model": "djia",
            "version": version,
            "rows": rows,
            "drifted": drifted,
            "features": features,
            "prediction": {
                "psi": 0.05 + (0.2 if drifted else 0.0),
                "ks_pvalue": 0.2 if not drifted else 0.003,
            },
            "live_metric": live_metric,
            "alarm": merge_request is not None,
            "streak": streak,
            "merge_request": merge_request,
            "thresholds": {"psi_threshold": psi_threshold, "ks_alpha": ks_alpha},
        },
        "artifacts": ["drift.png", "live_metric.png"] if live_metric else ["drift.png"],
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
        if "live_metric.png" in found["artifacts"]:
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
