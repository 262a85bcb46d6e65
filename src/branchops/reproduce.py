"""``branchops reproduce RUN``: clone the run's data snapshot into a new volume, run the same pipeline
version with the same parameters again, and compare the metrics with the recorded ones."""

from __future__ import annotations

import logging
from typing import Any

from branchops import gitops
from branchops.errors import NotFound, StageFailed
from branchops.lineage import find_training_run
from branchops.runner import config_at, working_config, workspace_at

log = logging.getLogger(__name__)


def reproduce(
    repo_path: str, key: str, experiment: str | None = None, tolerance: float = 1e-6
) -> dict[str, Any]:
    from branchops.engine import make_engine
    from branchops.runplan import (
        compile_workspace,
        data_until_input,
        pipeline_params,
        read_metrics,
        run_paths,
    )
    from branchops.storage import make_storage

    repo = gitops.open_repo(repo_path)
    boot = working_config(repo)
    tip = gitops.branch_tip(repo, boot.branch_for("training"), boot.git.remote)
    run = find_training_run(repo, tip, key)
    outputs = run.training_outputs
    wanted = experiment or (outputs.best.experiment if outputs.best else None)
    entry = next((e for e in outputs.experiments if e.succeeded and e.experiment == wanted), None)
    if entry is None or entry.model is None or entry.model.version is None:
        raise NotFound(f"run {run.run_id} has no successful experiment '{wanted}'")
    snapshot = entry.data.snapshot if entry.data else None
    if not snapshot:
        # what a reproduction starts from does not exist
        raise NotFound(
            f"run {run.run_id} took no data snapshot (storage.snapshots was false): it cannot be "
            "reproduced from its data"
        )
    commit = run.record.source_commit
    if not commit:
        raise NotFound(f"{run.path} names no source commit: run {run.run_id} cannot be reproduced")
    config = config_at(repo, commit)
    state = gitops.state_dir(repo)
    storage = make_storage(config, state)
    data_volume = storage.clone(snapshot, f"repro-{commit[:12]}-{wanted}"[:63].rstrip("-"))
    model_volume = storage.ensure_volume(config.storage.model_volume)
    name = f"repro-{run.run_id[-12:]}-{wanted}"[:100]
    log.info(
        "reproducing %s/%s on commit %s from data snapshot %s (clone %s)",
        run.run_id,
        wanted,
        commit[:12],
        snapshot,
        data_volume.name,
    )

    with workspace_at(repo, commit, state, f"reproduce-{name}") as workspace:
        compiled, _ = compile_workspace(config, workspace)
        recorded_hash = (
            outputs.lineage.pipeline.spec_hash if outputs.lineage and outputs.lineage.pipeline else None
        )
        if recorded_hash and compiled.spec_hash != recorded_hash:
            raise StageFailed(
                f"commit {commit[:12]} now compiles to spec {compiled.spec_hash[:16]}, not the "
                f"recorded {recorded_hash[:16]} (a component image changed?)"
            )
        engine = make_engine(config, state, workspace)
        upload = engine.find_version(config.kubeflow.pipeline_name, compiled.spec_hash)
        if upload is None:
            raise StageFailed(f"pipeline version {compiled.spec_hash[:16]} is no longer registered")
        paths = run_paths(storage, data_volume, model_volume, f"reproductions/{name}")
        params = pipeline_params(
            compiled.spec,
            paths,
            entry.model.version,
            commit,
            None,
            data_volume,
            model_volume,
            entry.params,
            data_until_input(config),  # the run's window, as its commit's configuration set it
        )
        result = engine.run(
            f"{boot.branch_for('training')}-reproduce", upload, name, params, config.training.timeout_s
        )
    if not result.succeeded:
        raise StageFailed(f"the reproduction run {name} {result.state}: {result.error}")
    metrics = read_metrics(result.outputs, paths, config.training.metrics)
    comparison = {
        k: {"recorded": entry.metric(k), "reproduced": metrics.get(k)} for k in config.training.metrics
    }
    same = all(
        v["recorded"] is not None
        and v["reproduced"] is not None
        and abs(v["recorded"] - v["reproduced"]) <= tolerance
        for v in comparison.values()
    )
    return {
        "run_id": run.run_id,
        "experiment": wanted,
        "commit": commit,
        "data_snapshot": snapshot,
        "cloned_volume": data_volume.name,
        "reproduction_run": name,
        "metrics": comparison,
        "identical": same,
    }
