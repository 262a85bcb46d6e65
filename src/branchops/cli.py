"""The ``branchops`` command line: parses, calls the library, prints. Nothing else lives here.

Every import of branchops' own library happens inside the command that needs it, so that
``branchops --help`` and the light commands start fast (heavy libraries are never imported here).
Exit codes are listed in ``branchops.errors`` (shown by ``--help``, tabled in the README). What goes to
stdout and stderr, and the --json contract every command keeps, is ``branchops.console``'s (docs/cli.md).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from branchops import STAGES as STAGE_NAMES  # light: --help imports no schema
from branchops.console import DEBUG, QUIET, emit_error, emit_json, set_verbosity, setup_console
from branchops.errors import EXIT_CODES, BranchopsError

log = logging.getLogger("branchops.cli")

JSON_HELP = "Print the result as one JSON document on stdout (an error: one JSON document on stderr)."

# Every command that prints a result takes --json (tests/foundation/test_cli_json.py walks the tree).
json_option = click.option("--json", "as_json", is_flag=True, help=JSON_HELP)


def _emit(data: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        emit_json(data)
    elif text is not None:
        click.echo(text)


# -- shell completion: merge request numbers and run ids, read from the repository of -C -----------------


def _completion_repo(ctx: click.Context) -> str:
    # completion parses the command line without running the group's callback: ctx.obj is not set
    return ctx.find_root().params.get("repo") or "."


def _complete_merge_requests(states: tuple[str, ...]):
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
        from click.shell_completion import CompletionItem

        try:
            from branchops.forge import make_forge
            from branchops.project import Project

            project = Project.open(_completion_repo(ctx))
            requests = make_forge(project.config, project.repo).list()
        except Exception:  # a completion never fails the shell: no candidates instead
            return []
        return [
            CompletionItem(str(m.number), help=f"[{m.state}] {m.source} -> {m.target}: {m.title}")
            for m in requests
            if m.state in states and str(m.number).startswith(incomplete)
        ]

    return complete


def _complete_run_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    from click.shell_completion import CompletionItem

    try:
        from branchops import gitops, records
        from branchops.project import working_config

        repo = gitops.open_repo(_completion_repo(ctx))
        config = working_config(repo)
        tip = gitops.branch_tip(repo, config.branch_for("training"), config.git.remote)
        run_ids = records.stage_history(repo, tip, "training").run_ids if tip else []
    except Exception:  # a completion never fails the shell: no candidates instead
        return []
    return [CompletionItem(run_id) for run_id in reversed(run_ids) if run_id.startswith(incomplete)]


ANY_MERGE_REQUEST = _complete_merge_requests(("open", "merged", "closed"))
OPEN_MERGE_REQUEST = _complete_merge_requests(("open",))
MR_NUMBER = click.IntRange(min=1)


def _user(obj: dict, explicit: str | None) -> str:
    """--as, else BRANCHOPS_USER, else git's user.name in the repository of this command (-C)."""
    if explicit:
        return explicit
    if os.environ.get("BRANCHOPS_USER"):
        return os.environ["BRANCHOPS_USER"]
    from branchops import gitops

    try:
        name = gitops.open_repo(obj["repo"]).config_reader().get_value("user", "name", "")
    except Exception:
        name = ""
    if not name:
        raise click.UsageError("who are you? pass --as USER or set BRANCHOPS_USER")
    return str(name)


