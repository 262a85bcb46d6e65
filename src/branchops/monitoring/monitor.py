"""``branchops monitor``: one check of the served model against the data that made it (docs/monitoring.md).

A check reads, through the serving port, the prediction log since the cursor of the last monitor record,
the outcomes that have arrived, and the served version's export metadata with its training reference
(``components/export``); it measures each feature's drift and the prediction's (:mod:`.drift`), and the
live metric where outcomes joined the logged rows (:mod:`.live`). Then:

* **verdict**: ``drift`` when at least ``monitoring.drift.min_drifted_features`` features (or the
  prediction) drifted, ``no drift`` otherwise, ``too few rows`` under ``min_rows`` logged rows: no
  verdict, and the cursor stays where it was so that those rows count in the next check;
* **alarm** when drift was seen on ``consecutive_checks`` consecutive checks of the same version, or when
  the live metric's interval lies wholly below the validated value (the value of ``training.select_by``
  in the training record of the served version). An alarm proposes the retrain
  (:func:`branchops.monitoring.retrain.propose_retrain`, one merge request into training, updated while
  open) with the evidence and the data window it should reach (``--data-until``, or the latest day the
  outcomes' request ids end with, as the demo's ``AAPL/2016-03-14``);
* the record ``records/monitor/<run-id>/`` (record.json, drift.png, live_metric.png) is added to the
  deploy-model branch in a bot commit, as the stages write theirs, and ``monitor.json`` is published
  for the serving side's Prometheus gauges.

A dry run computes and says the same, and writes nothing: no record, no monitor.json, no merge request
(the retrain proposal is asked what it *would* do). An empty log, a corrupt line or a model exported
without a reference is an error, and then too nothing is written. With no request logged since the last
check there is nothing to measure: that is said, nothing is written, and the exit code is 0.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from branchops import __version__, gitops, records
from branchops.errors import BranchopsError, DataError, NotFound
from branchops.monitoring import drift as drift_stats
from branchops.monitoring import live as live_stats
from branchops.monitoring import traffic
from branchops.project import Project
from branchops.secrets import mask

log = logging.getLogger(__name__)

STAGE = "monitor"
DRIFT_PLOT = "drift.png"
LIVE_PLOT = "live_metric.png"
# the evidence's drift table: the most shifted features (all of them are in the record)
TABLE_ROWS = 15
# the live metric over time: this many checks back, the current one included
HISTORY_CHECKS = 12


@dataclass
class MonitorResult:
    model: str
    version: int
    verdict: str  # drift | no drift | too few rows | no new traffic
    rows: int = 0  # logged rows of the served version since the cursor
    requests: int = 0
    cursor: str | None = None  # the time of the last logged line this check consumed
    previous_cursor: str | None = None
    drifted: bool = False
    consecutive_drifted_checks: int = 0
    features: list[drift_stats.Drift] = field(default_factory=list)
    prediction: drift_stats.Drift | None = None
    live_metric: live_stats.LiveMetric | None = None
    alarm: bool = False
    alarm_reasons: list[str] = field(default_factory=list)
    merge_request: dict[str, Any] | None = None  # the retrain proposal (RetrainProposal.to_dict())
    data_until: str | None = None
    run_id: str | None = None
    record: str | None = None  # the record's folder on the deploy-model branch (None: nothing written)
    dry_run: bool = False
    thresholds: dict[str, Any] = field(default_factory=dict)

    @property
    def drifted_features(self) -> list[str]:
        return [d.name for d in self.features if d.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "verdict": self.verdict,
            "dry_run": self.dry_run,
            "run_id": self.run_id,
            "record": self.record,
            "rows": self.rows,
            "requests": self.requests,
            "cursor": self.cursor,
            "previous_cursor": self.previous_cursor,
            "drifted": self.drifted,
            "drifted_features": self.drifted_features,
            "consecutive_drifted_checks": self.consecutive_drifted_checks,
            "features": {d.name: _feature_entry(d) for d in self.features},
            "prediction": _feature_entry(self.prediction) if self.prediction else None,
            "live_metric": self.live_metric.to_dict() if self.live_metric else None,
            "alarm": self.alarm,
            "alarm_reasons": list(self.alarm_reasons),
            "merge_request": self.merge_request,
            "data_until": self.data_until,
            "thresholds": dict(self.thresholds),
        }


def _feature_entry(d: drift_stats.Drift) -> dict[str, Any]:
    return {"psi": d.psi, "ks_statistic": d.ks_statistic, "ks_pvalue": d.ks_pvalue, "drifted": d.drifted}


def check(
    project: Project | str,
    *,
    dry_run: bool = False,
    data_until: date | None = None,
) -> MonitorResult:
    """One monitoring check of the served version (see the module's docstring)."""
    from branchops.serving import make_serving

    project = Project.open(project)
    config = project.config
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    serving = make_serving(config, project.state_dir)
    version = serving.live_version()
    if version is None:
        raise NotFound("nothing is serving: deploy a model before monitoring it")
    metadata = serving.export_metadata(version)
    reference = metadata.get("reference")
    if not isinstance(reference, dict):
        raise DataError(
            f"version {version} was exported without reference statistics ('reference' in its metadata): "
            "there is nothing to measure drift against; export and deploy it again with this branchops"
        )
    feature_names = metadata.get("feature_names") or list(reference.get("features") or {})
    input_name = reference.get("input") or metadata.get("input")
    output_name = (reference.get("prediction") or {}).get("output")
    if not isinstance(input_name, str) or not isinstance(output_name, str) or not feature_names:
        raise DataError(f"version {version}'s reference does not name its input, output and features")

    branch = config.branch_for("deploy-model")
    remote = config.git.remote
    if remote:
        gitops.fetch_branches(project.repo, remote, [branch])
    tip = project.branch_tip(branch)
    if tip is None:
        raise NotFound(f"the deploy-model branch '{branch}' does not exist")
    history = [r.data for r in _recent_checks(project, tip)]
    previous = history[0].get("outputs", {}) if history else {}
    same_model = previous.get("version") == version
    cursor = previous.get("cursor")

    prediction_log = traffic.read_prediction_log(serving.read_prediction_log())
    new_requests = prediction_log.since(cursor)
    drift_cfg = config.monitoring.drift
    result = MonitorResult(
        model=config.serving.model_name,
        version=version,
        verdict="no new traffic",
        requests=len(new_requests),
        cursor=cursor,
        previous_cursor=cursor,
        dry_run=dry_run,
        consecutive_drifted_checks=previous.get("consecutive_drifted_checks", 0) if same_model else 0,
        thresholds={
            "psi_threshold": drift_cfg.psi_threshold,
            "ks_alpha": drift_cfg.ks_alpha,
            "min_rows": drift_cfg.min_rows,
            "consecutive_checks": drift_cfg.consecutive_checks,
            "min_drifted_features": drift_cfg.min_drifted_features,
        },
    )
    if not new_requests:
        log.info("no request logged since %s: nothing to check", cursor)
        return result

    shape = {"version": version, "input_name": input_name, "output_name": output_name}
    rows = traffic.rows_of(new_requests, n_features=len(feature_names), **shape)
    result.rows = len(rows)
    if len(rows) < drift_cfg.min_rows:
        result.verdict = "too few rows"
    else:
        result.cursor = new_requests[-1].time_text
        _measure_drift(result, reference, feature_names, rows, drift_cfg)

    outcomes = traffic.read_outcomes(serving.read_outcomes())
    all_rows = traffic.rows_of(prediction_log.requests, n_features=len(feature_names), **shape)
    labels, scores = traffic.joined(all_rows, outcomes)
    metric = config.training.select_by
    live_cfg = config.monitoring.live_metric
    result.live_metric = live_stats.live_metric(
        metric,
        labels,
        scores,
        validated=_validated(project, version, metric),
        confidence=live_cfg.confidence,
        min_outcomes=live_cfg.min_outcomes,
        threshold=float(metadata.get("threshold", 0.5)),
    )

    if result.drifted and result.consecutive_drifted_checks >= drift_cfg.consecutive_checks:
        result.alarm_reasons.append(
            f"drift on {result.consecutive_drifted_checks} consecutive checks "
            f"({len(result.drifted_features)} features drifted, the most: {_most_shifted(result)})"
        )
    live = result.live_metric
    if live.below_validated:
        result.alarm_reasons.append(
            f"live {live.name} {live.value:.3f} ({live.confidence:.0%} interval {live.low:.3f} to "
            f"{live.high:.3f}, {live.n} outcomes) is below the validated {live.validated:.3f}"
        )
    result.alarm = bool(result.alarm_reasons)
    until = (
        data_until
        or traffic.latest_day([key[0] for key in outcomes])
        or traffic.latest_day([r.request_id for r in new_requests])
    )
    result.data_until = until.isoformat() if until else None

    result.run_id = records.new_run_id(tip, started)
    record_dir = records.record_dir(STAGE, result.run_id)
    # the plots first: what can fail here fails before a merge request is opened or anyone notified
    plots = (
        None if dry_run else {DRIFT_PLOT: drift_plot(result), LIVE_PLOT: live_metric_plot(result, history)}
    )
    if result.alarm:
        from branchops.monitoring.retrain import propose_retrain

        evidence = evidence_markdown(project, result, history, branch, record_dir)
        proposal = propose_retrain(
            project,
            reason="; ".join(result.alarm_reasons),
            evidence_markdown=evidence,
            data_until=until,
            dry_run=dry_run,
        )
        result.merge_request = proposal.to_dict()
    if dry_run or plots is None:
        result.run_id = None
        return result

    record = {
        "stage": STAGE,
        "run_id": result.run_id,
        "branch": branch,
        "source_commit": tip,
        "outcome": "succeeded",
        "summary": summary(result),
        "error": None,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - clock, 3),
        "config_digest": config.digest(),
        "branchops_version": __version__,
        "outputs": result.to_dict(),
        "artifacts": sorted(plots),
    }
    files = {f"{record_dir}/{name}": content for name, content in plots.items()}
    files[f"{record_dir}/{records.RECORD_FILE}"] = mask(records.to_json(record).decode()).encode()
    message = gitops.bot_message(
        f"monitor: {result.verdict} on version {version} ({result.rows} rows)",
        f"{mask(summary(result))}\n\nRun: {result.run_id}\nRecord: {record_dir}/{records.RECORD_FILE}",
        config.bot.marker,
    )
    gitops.commit_to_branch(
        project.repo,
        branch,
        files,
        message,
        gitops.Identity(config.bot.name, config.bot.email),
        remote=remote,
        retries=config.git.push_retries,
    )
    result.record = record_dir
    if result.verdict != "too few rows":
        # too few rows is no verdict: the gauges keep the last check's, rather than drop to "no drift"
        # (and clear an alert) while the drift goes on
        serving.publish_monitoring(published(result, started))
    return result


