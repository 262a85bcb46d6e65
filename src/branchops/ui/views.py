"""What the dashboard's pages show, read from the records: plain dicts the templates lay out.

Pages read only what they show: a stage's page lists the folder once and reads one page of records
(``StageHistory.read`` of those run ids), so a page costs the same with 10 runs or 1,000.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import logging
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import git

from branchops import STAGES, gitops, records
from branchops.errors import NotFound
from branchops.project import working_config
from branchops.ui.monitoring import MONITOR_STAGE, Check, drift_streak, local_merge_request_state, read_check

log = logging.getLogger("branchops.ui")

PAGE_SIZE = 50
RECENT = 5  # runs per stage on the overview
# Keys whose values are never shown, however a record or a parameter came to hold one: records are
# masked when written, but a parameter named like a credential is hidden here too.
SECRET_KEY = re.compile(r"credential|token|secret|password|passwd|api[_-]?key|private[_-]?key", re.I)
HIDDEN = "(hidden)"


def redact(value: Any) -> Any:
    """``value`` with whatever sits under a credential-like key replaced by a placeholder."""
    if isinstance(value, dict):
        return {k: HIDDEN if SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _approvals(run: records.RunRecord) -> list[dict[str, Any]]:
    """The merge requests the run used and who approved each, as the gate counted them."""
    included = [mr.to_dict() for mr in run.included_merge_requests]
    if not included and run.merge_request and run.merge_request.number is not None:
        mr = run.merge_request
        included = [
            {"number": mr.number, "title": mr.title, "author": mr.author, "approved_by": mr.approved_by}
        ]
    return redact(included)


def run_row(stored: records.StoredRecord) -> dict[str, Any]:
    """One line of a stage's table: outcome, approvals, timings."""
    run = stored.record
    return {
        "stage": stored.stage,
        "run_id": stored.run_id,
        "outcome": stored.outcome,
        "summary": run.summary,
        "source_commit": run.source_commit,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration_s": run.duration_s,
        "approvals": _approvals(run),
    }


def _metric_cells(metrics: dict[str, Any] | None) -> tuple[dict[str, str], dict[str, Any]]:
    """A run's metrics.json split for a page: the scalar metrics as table cells (with their interval, when
    the run reports one), and the structured rest (curves, baselines, folds) to show folded away."""
    metrics = redact(metrics or {})
    intervals = metrics.get("intervals") if isinstance(metrics.get("intervals"), dict) else {}
    cells, details = {}, {}
    for name, value in metrics.items():
        if isinstance(value, (dict, list)):
            details[name] = value
            continue
        cell = _short(value)
        interval = intervals.get(name)
        if isinstance(interval, dict) and "low" in interval and "high" in interval:
            cell += f" [{_short(interval['low'])}, {_short(interval['high'])}]"
        cells[name] = cell
    return cells, details


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# Drawing the figure takes most of a second; a pair of runs always draws the same one (records are
# append-only: a run's record never changes), so the dashboard draws each pair once.
@functools.lru_cache(maxsize=32)
def overlaid_curves(repo_path: str, older: str, newer: str) -> bytes:
    import tempfile
    from pathlib import Path

    from branchops import compare

    result = compare.diff(repo_path, older, newer)
    with tempfile.TemporaryDirectory(prefix="branchops-ui-") as folder:
        image = Path(folder) / "curves.png"
        compare.plot(result, image)
        return image.read_bytes()