class BranchopsGroup(click.Group):
    """Turns branchops' own errors into a one-line message and the documented exit code; with --json,
    every error (usage errors too) into one JSON document on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        # Read before the group consumes them: the subcommand's own parsing may be what fails. (Click 8.2
        # deprecated the public protected_args; until 9.0 the command's name is still kept apart there.)
        as_json = "--json" in [*ctx._protected_args, *ctx.args]
        try:
            return super().invoke(ctx)
        except BranchopsError as exc:
            from branchops.secrets import mask

            emit_error(mask(str(exc)), exc.exit_code, as_json)
            ctx.exit(exc.exit_code)
        except click.ClickException as exc:
            if not as_json:
                raise  # click prints the usage with the message
            emit_error(exc.format_message(), exc.exit_code, True)
            ctx.exit(exc.exit_code)


def exit_code_help() -> str:
    """The exit code table of --help, from the one list in branchops.errors."""
    rows = "\n".join(f"  {code:<8} {meaning}" for code, meaning in EXIT_CODES.items())
    return (
        f"\b\nExit codes:\n{rows}\n\n"
        "\b\nShell completion (bash; zsh and fish alike, see docs/cli.md):\n"
        '  eval "$(_BRANCHOPS_COMPLETE=bash_source branchops)"'
    )


@click.group(
    cls=BranchopsGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=exit_code_help(),
)
@click.option(
    "-C", "--repo", "repo", default=".", metavar="DIR", help="Repository to work in (default: here)."
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More of what branchops does: -v every module's progress, -vv debug lines with timestamps.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option(
    "--log-libs",
    is_flag=True,
    help="Also show other libraries' log lines (GitPython, kfp, ...), at the level -v/-vv choose "
    "(or set BRANCHOPS_LOG_LIBS=1).",
)
@click.version_option(package_name="branchops")
@click.pass_context
def main(ctx: click.Context, repo: str, verbose: int, quiet: bool, log_libs: bool) -> None:
    """branchops: machine-learning delivery as git branches.

    Approved merge requests into the stage branches (build-components, kf-pipeline, training,
    deploy-model) run the stages; every stage writes its record back to git.

    Results go to stdout (with --json: one JSON document), progress and errors to stderr.
    """
    if quiet and verbose:
        raise click.UsageError("-q and -v ask for opposite things: give one of them")
    setup_console(QUIET if quiet else min(verbose, DEBUG), libraries=log_libs)
    ctx.call_on_close(lambda: set_verbosity(None))  # a later command in this process starts at NORMAL
    from branchops.secrets import install_log_masking

    install_log_masking()
    log.debug("command %s in repository %s", ctx.invoked_subcommand, repo)
    ctx.obj = {"repo": repo}


# -- init ---------------------------------------------------------------------------------------------


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--template",
    default=None,
    help="The project to start from (default: the reference project; an unknown name lists the templates).",
)
@click.option(
    "--approver",
    "approvers",
    multiple=True,
    default=("lead",),
    show_default=True,
    help="Designated approver of every stage branch (repeatable).",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder holding the raw data to train on (else: the template's own data source).",
)
@click.option(
    "--synthetic", is_flag=True, help="Train on the template's generated data (marked as synthetic)."
)
@click.option("--as", "user", default=None, help="Author of the initial commit.")
@json_option
def init(
    directory: str,
    template: str,
    approvers: tuple[str, ...],
    data_dir: str | None,
    synthetic: bool,
    user: str | None,
    as_json: bool,
) -> None:
    """Scaffold a project from a template into a new git repository DIRECTORY."""
    from branchops.scaffold import init_project

    path = init_project(
        directory,
        template=template,
        approvers=list(approvers),
        data_dir=data_dir,
        synthetic=synthetic,
        user=user or "branchops-init",
    )
    branches = ["main", "ds1", *STAGE_NAMES]
    _emit(
        {"path": str(path), "template": template, "branches": branches},
        as_json,
        f"initialised {path} from template {template or 'the reference project'} with branches: "
        f"{', '.join(branches)}",
    )


# -- config -------------------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Validate, show, or export the schema of config/branchops.yaml."""


@config.command("validate")
@click.option("--file", "path", type=click.Path(dir_okay=False), default=None, help="Config file to check.")
@click.option("--offline", is_flag=True, help="Check the file only, not that its stage branches exist.")
@json_option
@click.pass_obj
def config_validate(obj: dict, path: str | None, offline: bool, as_json: bool) -> None:
    """Check the configuration; errors name the file, line, key and what was expected, and every stage
    branch it names must exist (in the remote it pushes to, when it has one)."""
    from branchops.config import check_branches_exist, load_config

    cfg = load_config(obj["repo"], path)
    if not offline:
        from branchops import gitops

        check_branches_exist(cfg, gitops.open_repo(obj["repo"]))
    _emit({"file": str(cfg.source), "valid": True}, as_json, f"{cfg.source}: valid")


@config.command("show")
@json_option
@click.option("--file", "path", type=click.Path(dir_okay=False), default=None)
@click.pass_obj
def config_show(obj: dict, as_json: bool, path: str | None) -> None:
    """Print the effective configuration (defaults filled in, secrets shown only as references)."""
    import yaml

    from branchops.config import load_config, masked_view

    view = masked_view(load_config(obj["repo"], path))
    _emit(view, as_json, None if as_json else yaml.safe_dump(view, sort_keys=False))


@config.command("schema")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write to a file.")
@json_option
def config_schema(output: str | None, as_json: bool) -> None:
    """Export the JSON Schema of the configuration (for editor completion and checks)."""
    from branchops.config import json_schema

    schema = json_schema()
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(schema, indent=2) + "\n")
        _emit({"written": output}, as_json, f"wrote {output}")
    else:
        emit_json(schema)  # the schema is the result, JSON with or without --json


# -- run / status -------------------------------------------------------------------------------------


