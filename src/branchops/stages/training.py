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
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from branchops import gitops, records
from branchops.errors import ConfigError, StageFailed
from branchops.stages.base import StageContext, StageResult

INPUTS = ("config/", "pipelines/", "components/")
METRIC_NAMES = ("accuracy", "roc_auc", "precision", "recall", "f1")
PLOTS = ("learning_curves.png", "roc.png", "confusion_matrix.png")
RELEASE_BRANCH_PREFIX = "branchops/release-"

log = logging.getLogger(__name__)


@dataclass
class Paths:
    """Where a run reads and writes, as the pipeline's steps see it (local dirs, or PVC mount paths)."""

    source_dir: str
    data_dir: str
    work_dir: str
    export_base: str
    local_work_dir: Path | None  # readable by this process (local storage only)


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

def compiled_pipeline(ctx: StageContext):
    """This commit's pipeline compiled exactly as kf-pipeline uploads it (so the spec hashes agree)."""
    from branchops.stages.kf_pipeline import compile_workspace
    compiled, images = compile_workspace(ctx.config, ctx.workspace)
    return compiled, images or None


def uploaded_version(ctx: StageContext, engine, compiled):
    upload = engine.find_version(ctx.config.kubeflow.pipeline_name, compiled.spec_hash)
    if upload is None:
        raise StageFailed(
            f"pipeline version {compiled.spec_hash[:16]} (the pipeline compiled from {ctx.source_commit[:12]}) is "
            f"not uploaded to {ctx.config.kubeflow.backend} Kubeflow Pipelines: merge this pipeline into "
            f"'{ctx.config.branch_for('kf-pipeline')}' first"
        )
    return upload


# -- data ----------------------------------------------------------------------------------------------

def provide_data(ctx: StageContext, storage) -> tuple[Any, str | None]:
    """The data volume as config's policy says, with the raw files in ``raw/``: (volume, kaggle dataset to
    download into it, if any)."""
    cfg = ctx.config
    volume, needs_data = storage.provide_data_volume(cfg.storage.data_volume)
    kaggle = None
    if cfg.storage.backend != "local":
        if needs_data and cfg.data.source != "kaggle":
            raise ConfigError(f"storage '{cfg.storage.backend}': a new data volume is filled by downloading from "
                              "Kaggle (data.source: kaggle), or use data_volume policy 'existing' or 'clone'")
        return volume, cfg.data.kaggle.dataset if needs_data else None
    raw = Path(volume.path) / "raw"
    if needs_data or not raw.exists():
        from branchops.storage.local import replace_file
        raw.mkdir(parents=True, exist_ok=True)
        if cfg.data.source == "folder":
            folder = Path(cfg.data.folder or "")
            folder = folder if folder.is_absolute() else ctx.workspace / folder
            csvs = sorted(folder.glob("*.csv"))
            if not csvs:
                raise ConfigError(f"data.folder: {folder} holds no CSV files (expected the Kaggle dataset's layout)")
            for csv in csvs:
                replace_file(raw / csv.name, csv.read_bytes())
            ctx.log.info("copied %d CSV files from %s into volume %s", len(csvs), folder, volume.name)
        elif cfg.data.source == "synthetic":
            from branchops import synthetic
            synthetic.generate(raw)
            ctx.log.warning("data volume %s holds SYNTHETIC prices (data.source: synthetic)", volume.name)
        else:
            kaggle = cfg.data.kaggle.dataset
            for ref, var in ((cfg.data.kaggle.username, "KAGGLE_USERNAME"), (cfg.data.kaggle.key, "KAGGLE_KEY")):
                value = ref.resolve() if ref else None
                if value:
                    os.environ[var] = value  # the consolidate step's kaggle client reads these
    return volume, kaggle


def run_paths(config, data_volume, model_volume, folder: str) -> Paths:
    """The directories of a run whose work goes to ``folder`` of the model volume (``runs/<name>``)."""
    if config.storage.backend == "local":
        work = Path(model_volume.path) / folder
        return Paths(str(Path(data_volume.path) / "raw"), str(data_volume.path), str(work), str(work / "export"),
                     work)
    work = f"/mnt/models/{folder}"
    return Paths("/mnt/data/raw", "/mnt/data", work, f"{work}/export", None)