def measure_drift(
    reference: dict[str, Any],
    feature_names: list[str],
    features: list[list[float]],
    predictions: list[float],
    drift_cfg: Any,
) -> tuple[list[drift_stats.Drift], drift_stats.Drift | None, bool]:
    """Each feature's drift and the prediction's, and whether the check counts as drifted: at least
    ``min_drifted_features`` features drifted, or the prediction did (``drift_cfg``: monitoring.drift)."""
    thresholds = {"psi_threshold": drift_cfg.psi_threshold, "ks_alpha": drift_cfg.ks_alpha}
    # the prediction is one more column tested: the KS correction counts it
    tests = len(feature_names) + 1
    drifts = drift_stats.feature_drift(reference, feature_names, features, tests=tests, **thresholds)
    prediction = None
    if isinstance(reference.get("prediction"), dict):
        prediction = drift_stats.measure(
            "prediction", reference["prediction"], predictions, tests=tests, **thresholds
        )
    drifted = sum(d.drifted for d in drifts) >= drift_cfg.min_drifted_features or bool(
        prediction and prediction.drifted
    )
    return drifts, prediction, drifted


def _measure_drift(
    result: MonitorResult,
    reference: dict[str, Any],
    feature_names: list[str],
    rows: traffic.Rows,
    drift_cfg: Any,
) -> None:
    result.features, result.prediction, result.drifted = measure_drift(
        reference, feature_names, rows.features, rows.prediction, drift_cfg
    )
    result.verdict = "drift" if result.drifted else "no drift"
    result.consecutive_drifted_checks = result.consecutive_drifted_checks + 1 if result.drifted else 0


