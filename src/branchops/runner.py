"""The stage runner: the contract of docs/architecture.md §4 around every stage.

gate first → idempotency → (dry-run: plan and stop) → notify start → the stage's own work in a checkout
of the source commit → one bot commit with the record and artifacts on the stage branch → notify end.
The same function runs under Jenkins (``run --for-branch``) and under the local runner.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import git

from branchops import __version__, gate, gitops, preflight, records
from branchops.config import CONFIG_PATH, STAGES, BranchopsConfig, load_config, parse_config
from branchops.errors import BranchopsError, ConfigError, GateRefused
from branchops.forge import make_forge
from branchops.notify import make_notifier
from branchops.notify.base import Event
from branchops.secrets import mask
from branchops.stages import REGISTRY
from branchops.stages.base import Stage, StageContext, StageResult

log = logging.getLogger("branchops.runner")


EXIT_CODES = {"succeeded": 0, "skipped": 0, "planned": 0, "failed": 1, "refused": GateRefused.exit_code}


@dataclass
class RunReport:
    stage: str
    branch: str
    status: str  # succeeded | failed | refused | skipped | planned
    message: str
    source_commit: str | None = None
    run_id: str | None = None
    record_path: str | None = None
    record_commit: str | None = None
    merge_request: int | None = None
    duration_s: float | None = None
    log_path: str | None = None
    plan: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def stage_module(stage: str) -> Stage:
    if stage not in REGISTRY:
        raise ConfigError(f"unknown stage '{stage}'; stages are: {', '.join(STAGES)}")
    return REGISTRY[stage]


def working_config(repo: git.Repo) -> BranchopsConfig:
    """The configuration of the checkout (or, in a bare clone, of the main branch's tip)."""
    if repo.working_tree_dir and (Path(repo.working_tree_dir) / CONFIG_PATH).exists():
        return load_config(repo.working_tree_dir)
    for rev in ("HEAD", "main", "master"):
        raw = gitops.resolve(repo, rev) and gitops.read_file(repo, rev, str(CONFIG_PATH))
        if raw:
            return parse_config(raw.decode(), f"{rev}:{CONFIG_PATH}")
    raise ConfigError(f"no {CONFIG_PATH} in this repository (run 'branchops init')")


def config_at(repo: git.Repo, commit: str) -> BranchopsConfig:
    """The configuration as reviewed and merged: read from the commit being built, not the checkout."""
    raw = gitops.read_file(repo, commit, str(CONFIG_PATH))
    if raw is None:
        raise ConfigError(f"{commit[:12]}:{CONFIG_PATH}: configuration file not found in the commit being built")
    return parse_config(raw.decode("utf-8", errors="replace"), f"{CONFIG_PATH} @ {commit[:12]}")


def designated_approvers(repo: git.Repo, config: BranchopsConfig, stage: str, source: str) -> list[str]:
    """Who may approve for ``stage``: as the branch said before the merge being built (its first parent),
    so that a merge request cannot name its own approvers. Falls back to the merged config when the branch
    had none before (its first configuration)."""
    commit = repo.commit(source)
    if commit.parents:
        try:
            return config_at(repo, commit.parents[0].hexsha).approvers[stage]  # type: ignore[index]
        except ConfigError:
            pass
    return config.approvers[stage]  # type: ignore[index]


def last_gated_commit(repo: git.Repo, config: BranchopsConfig, stage: str, branch: str, branch_head: str,
                      source: str) -> str | None:
    """Where the gate starts looking: the source commit of the stage's last run on the branch (it passed the
    gate), else where the branch left the main branch; None when neither exists (only ``source`` is gated)."""
    previous = [r for r in records.list_records(repo, branch_head, stage)
                if r.data.get("source_commit") and r.data["source_commit"] != source]
    for record in reversed(previous):
        if repo.is_ancestor(record.data["source_commit"], source):
            return record.data["source_commit"]
    main = gitops.branch_tip(repo, config.branches.main, config.git.remote)
    if main and branch != config.branches.main:
        base = repo.merge_base(main, source)
        return base[0].hexsha if base else None
    return None


def first_non_bot(repo: git.Repo, sha: str, marker: str) -> str:
    commit = repo.commit(sha)
    while gitops.trailer_marks(commit.message, marker) and commit.parents:
        commit = commit.parents[0]
    return commit.hexsha


@contextmanager
def workspace_at(repo: git.Repo, commit: str, state: Path, name: str) -> Iterator[Path]:
    """A checkout of ``commit``: the current one if it is that commit and clean, else a temporary worktree."""
    tree = repo.working_tree_dir
    if tree and gitops.resolve(repo, "HEAD") == commit and not repo.is_dirty(untracked_files=False):
        yield Path(tree)
        return
    path = state / "workspaces" / name
    if path.exists():
        shutil.rmtree(path)
        repo.git.worktree("prune")
    repo.git.worktree("add", "--detach", "--quiet", str(path), commit)
    try:
        yield path
    finally:
        repo.git.worktree("remove", "--force", str(path))


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Keep this run's log in a file (the local runner's equivalent of a Jenkins console log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    from branchops.secrets import MaskingFilter
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def run_branch(repo_path: str | Path, branch: str, *, dry_run: bool = False, force: bool = False,
               commit: str | None = None) -> list[RunReport]:
    """What a multibranch job runs for ``branch``: its stage, or in single-branch mode every stage whose
    inputs changed in the merge, in workflow order, stopping at the first that does not succeed."""
    repo = gitops.open_repo(repo_path)
    config = working_config(repo)
    stages = config.stages_for_branch(branch)
    if not stages:
        return [RunReport(stage="-", branch=branch, status="skipped",
                          message=f"'{branch}' is not a stage branch; nothing to run")]
    if config.branches.mode != "single-branch":
        return [run_stage(repo_path, stages[0], dry_run=dry_run, force=force, commit=commit)]
    tip = commit or gitops.branch_tip(repo, branch, config.git.remote) or gitops.resolve(repo, "HEAD")
    if tip and gitops.is_bot_commit(repo, tip, config.bot.marker) and not force:
        return [RunReport(stage="-", branch=branch, status="skipped", source_commit=tip,
                          message="the latest commit is branchops' own record; bot commits never start a stage")]
    source = first_non_bot(repo, tip, config.bot.marker)
    parent = repo.commit(source).parents[0].hexsha if repo.commit(source).parents else None
    changed = gitops.changed_paths(repo, parent, source)
    reports = []
    for stage in stages:
        inputs = stage_module(stage).INPUTS
        if not any(path.startswith(tuple(inputs)) for path in changed):
            reports.append(RunReport(stage=stage, branch=branch, status="skipped", source_commit=source,
                                     message=f"none of its inputs ({', '.join(inputs)}) changed"))
            continue
        report = run_stage(repo_path, stage, dry_run=dry_run, force=force, commit=source)
        reports.append(report)
        if report.status not in ("succeeded", "skipped", "planned"):
            break
    return reports


def run_stage(repo_path: str | Path, stage: str, *, dry_run: bool = False, force: bool = False,
              commit: str | None = None) -> RunReport:
    """Run one stage on its branch under the stage contract; never raises for a refused or failed stage."""
    repo = gitops.open_repo(repo_path)
    boot = working_config(repo)
    module = stage_module(stage)
    branch = boot.branch_for(stage)
    remote = boot.git.remote
    tip = commit or gitops.branch_tip(repo, branch, remote)
    if tip is None:
        raise BranchopsError(f"branch '{branch}' (stage {stage}) does not exist")
    if gitops.is_bot_commit(repo, tip, boot.bot.marker) and not force:
        return RunReport(stage=stage, branch=branch, status="skipped", source_commit=tip,
                         message=f"{tip[:12]} is branchops' own commit; bot commits never start a stage")
    source = first_non_bot(repo, tip, boot.bot.marker)
    config = config_at(repo, source)
    preflight.check(config, [stage])  # a machine that lacks a library fails here, before the gate and any record
    state = gitops.state_dir(repo)
    forge = make_forge(config, repo)
    notifier = make_notifier(config, state, forge)

    # -- gate ---------------------------------------------------------------------------------------
    branch_head = gitops.branch_tip(repo, branch, remote) or tip
    try:
        verdict = gate.check(forge, repo, source, branch, designated_approvers(repo, config, stage, source),
                             last_gated_commit(repo, config, stage, branch, branch_head, source),
                             config.bot.marker)
    except GateRefused as refusal:
        if not dry_run:
            notifier.notify(Event("refused", stage, branch, source, str(refusal)))
        return RunReport(stage=stage, branch=branch, status="refused", message=str(refusal), source_commit=source)
    mr, approvers = verdict.merge_request, verdict.approved_by

    # -- idempotency --------------------------------------------------------------------------------
    done = [r for r in records.list_records(repo, branch_head, stage, source) if r.outcome == "succeeded"]
    if done and not force:
        return RunReport(stage=stage, branch=branch, status="skipped", source_commit=source,
                         run_id=done[-1].run_id, record_path=done[-1].path, merge_request=mr.number,
                         message=f"already ran successfully on {source[:12]} (record {done[-1].path}); "
                                 "use --force to run it again")

    run_id = records.new_run_id(source)
    log_path = state / "runs" / f"{stage}-{run_id}.log"
    with workspace_at(repo, source, state, f"{stage}-{run_id}") as workspace:
        ctx = StageContext(stage=stage, branch=branch, workspace=workspace, git_dir=Path(repo.git_dir),
                           state_dir=state, config=config, source_commit=source, run_id=run_id,
                           record_dir=records.record_dir(stage, run_id), merge_request=mr, forge=forge,
                           notifier=notifier, dry_run=dry_run, log=logging.getLogger(f"branchops.stage.{stage}"),
                           approved_by=list(approvers), included=verdict.included)
        if dry_run:
            plan = [f"gate: !{mr.number} approved by {', '.join(approvers)}; would run {stage} on "
                    f"{source[:12]}"] + list(module.plan(ctx))
            return RunReport(stage=stage, branch=branch, status="planned", message="dry run: nothing was changed",
                             source_commit=source, merge_request=mr.number, plan=plan)
        with run_log(log_path):
            return _execute(repo, module, ctx, mr, approvers, log_path)


def _execute(repo: git.Repo, module, ctx: StageContext, mr, approvers: list[str], log_path: Path) -> RunReport:
    config = ctx.config
    started = datetime.now(timezone.utc)
    ctx.notifier.notify(Event("started", ctx.stage, ctx.branch, ctx.source_commit,
                              f"{ctx.stage} started for !{mr.number} ({mr.title})", ctx.run_id, mr.number))
    t0 = time.monotonic()
    try:
        result: StageResult = module.run(ctx)
    except BranchopsError as exc:
        log.error("%s failed: %s", ctx.stage, exc)
        result = StageResult(outcome="failed", summary=str(exc).splitlines()[0], error=str(exc))
    except Exception as exc:  # an unexpected failure must still leave a failed record and a notification
        log.error("%s failed unexpectedly:\n%s", ctx.stage, traceback.format_exc())
        result = StageResult(outcome="failed", summary=f"{type(exc).__name__}: {exc}", error=traceback.format_exc())
    duration = time.monotonic() - t0
    status = "succeeded" if result.outcome == "success" else "failed"
    record = {
        "stage": ctx.stage, "branch": ctx.branch, "run_id": ctx.run_id, "source_commit": ctx.source_commit,
        "outcome": status, "summary": mask(result.summary), "error": mask(result.error) if result.error else None,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(duration, 3),
        "merge_request": {"number": mr.number, "title": mr.title, "source": mr.source, "author": mr.author,
                          "approved_by": approvers, "merged_by": mr.merged_by, "url": mr.url},
        # every merge request whose content this run used (the one above first), as the gate counted them
        "included_merge_requests": [{"number": m.number, "title": m.title, "author": m.author,
                                     "approved_by": counted, "merge_commit": m.merge_commit}
                                    for m, counted in ctx.included],
        "config_digest": config.digest(), "branchops_version": __version__,
        # outputs may quote errors of external systems: mask any secret value they might carry
        "outputs": json.loads(mask(json.dumps(result.outputs, default=str))), "artifacts": sorted(ctx.artifacts),
    }
    files = {f"{ctx.record_dir}/{name}": content for name, content in ctx.artifacts.items()}
    if log_path.exists():
        files[f"{ctx.record_dir}/run.log"] = mask(log_path.read_text(encoding="utf-8", errors="replace")).encode()
    files[f"{ctx.record_dir}/record.json"] = records.to_json(record)
    message = gitops.bot_message(
        f"{ctx.stage}: {status} for !{mr.number} ({ctx.source_commit[:12]})",
        f"{mask(result.summary)}\n\nRun: {ctx.run_id}\nRecord: {ctx.record_dir}/record.json", config.bot.marker)
    try:
        record_commit = gitops.commit_to_branch(
            repo, ctx.branch, files, message, gitops.Identity(config.bot.name, config.bot.email),
            remote=config.git.remote, retries=config.git.push_retries)
    except BranchopsError as exc:
        # the work is done but git does not say so: that is a failure, and people must hear about it
        ctx.notifier.notify(Event("failed", ctx.stage, ctx.branch, ctx.source_commit,
                                  f"{ctx.stage} {status} but its record could not be written: {exc}", ctx.run_id,
                                  mr.number))
        raise
    kind = "succeeded" if status == "succeeded" else "failed"
    ctx.notifier.notify(Event(kind, ctx.stage, ctx.branch, ctx.source_commit,
                              f"{mask(result.summary)} (record {ctx.record_dir}/record.json)", ctx.run_id,
                              mr.number, details={"duration_s": round(duration, 1)}))
    return RunReport(stage=ctx.stage, branch=ctx.branch, status=status, message=mask(result.summary),
                     source_commit=ctx.source_commit, run_id=ctx.run_id,
                     record_path=f"{ctx.record_dir}/record.json", record_commit=record_commit,
                     merge_request=mr.number, duration_s=round(duration, 3), log_path=str(log_path),
                     outputs=result.outputs)


def status(repo_path: str | Path) -> list[dict[str, Any]]:
    """Per stage: its branch, the branch tip, and the last run's record."""
    repo = gitops.open_repo(repo_path)
    config = working_config(repo)
    state = gitops.state_dir(repo)
    rows = []
    for stage in STAGES:
        branch = config.branch_for(stage)
        tip = gitops.branch_tip(repo, branch, config.git.remote)
        last = records.list_records(repo, tip, stage)[-1:] if tip else []
        row: dict[str, Any] = {"stage": stage, "branch": branch, "tip": tip}
        if last:
            data = last[0].data
            log_file = state / "runs" / f"{stage}-{last[0].run_id}.log"
            row.update(last_run=last[0].run_id, outcome=data.get("outcome"), summary=data.get("summary"),
                       source_commit=data.get("source_commit"), finished_at=data.get("finished_at"),
                       record=last[0].path, log=str(log_file) if log_file.exists() else None)
        rows.append(row)
    return rows