def _print_reports(reports: list, as_json: bool) -> int:
    if as_json:
        emit_json([r.to_dict() for r in reports])
    else:
        for r in reports:
            head = f"{r.stage} on {r.branch}: {r.status}"
            if r.duration_s is not None:
                head += f" in {r.duration_s:.1f}s"
            click.echo(head)
            click.echo(f"  {r.message}")
            for step in r.plan:
                click.echo(f"  - {step}")
            if r.record_path and r.status != "skipped":
                click.echo(f"  record: {r.record_path} ({(r.record_commit or '')[:12]})")
            if r.log_path:
                click.echo(f"  log: {r.log_path}")
    return _exit_code(reports)


def _exit_code(reports: list) -> int:
    """The command's exit code for its runs: the first that did not end in 0, else 0."""
    return next((r.exit_code for r in reports if r.exit_code), 0)


@main.command()
@click.argument("stage", type=click.Choice(STAGE_NAMES), required=False)
@click.option(
    "--for-branch", "branch", default=None, help="Run the stage(s) mapped to this branch (CI jobs)."
)
@click.option("--commit", default=None, help="Build this commit instead of the branch tip.")
@click.option("--dry-run", is_flag=True, help="Show what would be done; touch nothing.")
@click.option(
    "--force", is_flag=True, help="Run again even if this commit already ran (the gate still applies)."
)
@json_option
@click.pass_obj
def run(
    obj: dict,
    stage: str | None,
    branch: str | None,
    commit: str | None,
    dry_run: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Run STAGE on its branch (or, with --for-branch, whatever that branch maps to)."""
    from branchops import runner

    if bool(stage) == bool(branch):
        raise click.UsageError("give either STAGE or --for-branch NAME")
    if branch:
        from branchops.errors import NotFound

        config = _project(obj).config
        if not config.stages_for_branch(branch):
            # a CI job calls this only for branches that have a stage: anything else is a mistake to see
            raise NotFound(
                f"'{branch}' is not a stage branch; stage branches: "
                + ", ".join(sorted({config.branch_for(s) for s in STAGE_NAMES}))
            )
        reports = runner.run_branch(_project(obj), branch, dry_run=dry_run, force=force, commit=commit)
    else:
        reports = [runner.run_stage(_project(obj), stage, dry_run=dry_run, force=force, commit=commit)]
    sys.exit(_print_reports(reports, as_json))


@main.command()
@json_option
@click.pass_obj
def status(obj: dict, as_json: bool) -> None:
    """Per stage branch: last run, outcome, record and log."""
    from branchops import runner

    rows = runner.status(obj["repo"])
    if as_json:
        _emit(rows, True)
        return
    for row in rows:
        line = f"{row['stage']:<17} {row['branch']:<17} "
        if row.get("last_run"):
            line += f"{row['outcome']:<10} {row['last_run']}  {row.get('summary') or ''}"
        else:
            line += "no run yet"
        click.echo(line)
        if row.get("record"):
            click.echo(f"{'':<36}record: {row['record']}")
        if row.get("log"):
            click.echo(f"{'':<36}log: {row['log']}")


# -- merge requests -----------------------------------------------------------------------------------


@main.group()
def mr() -> None:
    """Merge requests on the configured forge (local store by default)."""


def _project(obj: dict):
    """The repository of this command (-C), opened once per command."""
    if "project" not in obj:
        from branchops.project import Project

        obj["project"] = Project.open(obj["repo"])
    return obj["project"]


def _forge(obj: dict):
    from branchops.forge import make_forge

    project = _project(obj)
    return make_forge(project.config, project.repo)


def _local_forge(obj: dict):
    from branchops.forge.local import LocalForge

    forge = _forge(obj)
    if not isinstance(forge, LocalForge):
        raise click.UsageError(
            "approvals and merges happen in GitHub's interface when forge.backend is github"
        )
    return forge


def _describe_mr(m) -> str:
    approvals = ", ".join(f"{a.user}@{a.head_sha[:7]}" for a in m.approvals) or "none"
    lines = [
        f"!{m.number} [{m.state}] {m.title}",
        f"  {m.source} -> {m.target}  by {m.author}  head {m.head_sha[:12]}",
        f"  approvals: {approvals}",
    ]
    if m.merge_commit:
        lines.append(f"  merged by {m.merged_by} as {m.merge_commit[:12]}")
    return "\n".join(lines)


@mr.command("open")
@click.option("--source", required=True)
@click.option("--target", required=True)
@click.option("--title", required=True)
@click.option("--body", default="", help="Markdown description.")
@click.option("--as", "user", default=None, help="Author.")
@json_option
@click.pass_obj
def mr_open(
    obj: dict, source: str, target: str, title: str, body: str, user: str | None, as_json: bool
) -> None:
    """Open a merge request (or update the open one from SOURCE into TARGET)."""
    request, created = _forge(obj).open_merge_request(source, target, title, body, _user(obj, user))
    _emit(
        request.to_dict() | {"created": created},
        as_json,
        f"{'opened' if created else 'updated'} !{request.number}: {source} -> {target}",
    )


@mr.command("list")
@click.option("--state", type=click.Choice(["open", "merged", "closed"]), default=None)
@json_option
@click.pass_obj
def mr_list(obj: dict, state: str | None, as_json: bool) -> None:
    """List merge requests."""
    items = _forge(obj).list(state)
    _emit(
        [m.to_dict() for m in items],
        as_json,
        "\n".join(_describe_mr(m) for m in items) or "no merge requests",
    )


@mr.command("show")
@click.argument("number", type=MR_NUMBER, shell_complete=ANY_MERGE_REQUEST)
@json_option
@click.pass_obj
def mr_show(obj: dict, number: int, as_json: bool) -> None:
    """Show a merge request, its approvals and comments."""
    forge = _forge(obj)
    m = forge.get(number)
    comments = forge.comments(number) if hasattr(forge, "comments") else []
    text = _describe_mr(m) + ("\n\n" + m.body if m.body else "")
    for c in comments:
        text += f"\n\n--- {c['author']} at {c['at']}\n{c['body']}"
    _emit(m.to_dict() | {"comments": comments}, as_json, text)


@mr.command("comment")
@click.argument("number", type=MR_NUMBER, shell_complete=ANY_MERGE_REQUEST)
@click.argument("text")
@json_option
@click.pass_obj
def mr_comment(obj: dict, number: int, text: str, as_json: bool) -> None:
    """Comment on a merge request (markdown)."""
    _forge(obj).comment(number, text)
    _emit({"number": number, "body": text}, as_json, f"commented on !{number}")


@mr.command("approve")
@click.argument("number", type=MR_NUMBER, shell_complete=OPEN_MERGE_REQUEST)
@click.option("--as", "user", default=None, help="The approver.")
@json_option
@click.pass_obj
def mr_approve(obj: dict, number: int, user: str | None, as_json: bool) -> None:
    """Approve a merge request on its current head commit.

    Refused (exit 4, nothing recorded) when the approver is its author or not a designated approver of
    the target branch: the approval gate would not count it at the merge."""
    from branchops.approvals import check_approval

    forge, approver = _local_forge(obj), _user(obj, user)
    request = forge.get(number)
    if request.state == "open":  # approving a merged or closed request is the forge's refusal (exit 5)
        check_approval(_project(obj), forge, request, approver)
    m = forge.approve(number, approver)
    _emit(m.to_dict(), as_json, f"approved !{number} at {m.head_sha[:12]} as {approver}")


@mr.command("merge")
@click.argument("number", type=MR_NUMBER, shell_complete=OPEN_MERGE_REQUEST)
@click.option("--as", "user", default=None, help="Who merges.")
@click.option("--no-run", is_flag=True, help="Merge only; do not run the target branch's stage.")
@json_option
@click.pass_obj
def mr_merge(obj: dict, number: int, user: str | None, no_run: bool, as_json: bool) -> None:
    """Merge a merge request (a real merge commit) and run the target branch's stage, as CI would."""
    from branchops.merging import merge_and_run

    _local_forge(obj)
    merged, reports = merge_and_run(_project(obj), number, _user(obj, user), run=not no_run)
    if as_json:
        emit_json({"merge_request": merged.to_dict(), "runs": [r.to_dict() for r in reports]})
        sys.exit(_exit_code(reports))
    click.echo(f"merged !{number} into {merged.target} as {merged.merge_commit[:12]}")
    sys.exit(_print_reports(reports, as_json=False))


@mr.command("close")
@click.argument("number", type=MR_NUMBER, shell_complete=OPEN_MERGE_REQUEST)
@json_option
@click.pass_obj
def mr_close(obj: dict, number: int, as_json: bool) -> None:
    """Close a merge request without merging."""
    m = _local_forge(obj).close(number)
    _emit(m.to_dict(), as_json, f"closed !{number}")


# -- components ---------------------------------------------------------------------------------------


@main.command()
@click.argument("name")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Component parameter; VALUE is parsed as JSON when it can be (repeatable).",
)
@json_option
@click.pass_obj
def component(obj: dict, name: str, params: tuple[str, ...], as_json: bool) -> None:
    """Run one pipeline component of this repository locally on a folder (no pipeline needed)."""
    from branchops.components_local import run_component

    parsed = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"--param {item!r}: expected KEY=VALUE")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    result = run_component(obj["repo"], name, parsed)
    emit_json(result)  # the component's outputs read best as JSON, with or without --json


