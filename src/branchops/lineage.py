"""``branchops lineage``: the chain of docs/architecture.md §5, read from git alone.

From a training run id (or a model version), follow the records: the commit and config that started
the run and who approved it, the pipeline version (and which kf-pipeline merge uploaded it), the
component images (and which build-components merge built them), the data and model snapshots, the
metrics, and every deployment of that version.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import git

from branchops import gitops, records
from branchops.errors import BadArgument, NotFound
from branchops.runner import working_config


def _tips(repo: git.Repo, config) -> dict[str, str | None]:
    return {
        stage: gitops.branch_tip(repo, config.branch_for(stage), config.git.remote)
        for stage in ("build-components", "kf-pipeline", "training", "deploy-model")
    }


def find_training_run(repo: git.Repo, tip: str | None, key: str) -> records.StoredRecord:
    """A training run by its id (or a unique prefix of it), or the newest one whose best model has the
    version ``key``."""
    if tip is None:
        raise NotFound("the training branch does not exist")
    history = records.stage_history(repo, tip, "training")
    if key.isdigit():
        for rec in history.newest_first():
            if str(rec.read_as(records.TrainingVersionView).model_version) == key:
                return rec
        raise NotFound(f"no training run produced model version {key}")
    matches = [run_id for run_id in history.run_ids if run_id == key or run_id.startswith(key)]
    found = history.read(matches) if len(matches) == 1 else []
    if not found:
        known = ", ".join(history.run_ids[-5:]) or "none yet"
        # a prefix of several run ids is a usage error (give more of it); of none, a run not found
        raise (BadArgument if matches else NotFound)(
            f"{'more than one' if len(matches) > 1 else 'no'} training run matches '{key}' "
            f"(latest runs: {known})"
        )
    return found[0]


def _newest(
    repo: git.Repo, tip: str | None, stage: str, until: str, matches: Callable[[records.StoredRecord], bool]
) -> records.StoredRecord | None:
    """The newest record of ``stage`` that started no later than the run id ``until`` and ``matches``."""
    history = records.stage_history(repo, tip, stage)
    return next((r for r in history.newest_first(until=until) if matches(r)), None)


def _approval(rec: records.StoredRecord | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    run = rec.record
    mr = run.merge_request or records.MergeRequestRef()
    return {
        "run_id": rec.run_id,
        "commit": run.source_commit,
        "merge_request": mr.number,
        "author": mr.author,
        "approved_by": mr.approved_by,
        "merged_by": mr.merged_by,
        "finished_at": run.finished_at,
    }


def lineage(repo_path: str, key: str) -> dict[str, Any]:
    repo = gitops.open_repo(repo_path)
    config = working_config(repo)
    tips = _tips(repo, config)
    run = find_training_run(repo, tips["training"], key)
    outputs = run.training_outputs
    best = outputs.best
    trace = outputs.lineage or records.TrainingLineage()
    spec_hash = trace.pipeline.spec_hash if trace.pipeline else None

    # The upload of this run's pipeline spec and the build that pushed one of its images: the newest before
    # the run started (it needed both), so a later rerun of either stage on the same sources is not taken
    # for them, and an old run's search does not wade through everything since.
    upload = (
        _newest(
            repo,
            tips["kf-pipeline"],
            "kf-pipeline",
            run.run_id,
            lambda r: r.read_as(records.PipelineSpecView).outputs.spec_hash == spec_hash,
        )
        if spec_hash
        else None
    )
    images = trace.images
    digests = {ref.rsplit("@", 1)[-1] for ref in images.values()} if isinstance(images, dict) else set()
    build = (
        _newest(
            repo,
            tips["build-components"],
            "build-components",
            run.run_id,
            lambda r: bool(digests & r.read_as(records.BuildDigestsView).built_digests()),
        )
        if digests
        else None
    )

    # every deploy-model run whose release was this version (a rollback to it too)
    version = outputs.model_version
    deploys = (
        records.stage_history(repo, tips["deploy-model"], "deploy-model").all() if version is not None else []
    )
    deployments = [
        _approval(d) | {"outcome": d.outcome, "summary": d.record.summary}
        for d in deploys
        if d.read_as(records.DeployVersionView).release_version == version
    ]
    metrics = (best.metrics if best else None) or {}
    return {
        "model": {"name": config.serving.model_name, **(best.model.to_dict() if best and best.model else {})},
        "training": _approval(run)
        | {
            "config_digest": run.record.config_digest,
            "experiment": best.experiment if best else None,
            "params": best.params if best else None,
            "record": run.path,
            "synthetic_data": bool(outputs.synthetic_data),
        },
        "pipeline": {
            **(trace.pipeline.to_dict() if trace.pipeline else {}),
            "uploaded_by": _approval(upload),
        },
        "images": {"digests": images, "built_by": _approval(build)},
        "data": best.data.to_dict() if best and best.data else None,
        "metrics": {k: metrics.get(k) for k in config.training.metrics}
        | {"beats_baselines": _beats_all(metrics.get("beats_baselines"))},
        "deployments": deployments,
    }


def _beats_all(value: Any) -> bool | None:
    """A run's own verdict on its baselines: a plain boolean, or per baseline with an overall "all"."""
    if isinstance(value, dict):
        value = value.get("all")
    return value if isinstance(value, bool) else None


def render(chain: dict[str, Any]) -> str:
    m, t, p, d = chain["model"], chain["training"], chain["pipeline"], chain["data"] or {}
    lines = [
        f"model {m['name']} version {m.get('version')}",
        f"  model snapshot   {m.get('snapshot') or '-'}  (volume {m.get('volume')}, path {m.get('path')})",
        f"  data snapshot    {d.get('snapshot') or '-'}  (volume {d.get('volume')})",
        f"  training run     {t['run_id']} on commit {str(t['commit'])[:12]}  experiment {t['experiment']}",
        f"    config digest  {str(t['config_digest'])[:16]}",
        f"    approved       !{t['merge_request']} by {', '.join(t['approved_by'] or [])} "
        f"(author {t['author']}, merged by {t['merged_by']})",
        f"    parameters     {json.dumps(t['params'], sort_keys=True)}",
        f"  pipeline         {p.get('name')} version {str(p.get('spec_hash'))[:16]} ({p.get('engine')})",
    ]
    if p.get("uploaded_by"):
        u = p["uploaded_by"]
        lines.append(
            f"    uploaded by    kf-pipeline run {u['run_id']} for !{u['merge_request']}, approved by "
            f"{', '.join(u['approved_by'] or [])}"
        )
    images = chain["images"]["digests"]
    lines.append(
        "  images           "
        + (", ".join(f"{k}={v}" for k, v in images.items()) if isinstance(images, dict) else str(images))
    )
    metrics = chain["metrics"]
    lines.append(
        "  metrics          "
        + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        + f", beats baselines: {metrics['beats_baselines']}"
    )
    for dep in chain["deployments"]:
        lines.append(
            f"  deployed         {dep['outcome']} by deploy-model run {dep['run_id']} for "
            f"!{dep['merge_request']}, approved by {', '.join(dep['approved_by'] or [])}"
        )
    if not chain["deployments"]:
        lines.append("  deployed         not yet")
    if t.get("synthetic_data"):
        lines.append("  NOTE             trained on SYNTHETIC data")
    return "\n".join(lines)
