"""``branchops metrics diff`` and ``plots diff``: two training runs side by side, read from the records.

Each side is a run's experiment (its best one unless named: ``RUN:EXPERIMENT``), found by run id (or a
unique prefix), by a branch (its newest training record), by a commit (the newest run of that source
commit), or by ``serving`` / ``latest``. The default compares the deployed model with the previous
deployment (the version the deployment that brought it in replaced); with no previous deployment, the latest
run with what is serving; the result's ``note`` says which of the two it compared.
The curves plotted are those the evaluate component writes into metrics.json (``curves``: the training
history per epoch and the test period's ROC points); a run recorded before it wrote them has none, and the
plot says so rather than drawing nothing.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import git

from branchops import gitops, records
from branchops.errors import BadArgument, NotFound
from branchops.experiments import DEPLOY, TRAINING, Serving, finite_number, serving_now, stage_tip

SERVING = ("serving", "production")
LATEST = ("latest", "last")


@dataclass
class Side:
    """One side of a comparison: a training run's experiment and everything its record says of it."""

    label: str  # what the user asked for (or the default's name)
    run_id: str
    experiment: str
    source_commit: str | None
    model_version: int | None
    params: dict[str, Any]
    metrics: dict[str, Any] = field(repr=False)  # the run's whole metrics.json

    def curves(self) -> dict[str, Any]:
        curves = self.metrics.get("curves")
        return curves if isinstance(curves, dict) else {}

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "metrics"}


@dataclass(frozen=True)
class MetricChange:
    metric: str
    a: float | None
    b: float | None
    change: float | None  # b - a
    a_interval: tuple[float, float] | None
    b_interval: tuple[float, float] | None


@dataclass
class MetricsDiff:
    a: Side
    b: Side
    metrics: list[MetricChange]
    params: dict[str, tuple[Any, Any]]  # only the parameters that differ
    # with no side given: what the default compared, and why (None when the sides were named)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "metrics": [asdict(change) for change in self.metrics],
            "params": {name: {"a": a, "b": b} for name, (a, b) in self.params.items()},
            "note": self.note,
        }


def _interval(metrics: dict[str, Any], name: str) -> tuple[float, float] | None:
    found = metrics.get("intervals")
    found = found.get(name) if isinstance(found, dict) else None
    if isinstance(found, dict) and finite_number(found.get("low")) and finite_number(found.get("high")):
        return (found["low"], found["high"])
    return None


def metric_changes(a: dict[str, Any], b: dict[str, Any], names: list[str]) -> list[MetricChange]:
    """Each metric of ``names`` on both sides (test period), then on validation where either reports it."""
    changes = []
    sections = [("", a, b)]
    a_val, b_val = a.get("validation"), b.get("validation")
    if isinstance(a_val, dict) or isinstance(b_val, dict):
        sections.append(("validation.", a_val or {}, b_val or {}))
    for prefix, left, right in sections:
        for name in names:
            x = left.get(name) if finite_number(left.get(name)) else None
            y = right.get(name) if finite_number(right.get(name)) else None
            if prefix and x is None and y is None:
                continue
            changes.append(
                MetricChange(
                    prefix + name,
                    x,
                    y,
                    None if x is None or y is None else round(y - x, 6),
                    _interval(left, name),
                    _interval(right, name),
                )
            )
    return changes


# -- finding a side ------------------------------------------------------------------------------------


@dataclass
class _Branches:
    """The training and deploy-model branches for one command: each tip resolved, each records folder listed
    and what serves found once, however many sides ask."""

    repo: git.Repo
    config: Any

    @cached_property
    def training_tip(self) -> str | None:
        return stage_tip(self.repo, self.config, TRAINING)

    @cached_property
    def trainings(self) -> records.StageHistory:
        return records.stage_history(self.repo, self.training_tip, TRAINING)

    @cached_property
    def deploys(self) -> records.StageHistory:
        return records.stage_history(self.repo, stage_tip(self.repo, self.config, DEPLOY), DEPLOY)

    @cached_property
    def serving(self) -> Serving:
        return serving_now(self.deploys, self.trainings.newest_first())


def _side(label: str, rec: records.StoredRecord, experiment: str | None) -> Side:
    outputs = rec.training_outputs
    if experiment:
        entry = next((e for e in outputs.experiments if e.experiment == experiment), None)
        if entry is None:
            names = ", ".join(e.experiment for e in outputs.experiments)
            raise NotFound(f"run {rec.run_id} has no experiment '{experiment}' (it has: {names})")
    else:
        entry = outputs.best
        if entry is None:
            raise NotFound(
                f"run {rec.run_id} has no best experiment (none succeeded): name one, RUN:EXPERIMENT"
            )
    if not entry.metrics:
        raise NotFound(f"run {rec.run_id}, experiment {entry.experiment}: no metrics (it {entry.state})")
    return Side(
        label,
        rec.run_id,
        entry.experiment,
        rec.record.source_commit,
        entry.model.version if entry.model else None,
        dict(entry.params),
        entry.metrics,
    )


