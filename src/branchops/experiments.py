"""The experiments table (``branchops exp show``): every experiment of every training run, read from the
records alone (git is the database).

One row per experiment of a training record: its parameters, its metrics with the intervals the run's
metrics.json reports, the KPI gate's verdict (judged on the run's best experiment only), and whether its
model is the one serving, which the deploy-model branch's newest deployment says. The functions return
plain dataclasses, so the CLI, ``branchops ui`` and the comparison (``branchops.compare``) share one
reading of the records.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import git

from branchops import gitops, records
from branchops.errors import BadArgument, NotFound

TRAINING = "training"
DEPLOY = "deploy-model"


@dataclass(frozen=True)
class Interval:
    low: float | None
    high: float | None
    confidence: float | None


@dataclass(frozen=True)
class Serving:
    """What deploy-model serves now, from its newest deployment record (None: nothing deployed yet)."""

    version: int | None = None
    deploy_run_id: str | None = None
    outcome: str | None = None  # deployed | unchanged | rolled_back
    training_run_id: str | None = None  # the training run whose best model has that version


@dataclass
class ExperimentRow:
    run_id: str
    experiment: str
    state: str | None
    branches: list[str]
    source_commit: str | None
    started_at: str | None
    run_outcome: str | None
    merge_request: int | None
    best: bool  # the run's best experiment: the one the KPI gate judged and would release
    params: dict[str, Any]
    metrics: dict[str, float | None]  # the configured metrics (training.metrics), test period
    intervals: dict[str, Interval]  # metrics.json "intervals" (e.g. roc_auc, log_loss_gain)
    validation: dict[str, float | None]  # the same metrics on the validation folds, when reported
    gate: str | None  # passed | refused, for the best experiment; None: the gate did not judge it
    gate_failures: list[str]
    model_version: int | None
    serving: bool
    synthetic_data: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def value(self, key: str) -> Any:
        """A column by name: a field, ``params.<name>``, ``metrics.<name>``, ``validation.<name>``, or a
        bare parameter or metric name (metrics first)."""
        section, _, name = key.partition(".")
        if name and section in ("params", "metrics", "validation"):
            return getattr(self, section).get(name)
        if section == "interval" and name:
            found = self.intervals.get(name)
            return found.low if found else None
        if key in ExperimentRow.__dataclass_fields__ and key not in ("params", "metrics", "validation"):
            return getattr(self, key)
        if key in self.metrics:
            return self.metrics[key]
        return self.params.get(key)


@dataclass
class ExperimentTable:
    metric_names: list[str]
    param_names: list[str]
    serving: Serving
    rows: list[ExperimentRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metric_names,
            "params": self.param_names,
            "serving": asdict(self.serving),
            "rows": [row.to_dict() for row in self.rows],
        }


def finite_number(value: Any) -> bool:
    """A metric's value as metrics.json may hold it: a finite int or float (not a bool, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _intervals(section: Any) -> dict[str, Interval]:
    if not isinstance(section, dict):
        return {}
    return {
        name: Interval(
            value.get("low") if finite_number(value.get("low")) else None,
            value.get("high") if finite_number(value.get("high")) else None,
            value.get("confidence") if finite_number(value.get("confidence")) else None,
        )
        for name, value in section.items()
        if isinstance(value, dict)
    }


def stage_tip(repo: git.Repo, config, stage: str) -> str | None:
    """The tip of ``stage``'s branch: its remote-tracking branch, or the local branch when there is none."""
    branch = config.branch_for(stage)
    return gitops.branch_tip(repo, branch, config.git.remote) or gitops.branch_tip(repo, branch)


def serving_now(deploys: records.StageHistory, trainings: Iterable[records.StoredRecord]) -> Serving:
    """The version the newest deploy-model run left serving (its deployment's stable version after the
    rollout: the old one when it rolled back), and the training run that produced it: the first of
    ``trainings`` (the training branch's records, newest first) whose best model has that version."""
    for rec in deploys.newest_first():
        deployment = rec.deploy_outputs.deployment
        if deployment is None or deployment.after is None:
            continue  # a run that deployed nothing (no release file yet, or it failed before the rollout)
        made_by = next(
            (
                candidate.run_id
                for candidate in trainings
                if candidate.read_as(records.TrainingVersionView).model_version == deployment.after
            ),
            None,
        )
        return Serving(deployment.after, rec.run_id, deployment.outcome, made_by)
    return Serving()


