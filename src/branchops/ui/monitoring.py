"""The monitoring checks, as the dashboard shows them: what ``branchops monitor`` recorded on the deploy-model
branch (``records/monitor/<run id>/record.json``, beside its ``drift.png`` and ``live_metric.png``), read from
git as the stage records are.

A check's figures are its record's ``outputs`` (``branchops.monitoring.monitor.MonitorResult.to_dict``): the
verdict and the rows of logged traffic it read, per feature the PSI against the served version's training
reference and a two-sample KS test's p-value, the same for the prediction, how many checks in a row have
drifted, the thresholds it applied, the live metric with its interval against the value validated at
training, and the retraining merge request it opened or updated. A record is read leniently: a figure it
lacks is shown as missing, never guessed, and a repository never monitored simply has no checks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

MONITOR_STAGE = "monitor"  # records/monitor/<run id>/ on the deploy-model branch
PLOT_SUFFIX = ".png"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    psi: float | None
    ks_pvalue: float | None
    drifted: bool | None


@dataclass(frozen=True)
class LiveMetric:
    name: str | None
    value: float | None
    low: float | None
    high: float | None
    validated: float | None  # the serving version's value at training
    n: int | None  # outcomes joined
    confidence: float | None = None
    note: str | None = None  # why there is no value (too few outcomes, one class only, ...)

    @property
    def below_validated(self) -> bool:
        """Significantly below: the whole interval under the validated value (monitor's alarm)."""
        return self.high is not None and self.validated is not None and self.high < self.validated


@dataclass
class Check:
    """One ``branchops monitor`` check."""

    run_id: str
    time: str | None
    model: str | None
    version: int | None
    rows: int | None
    verdict: str | None  # drift | no drift | too few rows
    drifted: bool | None
    alarm: bool | None
    alarm_reasons: list[str]
    features: list[FeatureDrift]
    prediction: FeatureDrift | None
    live_metric: LiveMetric | None
    streak: int | None  # drifted checks in a row up to this one, as the record counts them
    merge_request: dict[str, Any] | None  # the retraining merge request this check opened or updated
    plots: list[str]
    outcome: str | None
    summary: str | None
    thresholds: dict[str, float] = field(default_factory=dict)  # as the check applied them, when recorded

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    @property
    def ks_tests(self) -> int:
        """The columns the check tested at once (each feature and the prediction): monitor divides the KS
        test's alpha by it (Bonferroni), so that alpha bounds the chance of any false alarm per check."""
        return max(len(self.features) + (1 if self.prediction else 0), 1)

    @property
    def largest_psi(self) -> FeatureDrift | None:
        scored = [f for f in self.features if f.psi is not None]
        return max(scored, key=lambda f: f.psi) if scored else None


def _drift(name: str, found: Any) -> FeatureDrift:
    found = found if isinstance(found, dict) else {}
    return FeatureDrift(
        name, _number(found.get("psi")), _number(found.get("ks_pvalue")), _flag(found.get("drifted"))
    )


def read_check(run_id: str, data: Any) -> Check:
    """A check from its record's JSON."""
    data = data if isinstance(data, dict) else {}
    outputs = data.get("outputs") if isinstance(data.get("outputs"), dict) else {}
    features = outputs.get("features") if isinstance(outputs.get("features"), dict) else {}
    prediction, live = outputs.get("prediction"), outputs.get("live_metric")
    # the retraining proposal this check made (monitoring.retrain's RetrainProposal: number, url, action)
    merge_request = outputs.get("merge_request")
    thresholds = outputs.get("thresholds") if isinstance(outputs.get("thresholds"), dict) else {}
    artifacts = data.get("artifacts") if isinstance(data.get("artifacts"), list) else []
    reasons = outputs.get("alarm_reasons") if isinstance(outputs.get("alarm_reasons"), list) else []
    version, rows = outputs.get("version"), outputs.get("rows")
    streak = outputs.get("consecutive_drifted_checks")
    return Check(
        run_id=run_id,
        time=outputs.get("time") or data.get("finished_at"),
        model=outputs.get("model"),
        version=version if isinstance(version, int) else None,
        rows=rows if isinstance(rows, int) else None,
        verdict=outputs.get("verdict") if isinstance(outputs.get("verdict"), str) else None,
        drifted=_flag(outputs.get("drifted")),
        alarm=_flag(outputs.get("alarm")),
        alarm_reasons=[str(reason) for reason in reasons],
        features=[_drift(str(name), found) for name, found in features.items()],
        prediction=_drift("prediction", prediction) if isinstance(prediction, dict) else None,
        live_metric=LiveMetric(
            str(live["name"]) if live.get("name") is not None else None,
            _number(live.get("value")),
            _number(live.get("low")),
            _number(live.get("high")),
            _number(live.get("validated")),
            live.get("n") if isinstance(live.get("n"), int) else None,
            _number(live.get("confidence")),
            str(live["note"]) if live.get("note") else None,
        )
        if isinstance(live, dict)
        else None,
        streak=streak if isinstance(streak, int) and not isinstance(streak, bool) else None,
        merge_request=merge_request
        if isinstance(merge_request, dict) and merge_request.get("number")
        else None,
        plots=[a for a in artifacts if isinstance(a, str) and a.endswith(PLOT_SUFFIX)],
        outcome=data.get("outcome"),
        summary=data.get("summary"),
        thresholds={k: v for k, v in thresholds.items() if _number(v) is not None},
    )


def drift_streak(newest_first: list[Check]) -> int:
    """How many checks in a row, up to the newest, counted as drifted: the newest's own count when its record
    holds one, else counted from the checks given (as many as the configured streak needs, at least)."""
    if newest_first and newest_first[0].streak is not None:
        return newest_first[0].streak
    streak = 0
    for check in newest_first:
        if not check.drifted:
            break
        streak += 1
    return streak


def local_merge_request_state(state_dir, number: int) -> str | None:
    """open, merged or closed, as the embedded forge stores merge request ``number`` beside the repository;
    None when it holds no such file (another forge's, or a copy of the repository without its state)."""
    path = state_dir / "merge-requests" / f"{int(number)}.json"
    try:
        return json.loads(path.read_text()).get("state")
    except (OSError, ValueError, AttributeError):
        return None