# -- lineage, reproduce, rollback ------------------------------------------------------------------------


@main.command()
@click.argument("key", metavar="RUN_OR_MODEL_VERSION", shell_complete=_complete_run_ids)
@json_option
@click.pass_obj
def lineage(obj: dict, key: str, as_json: bool) -> None:
    """Print the chain behind a training run or a model version: commit, config, approvals, pipeline,
    images, data and model snapshots, metrics, deployments (read from git alone)."""
    from branchops.lineage import lineage as trace
    from branchops.lineage import render

    chain = trace(obj["repo"], key)
    _emit(chain, as_json, None if as_json else render(chain))


@main.command(epilog=exit_code_help())
@click.option(
    "--dry-run",
    is_flag=True,
    help="Compute and print the check; write nothing (no record, monitor.json or MR).",
)
@click.option(
    "--data-until",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="The last day of the data window a proposed retrain should use (default: the latest day the "
    "outcomes' request ids end with, e.g. AAPL/2016-03-14; none: all the data there is).",
)
@json_option
@click.pass_obj
def monitor(obj: dict, dry_run: bool, data_until: Any, as_json: bool) -> None:
    """Check the served model once: drift of the logged traffic since the last check against the
    training reference (PSI and a KS test per feature and for the prediction) and the live metric where
    outcomes arrived. Appends records/monitor/<run-id>/ to the deploy-model branch, publishes the
    gauges' monitor.json, and on an alarm (drift on monitoring.drift.consecutive_checks checks in a row,
    or the live metric's interval below the validated value) opens or updates the retraining merge
    request into training. An alarm is a result, not a failure: the exit code is 0; an empty or corrupt
    prediction log is 7, nothing serving 9, a model exported without reference statistics 7, the
    'monitor' extra missing 8; no request since the last check is 0 with nothing written.
    docs/monitoring.md says how it measures."""
    from branchops.errors import MissingRequirement
    from branchops.monitoring.monitor import check, summary

    try:
        import matplotlib  # noqa: F401
        import numpy  # noqa: F401
        import scipy.stats  # noqa: F401
    except ImportError as exc:
        raise MissingRequirement(
            f"branchops monitor needs the 'monitor' extra (pip install 'branchops[monitor]'): {exc}"
        ) from None
    result = check(_project(obj), dry_run=dry_run, data_until=data_until.date() if data_until else None)
    if as_json:
        _emit(result.to_dict(), True)
        return
    if result.verdict == "no new traffic":
        click.echo(f"no request logged since {result.cursor}: nothing to check, nothing written")
        return
    click.echo(summary(result))
    for name in result.drifted_features[:10]:
        entry = next(d for d in result.features if d.name == name)
        click.echo(f"  drifted: {name}  psi {entry.psi:.3f}  KS p {entry.ks_pvalue:.2g}")
    if result.merge_request:
        mr = result.merge_request
        click.echo(
            f"retraining merge request: {mr['action']} !{mr['number']}"
            if mr["number"]
            else f"retraining merge request: {mr['action']}"
        )
    click.echo(f"record: {result.record}" if result.record else "dry run: nothing written")