def pipeline_params(paths: Paths, version: int, commit: str, kaggle: str | None, data_volume, model_volume,
                    train_params: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's parameters for one run (training, and reproduce with the recorded ones)."""
    return {"source_dir": paths.source_dir, "data_dir": paths.data_dir, "work_dir": paths.work_dir,
            "export_base": paths.export_base, "version": version, "commit": commit,
            "kaggle_dataset": kaggle or "", "data_pvc": data_volume.name, "model_pvc": model_volume.name,
            **train_params}


# -- one experiment ------------------------------------------------------------------------------------

def run_experiment(ctx: StageContext, engine, upload, storage, volumes, experiment, kaggle: str | None,
                   version: int) -> dict[str, Any]:
    cfg = ctx.config
    data_volume, model_volume = volumes
    name = run_name(ctx, experiment.name)
    paths = run_paths(cfg, data_volume, model_volume, f"runs/{name}")
    params = pipeline_params(paths, version, ctx.source_commit, kaggle, data_volume, model_volume,
                             experiment.params.model_dump())
    ctx.log.info("experiment %s: run %s starting (%s)", experiment.name, name,
                 ", ".join(f"{k}={v}" for k, v in experiment.params.model_dump().items()))
    result = engine.run(ctx.branch, upload, name, params, cfg.training.timeout_s,
                        on_progress=lambda message: ctx.log.info("%s", message))
    if result.reused and not result.succeeded:
        # The engine never starts a run name twice; a retry of a failed run is a new, dated attempt.
        name = f"{name}-retry-{ctx.run_id.split('-')[0].lower()}"
        ctx.log.info("experiment %s: the earlier run %s; retrying as %s", experiment.name, result.state, name)
        result = engine.run(ctx.branch, upload, name, params, cfg.training.timeout_s,
                            on_progress=lambda message: ctx.log.info("%s", message))
    entry: dict[str, Any] = {"experiment": experiment.name, "run_name": name, "run_id": result.run_id,
                             "state": result.state, "error": result.error, "duration_s": result.duration_s,
                             "reused_run": result.reused, "params": experiment.params.model_dump()}
    if not result.succeeded:
        return entry
    metrics = read_metrics(result.outputs, paths)
    entry["metrics"] = metrics
    entry["model"] = {"volume": model_volume.name, "path": f"runs/{name}/export/{version}", "version": version}
    if cfg.storage.snapshots:
        labels = {"branchops.io/commit": ctx.source_commit[:40], "branchops.io/run": name[:63]}
        data_snap = storage.snapshot(data_volume.name, snapshot_name(data_volume.name, ctx), labels)
        model_snap = storage.snapshot(model_volume.name, snapshot_name(model_volume.name, ctx, experiment.name),
                                      labels)
        entry["data"] = {"volume": data_volume.name, "snapshot": data_snap.name}
        entry["model"]["snapshot"] = model_snap.name
        ctx.log.info("experiment %s: snapshots %s (data) and %s (model)", experiment.name, data_snap.name,
                     model_snap.name)
    else:
        entry["data"] = {"volume": data_volume.name, "snapshot": None}
    if paths.local_work_dir:
        for plot in PLOTS:
            png = paths.local_work_dir / "plots" / plot
            if png.exists():
                ctx.add_artifact(f"{experiment.name}/plots/{plot}", png.read_bytes())
        metrics_file = paths.local_work_dir / "metrics.json"
        if metrics_file.exists():
            ctx.add_artifact(f"{experiment.name}/metrics.json", metrics_file.read_bytes())
    return entry


def read_metrics(outputs: dict[str, Any], paths: Paths) -> dict[str, Any]:
    metrics = outputs.get("metrics") if isinstance(outputs.get("metrics"), dict) else None
    if paths.local_work_dir and (paths.local_work_dir / "metrics.json").exists():
        metrics = json.loads((paths.local_work_dir / "metrics.json").read_text())
    if not metrics:
        raise StageFailed(f"the run finished but reported no metrics (work dir {paths.work_dir})")
    return metrics


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
    best = (found.data.get("outputs") or {}).get("best") if found else None
    return release, (best or {}).get("metrics")


def kpi_verdict(ctx: StageContext, best: dict[str, Any], production: dict[str, Any] | None) -> list[str]:
    """The reasons the best experiment fails the KPIs (empty when it passes)."""
    kpis, metric = ctx.config.training.kpis, ctx.config.training.select_by
    failures = []
    for name, minimum in kpis.thresholds.items():
        value = best["metrics"].get(name)
        if value is None or value < minimum:
            failures.append(f"{name} {fmt(value)} < {minimum:g} (threshold)")
    if production is not None and kpis.beat_production_by is not None:
        ours, theirs = best["metrics"].get(metric), production.get(metric)
        if theirs is not None and (ours is None or ours < theirs + kpis.beat_production_by):
            failures.append(f"{metric} {fmt(ours)} does not beat production's {fmt(theirs)} by "
                            f"{kpis.beat_production_by:g}")
    return failures


def fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


# -- the report and the release merge request -----------------------------------------------------------

def report_markdown(ctx: StageContext, entries: list[dict[str, Any]], best: dict[str, Any] | None,
                    production: dict[str, Any] | None, failures: list[str], lineage: dict[str, Any],
                    synthetic: bool) -> str:
    metric = ctx.config.training.select_by
    lines = [f"# Training report — {ctx.config.project.name} @ {ctx.source_commit[:12]}", ""]
    if synthetic:
        lines += ["> **SYNTHETIC DATA.** These models were trained on generated prices (data.source: synthetic), "
                  "not market data. The metrics say nothing about real stocks.", ""]
    mr = ctx.merge_request
    lines += [f"Merge request !{mr.number} *{mr.title}* by {mr.author}, merged by {mr.merged_by}; "
              f"run `{ctx.run_id}`.", ""]
    if best:
        p = best["params"]
        lines += [f"**Best experiment: `{best['experiment']}`** (by `{metric}`) — predicts whether {p['target']} closes "
                  f"up or down on the next trading day from the log returns of all tickers over the previous "
                  f"{p['window']} trading days; an MLP {p['hidden_units']} (dropout {p['dropout']}).", ""]
        lines += [f"{best['metrics'].get('summary', '')}", ""]
    lines += ["## Experiments (test split)", "",
              "| experiment | state | " + " | ".join(METRIC_NAMES) + " | beats baselines | run time |",
              "|---|---|" + "---|" * len(METRIC_NAMES) + "---|---|"]
    for e in entries:
        m = e.get("metrics") or {}
        beats = (m.get("beats_baselines") or {}).get("all")
        lines.append(f"| {e['experiment']} | {e['state']} | " + " | ".join(fmt(m.get(k)) for k in METRIC_NAMES)
                     + f" | {'yes' if beats else 'no' if m else '-'} | {fmt(e.get('duration_s'))} s |")
    if best:
        baselines = best["metrics"].get("baselines", {})
        lines += ["", "## Against the baselines and production", "",
                  "| | " + " | ".join(METRIC_NAMES) + " |", "|---|" + "---|" * len(METRIC_NAMES),
                  f"| **{best['experiment']}** | " + " | ".join(fmt(best['metrics'].get(k)) for k in METRIC_NAMES) + " |"]
        for name, values in baselines.items():
            lines.append(f"| baseline: {name} | " + " | ".join(fmt(values.get(k)) for k in METRIC_NAMES) + " |")
        if production:
            lines.append("| production | " + " | ".join(fmt(production.get(k)) for k in METRIC_NAMES) + " |")
        else:
            lines.append("| production | no model deployed yet |" + " |" * (len(METRIC_NAMES) - 1))
        lines += ["", "### Plots", ""]
        for plot in PLOTS:
            lines.append(f"![{plot}]({ctx.record_dir}/{best['experiment']}/plots/{plot})")
    lines += ["", "## KPI gate", ""]
    kpis = ctx.config.training.kpis
    lines.append("Thresholds: " + ", ".join(f"{k} ≥ {v:g}" for k, v in kpis.thresholds.items())
                 + (f"; must beat production's {metric} by {kpis.beat_production_by:g}"
                    if kpis.beat_production_by is not None else ""))
    lines.append("")
    lines.append("**Passed**: a merge request into deploy-model carries this release." if best and not failures
                 else "**Not passed**: " + "; ".join(failures or ["no experiment succeeded"]))
    lines += ["", "## Lineage", "", "```json", json.dumps(lineage, indent=2, sort_keys=True), "```", "",
              "## Reproduce", "", f"    branchops reproduce {ctx.run_id}", "",
              "clones the data snapshot into a new volume, runs the same pipeline version with the same "
              "parameters, and compares the metrics.", ""]
    return "\n".join(lines)


def open_release_request(ctx: StageContext, best: dict[str, Any], report: str) -> tuple[int, bool]:
    """Point the bot's release branch at deploy-model + the new release file, and upsert its merge request."""
    import git
    import yaml

    from branchops.serving.release import Release
    cfg = ctx.config
    repo = git.Repo(ctx.git_dir)
    model = best["model"]
    source = {"snapshot": model["snapshot"], "path": model["path"]} if model.get("snapshot") else \
        {"volume": model["volume"], "path": model["path"]}
    release = Release.model_validate({"model": cfg.serving.model_name, "version": model["version"], "source": source,
                                      "strategy": cfg.serving.rollout.strategy,
                                      "training": {"run_id": ctx.run_id, "commit": ctx.source_commit}})
    from branchops.serving.release import RELEASE_HEADER
    content = RELEASE_HEADER + yaml.safe_dump(release.model_dump(mode="json", exclude_none=True), sort_keys=False)
    deploy_branch = cfg.branch_for("deploy-model")
    branch = RELEASE_BRANCH_PREFIX + cfg.serving.model_name
    base = gitops.branch_tip(repo, deploy_branch, cfg.git.remote)
    identity = gitops.Identity(cfg.bot.name, cfg.bot.email)
    message = gitops.bot_message(f"release {cfg.serving.model_name} version {model['version']}",
                                 f"From training run {ctx.run_id} (experiment {best['experiment']}).", cfg.bot.marker)
    commit = gitops.build_commit(repo, base, {cfg.serving.release_file: content.encode()}, message, identity,
                                 overwrite=True)
    gitops.set_branch(repo, branch, commit, cfg.git.remote)
    title = (f"Deploy {cfg.serving.model_name} v{model['version']} ({best['experiment']}, "
             f"{cfg.training.select_by} {fmt(best['metrics'].get(cfg.training.select_by))})")
    mr, created = ctx.forge.open_merge_request(branch, deploy_branch, title, report, cfg.bot.name)
    return mr.number, created


# -- the stage -----------------------------------------------------------------------------------------

def plan(ctx: StageContext) -> list[str]:
    cfg = ctx.config
    steps = [f"compile {cfg.kubeflow.pipeline_module} and find its version on {cfg.kubeflow.backend} "
             f"(pipeline {cfg.kubeflow.pipeline_name})"]
    dv = cfg.storage.data_volume
    steps.append(f"data volume {dv.name} ({cfg.storage.backend}): policy {dv.policy}"
                 + (f" from snapshot {dv.snapshot}" if dv.snapshot else "") + f", data source {cfg.data.source}")
    for exp in cfg.training.experiments:
        steps.append(f"run {run_name(ctx, exp.name)} in experiment '{ctx.branch}' with "
                     + ", ".join(f"{k}={v}" for k, v in exp.params.model_dump().items()))
    if cfg.storage.snapshots:
        steps.append(f"snapshot {dv.name} and {cfg.storage.model_volume} after each run")
    steps.append(f"pick the best by {cfg.training.select_by}; KPI gate "
                 + ", ".join(f"{k} ≥ {v:g}" for k, v in cfg.training.kpis.thresholds.items())
                 + f"; if it passes, open or update the merge request into {cfg.branch_for('deploy-model')}")
    return steps


def run(ctx: StageContext) -> StageResult:
    from branchops.engine import make_engine
    from branchops.storage import make_storage

    cfg = ctx.config
    compiled, images = compiled_pipeline(ctx)
    engine = make_engine(cfg, ctx.state_dir, ctx.workspace)
    upload = uploaded_version(ctx, engine, compiled)
    from branchops.engine.base import validate_params
    storage = make_storage(cfg, ctx.state_dir)
    data_volume, kaggle = provide_data(ctx, storage)
    model_volume = storage.ensure_volume(cfg.storage.model_volume)
    version = commit_version(ctx)
    # every experiment's parameters are checked against the pipeline before any run starts
    for exp in cfg.training.experiments:
        paths = run_paths(cfg, data_volume, model_volume, f"runs/{run_name(ctx, exp.name)}")
        validate_params(compiled.spec, pipeline_params(paths, version, ctx.source_commit, kaggle, data_volume,
                                                       model_volume, exp.params.model_dump()))
    from branchops.synthetic import is_synthetic
    synthetic = cfg.data.source == "synthetic" or (
        data_volume.path is not None and is_synthetic(Path(data_volume.path) / "raw"))

    with ThreadPoolExecutor(max_workers=cfg.training.max_parallel_runs) as pool:
        entries = list(pool.map(
            lambda exp: run_experiment(ctx, engine, upload, storage, (data_volume, model_volume), exp, kaggle,
                                       version), cfg.training.experiments))

    succeeded = [e for e in entries if e["state"] == "SUCCEEDED"]
    metric = cfg.training.select_by
    best = max(succeeded, key=lambda e: e["metrics"].get(metric) or float("-inf")) if succeeded else None
    production_release_, production = production_release(ctx)
    failures = kpi_verdict(ctx, best, production) if best else ["no experiment succeeded"]
    lineage = {
        "source_commit": ctx.source_commit, "config_digest": cfg.digest(), "run_id": ctx.run_id,
        "pipeline": {"name": cfg.kubeflow.pipeline_name, "id": upload.pipeline_id, "version_id": upload.version_id,
                     "spec_hash": compiled.spec_hash, "engine": cfg.kubeflow.backend},
        "images": images or "none (no registry configured: steps ran as local processes)",
        "approved_by": sorted({a.user for a in ctx.merge_request.approvals}),
        "best": best and {"experiment": best["experiment"], "data": best.get("data"), "model": best["model"]},
    }
    report = report_markdown(ctx, entries, best, production, failures, lineage, synthetic)
    ctx.add_artifact("report.md", report)
    if best:
        ctx.add_artifact("metrics.json", json.dumps({e["experiment"]: e.get("metrics") for e in entries},
                                                    indent=2, sort_keys=True) + "\n")
    outputs: dict[str, Any] = {"experiments": entries, "best": best, "lineage": lineage, "synthetic_data": synthetic,
                               "kpi": {"passed": not failures, "failures": failures},
                               "production": {"version": production_release_.version if production_release_ else None,
                                              "metrics": production}}
    failed_runs = [e for e in entries if e["state"] != "SUCCEEDED"]
    if failed_runs:
        detail = "; ".join(f"{e['experiment']}: {e['state']} ({e['error']})" for e in failed_runs)
        return StageResult("failed", f"{len(failed_runs)} of {len(entries)} runs did not succeed: {detail}",
                           outputs, error=detail)
    if failures:
        return StageResult("failed", f"KPI gate not passed, no merge request opened: {'; '.join(failures)}",
                           outputs)

    number, created = open_release_request(ctx, best, report)
    outputs["deploy_merge_request"] = {"number": number, "created": created}
    ctx.log.info("%s merge request !%d into %s", "opened" if created else "updated", number,
                 cfg.branch_for("deploy-model"))
    summary = (f"best {best['experiment']}: {metric} {fmt(best['metrics'].get(metric))}, accuracy "
               f"{fmt(best['metrics'].get('accuracy'))}; KPIs passed; merge request into "
               f"{cfg.branch_for('deploy-model')} !{number} for version {best['model']['version']}")
    if synthetic:
        summary = "SYNTHETIC DATA — " + summary
    return StageResult("success", summary, outputs)