def rows_of(
    rec: records.StoredRecord, metric_names: list[str], serving: Serving, branches: list[str]
) -> list[ExperimentRow]:
    """One row per experiment of a training record."""
    run = rec.read_as(records.TrainingRun)
    outputs = run.outputs
    best_name = outputs.best.experiment if outputs.best else None
    verdict = outputs.kpi
    rows = []
    for entry in outputs.experiments:
        metrics = entry.metrics or {}
        validation = metrics.get("validation") if isinstance(metrics.get("validation"), dict) else {}
        is_best = entry.experiment == best_name and entry.succeeded
        version = entry.model.version if entry.model else None
        rows.append(
            ExperimentRow(
                run_id=rec.run_id,
                experiment=entry.experiment,
                state=entry.state,
                branches=list(branches),
                source_commit=run.source_commit,
                started_at=run.started_at,
                run_outcome=run.outcome,
                merge_request=run.merge_request.number if run.merge_request else None,
                best=is_best,
                params=dict(entry.params),
                metrics={n: metrics.get(n) if finite_number(metrics.get(n)) else None for n in metric_names},
                intervals=_intervals(metrics.get("intervals")),
                validation={n: validation.get(n) for n in metric_names if finite_number(validation.get(n))},
                gate=(
                    None
                    if not is_best or verdict is None or verdict.passed is None
                    else "passed"
                    if verdict.passed
                    else "refused"
                ),
                gate_failures=list(verdict.failures) if is_best and verdict else [],
                model_version=version,
                # the best experiment of the run that produced the serving version (others of that run
                # exported the same version number but were never released)
                serving=is_best and version is not None and rec.run_id == serving.training_run_id,
                synthetic_data=bool(outputs.synthetic_data),
            )
        )
    return rows


def _training_refs(
    repo: git.Repo, main_branch: str, main_tip: str | None, all_branches: bool
) -> dict[str, str]:
    """Branch name -> tip to read training records from: the training branch, and with ``all_branches``
    every local and remote-tracking branch (merge requests' source branches among them)."""
    refs = {main_branch: main_tip} if main_tip else {}
    if all_branches:
        listed = repo.git.for_each_ref("--format=%(refname) %(objectname)", "refs/heads", "refs/remotes")
        for line in listed.splitlines():
            ref, _, tip = line.partition(" ")
            if not ref.endswith("/HEAD"):  # a remote's default branch, listed under its own name too
                refs.setdefault(ref.removeprefix("refs/heads/").removeprefix("refs/remotes/"), tip)
    return refs


def experiment_table(repo_path: str, all_branches: bool = False) -> ExperimentTable:
    """Every experiment of every training run on the training branch (with ``all_branches``: on every
    branch, each run listed once with the branches that hold it), oldest run first."""
    from branchops.project import working_config

    repo = gitops.open_repo(repo_path)
    config = working_config(repo)
    training_tip = stage_tip(repo, config, TRAINING)
    trainings = records.stage_history(repo, training_tip, TRAINING)
    metric_names = list(config.training.metrics)
    found: dict[str, records.StoredRecord] = {}
    branches: dict[str, list[str]] = {}
    for branch, tip in _training_refs(repo, config.branch_for(TRAINING), training_tip, all_branches).items():
        history = trainings if tip == training_tip else records.stage_history(repo, tip, TRAINING)
        new = [run_id for run_id in history.run_ids if run_id not in found]
        for rec in history.read(new):
            found[rec.run_id] = rec
        for run_id in history.run_ids:
            branches.setdefault(run_id, []).append(branch)
    # the serving model's training run among the training branch's records just read (not read again)
    newest_first = [found[run_id] for run_id in reversed(trainings.run_ids) if run_id in found]
    serving = serving_now(records.stage_history(repo, stage_tip(repo, config, DEPLOY), DEPLOY), newest_first)
    rows = [
        row
        for run_id in sorted(found)
        for row in rows_of(found[run_id], metric_names, serving, branches.get(run_id, []))
    ]
    param_names = sorted({name for row in rows for name in row.params})
    return ExperimentTable(metric_names, param_names, serving, rows)


# -- sorting and filtering -----------------------------------------------------------------------------

# longest first, so "<=" is not read as "<"
_OPERATORS: list[tuple[str, Callable[[Any, Any], bool]]] = [
    ("!=", operator.ne),
    (">=", operator.ge),
    ("<=", operator.le),
    ("=", operator.eq),
    (">", operator.gt),
    ("<", operator.lt),
]


def _coerce(text: str, like: Any) -> Any:
    """The filter's value as the type of the row's value (the command line gives strings)."""
    if isinstance(like, bool):
        if text.lower() in ("true", "yes", "1"):
            return True
        if text.lower() in ("false", "no", "0"):
            return False
        raise BadArgument(f"'{text}' is not a boolean (true or false)")
    if finite_number(like):
        try:
            return float(text)
        except ValueError:
            raise BadArgument(f"'{text}' is not a number") from None
    return text