@dataclass
class Dashboard:
    """The records of one repository, as its stage branches hold them now."""

    repo_path: str

    @cached_property
    def repo(self) -> git.Repo:
        return gitops.open_repo(self.repo_path)

    @cached_property
    def config(self):
        return working_config(self.repo)

    def fresh(self) -> Dashboard:
        """This dashboard for one request: the same repository and configuration, the branches' tips read
        anew (once, on first use), so a page shows the branches as they are and reads them consistently."""
        view = Dashboard(self.repo_path)
        view.__dict__.update(repo=self.repo, config=self.config)
        return view

    @cached_property
    def tips(self) -> dict[str, str | None]:
        """Each stage's branch tip, from one ``git for-each-ref`` (not one git process per stage)."""
        remote = self.config.git.remote
        refs = {
            stage: f"refs/remotes/{remote}/{self.config.branch_for(stage)}"
            if remote
            else f"refs/heads/{self.config.branch_for(stage)}"
            for stage in STAGES
        }
        listing = self.repo.git.for_each_ref("--format=%(refname) %(objectname)", *refs.values())
        found = dict(line.split(" ", 1) for line in listing.splitlines())
        return {stage: found.get(ref) for stage, ref in refs.items()}

    def tip(self, stage: str) -> str | None:
        return self.tips[stage]

    @cached_property
    def _histories(self) -> dict[str, records.StageHistory]:
        return {}

    def history(self, stage: str) -> records.StageHistory:
        """The stage's records folder, listed once per request."""
        if stage not in STAGES:
            raise NotFound(f"no stage '{stage}' (stages: {', '.join(STAGES)})")
        if stage not in self._histories:
            self._histories[stage] = records.stage_history(self.repo, self.tip(stage), stage)
        return self._histories[stage]

    # -- pages --------------------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        histories = {stage: self.history(stage) for stage in STAGES}
        newest = {stage: list(reversed(h.run_ids))[:RECENT] for stage, h in histories.items()}
        # every stage's newest records in one git process
        specs = [
            f"{histories[stage].folders[r]}:{records.RECORD_FILE}" for stage in STAGES for r in newest[stage]
        ]
        blobs = iter(records._cat_files(self.repo, specs))
        stages = []
        for stage in STAGES:
            found = [
                records.StoredRecord(stage, r, f"{records.record_dir(stage, r)}/{records.RECORD_FILE}", raw)
                for r, raw in ((r, next(blobs)) for r in newest[stage])
                if raw is not None
            ]
            stages.append(
                {
                    "stage": stage,
                    "branch": self.config.branch_for(stage),
                    "count": len(histories[stage].run_ids),
                    "runs": [run_row(r) for r in found],
                    "records": found,
                }
            )
        deploys = stages[-1]["records"]
        return {
            "stages": stages,
            "empty": not any(s["count"] for s in stages),
            "serving": self.serving_now(deploys),
            "monitoring": self.monitoring_now(),
        }

    def stage_page(self, stage: str, page: int = 1) -> dict[str, Any]:
        history = self.history(stage)
        newest_first = list(reversed(history.run_ids))
        pages = max(1, -(-len(newest_first) // PAGE_SIZE))
        page = min(max(page, 1), pages)
        chosen = newest_first[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        chosen_records = history.read(chosen)
        rows = [run_row(r) for r in chosen_records]
        if stage == "training":
            for row, stored in zip(rows, chosen_records):
                row["model_version"] = stored.read_as(records.TrainingVersionView).model_version
        return {
            "stage": stage,
            "branch": self.config.branch_for(stage),
            "count": len(newest_first),
            "page": page,
            "pages": pages,
            "runs": rows,
        }

    def record(self, stage: str, run_id: str) -> records.StoredRecord:
        history = self.history(stage)
        if run_id not in history.folders:
            raise NotFound(f"no {stage} run '{run_id}'")
        found = history.read([run_id])
        if not found:
            raise NotFound(f"{stage} run '{run_id}' has no {records.RECORD_FILE}")
        return found[0]

    def run_page(self, stage: str, run_id: str) -> dict[str, Any]:
        stored = self.record(stage, run_id)
        page = run_row(stored) | {
            "error": stored.record.error,
            "artifacts": stored.record.artifacts,
            "raw": redact(stored.data),
        }
        if stage == "training":
            page["training"] = self.training_view(stored)
        if stage == "deploy-model":
            outputs = stored.deploy_outputs
            page["deployment"] = redact(outputs.deployment.to_dict()) if outputs.deployment else None
            page["release"] = redact(outputs.release.to_dict()) if outputs.release else None
        return page

    def training_view(self, stored: records.StoredRecord) -> dict[str, Any]:
        """A training run's experiments: parameters, metrics and plots; which one the run chose."""
        outputs = stored.training_outputs
        plots = [a for a in stored.record.artifacts if a.endswith(".png")]
        experiments = [
            {
                "experiment": e.experiment,
                "state": e.state,
                "error": e.error,
                "duration_s": e.duration_s,
                "params": redact(e.params),
                "metrics": (split := _metric_cells(e.metrics))[0],
                "metric_details": split[1],
                "model_version": e.model.version if e.model else None,
                "plots": [p for p in plots if p.startswith(f"{e.experiment}/")],
                "best": bool(outputs.best and outputs.best.experiment == e.experiment),
            }
            for e in outputs.experiments
        ]
        return {
            "experiments": experiments,
            "model_version": outputs.model_version,
            "kpi": outputs.kpi.to_dict() if outputs.kpi else None,
            "synthetic_data": bool(outputs.synthetic_data),
        }

    def plot(self, stage: str, run_id: str, artifact: str) -> bytes:
        """A PNG a run recorded, straight from git's objects; only files the record lists as its artifacts."""
        stored = self.record(stage, run_id)
        if not artifact.endswith(".png") or artifact not in stored.record.artifacts:
            raise NotFound(f"{stage} run '{run_id}' recorded no plot '{artifact}'")
        history = self.history(stage)
        blob = records._cat_files(self.repo, [f"{history.folders[run_id]}:{artifact}"])[0]
        if blob is None:
            raise NotFound(f"{stage} run '{run_id}' lists '{artifact}' but its folder has no such file")
        return blob

    def compare(self, run_ids: list[str]) -> dict[str, Any]:
        """Training runs side by side, each by the experiment it chose (``branchops.experiments``' rows):
        parameters, the configured metrics with their intervals, the gate's verdict, plots."""
        from branchops import experiments

        run_ids = self._training_run_ids(run_ids)
        history = self.history("training")
        metric_names = list(self.config.training.metrics)
        # what serves and which training run made it, as ``branchops exp show`` finds them
        serving = experiments.serving_now(self.history("deploy-model"), history.newest_first())
        columns = []
        for stored in history.read(run_ids):
            rows = experiments.rows_of(stored, metric_names, serving, [self.config.branch_for("training")])
            row = next((r for r in rows if r.best), rows[0] if rows else None)
            plots = [a for a in stored.record.artifacts if a.endswith(".png")]
            columns.append(
                {
                    "run_id": stored.run_id,
                    "outcome": stored.outcome,
                    "experiment": row.experiment if row else None,
                    "model_version": row.model_version if row else None,
                    "gate": row.gate if row else None,
                    "serving": bool(row and row.serving),
                    "params": redact(row.params) if row else {},
                    "metrics": row.metrics if row else {},
                    "intervals": row.intervals if row else {},
                    "plots": [p for p in plots if row and p.startswith(f"{row.experiment}/")],
                }
            )
        params = sorted({name for column in columns for name in column["params"]})
        metric_rows = []
        for name in metric_names:
            values = [column["metrics"].get(name) for column in columns]
            intervals = [column["intervals"].get(name) for column in columns]
            both = len(values) == 2 and all(isinstance(v, (int, float)) for v in values)
            metric_rows.append(
                {
                    "name": name,
                    "values": values,
                    "intervals": [[i.low, i.high] if i else None for i in intervals],
                    "change": values[1] - values[0] if both else None,
                }
            )
        return {
            "runs": columns,
            # plots diff's overlay needs matplotlib (the train extra), which the dashboard alone does not
            "curves": len(columns) == 2 and importlib.util.find_spec("matplotlib") is not None,
            "params": [
                {"name": p, "values": [column["params"].get(p) for column in columns]} for p in params
            ],
            "metrics": metric_rows,
        }

    def compare_curves(self, run_ids: list[str]) -> bytes:
        """Two runs' learning and ROC curves overlaid in one PNG, as ``branchops plots diff`` draws them."""
        older, newer = self._training_run_ids(run_ids)
        return overlaid_curves(self.repo_path, older, newer)

    def _training_run_ids(self, run_ids: list[str]) -> list[str]:
        """``run_ids`` once each, oldest first (run ids begin with their start time, so that a change reads
        from older to newer); NotFound unless each is a training run on the branch."""
        run_ids = sorted(set(run_ids))
        missing = [r for r in run_ids if r not in self.history("training").folders]
        if missing:
            raise NotFound(f"no training run {', '.join(missing)}")
        return run_ids

    def serving_now(self, newest: list[records.StoredRecord] | None = None) -> dict[str, Any] | None:
        """What the newest deploy-model run left serving (the TF Serving label ``stable``) and the canary
        steps its rollout went through; and, when the local model server is running, its live labels and
        canary weight (a canary lives only while a rollout runs: a finished run promoted or rolled back)."""
        history = self.history("deploy-model")
        # the newest records already read first (the overview's), the older ones only if none deployed
        already = {r.run_id for r in newest or []}
        older = (r for r in history.newest_first(batch=4) if r.run_id not in already)
        for stored in itertools.chain(newest or [], older):
            deployment = stored.deploy_outputs.deployment
            if deployment is None:
                continue
            return {
                "model": deployment.model or self.config.serving.model_name,
                "labels": {"stable": deployment.after, "canary": None},
                "canary_weight": 0,
                "canary_steps": [step.get("weight") for step in deployment.canary_steps],
                "strategy": deployment.strategy,
                "outcome": deployment.outcome,
                "reason": deployment.reason,
                "run_id": stored.run_id,
                "backend": stored.deploy_outputs.backend,
                "finished_at": stored.record.finished_at,
            } | self._live_labels()
        return None

    def _live_labels(self) -> dict[str, Any]:
        """The running local server's labels and canary weight; nothing for another backend (the dashboard
        reads git, never a cluster) or when no local server runs."""
        if self.config.serving.backend != "local":
            return {}
        # the state folder as the server left it: not gitops.state_dir, which would create it
        state = gitops.main_worktree(self.repo) / ".branchops"
        if not (state / "serving" / "server.json").exists():  # no server started: spare the client's import
            return {}
        from branchops.serving.local_backend import LocalServing

        try:
            status = LocalServing(self.config, state).status()
        except Exception as exc:  # a server that does not answer leaves the records' view
            log.warning("the local model server did not say what it serves: %s", exc)
            return {}
        if not status.running:
            return {}
        return {
            "live": True,
            "labels": {"stable": status.stable, "canary": status.canary},
            "canary_weight": status.canary_weight if status.canary is not None else 0,
        }

    # -- monitoring -----------------------------------------------------------------------------------

    @cached_property
    def monitor_history(self) -> records.StageHistory:
        """The monitoring checks' folder on the deploy-model branch, listed once per request (none there:
        no check yet)."""
        return records.stage_history(self.repo, self.tip("deploy-model"), MONITOR_STAGE)

    def drift_thresholds(self, check: Check | None = None) -> dict[str, float]:
        """The PSI threshold, the KS test's alpha and the drifted checks in a row that propose a retrain, as
        a check applied them (its record says), else as configured."""
        drift = self.config.monitoring.drift
        configured = {
            "psi_threshold": drift.psi_threshold,
            "ks_alpha": drift.ks_alpha,
            "consecutive_checks": drift.consecutive_checks,
        }
        return configured | (check.thresholds if check else {})

    def monitoring_now(self) -> dict[str, Any] | None:
        """The newest monitoring check, for the serving panel: drift per feature against the thresholds, the
        live metric against the validated one, the drift streak, and the retraining merge request while it is
        open. None: no check recorded yet."""
        history = self.monitor_history
        # enough of the newest checks to count a streak as long as the configured one (when the newest
        # record does not count it), in one read
        wanted = max(self.config.monitoring.drift.consecutive_checks, RECENT)
        newest = [
            read_check(r.run_id, redact(r.data))
            for r in history.read(list(reversed(history.run_ids))[:wanted])
        ]
        if not newest:
            return None
        latest = newest[0]
        thresholds = self.drift_thresholds(latest)
        streak = drift_streak(newest)
        return {
            "count": len(history.run_ids),
            "latest": latest,
            "thresholds": thresholds,
            "streak": streak,
            # every check read counted as drifted: the streak may be longer than what was read
            "streak_at_least": latest.streak is None and streak == len(newest) < len(history.run_ids),
            "needed": int(thresholds["consecutive_checks"]),
            "merge_request": self.retrain_request(newest),
        }

    def retrain_request(self, newest_first: list[Check]) -> dict[str, Any] | None:
        """The retraining merge request the newest checks opened or updated, with its state where the
        embedded forge keeps it beside the repository (another forge's is not asked: the dashboard reads
        git); None when none of them proposed one, or when it is known to be merged or closed."""
        check = next((c for c in newest_first if c.merge_request), None)
        if check is None:
            return None
        proposed = check.merge_request or {}
        state = None
        if self.config.forge.backend == "local":
            state = local_merge_request_state(
                gitops.main_worktree(self.repo) / ".branchops", proposed["number"]
            )
            if state in ("merged", "closed"):
                return None
        url = proposed.get("url")
        return {
            "number": proposed["number"],
            # the embedded forge's url is a file beside the repository, not a page a browser opens
            "url": url if isinstance(url, str) and url.startswith(("https://", "http://")) else None,
            "action": proposed.get("action"),
            "state": state,
            "check": check.run_id,
            "time": check.time,
        }

    def monitoring_page(self, page: int = 1) -> dict[str, Any]:
        """The monitoring checks, newest first, a page at a time: each with its verdict and plots."""
        history = self.monitor_history
        newest_first = list(reversed(history.run_ids))
        pages = max(1, -(-len(newest_first) // PAGE_SIZE))
        page = min(max(page, 1), pages)
        chosen = newest_first[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        checks = [read_check(r.run_id, redact(r.data)) for r in history.read(chosen)]
        thresholds = self.drift_thresholds(checks[0] if checks else None)
        return {
            "count": len(newest_first),
            "page": page,
            "pages": pages,
            "checks": checks,
            "thresholds": thresholds,
            "needed": int(thresholds["consecutive_checks"]),
            "merge_request": self.retrain_request(checks) if page == 1 else None,
        }

    def monitor_record(self, run_id: str) -> records.StoredRecord:
        history = self.monitor_history
        if run_id not in history.folders:
            raise NotFound(f"no monitoring check '{run_id}'")
        found = history.read([run_id])
        if not found:
            raise NotFound(f"monitoring check '{run_id}' has no {records.RECORD_FILE}")
        return found[0]

    def monitor_check(self, run_id: str) -> dict[str, Any]:
        stored = self.monitor_record(run_id)
        check = read_check(run_id, redact(stored.data))
        return {"check": check, "thresholds": self.drift_thresholds(check)}

    def monitor_plot(self, run_id: str, artifact: str) -> bytes:
        """A PNG a check recorded (drift.png, live_metric.png): only files its record lists."""
        check = read_check(run_id, self.monitor_record(run_id).data)
        if artifact not in check.plots:
            raise NotFound(f"monitoring check '{run_id}' recorded no plot '{artifact}'")
        blob = records._cat_files(self.repo, [f"{self.monitor_history.folders[run_id]}:{artifact}"])[0]
        if blob is None:
            raise NotFound(f"monitoring check '{run_id}' lists '{artifact}' but its folder has no such file")
        return blob

    def model_page(self, version: str) -> dict[str, Any]:
        """A model version (or the training run that made it): its lineage, as data and as a graph."""
        from branchops.lineage import lineage
        from branchops.ui.graph import lineage_graph, render_svg

        chain = redact(lineage(self.repo_path, version))
        deploy_ids = [d["run_id"] for d in chain["deployments"]]
        deploys = self.history("deploy-model").read(deploy_ids)
        graph = lineage_graph(chain, deploys)
        return {"chain": chain, "graph": graph, "svg": render_svg(graph)}

    def models(self, page: int = 1) -> dict[str, Any]:
        """Model versions, newest first: one per training run that produced one."""
        listing = self.stage_page("training", page)
        listing["runs"] = [r for r in listing["runs"] if r.get("model_version") is not None]
        return listing