def _recent_checks(project: Project, tip: str) -> list[records.StoredRecord]:
    """The latest monitor records, newest first."""
    history = records.stage_history(project.repo, tip, STAGE)
    found: list[records.StoredRecord] = []
    for stored in history.newest_first(batch=HISTORY_CHECKS):
        found.append(stored)
        if len(found) >= HISTORY_CHECKS - 1:
            break
    return found


def _validated(project: Project, version: int, metric: str) -> float | None:
    """``metric`` of the served version as its training run recorded it (None if not found)."""
    from branchops.lineage import find_training_run

    tip = project.branch_tip(project.config.branch_for("training"))
    try:
        run = find_training_run(project.repo, tip, str(version))
    except BranchopsError as exc:
        log.warning("no validated %s for version %d: %s", metric, version, exc)
        return None
    best = run.training_outputs.best
    value = best.metric(metric) if best else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _most_shifted(result: MonitorResult) -> str:
    drifted = sorted((d for d in result.features if d.drifted), key=lambda d: -d.psi)
    return ", ".join(f"{d.name} psi {d.psi:.2f}" for d in drifted[:3]) or "the prediction"


def summary(result: MonitorResult) -> str:
    parts = [f"{result.verdict} on version {result.version}: {result.rows} logged rows"]
    if result.features:
        parts.append(f"{len(result.drifted_features)} of {len(result.features)} features drifted")
    if result.live_metric and result.live_metric.value is not None:
        live = result.live_metric
        parts.append(f"live {live.name} {live.value:.3f} [{live.low:.3f}, {live.high:.3f}]")
    if result.alarm:
        parts.append("ALARM: " + "; ".join(result.alarm_reasons))
    return ", ".join(parts)