@main.command()
@click.argument("run_id", shell_complete=_complete_run_ids)
@click.option("--experiment", default=None, help="Which experiment of the run (default: the best).")
@json_option
@click.pass_obj
def reproduce(obj: dict, run_id: str, experiment: str | None, as_json: bool) -> None:
    """Re-run a training run from its data snapshot and compare the metrics."""
    from branchops.reproduce import reproduce as again

    result = again(obj["repo"], run_id, experiment)
    if as_json:
        _emit(result, True)
    else:
        click.echo(
            f"reproduced {result['run_id']} / {result['experiment']} from snapshot {result['data_snapshot']} "
            f"(cloned into {result['cloned_volume']})"
        )
        for name, pair in result["metrics"].items():
            click.echo(f"  {name:<10} recorded {pair['recorded']}  reproduced {pair['reproduced']}")
        click.echo("identical metrics" if result["identical"] else "metrics DIFFER from the record")
    sys.exit(0 if result["identical"] else 1)


@main.command()
@click.option(
    "--to",
    "to_mr",
    type=MR_NUMBER,
    default=None,
    shell_complete=ANY_MERGE_REQUEST,
    help="Go back to the release of this merged request.",
)
@click.option("--as", "user", default=None, help="Who prepares the rollback.")
@json_option
@click.pass_obj
def rollback(obj: dict, to_mr: int | None, user: str | None, as_json: bool) -> None:
    """Prepare the revert of the latest deployment as a merge request into deploy-model."""
    from branchops.rollback import prepare_rollback

    request, created, reason = prepare_rollback(obj["repo"], _user(obj, user), to_mr)
    _emit(
        {"merge_request": request.to_dict(), "created": created, "reason": reason},
        as_json,
        f"{'opened' if created else 'updated'} !{request.number}: {request.title} ({reason})\n"
        f"approve and merge it to roll back: branchops mr approve {request.number} --as APPROVER && "
        f"branchops mr merge {request.number}",
    )


# -- the data scientist's view: experiments, metrics and plots diffs, TensorBoard --------------------------


