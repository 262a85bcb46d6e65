"""The stage runner: the contract of docs/architecture.md §4 around every stage.

gate first → idempotency → (dry-run: plan and stop) → notify start → the stage's own work in a checkout
of the source commit → one bot commit with the record and artifacts on the stage branch → notify end.
The same function runs under Jenkins (``run --for-branch``) and under the local runner.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
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
from branchops.config import STAGES, BranchopsConfig
from branchops.errors import BranchopsError, ConfigError, GateRefused, NotFound, StageBusy
from branchops.forge import make_forge
from branchops.interrupt import Interrupted, handling_signals
from branchops.notify import make_notifier
from branchops.notify.base import Event
from branchops.processes import ProcessId
from branchops.project import Project, config_at, working_config  # noqa: F401 (callers import them from here)
from branchops.secrets import mask
from branchops.stages import REGISTRY
from branchops.stages.base import Stage, StageContext, StageResult

log = logging.getLogger("branchops.runner")


EXIT_CODES = {
    "succeeded": 0,
    "skipped": 0,
    "planned": 0,
    "failed": 1,
    "refused": GateRefused.exit_code,
    "busy": StageBusy.exit_code,
    "interrupted": 130,
}


@dataclass
class RunReport:
    stage: str
    branch: str
    status: str  # succeeded | failed | refused | skipped | planned | busy | interrupted
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
    code: int | None = None  # the exit code when it is not the status' own (a config error: 3; SIGTERM: 143)

    @property
    def exit_code(self) -> int:
        return self.code if self.code is not None else EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def stage_module(stage: str) -> Stage:
    if stage not in REGISTRY:
        raise ConfigError(f"unknown stage '{stage}'; stages are: {', '.join(STAGES)}")
    return REGISTRY[stage]


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


def last_gated_commit(
    repo: git.Repo, config: BranchopsConfig, stage: str, branch: str, branch_head: str, source: str
) -> str | None:
    """Where the gate starts looking: the source commit of the stage's last run on the branch (it passed the
    gate), else where the branch left the main branch; None when neither exists (only ``source`` is gated)."""
    # newest first, read in growing batches: a long history is not read whole to find its last run
    for record in records.stage_history(repo, branch_head, stage).newest_first():
        earlier = record.record.source_commit
        if earlier and earlier != source and gitops.is_ancestor(repo, earlier, source):
            return earlier
    main = gitops.branch_tip(repo, config.branches.main, config.git.remote)
    if main and branch != config.branches.main:
        base = repo.merge_base(main, source)
        return base[0].hexsha if base else None
    return None


def fetch_what_runs_read(project: Project) -> None:
    """Bring every branch a run may read up to date from the remote: its own (records land there), the main
    branch (where the gate starts on a stage's first run) and the other stage branches (training compares
    with the release on deploy-model and bases its release branch on it). A Jenkins multibranch checkout
    fetches only the branch it builds, so without this a training build would see no model deployed and
    make a release branch with no history in common with deploy-model."""
    config = project.config
    if not config.git.remote:
        return
    names = list(dict.fromkeys([config.branches.main, *(config.branch_for(stage) for stage in STAGES)]))
    missing = gitops.fetch_branches(project.repo, config.git.remote, names)
    if missing:
        log.warning("remote '%s' has no branch %s", config.git.remote, ", ".join(missing))


def first_non_bot(repo: git.Repo, sha: str, marker: str) -> str:
    commit = repo.commit(sha)
    while gate.is_own_commit(repo, commit.hexsha, marker):
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


def run_branch(
    repo_path: str | Path | Project,
    branch: str,
    *,
    dry_run: bool = False,
    force: bool = False,
    commit: str | None = None,
) -> list[RunReport]:
    """What a multibranch job runs for ``branch``: its stage, or in single-branch mode every stage whose
    inputs changed in the merge, in workflow order, stopping at the first that does not succeed."""
    project = Project.open(repo_path)
    repo, config = project.repo, project.config
    stages = config.stages_for_branch(branch)
    if not stages:
        return [
            RunReport(
                stage="-",
                branch=branch,
                status="skipped",
                message=f"'{branch}' is not a stage branch; nothing to run",
            )
        ]
    if config.branches.mode != "single-branch":
        return [
            run_stage(project, stages[0], dry_run=dry_run, force=force, commit=commit, triggered_by_push=True)
        ]
    fetch_what_runs_read(project)  # once, before the tip is read; the stages below run on what it fetched
    tip = commit or gitops.branch_tip(repo, branch, config.git.remote) or gitops.resolve(repo, "HEAD")
    if tip and gate.is_own_commit(repo, tip, config.bot.marker) and not force:
        return [
            RunReport(
                stage="-",
                branch=branch,
                status="skipped",
                source_commit=tip,
                message="the latest commit is branchops' own record; bot commits never start a stage",
            )
        ]
    source = first_non_bot(repo, tip, config.bot.marker)
    parent = repo.commit(source).parents[0].hexsha if repo.commit(source).parents else None
    changed = gitops.changed_paths(repo, parent, source)
    reports = []
    for stage in stages:
        inputs = stage_module(stage).inputs(config)
        if not any(path.startswith(tuple(inputs)) for path in changed):
            reports.append(
                RunReport(
                    stage=stage,
                    branch=branch,
                    status="skipped",
                    source_commit=source,
                    message=f"none of its inputs ({', '.join(inputs)}) changed",
                )
            )
            continue
        report = run_stage(
            project,
            stage,
            dry_run=dry_run,
            force=force,
            commit=source,
            triggered_by_push=True,
            fetched=True,
        )
        reports.append(report)
        if report.status not in ("succeeded", "skipped", "planned"):
            break
    return reports


def run_stage(
    repo_path: str | Path | Project,
    stage: str,
    *,
    dry_run: bool = False,
    force: bool = False,
    commit: str | None = None,
    triggered_by_push: bool = False,
    fetched: bool = False,
) -> RunReport:
    """Run one stage on its branch under the stage contract; never raises for a refused or failed stage.

    ``triggered_by_push`` (what a CI job does on every push): a tip that is branchops' own commit starts
    nothing, so record commits never trigger runs. A person running the stage by hand gets the last
    merge under the records instead: a rerun after a failed or interrupted run just works.
    ``fetched``: the caller (``run_branch``) already ran :func:`fetch_what_runs_read` for this run.
    """
    project = Project.open(repo_path)
    repo, boot = project.repo, project.config
    module = stage_module(stage)
    branch = boot.branch_for(stage)
    remote = boot.git.remote
    if not fetched:
        fetch_what_runs_read(project)
    tip = commit or gitops.branch_tip(repo, branch, remote)
    if tip is None:
        raise NotFound(f"branch '{branch}' (stage {stage}) does not exist")
    if gate.is_own_commit(repo, tip, boot.bot.marker) and triggered_by_push and not force:
        return RunReport(
            stage=stage,
            branch=branch,
            status="skipped",
            source_commit=tip,
            message=f"{tip[:12]} is branchops' own commit; bot commits never start a stage",
        )
    source = first_non_bot(repo, tip, boot.bot.marker)
    try:
        config = project.config_at(source)
    except ConfigError as error:
        # the merged configuration is broken: gate the merge with the branch's configuration before it,
        # and if it was approved, say so in git and to people instead of only on this console
        return _config_failure(repo, stage, branch, tip, source, error, dry_run)
    preflight.check(
        config, [stage]
    )  # a machine that lacks a library fails here, before the gate and any record
    state = project.state_dir
    forge = make_forge(config, repo)
    notifier = make_notifier(config, state, forge)

    # -- gate ---------------------------------------------------------------------------------------
    branch_head = gitops.branch_tip(repo, branch, remote) or tip
    try:
        verdict = gate.check(
            forge,
            repo,
            source,
            branch,
            designated_approvers(repo, config, stage, source),
            last_gated_commit(repo, config, stage, branch, branch_head, source),
            config.bot.marker,
        )
    except GateRefused as refusal:
        if not dry_run:
            notifier.notify(Event("refused", stage, branch, source, str(refusal)))
        return RunReport(
            stage=stage, branch=branch, status="refused", message=str(refusal), source_commit=source
        )
    mr, approvers = verdict.merge_request, verdict.approved_by

    # -- idempotency --------------------------------------------------------------------------------
    done = [r for r in records.list_records(repo, branch_head, stage, source) if r.outcome == "succeeded"]
    if done and not force:
        return RunReport(
            stage=stage,
            branch=branch,
            status="skipped",
            source_commit=source,
            run_id=done[-1].run_id,
            record_path=done[-1].path,
            merge_request=mr.number,
            message=f"already ran successfully on {source[:12]} (record {done[-1].path}); "
            "use --force to run it again",
        )

    run_id = records.new_run_id(source)
    log_path = state / "runs" / f"{stage}-{run_id}.log"
    with workspace_at(repo, source, state, f"{stage}-{run_id}") as workspace:
        ctx = StageContext(
            stage=stage,
            branch=branch,
            workspace=workspace,
            git_dir=Path(repo.git_dir),
            state_dir=state,
            config=config,
            source_commit=source,
            run_id=run_id,
            record_dir=records.record_dir(stage, run_id),
            merge_request=mr,
            forge=forge,
            notifier=notifier,
            dry_run=dry_run,
            log=logging.getLogger(f"branchops.stage.{stage}"),
            approved_by=list(approvers),
            included=verdict.included,
        )
        if dry_run:
            plan = [
                f"gate: !{mr.number} approved by {', '.join(approvers)}; would run {stage} on {source[:12]}"
            ] + list(module.plan(ctx))
            return RunReport(
                stage=stage,
                branch=branch,
                status="planned",
                message="dry run: nothing was changed",
                source_commit=source,
                merge_request=mr.number,
                plan=plan,
            )
        with run_lock(repo, ctx) as busy:
            if busy:
                return busy
            with run_log(log_path):
                return _execute(repo, module, ctx, mr, approvers, log_path)


def _execute(
    repo: git.Repo, module, ctx: StageContext, mr, approvers: list[str], log_path: Path
) -> RunReport:
    started = datetime.now(timezone.utc)
    ctx.notifier.notify(
        Event(
            "started",
            ctx.stage,
            ctx.branch,
            ctx.source_commit,
            f"{ctx.stage} started for !{mr.number} ({mr.title})",
            ctx.run_id,
            mr.number,
        )
    )
    t0 = time.monotonic()
    interrupted: Interrupted | None = None
    try:
        with handling_signals():
            result: StageResult = module.run(ctx)
    except Interrupted as stop:
        # what the stage started has been stopped on the way out (pipeline processes, remote runs)
        interrupted = stop
        log.error("%s interrupted: %s", ctx.stage, stop)
        result = StageResult(
            outcome="failed",
            summary=f"interrupted ({stop}) before it finished; a rerun starts it again",
            error=str(stop),
        )
    except BranchopsError as exc:
        log.error("%s failed: %s", ctx.stage, exc)
        result = StageResult(
            outcome="failed", summary=str(exc).splitlines()[0], error=str(exc), exit_code=exc.exit_code
        )
    except Exception as exc:  # an unexpected failure must still leave a failed record and a notification
        log.error("%s failed unexpectedly:\n%s", ctx.stage, traceback.format_exc())
        result = StageResult(
            outcome="failed", summary=f"{type(exc).__name__}: {exc}", error=traceback.format_exc()
        )
    status = "interrupted" if interrupted else "succeeded" if result.outcome == "success" else "failed"
    report = write_record(repo, ctx, status, result, started, time.monotonic() - t0, log_path)
    if interrupted:
        report.code = interrupted.exit_code
    elif status == "failed" and result.exit_code:
        report.code = result.exit_code  # bad data 7, an external system 6, ... rather than a bare 1
    return report


@contextmanager
def run_lock(repo: git.Repo, ctx: StageContext) -> Iterator[RunReport | None]:
    """Hold the stage's lock on this machine for the run; yields a "busy" report instead when another live
    run holds it. A lock whose process is gone (SIGKILL, a lost machine) is that run's end: it is recorded
    as abandoned, and its leftovers are cleaned, before this run takes the lock."""
    locks = ctx.state_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / f"{ctx.stage}.json"
    mine = {
        "owner": ProcessId.current().to_dict(),
        "run_id": ctx.run_id,
        "source_commit": ctx.source_commit,
        "merge_request": ctx.merge_request.number if ctx.merge_request else None,
        "approved_by": ctx.approved_by,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            owner = ProcessId.from_dict(holder.get("owner")) if holder else None
            if holder is None or (owner is not None and owner.alive()):
                who = (
                    (
                        f"run {holder['run_id']} on {str(holder.get('source_commit'))[:12]} "
                        f"(process {owner.pid}, "
                        f"since {holder.get('started_at')})"
                    )
                    if holder and owner
                    else "another run"
                )
                yield RunReport(
                    stage=ctx.stage,
                    branch=ctx.branch,
                    status="busy",
                    source_commit=ctx.source_commit,
                    message=f"{ctx.stage} is already running here: {who}. Nothing was done; its "
                    "result will be in 'branchops status' when it ends.",
                )
                return
            stale = path.with_name(f"{path.name}.stale-{os.getpid()}")
            try:
                os.rename(path, stale)  # exactly one of several newcomers takes the stale lock over
            except FileNotFoundError:
                continue
            _record_abandoned(repo, ctx, holder)
            stale.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(mine, handle)
        break
    try:
        yield None
    finally:
        if (_read_lock(path) or {}).get("run_id") == ctx.run_id:
            path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError:
        return None  # being written right now: treat as held
    return data if isinstance(data, dict) else None


def _record_abandoned(repo: git.Repo, ctx: StageContext, holder: dict[str, Any]) -> None:
    """Write the record a killed run could not write, and clean its checkout (its pipeline processes are
    stopped by the engine when the run starts again)."""
    run_id, source = str(holder.get("run_id") or ""), str(holder.get("source_commit") or "")
    if not run_id or not source:
        return
    shutil.rmtree(ctx.state_dir / "workspaces" / f"{ctx.stage}-{run_id}", ignore_errors=True)
    repo.git.worktree("prune")
    branch_head = gitops.branch_tip(repo, ctx.branch, ctx.config.git.remote)
    if branch_head and any(
        r.run_id == run_id for r in records.list_records(repo, branch_head, ctx.stage, source)
    ):
        return  # it got as far as its record
    number = holder.get("merge_request")
    try:
        mr = ctx.forge.get(int(number)) if number is not None else ctx.merge_request
    except BranchopsError:
        mr = ctx.merge_request
    owner = ProcessId.from_dict(holder.get("owner"))
    summary = (
        f"abandoned: its process ({owner.pid if owner else '?'}) ended without finishing (killed, or the "
        "machine stopped); nothing it did counts. A rerun starts it again."
    )
    dead = dataclasses.replace(
        ctx,
        run_id=run_id,
        source_commit=source,
        record_dir=records.record_dir(ctx.stage, run_id),
        merge_request=mr,
        approved_by=list(holder.get("approved_by") or []),
        included=[],
        artifacts={},
    )
    log.warning("%s run %s was abandoned; recording it", ctx.stage, run_id)
    started = (
        datetime.fromisoformat(holder["started_at"])
        if holder.get("started_at")
        else datetime.now(timezone.utc)
    )
    write_record(repo, dead, "abandoned", StageResult("failed", summary, error=summary), started, 0.0, None)


def _config_failure(
    repo: git.Repo, stage: str, branch: str, tip: str, source: str, error: ConfigError, dry_run: bool
) -> RunReport:
    """An approved merge whose configuration is invalid ends in a failed record and a notification, gated
    and recorded with the branch's configuration from before the merge."""
    parent = repo.commit(source).parents[0].hexsha if repo.commit(source).parents else None
    try:
        config = config_at(repo, parent) if parent else None
    except ConfigError:
        config = None
    if config is None or dry_run:
        raise error  # nothing valid to gate with, or only a look: say what is wrong
    state = gitops.state_dir(repo)
    forge = make_forge(config, repo)
    notifier = make_notifier(config, state, forge)
    branch_head = gitops.branch_tip(repo, branch, config.git.remote) or tip
    try:
        verdict = gate.check(
            forge,
            repo,
            source,
            branch,
            config.approvers[stage],  # type: ignore[index]
            last_gated_commit(repo, config, stage, branch, branch_head, source),
            config.bot.marker,
        )
    except GateRefused as refusal:
        notifier.notify(Event("refused", stage, branch, source, str(refusal)))
        return RunReport(
            stage=stage, branch=branch, status="refused", message=str(refusal), source_commit=source
        )
    run_id = records.new_run_id(source)
    ctx = StageContext(
        stage=stage,
        branch=branch,
        workspace=Path(repo.working_tree_dir or state),
        git_dir=Path(repo.git_dir),
        state_dir=state,
        config=config,
        source_commit=source,
        run_id=run_id,
        record_dir=records.record_dir(stage, run_id),
        merge_request=verdict.merge_request,
        forge=forge,
        notifier=notifier,
        approved_by=verdict.approved_by,
        included=verdict.included,
    )
    problems = [line.strip() for line in str(error).splitlines() if line.strip()]
    result = StageResult(
        "failed",
        "the merged configuration is invalid, nothing ran: " + "; ".join(problems[1:4] or problems[:1]),
        error=str(error),
    )
    report = write_record(
        repo, ctx, "failed", result, datetime.now(timezone.utc), 0.0, None, config_valid=False
    )
    report.code = error.exit_code
    return report