def parse_filter(expression: str) -> Callable[[ExperimentRow], bool]:
    """``key=value``, ``key!=value``, ``key>number`` (also ``>=``, ``<``, ``<=``): a row passes when its
    column ``key`` (see ``ExperimentRow.value``) compares so; a row without that column does not."""
    for symbol, compare in _OPERATORS:
        key, found, wanted = expression.partition(symbol)
        if found and key.strip() and key.strip()[-1] not in "!<>=":
            key = key.strip()
            break
    else:
        raise BadArgument(f"filter '{expression}' is not KEY=VALUE (or !=, >, >=, <, <=)")

    def keep(row: ExperimentRow) -> bool:
        value = row.value(key)
        if value is None:
            return False
        target = _coerce(wanted.strip(), value)
        if isinstance(target, str):
            value = str(value)
            if compare not in (operator.eq, operator.ne):
                raise BadArgument(f"filter '{expression}': {key} is not a number, compare it with = or !=")
        return compare(value, target)

    return keep


def select(
    table: ExperimentTable, filters: list[str] = (), sort: str | None = None, descending: bool = True
) -> ExperimentTable:
    """The table with only the rows every filter keeps, sorted by the column ``sort`` (rows without a
    value last, whichever the direction)."""
    keeps = [parse_filter(f) for f in filters]
    rows = [row for row in table.rows if all(keep(row) for keep in keeps)]
    if sort:
        known = {
            *ExperimentRow.__dataclass_fields__,
            *table.metric_names,
            *table.param_names,
            *(f"metrics.{n}" for n in table.metric_names),
            *(f"validation.{n}" for n in table.metric_names),
            *(f"params.{n}" for n in table.param_names),
        }
        if sort not in known and not sort.startswith("interval."):
            raise BadArgument(
                f"cannot sort by '{sort}': not a column (metrics: {', '.join(table.metric_names)})"
            )
        present = [row for row in rows if row.value(sort) is not None]
        missing = [row for row in rows if row.value(sort) is None]
        rows = sorted(present, key=lambda row: row.value(sort), reverse=descending) + missing
    return ExperimentTable(table.metric_names, table.param_names, table.serving, rows)


def find_row(table: ExperimentTable, run_id: str, experiment: str | None = None) -> ExperimentRow:
    """A run's experiment (its best one when ``experiment`` is None) by run id or a unique prefix of it."""
    runs = sorted({row.run_id for row in table.rows if row.run_id.startswith(run_id)})
    if len(runs) != 1:
        raise NotFound(f"{'more than one' if runs else 'no'} training run matches '{run_id}'")
    rows = [row for row in table.rows if row.run_id == runs[0]]
    chosen = [row for row in rows if (row.experiment == experiment if experiment else row.best)]
    if not chosen:
        names = ", ".join(row.experiment for row in rows)
        raise NotFound(
            f"run {runs[0]} has no experiment '{experiment}' (it has: {names})"
            if experiment
            else f"run {runs[0]} has no best experiment (none succeeded)"
        )
    return chosen[0]


# -- plain text and CSV --------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _metric_cell(row: ExperimentRow, name: str) -> str:
    interval = row.intervals.get(name)
    text = _cell(row.metrics.get(name))
    if text and interval and interval.low is not None and interval.high is not None:
        text += f" [{interval.low:.3f}, {interval.high:.3f}]"
    return text


def columns(table: ExperimentTable) -> list[str]:
    return [
        "run_id",
        "experiment",
        "state",
        *(f"params.{n}" for n in table.param_names),
        *(f"metrics.{n}" for n in table.metric_names),
        *(f"validation.{n}" for n in table.metric_names),
        "gate",
        "serving",
    ]


def as_csv(table: ExperimentTable) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    names = columns(table)
    interval_names = sorted({n for row in table.rows for n in row.intervals})
    writer.writerow([*names, *(f"interval.{n}.{end}" for n in interval_names for end in ("low", "high"))])
    for row in table.rows:
        writer.writerow(
            # unrounded: CSV is read by programs
            ["" if row.value(n) is None else row.value(n) for n in names]
            + [getattr(row.intervals.get(n), end, None) for n in interval_names for end in ("low", "high")]
        )
    return out.getvalue()


def render(table: ExperimentTable) -> str:
    """The table for a terminal: one line per experiment, metrics with their intervals in brackets."""
    if not table.rows:
        return "no training runs yet"
    header = ["run", "experiment", "state", *table.param_names, *table.metric_names, "gate", "serving"]
    lines = [
        [
            row.run_id,
            row.experiment + (" *" if row.best else ""),
            row.state or "",
            *("" if row.params.get(n) is None else str(row.params.get(n)) for n in table.param_names),
            *(_metric_cell(row, n) for n in table.metric_names),
            row.gate or "",
            "serving" if row.serving else "",
        ]
        for row in table.rows
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in [header, *lines]]
    serving = table.serving
    text.append("")
    text.append(
        f"* the run's best experiment (the one the KPI gate judged); serving: version {serving.version} "
        f"(training run {serving.training_run_id or 'unknown'})"
        if serving.version is not None
        else "* the run's best experiment (the one the KPI gate judged); no model deployed yet"
    )
    return "\n".join(text)
