"""The training stage (docs/architecture.md §1, step 4): volumes, one pipeline run per experiment,
snapshots, the lineage record, the KPI gate, and the merge request into deploy-model.

Everything is keyed by the source commit: the pipeline version is found by the spec hash of this
commit's compiled pipeline, runs are named ``<commit>-<experiment>`` (the engine never starts a run
name twice), snapshots ``<volume>-<commit>[-<experiment>]`` (storage never makes a name twice), and the
release merge request is upserted from one bot branch. A rerun therefore repeats nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from branchops import gitops, records
from branchops.errors import ConfigError, DataError, StageFailed
from branchops.records import (
    BestRef,
    DataRef,
    ExperimentEntry,
    KpiVerdict,
    ModelRef,
    OpenedMergeRequest,
    PipelineRef,
    ProductionRef,
    TrainingLineage,
    TrainingOutputs,
)
from branchops.runplan import (
    METRICS_FILE,
    PLOTS_DIR,
    compile_workspace,
    data_until_input,
    pipeline_params,
    read_metrics,
    run_paths,
)
from branchops.stages.base import StageContext, StageResult


def inputs(config: Any) -> tuple[str, ...]:
    """Path prefixes whose change runs this stage in single-branch mode."""
    return ("config/", "pipelines/", "components/")


RELEASE_BRANCH_PREFIX = "branchops/release-"
# A data folder holding a file of this name holds generated data: every report and summary says so.
SYNTHETIC_MARKER = "SYNTHETIC"

log = logging.getLogger(__name__)


def commit_version(ctx: StageContext) -> int:
    """The model version: the source commit's time in seconds, so later commits serve higher versions."""
    import git

    return int(git.Repo(ctx.git_dir).commit(ctx.source_commit).committed_date)


def run_name(ctx: StageContext, experiment: str) -> str:
    return f"{ctx.source_commit[:12]}-{experiment}"


def snapshot_name(volume: str, ctx: StageContext, experiment: str | None = None) -> str:
    name = f"{volume}-{ctx.source_commit[:12]}" + (f"-{experiment}" if experiment else "")
    return name[:63].rstrip("-")


# -- pipeline ------------------------------------------------------------------------------------------


def uploaded_version(ctx: StageContext, engine, compiled):
    upload = engine.find_version(ctx.config.kubeflow.pipeline_name, compiled.spec_hash)
    if upload is None:
        raise StageFailed(
            f"pipeline version {compiled.spec_hash[:16]} (the pipeline compiled from "
            f"{ctx.source_commit[:12]}) is not uploaded to {ctx.config.kubeflow.backend} Kubeflow Pipelines: "
            "merge this pipeline into "
            f"'{ctx.config.branch_for('kf-pipeline')}' first"
        )
    return upload


# -- data ----------------------------------------------------------------------------------------------