@main.group()
def exp() -> None:
    """Experiments: every run's experiments with their parameters and metrics, from the training records."""


@exp.command("show")
@click.option(
    "--all-branches", is_flag=True, help="Also the training records on every other branch (merge requests')."
)
@click.option("--sort", "sort_by", default=None, help="Sort by a column: a metric, parameter or field.")
@click.option("--ascending", is_flag=True, help="Sort smallest first (default: largest first).")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Keep the rows whose column compares so (=, !=, >, >=, <, <=); repeat to combine.",
)
@click.option("--csv", "as_csv", is_flag=True, help="Print the table as CSV.")
@json_option
@click.pass_obj
def exp_show(
    obj: dict,
    all_branches: bool,
    sort_by: str | None,
    ascending: bool,
    filters: tuple[str, ...],
    as_csv: bool,
    as_json: bool,
) -> None:
    """The runs × experiments table: parameters, metrics with their intervals, the KPI gate's verdict, and
    which model is serving."""
    from branchops import experiments

    if as_csv and as_json:
        raise click.UsageError("--csv and --json: choose one")
    table = experiments.select(
        experiments.experiment_table(obj["repo"], all_branches), list(filters), sort_by, not ascending
    )
    if as_csv:
        click.echo(experiments.as_csv(table), nl=False)
    else:
        _emit(table.to_dict(), as_json, None if as_json else experiments.render(table))


@main.group()
def metrics() -> None:
    """Metrics of training runs."""


_SIDES_HELP = (
    "A and B: a training run id (or prefix), a branch, a commit, 'serving' or 'latest', each optionally "
    "':EXPERIMENT' (default: the run's best). Default: the deployed model (B) against the previous "
    "deployment (A), or, with no previous deployment, the latest run (B) against what is serving (A); it "
    "says which."
)


@metrics.command("diff", help=f"The change in metrics from A to B. {_SIDES_HELP}")
@click.argument("a", required=False, shell_complete=_complete_run_ids)
@click.argument("b", required=False, shell_complete=_complete_run_ids)
@json_option
@click.pass_obj
def metrics_diff(obj: dict, a: str | None, b: str | None, as_json: bool) -> None:
    from branchops import compare

    result = compare.diff(obj["repo"], a, b)
    _emit(result.to_dict(), as_json, None if as_json else compare.render(result))


@main.group()
def plots() -> None:
    """Plots of training runs."""


@plots.command("diff", help=f"Learning curves and ROC curves of A and B overlaid, in one file. {_SIDES_HELP}")
@click.argument("a", required=False, shell_complete=_complete_run_ids)
@click.argument("b", required=False, shell_complete=_complete_run_ids)
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="A .png or .html file to write."
)
@json_option
@click.pass_obj
def plots_diff(obj: dict, a: str | None, b: str | None, output: str, as_json: bool) -> None:
    from branchops import compare

    written = compare.plot(compare.diff(obj["repo"], a, b), output)
    # with no side named, first what the default compared (as metrics diff's first line)
    note = f"{written['note']}.\n" if written["note"] else ""
    _emit(written, as_json, f"{note}wrote {written['written']}")


@main.command()
@click.argument(
    "runs", nargs=-1, required=True, metavar="RUN[:EXPERIMENT]...", shell_complete=_complete_run_ids
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="TensorBoard's port (default: its own)."
)
@click.option("--dry-run", is_flag=True, help="Print the command; start nothing.")
@json_option
@click.pass_obj
def tensorboard(obj: dict, runs: tuple[str, ...], port: int | None, dry_run: bool, as_json: bool) -> None:
    """Open the TensorBoard event files of training runs side by side (with --json or --dry-run: print the
    command instead)."""
    import shlex
    import subprocess
    from dataclasses import asdict

    from branchops import compare

    logdirs = compare.tensorboard_logdirs(obj["repo"], list(runs))
    command = compare.tensorboard_command(logdirs, port)
    if as_json or dry_run:
        _emit({"command": command, "logdirs": [asdict(d) for d in logdirs]}, as_json, shlex.join(command))
        return
    try:
        import tensorboard as _  # noqa: F401
    except ImportError:
        from branchops.errors import MissingRequirement

        raise MissingRequirement(
            "branchops tensorboard needs the 'train' extra (pip install 'branchops[train]')"
        )
    sys.exit(subprocess.call(command))


# -- serving ---------------------------------------------------------------------------------------------


def _serving(obj: dict):
    from branchops.serving import make_serving

    project = _project(obj)
    return make_serving(project.config, project.state_dir)


@main.group()
def serve() -> None:
    """The local model server (TensorFlow Serving's REST API)."""