def resolve(branches: _Branches, spec: str) -> Side:
    """A side by run id, ``serving``, ``latest``, branch or commit, optionally ``:EXPERIMENT``."""
    key, _, experiment = spec.partition(":")
    repo, config, history = branches.repo, branches.config, branches.trainings
    if key in SERVING:
        serving = branches.serving
        if serving.version is None:
            raise NotFound("nothing is serving: no deploy-model run has deployed a model yet")
        if serving.training_run_id is None:
            raise NotFound(
                f"no training run on '{config.branch_for(TRAINING)}' produced version {serving.version}"
            )
        return _side(spec, history.read([serving.training_run_id])[0], experiment or None)
    if key in LATEST:
        latest = history.latest()
        if latest is None:
            raise NotFound(f"no training runs on '{config.branch_for(TRAINING)}' yet")
        return _side(spec, latest, experiment or None)
    matches = [run_id for run_id in history.run_ids if run_id.startswith(key)]
    if len(matches) == 1:
        return _side(spec, history.read(matches)[0], experiment or None)
    if len(matches) > 1:
        raise BadArgument(f"more than one training run matches '{key}': {', '.join(matches[-5:])}")
    for ref in (f"refs/heads/{key}", f"refs/remotes/{key}"):
        tip = gitops.resolve(repo, ref)
        if tip:  # a branch: its newest training record
            latest = records.stage_history(repo, tip, TRAINING).latest()
            if latest is None:
                raise NotFound(f"branch '{key}' holds no training records")
            return _side(spec, latest, experiment or None)
    # a commit: the newest run of it (run ids end with the source commit's short sha); one this clone does
    # not hold is matched by its hex digits alone
    commit = gitops.resolve(repo, key) or (key.lower() if re.fullmatch(r"[0-9a-fA-F]{7,40}", key) else None)
    if commit:
        short = commit[: records.SHORT_SHA]
        runs = [r for r in history.run_ids if r.rpartition("-")[2].startswith(short)]
        if not runs:
            raise NotFound(f"no training run of commit {short} on '{config.branch_for(TRAINING)}'")
        return _side(spec, history.read(runs[-1:])[0], experiment or None)
    raise NotFound(f"'{key}' is not a training run, a branch or a commit (nor serving/latest)")


PREVIOUS = "previous deployment"


def _previous_deployment(branches: _Branches) -> tuple[int | None, records.StoredRecord | None]:
    """The version the serving one replaced, and the training run that made it: the ``before`` of the newest
    deployment that brought the serving version in (a canary rolled back since, or a rerun that changed
    nothing, replaced nothing). (None, None): the serving version is the first one deployed."""
    serving = branches.serving
    for rec in branches.deploys.newest_first():
        deployment = rec.deploy_outputs.deployment
        if (
            deployment
            and deployment.after == serving.version
            and deployment.before not in (None, serving.version)
        ):
            made_by = next(
                (
                    candidate
                    for candidate in branches.trainings.newest_first()
                    if candidate.read_as(records.TrainingVersionView).model_version == deployment.before
                ),
                None,
            )
            return deployment.before, made_by
    return None, None


def _default_sides(branches: _Branches) -> tuple[Side, Side, str]:
    """With no side named: the deployed model (B) against the previous deployment (A); without one, the
    latest run (B) against what is serving (A). The note says which, and why."""
    serving = resolve(branches, SERVING[0])
    previous_version, previous = _previous_deployment(branches)
    if previous is not None:
        note = (
            f"The deployed model (B, version {serving.model_version}) against the previous deployment "
            f"(A, version {previous_version}, which it replaced)"
        )
        return _side(PREVIOUS, previous, None), serving, note
    training_branch = branches.config.branch_for(TRAINING)
    why = (
        f"No previous deployment (version {serving.model_version} is the first deployed)"
        if previous_version is None
        else f"Version {previous_version} served before, but no training run on '{training_branch}' made it"
    )
    note = f"{why}: the latest run on '{training_branch}' (B) against what is serving (A) instead"
    return serving, resolve(branches, LATEST[0]), note