def write_record(
    repo: git.Repo,
    ctx: StageContext,
    status: str,
    result: StageResult,
    started: datetime,
    duration: float,
    log_path: Path | None,
    *,
    config_valid: bool = True,
) -> RunReport:
    """Commit the run's record (and artifacts, and log) to the stage branch and notify its end."""
    config, mr, approvers = ctx.config, ctx.merge_request, ctx.approved_by
    record = records.RunRecord(
        stage=ctx.stage,
        branch=ctx.branch,
        run_id=ctx.run_id,
        source_commit=ctx.source_commit,
        outcome=status,
        summary=mask(result.summary),
        error=mask(result.error) if result.error else None,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        duration_s=round(duration, 3),
        merge_request=records.MergeRequestRef(
            number=mr.number,
            title=mr.title,
            source=mr.source,
            author=mr.author,
            approved_by=approvers,
            merged_by=mr.merged_by,
            url=mr.url,
        ),
        # every merge request whose content this run used (the one above first), as the gate counted them
        included_merge_requests=[
            records.IncludedMergeRequest(
                number=m.number,
                title=m.title,
                author=m.author,
                approved_by=counted,
                merge_commit=m.merge_commit,
            )
            for m, counted in ctx.included
        ],
        config_digest=config.digest() if config_valid else None,
        branchops_version=__version__,
        # outputs may quote errors of external systems: mask any secret value they might carry
        outputs=json.loads(mask(json.dumps(result.outputs, default=str))),
        artifacts=sorted(ctx.artifacts),
    )
    files = {f"{ctx.record_dir}/{name}": content for name, content in ctx.artifacts.items()}
    if log_path and log_path.exists():
        files[f"{ctx.record_dir}/run.log"] = mask(
            log_path.read_text(encoding="utf-8", errors="replace")
        ).encode()
    files[f"{ctx.record_dir}/record.json"] = records.to_json(record)
    message = gitops.bot_message(
        f"{ctx.stage}: {status} for !{mr.number} ({ctx.source_commit[:12]})",
        f"{mask(result.summary)}\n\nRun: {ctx.run_id}\nRecord: {ctx.record_dir}/record.json",
        config.bot.marker,
    )
    try:
        record_commit = gitops.commit_to_branch(
            repo,
            ctx.branch,
            files,
            message,
            gitops.Identity(config.bot.name, config.bot.email),
            remote=config.git.remote,
            retries=config.git.push_retries,
        )
    except BranchopsError as exc:
        # the work is done but git does not say so: that is a failure, and people must hear about it
        ctx.notifier.notify(
            Event(
                "failed",
                ctx.stage,
                ctx.branch,
                ctx.source_commit,
                f"{ctx.stage} {status} but its record could not be written: {exc}",
                ctx.run_id,
                mr.number,
            )
        )
        raise
    kind = (
        "succeeded" if status == "succeeded" else "failed"
    )  # interrupted and abandoned runs did not succeed
    ctx.notifier.notify(
        Event(
            kind,
            ctx.stage,
            ctx.branch,
            ctx.source_commit,
            f"{mask(result.summary)} (record {ctx.record_dir}/record.json)",
            ctx.run_id,
            mr.number,
            details={"duration_s": round(duration, 1)},
        )
    )
    return RunReport(
        stage=ctx.stage,
        branch=ctx.branch,
        status=status,
        message=mask(result.summary),
        source_commit=ctx.source_commit,
        run_id=ctx.run_id,
        record_path=f"{ctx.record_dir}/record.json",
        record_commit=record_commit,
        merge_request=mr.number,
        duration_s=round(duration, 3),
        log_path=str(log_path) if log_path else None,
        outputs=result.outputs,
    )


def status(repo_path: str | Path) -> list[dict[str, Any]]:
    """Per stage: its branch, the branch tip, and the last run's record."""
    repo = gitops.open_repo(repo_path)
    config = working_config(repo)
    state = gitops.state_dir(repo)
    rows = []
    for stage in STAGES:
        branch = config.branch_for(stage)
        tip = gitops.branch_tip(repo, branch, config.git.remote)
        # only the newest record: one listing and one read, however long the history
        last = records.latest_record(repo, tip, stage)
        row: dict[str, Any] = {"stage": stage, "branch": branch, "tip": tip}
        if last:
            run = last.record
            log_file = state / "runs" / f"{stage}-{last.run_id}.log"
            row.update(
                last_run=last.run_id,
                outcome=run.outcome,
                summary=run.summary,
                source_commit=run.source_commit,
                finished_at=run.finished_at,
                record=last.path,
                log=str(log_file) if log_file.exists() else None,
            )
        rows.append(row)
    return rows