@serve.command("start")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port (default: serving.local.port)."
)
@json_option
@click.pass_obj
def serve_start(obj: dict, port: int | None, as_json: bool) -> None:
    """Start the server (or show the running one) and wait until it answers."""
    state = _serving(obj).start(port)
    _emit(
        state.to_dict(),
        as_json,
        f"serving {state.model} at {state.url} (pid {state.pid}), stable version {state.stable}",
    )


@serve.command("stop")
@json_option
@click.pass_obj
def serve_stop(obj: dict, as_json: bool) -> None:
    """Stop the server."""
    stopped = _serving(obj).stop()
    _emit({"stopped": stopped}, as_json, "stopped" if stopped else "the server was not running")


@serve.command("status")
@json_option
@click.pass_obj
def serve_status(obj: dict, as_json: bool) -> None:
    """Is the server up, which versions are loaded, which is stable or canary."""
    state = _serving(obj).status()
    text = (
        f"{state.model}: {'running at ' + str(state.url) if state.running else 'not running'}; stable "
        f"{state.stable}, canary {state.canary} ({state.canary_weight}%); versions "
        + (", ".join(f"{v}={s}" for v, s in state.versions.items()) or "none")
    )
    _emit(state.to_dict(), as_json, text)


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default)."
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8470, show_default=True, help="Port (0: any free one)."
)
@json_option
@click.pass_obj
def ui(obj: dict, host: str, port: int, as_json: bool) -> None:
    """Serve a read-only web dashboard over the records until interrupted: runs per stage, lineage graphs,
    metrics and plots, comparison of runs, what is serving now. With --json, prints {"url": ...} once
    listening."""
    from branchops.errors import MissingRequirement

    try:
        from branchops.ui.app import serve as serve_dashboard
    except ImportError as exc:
        raise MissingRequirement(f"branchops ui needs the 'ui' extra (pip install 'branchops[ui]'): {exc}")

    def started(url: str) -> None:
        _emit({"url": url}, as_json, f"dashboard at {url} (read-only; Ctrl-C stops it)")
        sys.stdout.flush()

    serve_dashboard(obj["repo"], host, port, on_started=started)


@main.command()
@click.option("--instances", default=None, help='Rows as JSON, e.g. "[[0.01, -0.02, ...]]".')
@click.option("--sample", is_flag=True, help="Send the sample exported with the live model, and compare.")
@click.option(
    "--version", type=click.IntRange(min=1), default=None, help="A model version (default: the live one)."
)
@click.option("--label", default=None, help="stable or canary")
@json_option
@click.pass_obj
def predict(
    obj: dict, instances: str | None, sample: bool, version: int | None, label: str | None, as_json: bool
) -> None:
    """Ask the model server for predictions (TensorFlow Serving REST :predict)."""
    serving = _serving(obj)
    client = serving.client()
    expected = None
    if sample:
        live = version or serving.live_version()
        if live is None:
            raise click.UsageError("no model version is live yet")
        meta = serving.export_metadata(live)
        rows, expected = meta["sample"]["instances"], meta["sample"]["predictions"]
    elif instances:
        rows = json.loads(instances)
    else:
        raise click.UsageError("give --instances JSON or --sample")
    from branchops.serving.base import SAMPLE_REQUEST_ID

    # the export's sample is branchops' check, not client traffic: the prediction log says so
    answer = client.predict(
        rows, version=version, label=label, request_id=SAMPLE_REQUEST_ID if sample else None
    )
    if as_json:
        emit_json({"response": answer, "expected_at_export": expected})
        return
    click.echo(json.dumps(answer, indent=2))
    if expected is not None:
        click.echo(f"expected at export time: {json.dumps(expected)}")


# -- Jenkins, GitHub bootstrap, notifications ----------------------------------------------------------------


def _config_and_root(obj: dict):
    project = _project(obj)
    return project.config, project.root


@main.group()
def jenkins() -> None:
    """The production CI: the multibranch job on Jenkins (ci.jenkins in config)."""


@jenkins.command("sync")
@click.option(
    "--dry-run", is_flag=True, help="Say whether the jobs would be created or updated; change nothing."
)
@json_option
@click.pass_obj
def jenkins_sync(obj: dict, dry_run: bool, as_json: bool) -> None:
    """Create or update the multibranch job and the periodic monitor job (idempotent), after checking the
    Jenkinsfile against config."""
    from branchops.ci.jenkins import sync_job

    config, root = _config_and_root(obj)
    result = sync_job(config, root, dry_run=dry_run)
    monitor = result.monitor
    _emit(
        {
            "job": result.job,
            "outcome": result.outcome,
            "folders_created": list(result.folders_created),
            "url": result.url,
            "monitor": {"job": monitor.job, "outcome": monitor.outcome, "url": monitor.url}
            if monitor
            else None,
        },
        as_json,
        f"{result.job}: {result.outcome}"
        + (f" ({result.url})" if result.url else "")
        + (f"; folders created: {', '.join(result.folders_created)}" if result.folders_created else "")
        + (
            f"\n{monitor.job}: {monitor.outcome}" + (f" ({monitor.url})" if monitor.url else "")
            if monitor
            else ""
        ),
    )