def diff(repo_path: str, a: str | None = None, b: str | None = None) -> MetricsDiff:
    """B against A. With no side: the deployed model (B) against the previous deployment (A), or, when
    there is none, the latest run (B) against what is serving (A); one side: it (B) against what is
    serving."""
    from branchops.project import working_config

    repo = gitops.open_repo(repo_path)
    config = working_config(repo)
    branches = _Branches(repo, config)
    note = None
    if a is None and b is None:
        left, right, note = _default_sides(branches)
    else:
        if b is None:  # one side given: it against what is serving
            a, b = None, a
        left, right = resolve(branches, a or SERVING[0]), resolve(branches, b)
    names = list(config.training.metrics)
    params = {
        name: (left.params.get(name), right.params.get(name))
        for name in sorted({*left.params, *right.params})
        if left.params.get(name) != right.params.get(name)
    }
    return MetricsDiff(left, right, metric_changes(left.metrics, right.metrics, names), params, note)


# -- text ----------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _with_interval(value: Any, interval: tuple[float, float] | None) -> str:
    return _fmt(value) + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def _change(change: MetricChange) -> str:
    return "n/a" if change.change is None else f"{change.change:+.4f}"


def markdown_table(changes: list[MetricChange], a_label: str, b_label: str) -> list[str]:
    """The metrics of two runs as a markdown table (the training report's change against production)."""
    lines = [f"| metric | {a_label} | {b_label} | change |", "|---|---|---|---|"]
    lines += [
        f"| {c.metric} | {_with_interval(c.a, c.a_interval)} | {_with_interval(c.b, c.b_interval)} "
        f"| {_change(c)} |"
        for c in changes
    ]
    return lines