def provide_data(ctx: StageContext, storage) -> tuple[Any, str | None, bool]:
    """The data volume as config's policy says, with the raw files in ``raw/``: (volume, kaggle dataset the
    pipeline downloads into it, if any, whether the raw files are generated: the SYNTHETIC marker).

    Whether the raw files are there is asked of the volume itself (through the storage port), not taken
    from whether the volume is new: a download that failed leaves the volume behind, empty of raw files,
    and the next run must download again. The one listing (a reader pod on Kubernetes) also says whether
    the data there is synthetic, so that generated data on a PVC is reported as such too."""
    cfg = ctx.config
    volume, needs_data = storage.provide_data_volume(cfg.storage.data_volume)
    raw = Path(volume.path) / "raw" if volume.path else None
    listed = None if needs_data else storage.list_folder(volume, "raw")
    if listed:
        return volume, None, SYNTHETIC_MARKER in listed
    data = cfg.data
    if data is None:
        raise ConfigError(
            f"volume {volume.name} has no raw data (no raw/ folder) and config has no 'data' section "
            "saying where its files come from (data.source: folder, kaggle or script)"
        )
    if data.source == "kaggle":
        provide_kaggle_credentials(ctx)
        ctx.log.info(
            "data volume %s holds no raw data: the pipeline's first step downloads Kaggle dataset %s",
            volume.name,
            data.kaggle.dataset,
        )
        return volume, data.kaggle.dataset, False
    if raw is None:
        raise ConfigError(
            f"storage '{cfg.storage.backend}': a new data volume is filled by the pipeline's own "
            "download (data.source: kaggle); use data_volume policy 'existing' or 'clone' for data "
            f"from a {data.source}"
        )
    from branchops.storage.local import replace_file

    raw.mkdir(parents=True, exist_ok=True)
    if data.source == "folder":
        folder = Path(data.folder or "")
        folder = folder if folder.is_absolute() else ctx.workspace / folder
        files = sorted(p for p in folder.glob(data.files) if p.is_file())
        if not files:
            raise ConfigError(f"data.folder: {folder} holds no files matching '{data.files}'")
        for path in files:
            replace_file(raw / path.name, path.read_bytes())
        ctx.log.info("copied %d files from %s into volume %s", len(files), folder, volume.name)
    else:
        script = ctx.workspace / str(data.script)
        if not script.is_file():
            raise ConfigError(f"data.script: {data.script} is not a file in {ctx.source_commit[:12]}")
        ctx.log.info("data.script: running %s %s", data.script, raw)
        done = subprocess.run(
            [sys.executable, str(script), str(raw)],
            cwd=ctx.workspace,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise StageFailed(
                f"data.script {data.script} exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )
    synthetic = is_synthetic(raw)
    if synthetic:
        ctx.log.warning("data volume %s holds SYNTHETIC data (%s)", volume.name, raw / SYNTHETIC_MARKER)
    return volume, None, synthetic


def provide_kaggle_credentials(ctx: StageContext) -> None:
    """Refuse, before any run starts, a Kaggle download that cannot authenticate: on Kubeflow the step
    reads the credentials from the Kubernetes Secret ``data.kaggle.secret`` (bound to it when the pipeline
    is compiled); a local step reads KAGGLE_USERNAME/KAGGLE_KEY (set here from what ``data.kaggle``
    references), KAGGLE_API_TOKEN or a kaggle.json, looked for where the download step looks
    (components/consolidate). Credentials Kaggle refuses are reported by the download step, the
    pipeline's first."""
    kaggle = ctx.config.data.kaggle
    if ctx.config.kubeflow.backend == "kubeflow":
        if not kaggle.secret:
            raise ConfigError(
                f"data.kaggle: the data volume needs Kaggle dataset {kaggle.dataset}, and on Kubeflow the "
                "download step gets credentials only from a Kubernetes Secret: create one (keys "
                f"{', '.join(sorted(kaggle.secret_keys))}) in the pipeline's namespace and name it in "
                "data.kaggle.secret"
            )
        return
    refs = {"KAGGLE_USERNAME": kaggle.username, "KAGGLE_KEY": kaggle.key}
    for var, ref in refs.items():
        value = ref.resolve() if ref else None
        if value:
            os.environ[var] = value  # the pipeline's download step (a local process) reads these
    if (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")) or os.environ.get(
        "KAGGLE_API_TOKEN"
    ):
        return
    home = Path.home()
    folders = [os.environ.get("KAGGLE_CONFIG_DIR"), str(home / ".kaggle"), str(home / ".config" / "kaggle")]
    if any(folder and (Path(folder) / "kaggle.json").is_file() for folder in folders):
        return
    configured = ", ".join(ref.describe() for ref in refs.values() if ref) or "none configured"
    raise ConfigError(
        f"data.kaggle: the data volume needs Kaggle dataset {kaggle.dataset} but there are no Kaggle "
        f"credentials (data.kaggle.username/key: {configured}; no KAGGLE_USERNAME/KAGGLE_KEY, "
        "KAGGLE_API_TOKEN or kaggle.json): nothing was started"
    )


def is_synthetic(folder: Path | None) -> bool:
    return folder is not None and (folder / SYNTHETIC_MARKER).exists()


# -- one experiment ------------------------------------------------------------------------------------


def run_experiment(
    ctx: StageContext,
    engine,
    upload,
    spec: bytes,
    storage,
    volumes,
    experiment,
    kaggle: str | None,
    version: int,
) -> ExperimentEntry:
    cfg = ctx.config
    data_volume, model_volume = volumes
    name = run_name(ctx, experiment.name)
    # A retry (a new run name) works in the same folder: its parameters are this run's.
    folder = f"runs/{name}"
    paths = run_paths(storage, data_volume, model_volume, folder)
    until = data_until_input(cfg)
    params = pipeline_params(
        spec, paths, version, ctx.source_commit, kaggle, data_volume, model_volume, experiment.params, until
    )
    ctx.log.info(
        "experiment %s: run %s starting (%s)",
        experiment.name,
        name,
        ", ".join(f"{k}={v}" for k, v in experiment.params.items()),
    )

    def start(run: str):
        return engine.run(
            ctx.branch,
            upload,
            run,
            params,
            cfg.training.timeout_s,
            on_progress=lambda message: ctx.log.info("%s", message),
        )

    result = start(name)
    if result.reused and not result.succeeded:
        # The engine never starts a run name twice; a retry of a failed run is a new, dated attempt.
        name = f"{name}-retry-{ctx.run_id.split('-')[0].lower()}"
        ctx.log.info("experiment %s: the earlier run %s; retrying as %s", experiment.name, result.state, name)
        result = start(name)
    entry = ExperimentEntry(
        experiment=experiment.name,
        run_name=name,
        run_id=result.run_id,
        state=result.state,
        error=result.error,
        duration_s=result.duration_s,
        reused_run=result.reused,
        params=experiment.params,
    )
    if not result.succeeded:
        return entry
    entry.metrics = read_metrics(result.outputs, paths, cfg.training.metrics)
    entry.model = ModelRef(volume=model_volume.name, path=f"{folder}/export/{version}", version=version)
    if cfg.storage.snapshots:
        labels = {"branchops.io/commit": ctx.source_commit[:40], "branchops.io/run": name[:63]}
        data_snap = storage.snapshot(data_volume.name, snapshot_name(data_volume.name, ctx), labels)
        model_snap = storage.snapshot(
            model_volume.name, snapshot_name(model_volume.name, ctx, experiment.name), labels
        )
        entry.data = DataRef(volume=data_volume.name, snapshot=data_snap.name, until=until or None)
        entry.model.snapshot = model_snap.name
        ctx.log.info(
            "experiment %s: snapshots %s (data) and %s (model)",
            experiment.name,
            data_snap.name,
            model_snap.name,
        )
    else:
        entry.data = DataRef(volume=data_volume.name, snapshot=None, until=until or None)
    # The run's files are read from the model volume through the storage port: on Kubeflow with Trident
    # no directory here holds them, and the Kubeflow API returns the steps' states, not their outputs.
    ctx.add_artifact(f"{experiment.name}/{METRICS_FILE}", json.dumps(entry.metrics, indent=2) + "\n")
    # every plot in one read (one reader pod on Trident, not one per file)
    plots = storage.read_folder(model_volume, f"{folder}/{PLOTS_DIR}") or {}
    for png, content in plots.items():
        if png.endswith(".png"):
            ctx.add_artifact(f"{experiment.name}/{PLOTS_DIR}/{png}", content)
    return entry


# -- KPI gate and production ---------------------------------------------------------------------------


def production_release(ctx: StageContext) -> tuple[Any, dict[str, Any] | None]:
    """The release now desired on deploy-model, and the metrics of the training run it came from."""
    import git

    from branchops.serving.release import parse_release

    repo = git.Repo(ctx.git_dir)
    deploy_branch = ctx.config.branch_for("deploy-model")
    tip = gitops.branch_tip(repo, deploy_branch, ctx.config.git.remote)
    raw = gitops.read_file(repo, tip, ctx.config.serving.release_file) if tip else None
    if not raw:
        return None, None
    release = parse_release(raw.decode(), f"{deploy_branch}:{ctx.config.serving.release_file}")
    if release.training is None:
        return release, None
    training_tip = gitops.branch_tip(repo, ctx.branch, ctx.config.git.remote)
    found = records.find_run(repo, [training_tip] if training_tip else [], release.training.run_id)
    best = found.training_outputs.best if found else None
    return release, best.metrics if best else None


def selection_value(entry: ExperimentEntry, metric: str) -> Any:
    """What experiments are ranked on: the run's validation value of ``metric`` (metrics.json's
    "validation" section: folds that end before the test period) when it reports one, else its value."""
    validation = entry.metric("validation")
    if isinstance(validation, dict) and _number(validation.get(metric)):
        return validation[metric]
    return entry.metric(metric)


def select_best(entries: list[ExperimentEntry], metric: str) -> ExperimentEntry | None:
    succeeded = [e for e in entries if e.succeeded]
    if not succeeded:
        return None
    return max(
        succeeded,
        key=lambda e: selection_value(e, metric) if _number(selection_value(e, metric)) else float("-inf"),
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def comparison_sentence(comparison: dict[str, Any]) -> str:
    """One comparison of metrics.json in words: the advantage, its interval and what that means."""
    low, high, difference = comparison.get("low"), comparison.get("high"), comparison.get("difference")
    confidence = comparison.get("confidence")
    if not all(_number(v) for v in (low, high, difference, confidence)):
        malformed = json.dumps(comparison, default=str)
        return f"against {comparison.get('baseline')}: malformed comparison {malformed}"
    verdict = (
        "significantly better"
        if low > 0
        else "not significantly better (the interval includes zero)"
        if high > 0
        else "worse"
    )
    return (
        f"against {comparison.get('baseline')} on {comparison.get('metric')}: {difference:+.4f} "
        f"({confidence:.0%} interval {low:+.4f} to {high:+.4f}), {verdict}"
    )


def significance_failures(metrics: dict[str, Any], confidence: float) -> list[str]:
    """Why a run's comparisons with its baselines do not show it is better, significantly (empty: they do).

    The test period's comparisons are required; the validation section's (folds before the test period),
    when reported, must hold too: a configuration tuned until the test period looks good does not carry
    its luck into folds it was not tuned on."""
    comparisons = metrics.get("comparisons")
    if not isinstance(comparisons, list) or not comparisons:
        return [
            "the run's metrics.json reports no comparisons with baselines (\"comparisons\"), so it cannot "
            "show it beats them significantly (training.kpis.require_significant)"
        ]
    failures = _comparison_failures(comparisons, confidence, "test period")
    validation = metrics.get("validation")
    if isinstance(validation, dict) and isinstance(validation.get("comparisons"), list):
        failures += _comparison_failures(validation["comparisons"], confidence, "validation")
    ours, constant = metrics.get("log_loss"), metrics.get("log_loss_constant")
    if not (_number(ours) and _number(constant)):
        failures.append("the run's metrics.json lacks log_loss or log_loss_constant")
    elif ours >= constant:
        failures.append(f"log loss {ours:.4f} does not beat the constant predictor's {constant:.4f}")
    return failures


def _comparison_failures(comparisons: list[Any], confidence: float, where: str) -> list[str]:
    failures = []
    for comparison in comparisons:
        if not isinstance(comparison, dict):
            failures.append(f"malformed comparison {comparison!r}")
            continue
        measured = comparison.get("confidence")
        if not _number(measured) or measured < confidence:
            failures.append(
                f"{where}, against {comparison.get('baseline')}: interval at {fmt(measured)} "
                f"confidence, not the {confidence:.0%} the KPIs ask"
            )
        elif not (_number(comparison.get("low")) and comparison["low"] > 0):
            failures.append(f"{where}, {comparison_sentence(comparison)}")
    return failures


def kpi_verdict(ctx: StageContext, best: ExperimentEntry, production: dict[str, Any] | None) -> list[str]:
    """The reasons the best experiment fails the KPIs (empty when it passes)."""
    kpis, metric = ctx.config.training.kpis, ctx.config.training.select_by
    failures = []
    for name, minimum in kpis.thresholds.items():
        value = best.metric(name)
        if value is None or value < minimum:
            failures.append(f"{name} {fmt(value)} < {minimum:g} (threshold)")
    if kpis.require_significant:
        failures += significance_failures(best.metrics or {}, kpis.confidence)
    if production is not None and kpis.beat_production_by is not None:
        theirs = production.get(metric)
        interval = (best.metric("intervals") or {}).get(metric)
        if _number(theirs) and isinstance(interval, dict) and _number(interval.get("low")):
            # production's number is one measurement; ours must clear it with its whole interval
            if interval["low"] <= theirs + kpis.beat_production_by:
                failures.append(
                    f"against production on {metric}: ours {fmt(best.metric(metric))} "
                    f"({interval.get('confidence', kpis.confidence):.0%} interval {fmt(interval['low'])} to "
                    f"{fmt(interval.get('high'))}) does not clear production's {fmt(theirs)} "
                    f"by {kpis.beat_production_by:g}"
                )
        elif theirs is not None:
            ours = best.metric(metric)
            if ours is None or ours < theirs + kpis.beat_production_by:
                failures.append(
                    f"{metric} {fmt(ours)} does not beat production's {fmt(theirs)} by "
                    f"{kpis.beat_production_by:g}"
                )
    return failures


def fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


# -- the report and the release merge request -----------------------------------------------------------


def validation_lines(entry: ExperimentEntry, names: list[str]) -> list[str]:
    """The run's validation section (metrics.json "validation": folds before the test period) as markdown."""
    validation = entry.metric("validation")
    if not isinstance(validation, dict):
        return []
    lines = ["", f"### Validation of `{entry.experiment}`", ""]
    if validation.get("source"):
        lines += [f"Source: {validation['source']}."]
    if validation.get("final_model"):
        lines += [f"Final model: {validation['final_model']}."]
    folds = [f for f in validation.get("folds") or [] if isinstance(f, dict)]
    if folds:
        columns = [k for k in folds[0] if k not in ("fold",)]
        lines += ["", "| fold | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        lines += [f"| {f.get('fold')} | " + " | ".join(fmt(f.get(k)) for k in columns) + " |" for f in folds]
    intervals = validation.get("intervals") or {}
    means = [
        f"{k} {fmt(validation[k])}"
        + (
            f" ({intervals[k].get('confidence', 0):.0%} interval "
            f"{fmt(intervals[k].get('low'))} to {fmt(intervals[k].get('high'))})"
            if isinstance(intervals.get(k), dict)
            else ""
        )
        for k in names
        if _number(validation.get(k))
    ]
    if means:
        lines += ["", ("Mean over folds: " if folds else "") + "; ".join(means) + "."]
    for comparison in validation.get("comparisons") or []:
        if isinstance(comparison, dict):
            lines.append(f"- {comparison_sentence(comparison)}")
    return lines


def report_markdown(
    ctx: StageContext,
    entries: list[ExperimentEntry],
    best: ExperimentEntry | None,
    production: dict[str, Any] | None,
    failures: list[str],
    lineage: TrainingLineage,
    synthetic: bool,
) -> str:
    cfg = ctx.config
    metric, names = cfg.training.select_by, cfg.training.metrics
    lines = [f"# Training report — {cfg.project.name} @ {ctx.source_commit[:12]}", ""]
    if cfg.project.description:
        lines += [cfg.project.description, ""]
    if synthetic:
        lines += [
            "> **SYNTHETIC DATA.** These models were trained on generated data (the data volume carries a "
            f"{SYNTHETIC_MARKER} marker), not real data. The metrics say nothing about the real world.",
            "",
        ]
    mr = ctx.merge_request
    lines += [
        f"Merge request !{mr.number} *{mr.title}* by {mr.author}, merged by {mr.merged_by}; "
        f"run `{ctx.run_id}`.",
        "",
    ]
    if best:
        params = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in best.params.items())
        ranked_on = (
            "its validation"
            if isinstance(best.metric("validation"), dict) and _number(best.metric("validation").get(metric))
            else "its"
        )
        lines += [
            f"**Best experiment: `{best.experiment}`** (by {ranked_on} `{metric}`), with "
            f"{params or 'no parameters'}.",
            "",
        ]
        if best.metric("predicts"):  # a run may say what its model's output means
            lines += [f"The model predicts {best.metric('predicts')}.", ""]
        if best.metric("summary"):
            lines += [str(best.metric("summary")), ""]
    header = "| " + " | ".join(names) + " |"
    lines += [
        "## Experiments",
        "",
        f"Ranked on validation `{metric}` (folds that end before the test period) where a run reports one; "
        "the test columns are the held-out test period.",
        "",
        f"| experiment | state | validation {metric} " + header + " run time |",
        "|---|---|---|" + "---|" * len(names) + "---|",
    ]
    for e in entries:
        validation = e.metric("validation") if isinstance(e.metric("validation"), dict) else {}
        lines.append(
            f"| {e.experiment} | {e.state} | {fmt(validation.get(metric))} | "
            + " | ".join(fmt(e.metric(k)) for k in names)
            + f" | {fmt(e.duration_s)} s |"
        )
    if best:
        # A run's metrics.json may carry its baselines' metrics too ({"baselines": {name: {metric: value}}}).
        baselines = best.metric("baselines") or {}
        lines += [
            "",
            "## Against the baselines and production",
            "",
            "| " + header,
            "|---|" + "---|" * len(names),
            f"| **{best.experiment}** | " + " | ".join(fmt(best.metric(k)) for k in names) + " |",
        ]
        for name, values in baselines.items():
            lines.append(f"| baseline: {name} | " + " | ".join(fmt(values.get(k)) for k in names) + " |")
        if production:
            lines.append("| production | " + " | ".join(fmt(production.get(k)) for k in names) + " |")
        else:
            lines.append("| production | no model deployed yet |" + " |" * (len(names) - 1))
        if production:
            # what `branchops metrics diff` shows, for the approver of the release into deploy-model
            from branchops.compare import markdown_table, metric_changes

            changes = metric_changes(production, best.metrics or {}, names)
            lines += ["", "### Change against production", ""]
            lines += markdown_table(changes, "production", f"**{best.experiment}**")
        test_comparisons = [c for c in best.metric("comparisons") or [] if isinstance(c, dict)]
        if test_comparisons:
            lines += [""] + [f"- test period, {comparison_sentence(c)}" for c in test_comparisons]
        lines += validation_lines(best, names)
        plots = sorted(path for path in ctx.artifacts if path.startswith(f"{best.experiment}/{PLOTS_DIR}/"))
        if plots:
            # on the stage branch, where this run's record commit puts them (the merge request into
            # deploy-model is on another branch: a relative link would not resolve there)
            links = [ctx.forge.file_link(ctx.branch, f"{ctx.record_dir}/{p}") for p in plots]
            lines += ["", "### Plots", ""] + [f"![{Path(p).name}]({link})" for p, link in zip(plots, links)]
    lines += ["", "## KPI gate", ""]
    kpis = cfg.training.kpis
    lines.append(
        "Thresholds: "
        + (", ".join(f"{k} ≥ {v:g}" for k, v in kpis.thresholds.items()) or "none")
        + (
            f"; must beat every baseline significantly (the lower bound of each comparison's "
            f"{kpis.confidence:.0%} interval above zero) and the constant predictor's log loss"
            if kpis.require_significant
            else ""
        )
        + (
            f"; must beat production's {metric} by {kpis.beat_production_by:g}"
            if kpis.beat_production_by is not None
            else ""
        )
    )
    lines.append("")
    lines.append(
        "**Passed**: a merge request into deploy-model carries this release."
        if best and not failures
        else "**Not passed**: " + "; ".join(failures or ["no experiment succeeded"])
    )
    if best and not failures and kpis.require_significant:
        validation = best.metric("validation") if isinstance(best.metric("validation"), dict) else {}
        lines += [""] + [
            f"- {where}, {comparison_sentence(c)}"
            for where, found in (
                ("test period", best.metric("comparisons")),
                ("validation", validation.get("comparisons")),
            )
            for c in found or []
            if isinstance(c, dict)
        ]
    others = [e for e in entries if e.succeeded and e is not best]
    if others:
        lines += [
            "",
            "The other experiments, judged by the same KPIs (for the record; only the best is released):",
            "",
        ]
        for e in others:
            theirs = kpi_verdict(ctx, e, production)
            lines.append(
                f"- `{e.experiment}`: "
                + ("would pass" if not theirs else "**refused**: " + "; ".join(theirs))
            )
    lines += [
        "",
        "## Lineage",
        "",
        "```json",
        json.dumps(lineage.to_dict(), indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Reproduce",
        "",
        f"    branchops reproduce {ctx.run_id}",
        "",
        "clones the data snapshot into a new volume, runs the same pipeline version with the same "
        "parameters, and compares the metrics.",
        "",
    ]
    return "\n".join(lines)


def open_release_request(ctx: StageContext, best: ExperimentEntry, report: str) -> tuple[int, bool]:
    """Point the bot's release branch at deploy-model + the new release file, and upsert its merge request."""
    import git
    import yaml

    from branchops.serving.release import Release

    cfg = ctx.config
    repo = git.Repo(ctx.git_dir)
    model = best.model
    if model is None:  # a succeeded run always exports one; a record without it cannot be released
        raise StageFailed(f"experiment {best.experiment} succeeded but recorded no model")
    source = (
        {"snapshot": model.snapshot, "path": model.path}
        if model.snapshot
        else {"volume": model.volume, "path": model.path}
    )
    release = Release.model_validate(
        {
            "model": cfg.serving.model_name,
            "version": model.version,
            "source": source,
            "strategy": cfg.serving.rollout.strategy,
            "training": {"run_id": ctx.run_id, "commit": ctx.source_commit},
        }
    )
    from branchops.serving.release import RELEASE_HEADER

    content = RELEASE_HEADER + yaml.safe_dump(
        release.model_dump(mode="json", exclude_none=True), sort_keys=False
    )
    deploy_branch = cfg.branch_for("deploy-model")
    branch = RELEASE_BRANCH_PREFIX + cfg.serving.model_name
    base = gitops.branch_tip(repo, deploy_branch, cfg.git.remote)
    identity = gitops.Identity(cfg.bot.name, cfg.bot.email)
    message = gitops.bot_message(
        f"release {cfg.serving.model_name} version {model.version}",
        f"From training run {ctx.run_id} (experiment {best.experiment}).",
        cfg.bot.marker,
    )
    commit = gitops.build_commit(
        repo, base, {cfg.serving.release_file: content.encode()}, message, identity, overwrite=True
    )
    gitops.set_branch(repo, branch, commit, cfg.git.remote)
    title = (
        f"Deploy {cfg.serving.model_name} v{model.version} ({best.experiment}, "
        f"{cfg.training.select_by} {fmt(best.metric(cfg.training.select_by))})"
    )
    mr, created = ctx.forge.open_merge_request(branch, deploy_branch, title, report, cfg.bot.name)
    return mr.number, created


# -- the stage -----------------------------------------------------------------------------------------


def plan(ctx: StageContext) -> list[str]:
    cfg = ctx.config
    steps = [
        f"compile {cfg.kubeflow.pipeline_module} and find its version on {cfg.kubeflow.backend} "
        f"(pipeline {cfg.kubeflow.pipeline_name})"
    ]
    dv = cfg.storage.data_volume
    steps.append(
        f"data volume {dv.name} ({cfg.storage.backend}): policy {dv.policy}"
        + (f" from snapshot {dv.snapshot}" if dv.snapshot else "")
        + (f", data source {cfg.data.source}" if cfg.data else ", no data section")
    )
    for exp in cfg.training.experiments:
        steps.append(
            f"run {run_name(ctx, exp.name)} in experiment '{ctx.branch}' with "
            + (", ".join(f"{k}={v}" for k, v in exp.params.items()) or "the pipeline's defaults")
        )
    if cfg.storage.snapshots:
        steps.append(f"snapshot {dv.name} and {cfg.storage.model_volume} after each run")
    kpis = cfg.training.kpis
    gate = [f"{k} ≥ {v:g}" for k, v in kpis.thresholds.items()]
    if kpis.require_significant:
        gate.append(f"beat every baseline significantly ({kpis.confidence:.0%}) and the constant's log loss")
    steps.append(
        f"pick the best by validation {cfg.training.select_by}; KPI gate "
        + (", ".join(gate) or "none")
        + f"; if it passes, open or update the merge request into {cfg.branch_for('deploy-model')}"
    )
    return steps


def run(ctx: StageContext) -> StageResult:
    from branchops.engine import make_engine
    from branchops.storage import make_storage

    cfg = ctx.config
    compiled, images = compile_workspace(cfg, ctx.workspace)
    engine = make_engine(cfg, ctx.state_dir, ctx.workspace)
    upload = uploaded_version(ctx, engine, compiled)
    storage = make_storage(cfg, ctx.state_dir)
    data_volume, kaggle, synthetic = provide_data(ctx, storage)
    model_volume = storage.ensure_volume(cfg.storage.model_volume)
    version = commit_version(ctx)
    # every experiment's parameters are checked against the pipeline before any run starts
    for exp in cfg.training.experiments:
        paths = run_paths(storage, data_volume, model_volume, f"runs/{run_name(ctx, exp.name)}")
        pipeline_params(
            compiled.spec,
            paths,
            version,
            ctx.source_commit,
            kaggle,
            data_volume,
            model_volume,
            exp.params,
            data_until_input(cfg),
        )

    with ThreadPoolExecutor(max_workers=cfg.training.max_parallel_runs) as pool:
        entries = list(
            pool.map(
                lambda exp: run_experiment(
                    ctx,
                    engine,
                    upload,
                    compiled.spec,
                    storage,
                    (data_volume, model_volume),
                    exp,
                    kaggle,
                    version,
                ),
                cfg.training.experiments,
            )
        )

    metric = cfg.training.select_by
    best = select_best(entries, metric)
    production_release_, production = production_release(ctx)
    failures = kpi_verdict(ctx, best, production) if best else ["no experiment succeeded"]
    lineage = TrainingLineage(
        source_commit=ctx.source_commit,
        config_digest=cfg.digest(),
        run_id=ctx.run_id,
        pipeline=PipelineRef(
            name=cfg.kubeflow.pipeline_name,
            id=upload.pipeline_id,
            version_id=upload.version_id,
            spec_hash=compiled.spec_hash,
            engine=cfg.kubeflow.backend,
        ),
        images=images or "none (no registry configured: steps ran as local processes)",
        approved_by=sorted(ctx.approved_by),  # the approvals the gate counted, not every approval given
        best=BestRef(experiment=best.experiment, data=best.data, model=best.model) if best else None,
    )
    report = report_markdown(ctx, entries, best, production, failures, lineage, synthetic)
    ctx.add_artifact("report.md", report)
    if best:
        ctx.add_artifact(
            "metrics.json",
            json.dumps({e.experiment: e.metrics for e in entries}, indent=2, sort_keys=True) + "\n",
        )
    outputs = TrainingOutputs(
        experiments=entries,
        best=best,
        lineage=lineage,
        synthetic_data=synthetic,
        kpi=KpiVerdict(passed=not failures, failures=failures),
        production=ProductionRef(
            version=production_release_.version if production_release_ else None, metrics=production
        ),
    )
    failed_runs = [e for e in entries if not e.succeeded]
    if failed_runs:
        detail = "; ".join(f"{e.experiment}: {e.state} ({e.error})" for e in failed_runs)
        # a step that refused its input data (the components' DataError) is bad data, not a broken stage
        bad_data = any("DataError" in (e.error or "") for e in failed_runs)
        return StageResult(
            "failed",
            f"{len(failed_runs)} of {len(entries)} runs did not succeed: {detail}",
            outputs.to_dict(),
            error=detail,
            exit_code=DataError.exit_code if bad_data else None,
        )
    if failures:
        return StageResult(
            "failed",
            f"KPI gate not passed, no merge request opened: {'; '.join(failures)}",
            outputs.to_dict(),
        )

    number, created = open_release_request(ctx, best, report)
    outputs.deploy_merge_request = OpenedMergeRequest(number=number, created=created)
    ctx.log.info(
        "%s merge request !%d into %s",
        "opened" if created else "updated",
        number,
        cfg.branch_for("deploy-model"),
    )
    summary = (
        f"best {best.experiment}: {metric} {fmt(best.metric(metric))}; KPIs passed; merge request into "
        f"{cfg.branch_for('deploy-model')} !{number} for version {best.model.version if best.model else None}"
    )
    if synthetic:
        summary = "SYNTHETIC DATA — " + summary
    return StageResult("success", summary, outputs.to_dict())
