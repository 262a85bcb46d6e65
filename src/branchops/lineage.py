"""``branchops lineage``: the chain of docs/architecture.md §5, read from git alone.

From a training run id (or a model version), follow the records: the commit and config that started
the run and who approved it, the pipeline version (and which kf-pipeline merge uploaded it), the
component images (and which build-components merge built them), the data and model snapshots, the
metrics, and every deployment of that version.
"""

from __future__ import annotations

import json
from typing import Any

import git

from branchops import gitops, records
from branchops.errors import BranchopsError
from branchops.runner import working_config


def _tips(repo: git.Repo, config) -> dict[str, str | None]:
    return {stage: gitops.branch_tip(repo, config.branch_for(stage), config.git.remote)
            for stage in ("build-components", "kf-pipeline", "training", "deploy-model")}


def find_training_run(repo: git.Repo, tip: str | None, key: str) -> records.StoredRecord:
    if tip is None:
        raise BranchopsError("the training branch does not exist")
    runs = records.list_records(repo, tip, "training")
    if key.isdigit():
        for rec in reversed(runs):
            best = (rec.data.get("outputs") or {}).get("best") or {}
            if str((best.get("model") or {}).get("version")) == key:
                return rec
        raise BranchopsError(f"no training run produced model version {key}")
    matches = [r for r in runs if r.run_id == key or r.run_id.startswith(key)]
    if len(matches) != 1:
        known = ", ".join(r.run_id for r in runs[-5:]) or "none yet"
        raise BranchopsError(f"{'no' if not matches else 'more than one'} training run matches '{key}' "
                             f"(latest runs: {known})")
    return matches[0]


def _approval(rec: records.StoredRecord | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    mr = rec.data.get("merge_request") or {}
    return {"run_id": rec.run_id, "commit": rec.data.get("source_commit"), "merge_request": mr.get("number"),
            "author": mr.get("author"), "approved_by": mr.get("approved_by"), "merged_by": mr.get("merged_by"),
            "finished_at": rec.data.get("finished_at")}


def lineage(repo_path: str, key: str) -> dict[str, Any]:
    repo = gitops.open_repo(repo_path)
    config = working_config(repo)
    tips = _tips(repo, config)
    run = find_training_run(repo, tips["training"], key)
    outputs = run.data.get("outputs") or {}
    best = outputs.get("best") or {}
    trace = outputs.get("lineage") or {}
    spec_hash = (trace.get("pipeline") or {}).get("spec_hash")

    uploads = records.list_records(repo, tips["kf-pipeline"], "kf-pipeline") if tips["kf-pipeline"] else []
    upload = next((r for r in reversed(uploads) if (r.data.get("outputs") or {}).get("spec_hash") == spec_hash), None)
    images = trace.get("images")
    builds = records.list_records(repo, tips["build-components"], "build-components") if tips["build-components"] else []
    # the build that pushed these images: the newest record that built one of their digests
    digests = {ref.rsplit("@", 1)[-1] for ref in images.values()} if isinstance(images, dict) else set()
    build = next((r for r in reversed(builds) if digests & {
        c.get("digest") for c in (r.data.get("outputs") or {}).get("components", [])
        if c.get("status") == "built"}), None)

    version = str((best.get("model") or {}).get("version"))
    deploys = records.list_records(repo, tips["deploy-model"], "deploy-model") if tips["deploy-model"] else []
    deployments = [_approval(d) | {"outcome": d.outcome, "summary": d.data.get("summary")}
                   for d in deploys if version in json.dumps(d.data.get("outputs") or {})]
    metrics = best.get("metrics") or {}
    return {
        "model": {"name": config.serving.model_name, **(best.get("model") or {})},
        "training": _approval(run) | {"config_digest": run.data.get("config_digest"),
                                      "experiment": best.get("experiment"), "params": best.get("params"),
                                      "record": run.path, "synthetic_data": outputs.get("synthetic_data", False)},
        "pipeline": {**(trace.get("pipeline") or {}), "uploaded_by": _approval(upload)},
        "images": {"digests": images, "built_by": _approval(build)},
        "data": best.get("data"),
        "metrics": {k: metrics.get(k) for k in ("accuracy", "roc_auc", "precision", "recall", "f1")}
                   | {"beats_baselines": (metrics.get("beats_baselines") or {}).get("all")},
        "deployments": deployments,
    }


def render(chain: dict[str, Any]) -> str:
    m, t, p, d = chain["model"], chain["training"], chain["pipeline"], chain["data"] or {}
    lines = [f"model {m['name']} version {m.get('version')}",
             f"  model snapshot   {m.get('snapshot') or '-'}  (volume {m.get('volume')}, path {m.get('path')})",
             f"  data snapshot    {d.get('snapshot') or '-'}  (volume {d.get('volume')})",
             f"  training run     {t['run_id']} on commit {str(t['commit'])[:12]}  experiment {t['experiment']}",
             f"    config digest  {str(t['config_digest'])[:16]}",
             f"    approved       !{t['merge_request']} by {', '.join(t['approved_by'] or [])} "
             f"(author {t['author']}, merged by {t['merged_by']})",
             f"    parameters     {json.dumps(t['params'], sort_keys=True)}",
             f"  pipeline         {p.get('name')} version {str(p.get('spec_hash'))[:16]} ({p.get('engine')})"]
    if p.get("uploaded_by"):
        u = p["uploaded_by"]
        lines.append(f"    uploaded by    kf-pipeline run {u['run_id']} for !{u['merge_request']}, approved by "
                     f"{', '.join(u['approved_by'] or [])}")
    images = chain["images"]["digests"]
    lines.append("  images           " + (", ".join(f"{k}={v}" for k, v in images.items())
                                         if isinstance(images, dict) else str(images)))
    metrics = chain["metrics"]
    lines.append("  metrics          " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                 if isinstance(v, float)) + f", beats baselines: {metrics['beats_baselines']}")
    for dep in chain["deployments"]:
        lines.append(f"  deployed         {dep['outcome']} by deploy-model run {dep['run_id']} for "
                     f"!{dep['merge_request']}, approved by {', '.join(dep['approved_by'] or [])}")
    if not chain["deployments"]:
        lines.append("  deployed         not yet")
    if t.get("synthetic_data"):
        lines.append("  NOTE             trained on SYNTHETIC data")
    return "\n".join(lines)