def render(result: MetricsDiff) -> str:
    def title(side: Side) -> str:
        return f"{side.label}: {side.run_id} / {side.experiment} (model version {_fmt(side.model_version)})"

    rows = [("metric", "A", "B", "change")] + [
        (c.metric, _with_interval(c.a, c.a_interval), _with_interval(c.b, c.b_interval), _change(c))
        for c in result.metrics
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"A  {title(result.a)}", f"B  {title(result.b)}", ""]
    if result.note:
        lines[:0] = [f"{result.note}.", ""]
    if (result.a.run_id, result.a.experiment) == (result.b.run_id, result.b.experiment):
        lines[-1:] = ["A and B are the same run's experiment: nothing changed", ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if result.params:
        lines += ["", "parameters that differ:"]
        lines += [f"  {name}: {_fmt(a)} -> {_fmt(b)}" for name, (a, b) in result.params.items()]
    return "\n".join(lines)


# -- plots ---------------------------------------------------------------------------------------------

PLOT_SUFFIXES = (".png", ".html")


def plot(result: MetricsDiff, output: str | Path) -> dict[str, Any]:
    """Overlaid learning curves (loss, accuracy; training solid, validation dashed) and ROC curves of both
    sides into ``output``: a PNG, or an HTML page holding that image and the metrics table."""
    output = Path(output)
    if output.suffix.lower() not in PLOT_SUFFIXES:
        raise BadArgument(f"{output}: write the plots to a .png or an .html file")
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    drawn: dict[str, list[str]] = {"learning_curves": [], "roc": []}
    # the legends say A and B, the title what they are: run ids would crowd the panels out
    for name, side, colour in (("A", result.a, "tab:blue"), ("B", result.b, "tab:orange")):
        curves = side.curves()
        learning = curves.get("learning") if isinstance(curves.get("learning"), dict) else {}
        for ax, metric in zip(axes[:2], ("loss", "accuracy")):
            for key, style, part in ((metric, "-", "train"), (f"val_{metric}", "--", "validation")):
                values = learning.get(key)
                if isinstance(values, list) and values:
                    ax.plot(range(1, len(values) + 1), values, style, color=colour, label=f"{name} {part}")
                    drawn["learning_curves"].append(f"{side.label}:{key}")
        roc = curves.get("roc") if isinstance(curves.get("roc"), dict) else {}
        if isinstance(roc.get("fpr"), list) and isinstance(roc.get("tpr"), list) and roc["fpr"]:
            auc = side.metrics.get("roc_auc")
            ax_label = f"{name}, AUC {auc:.3f}" if finite_number(auc) else name
            axes[2].plot(roc["fpr"], roc["tpr"], color=colour, label=ax_label)
            drawn["roc"].append(side.label)
    for ax, metric in zip(axes[:2], ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"Learning curves: {metric}")
    axes[2].plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes[2].set_xlabel("false positive rate")
    axes[2].set_ylabel("true positive rate")
    axes[2].set_title("ROC on the test period")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:  # a run recorded before metrics.json carried its curves
            ax.text(0.5, 0.5, "not recorded for these runs", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(
        "\n".join(
            # with no side named, first what the default compared
            ([result.note] if result.note else [])
            + [
                f"{name}: {side.run_id} / {side.experiment}"
                # what was asked for, when it was not the run itself (serving, latest, a branch, a commit)
                + ("" if side.run_id.startswith(side.label.partition(":")[0]) else f" ({side.label})")
                for name, side in (("A", result.a), ("B", result.b))
            ]
        ),
        fontsize=9,
    )
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100)
    plt.close(fig)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".png":
        output.write_bytes(image.getvalue())
    else:
        import html

        table = "\n".join(markdown_table(result.metrics, "A", "B"))
        output.write_text(
            "<!doctype html>\n<html><head><meta charset='utf-8'><title>branchops plots diff</title></head>"
            "<body>\n"
            f"<h1>{html.escape(result.a.run_id)} / {html.escape(result.a.experiment)} (A) against "
            f"{html.escape(result.b.run_id)} / {html.escape(result.b.experiment)} (B)</h1>\n"
            + (f"<p>{html.escape(result.note)}.</p>\n" if result.note else "")
            + f"<pre>{html.escape(table)}</pre>\n"
            f"<img alt='learning curves and ROC' src='data:image/png;base64,"
            f"{base64.b64encode(image.getvalue()).decode()}'>\n</body></html>\n"
        )
    return {"written": str(output), "plotted": drawn, **result.to_dict()}


# -- TensorBoard ---------------------------------------------------------------------------------------

TENSORBOARD_DIR = "tensorboard"  # in a run's work folder: the train component's event files


@dataclass(frozen=True)
class LogDir:
    name: str  # <run id>/<experiment>, as TensorBoard lists it
    run_id: str
    experiment: str
    path: str


def tensorboard_logdirs(repo_path: str, keys: list[str]) -> list[LogDir]:
    """The TensorBoard folders of training runs (``RUN`` or ``RUN:EXPERIMENT``; a run alone: each of its
    succeeded experiments), in the work folders the runs trained in (``runs/<run name>`` of the model
    volume, as the training stage lays them out)."""
    from branchops.project import working_config
    from branchops.storage import make_storage

    repo = gitops.open_repo(repo_path)
    config = working_config(repo)
    storage = make_storage(config, gitops.state_dir(repo))
    history = _Branches(repo, config).trainings
    found = []
    for key in keys:
        run_key, _, experiment = key.partition(":")
        matches = [run_id for run_id in history.run_ids if run_id.startswith(run_key)]
        if len(matches) != 1:
            raise (BadArgument if matches else NotFound)(
                f"{'more than one' if matches else 'no'} training run matches '{run_key}' on "
                f"'{config.branch_for(TRAINING)}'"
            )
        rec = history.read(matches)[0]
        entries = [
            e
            for e in rec.training_outputs.experiments
            if e.succeeded and e.run_name and (not experiment or e.experiment == experiment)
        ]
        if not entries:
            raise NotFound(
                f"run {rec.run_id} has no succeeded experiment{f' {experiment!r}' if experiment else ''}"
            )
        for entry in entries:
            volume = storage.get_volume(entry.model.volume) if entry.model and entry.model.volume else None
            if volume is None or volume.path is None:
                raise NotFound(
                    f"run {rec.run_id} / {entry.experiment}: its work folder is on volume "
                    f"{entry.model.volume if entry.model else '?'}, which is not a folder on this machine"
                )
            folder = Path(storage.step_dir(volume, "models")) / "runs" / entry.run_name / TENSORBOARD_DIR
            if not folder.is_dir():
                raise NotFound(
                    f"run {rec.run_id} / {entry.experiment}: no TensorBoard event files in {folder} (a run "
                    "trained before the train component wrote them)"
                )
            found.append(
                LogDir(f"{rec.run_id}/{entry.experiment}", rec.run_id, entry.experiment, str(folder))
            )
    return found


def tensorboard_command(logdirs: list[LogDir], port: int | None = None) -> list[str]:
    """The command that opens the runs side by side: TensorBoard's ``--logdir_spec name:path,...`` (a name
    holds no ':' or ',', which the spec uses as separators)."""
    import sys

    spec = ",".join(f"{d.name.replace(':', '_').replace(',', '_')}:{d.path}" for d in logdirs)
    command = [sys.executable, "-m", "tensorboard.main", "--logdir_spec", spec]
    return command + (["--port", str(port)] if port else [])