def published(result: MonitorResult, when: datetime) -> dict[str, Any]:
    """monitor.json, the document the serving side exposes as gauges (docs/monitoring.md)."""
    live = result.live_metric
    return {
        "time": when.isoformat(),
        "model": result.model,
        "version": result.version,
        "rows": result.rows,
        "drifted": result.drifted,
        "features": {
            d.name: {"psi": d.psi, "ks_pvalue": d.ks_pvalue, "drifted": d.drifted} for d in result.features
        },
        "prediction": (
            {"psi": result.prediction.psi, "ks_pvalue": result.prediction.ks_pvalue}
            if result.prediction
            else None
        ),
        "live_metric": (
            {k: getattr(live, k) for k in ("name", "value", "low", "high", "validated", "n")}
            if live and live.value is not None
            else None
        ),
    }


# -- evidence and plots --------------------------------------------------------------------------------


def _live_history(result: MonitorResult, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The live metric of the recent checks, oldest first, this one last."""
    points = []
    for data in reversed(history):
        outputs = data.get("outputs", {})
        if isinstance(outputs.get("live_metric"), dict):
            points.append({"run_id": data.get("run_id"), **outputs["live_metric"]})
    if result.live_metric:
        points.append({"run_id": result.run_id, **result.live_metric.to_dict()})
    return points[-HISTORY_CHECKS:]


def evidence_markdown(
    project: Project, result: MonitorResult, history: list[dict[str, Any]], branch: str, record_dir: str
) -> str:
    from branchops.forge import make_forge

    forge = make_forge(project.config, project.repo)
    lines = [
        f"**Monitoring check `{result.run_id}`** of model `{result.model}` version {result.version}: "
        f"{result.rows} logged rows since {result.previous_cursor or 'the start of the log'}.",
        "",
        "**Why:** " + "; ".join(result.alarm_reasons),
        "",
        f"### Drift (PSI >= {result.thresholds['psi_threshold']} and KS p-value below "
        f"{result.thresholds['ks_alpha']} over the features tested)",
        "",
        "| feature | PSI | KS statistic | KS p-value | drifted |",
        "|---|---:|---:|---:|---|",
    ]
    ranked = sorted(result.features, key=lambda d: -d.psi)[:TABLE_ROWS]
    if result.prediction:
        ranked.append(result.prediction)
    for d in ranked:
        lines.append(
            f"| `{d.name}` | {d.psi:.3f} | {d.ks_statistic:.3f} | {d.ks_pvalue:.2g} | "
            f"{'yes' if d.drifted else 'no'} |"
        )
    if len(result.features) > TABLE_ROWS:
        lines.append(f"\n{len(result.features) - TABLE_ROWS} more features in the record.")
    lines += [
        "",
        f"![drift]({forge.file_link(branch, f'{record_dir}/{DRIFT_PLOT}')})",
        "",
        "### Live metric over the recent checks",
        "",
        "| check | outcomes | value | interval | validated |",
        "|---|---:|---:|---|---:|",
    ]
    for point in _live_history(result, history):
        value = point.get("value")
        interval = "" if value is None else f"{point['low']:.3f} to {point['high']:.3f}"
        validated = point.get("validated")
        lines.append(
            f"| `{point.get('run_id') or 'this check'}` | {point.get('n', 0)} | "
            f"{'' if value is None else f'{value:.3f}'} | {interval or point.get('note') or ''} | "
            f"{'' if validated is None else f'{validated:.3f}'} |"
        )
    lines += [
        "",
        f"![live metric]({forge.file_link(branch, f'{record_dir}/{LIVE_PLOT}')})",
        "",
        f"Record: `{record_dir}/record.json` on `{branch}`. Data window proposed: until "
        f"{result.data_until or 'all the data there is'}.",
    ]
    return "\n".join(lines) + "\n"


def _png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def drift_plot(result: MonitorResult) -> bytes:
    """The PSI of the most shifted features and of the prediction, against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = sorted(result.features, key=lambda d: -d.psi)[:20]
    if result.prediction:
        shown.append(result.prediction)
    figure, axes = plt.subplots(figsize=(7, 0.3 * len(shown) + 1.5))
    if shown:
        axes.barh(
            [d.name for d in shown][::-1],
            [d.psi for d in shown][::-1],
            color=["tab:red" if d.drifted else "tab:blue" for d in shown][::-1],
        )
        axes.axvline(result.thresholds["psi_threshold"], color="black", linestyle="--", label="threshold")
        axes.legend(loc="lower right")
    else:
        axes.text(0.5, 0.5, f"{result.verdict}: {result.rows} rows", ha="center", va="center")
    axes.set_xlabel("PSI against the training reference (red: drifted)")
    axes.set_title(f"{result.model} v{result.version}: {result.verdict}, {result.rows} rows")
    return _png(figure)


def live_metric_plot(result: MonitorResult, history: list[dict[str, Any]]) -> bytes:
    """The live metric of the recent checks with their intervals, and the validated value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in _live_history(result, history) if p.get("value") is not None]
    figure, axes = plt.subplots(figsize=(7, 3.5))
    name = result.live_metric.name if result.live_metric else "live metric"
    if points:
        xs = list(range(len(points)))
        values = [p["value"] for p in points]
        # a percentile bootstrap interval need not contain its point value (a skewed resampling
        # distribution): matplotlib refuses negative error bars, so such a side is drawn as zero
        errors = [
            [max(v - p["low"], 0.0) for v, p in zip(values, points)],
            [max(p["high"] - v, 0.0) for v, p in zip(values, points)],
        ]
        axes.errorbar(xs, values, yerr=errors, fmt="o-", capsize=3, label=f"live {name}")
        validated = [p.get("validated") for p in points]
        if any(v is not None for v in validated):
            axes.plot(xs, validated, "k--", label="validated at training")
        axes.set_xticks(xs, [str(p.get("run_id") or "now")[:15] for p in points], rotation=30, ha="right")
        axes.legend()
    else:
        note = result.live_metric.note if result.live_metric else None
        axes.text(0.5, 0.5, note or "no outcomes yet", ha="center", va="center", wrap=True)
    axes.set_ylabel(name)
    axes.set_title(f"{result.model} v{result.version}: live {name} over the recent checks")
    return _png(figure)