@jenkins.command("status")
@json_option
@click.pass_obj
def jenkins_status(obj: dict, as_json: bool) -> None:
    """The last build of every branch job."""
    from branchops.ci.jenkins.client import make_client

    config, _ = _config_and_root(obj)
    builds = make_client(config).status()
    _emit(
        [b.to_dict() for b in builds],
        as_json,
        "\n".join(
            f"{b.branch:<20} #{b.number if b.number is not None else '-':<5} {b.result or 'never built':<10} "
            f"{b.started_at or ''} {b.url or ''}"
            for b in builds
        )
        or "no branch jobs yet",
    )


@jenkins.command("trigger")
@json_option
@click.pass_obj
def jenkins_trigger(obj: dict, as_json: bool) -> None:
    """Scan the repository now (what the webhook does on a push)."""
    from branchops.ci.jenkins.client import make_client

    config, _ = _config_and_root(obj)
    make_client(config).trigger_scan()
    _emit({"triggered": "scan"}, as_json, "repository scan triggered")


@jenkins.command("logs")
@click.argument("branch")
@click.option("--build", type=click.IntRange(min=1), default=None, help="Build number (default: the last).")
@click.option("--no-follow", is_flag=True, help="Print what is there and stop.")
@json_option
@click.pass_obj
def jenkins_logs(obj: dict, branch: str, build: int | None, no_follow: bool, as_json: bool) -> None:
    """Stream a branch build's console log (with --json: the whole log, once the build has ended)."""
    from branchops.ci.jenkins.client import make_client

    config, _ = _config_and_root(obj)
    chunks = make_client(config).logs(branch, build, follow=not no_follow)
    if as_json:
        emit_json({"branch": branch, "build": build, "log": "".join(chunks)})
        return
    for chunk in chunks:
        click.echo(chunk, nl=False)


@main.command()
@click.option("--dry-run", is_flag=True, help="List every action and check permissions; change nothing.")
@json_option
@click.pass_obj
def bootstrap(obj: dict, dry_run: bool, as_json: bool) -> None:
    """Set up GitHub and Jenkins for this repository: stage branches, protection, webhook, job."""
    from branchops.bootstrap import bootstrap as run_bootstrap

    config, root = _config_and_root(obj)
    report = run_bootstrap(config, dry_run, repo_root=root)
    _emit(report.to_dict(), as_json, "\n".join(report.lines()))


@main.command()
@click.option("--event", type=click.Choice(["started", "succeeded", "failed"]), required=True)
@click.option("--branch", required=True)
@click.option("--commit", required=True)
@click.option("--message", required=True)
@click.option("--build-url", default=None)
@json_option
@click.pass_obj
def notify(
    obj: dict, event: str, branch: str, commit: str, message: str, build_url: str | None, as_json: bool
) -> None:
    """Send a notification through the configured channels (the Jenkinsfile's post steps use it when the
    build ended before any stage ran, e.g. a failed checkout or setup)."""
    from branchops.notify import make_notifier
    from branchops.notify.base import Event

    config = _project(obj).config
    stages = config.stages_for_branch(branch)
    text = message + (f" ({build_url})" if build_url else "")
    sent = Event(event, stages[0] if stages else "-", branch, commit, text)
    make_notifier(config, _project(obj).state_dir, _forge(obj)).notify(sent)
    _emit(
        {"event": sent.kind, "stage": sent.stage, "branch": branch, "commit": commit, "message": text},
        as_json,
        f"notified: {event} on {branch}",
    )


# -- demo ------------------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--workdir",
    default="branchops-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="A new directory for the demo repository.",
)
@click.option(
    "--data",
    "data_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Folder holding the raw data (for the reference project: the Kaggle dataset's per-ticker files).",
)
@click.option("--synthetic", is_flag=True, help="Train on the template's generated data (announced as such).")
@click.option(
    "--template", default=None, help="The project to play the workflow with (default: the reference project)."
)
@json_option
def demo(workdir: str, data_dir: str | None, synthetic: bool, template: str, as_json: bool) -> None:
    """Play the whole workflow end to end on this machine: merge requests, approvals, the four stages,
    a served model and a prediction."""
    from dataclasses import asdict

    from branchops.demo import run_demo, timeline

    # with --json the story is progress (stderr) and the result is the document (stdout)
    echo = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    result = run_demo(workdir, data_dir, synthetic, echo=echo, template=template)
    _emit(asdict(result), as_json, timeline(result))


if __name__ == "__main__":  # pragma: no cover
    main()
