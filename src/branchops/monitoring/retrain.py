"""The retraining merge request: what ``branchops monitor`` does when the served model's inputs drift or
its live metric falls below the validated one (docs/monitoring.md).

It proposes, it never retrains: one merge request into the training branch, from the bot's branch
``monitoring.retrain.branch``, whose one commit moves the data window (``data.until`` in
config/branchops.yaml, edited in place so that comments and layout stay) and whose description carries
the evidence. The approval gate applies to it as to any merge request (docs/architecture.md §4): a
designated approver of training signs it off, and its merge runs training on the refreshed window.

While that merge request is open, later proposals update it rather than open another: a new commit on
top of its branch only when the window moved (the branch is never rewritten under a review, and an
approval given before the new commit no longer counts), the description replaced with the latest
evidence, and a comment saying what changed. Once it is merged or closed, the next proposal starts the
branch again from the training branch's tip and opens a new one.

The commit is the bot's but carries no bot trailer: it changes configuration, so it is a change to
review, never a record (``gate.is_own_commit`` would refuse it as one anyway).
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any, Literal

import git
import yaml

from branchops import gitops
from branchops.config import CONFIG_PATH, BranchopsConfig, parse_config
from branchops.errors import BranchopsError, ConfigError, ExternalError, MergeError, NotFound
from branchops.forge import make_forge
from branchops.forge.base import Forge, MergeRequest
from branchops.notify import make_notifier
from branchops.notify.base import Event
from branchops.project import Project

log = logging.getLogger(__name__)

Action = Literal["opened", "updated", "unchanged", "would open", "would update"]

TITLE = "Retrain on a refreshed data window (proposed by branchops monitor)"
# GitHub refuses an issue's or pull request's body, or a comment, longer than this (422 "body is too long")
BODY_LIMIT = 65536


@dataclass(frozen=True)
class RetrainProposal:
    number: int | None  # the merge request (None: a dry run that would open one)
    url: str | None
    action: Action
    branch: str = ""
    # the retraining branch's head after the proposal (dry run: as it is now; None if it does not exist)
    commit: str | None = None
    data_until: str | None = None  # the window's last day the proposal sets (None: all the data there is)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _BranchMoved(Exception):
    """Someone moved the retraining branch between our look at it and our update: look again."""


def propose_retrain(
    project: Project | str,
    *,
    reason: str,
    evidence_markdown: str,
    data_until: date | None,
    dry_run: bool = False,
) -> RetrainProposal:
    """Open the retraining merge request into the training branch, or update the open one.

    ``reason``: one line, why a retrain is proposed (the alarm); ``evidence_markdown``: the drift table,
    plots and live metric, the description's body; ``data_until``: the data window's new last day (None:
    all the data there is). ``dry_run``: say what would happen, changing nothing (no branch, no merge
    request, no notification).
    """
    project = Project.open(project)
    repo, config = project.repo, project.config
    if isinstance(data_until, str):  # "YYYY-MM-DD", as the toolkit input carries it
        data_until = date.fromisoformat(data_until) if data_until else None
    remote = config.git.remote
    training = config.branch_for("training")
    branch = config.monitoring.retrain.branch
    if remote:
        gitops.fetch_branches(repo, remote, [training, branch])  # only remote-tracking refs move
    forge = make_forge(config, repo)
    for attempt in range(1, config.git.push_retries + 1):
        training_tip = gitops.branch_tip(repo, training, remote)
        if training_tip is None:
            raise NotFound(f"branch '{training}' (stage training) does not exist")
        request = _open_request(forge, branch, training)
        branch_tip = gitops.branch_tip(repo, branch, remote)
        training_until = _until(project, training_tip)
        if training_until is None or (data_until is not None and data_until < training_until):
            # outcomes or traffic older than the window training already has (a replay of old days), or
            # training already uses all the data there is: a retrain never shrinks the window
            data_until = training_until
        if request is not None and branch_tip is not None:
            _refuse_others_commits(repo, training_tip, branch_tip, branch, request.number, config.bot.name)
            # the open request's branch only ever moves forward: a reviewer may be reading it
            base, proposed_until = branch_tip, _until(project, branch_tip)
        else:
            base, proposed_until = training_tip, None
        commit_needed = request is None or branch_tip is None or proposed_until != data_until
        approvers = project.config_at(training_tip).approvers.get("training", [])
        body = _body(reason, evidence_markdown, training, approvers, training_until, data_until)
        if dry_run:
            changes = commit_needed or request is None or request.body != body
            return RetrainProposal(
                number=request.number if request else None,
                url=request.url if request else None,
                action=("would open" if request is None else "would update") if changes else "unchanged",
                branch=branch,
                commit=branch_tip,
                data_until=_text(data_until),
            )
        head = branch_tip
        if commit_needed:
            head = _window_commit(project, base, data_until, reason)
            try:
                _move_branch(repo, remote, branch, head, branch_tip)
            except _BranchMoved:
                log.info(
                    "'%s' moved while the retraining proposal was prepared (attempt %d/%d); looking again",
                    branch,
                    attempt,
                    config.git.push_retries,
                )
                if remote:
                    gitops.fetch_branches(repo, remote, [training, branch])
                continue
        break
    else:
        raise ExternalError(
            f"could not update branch '{branch}' after {config.git.push_retries} attempts (it keeps moving)"
        )
    assert head is not None
    if request is None:
        request, created = forge.open_merge_request(branch, training, TITLE, body, config.bot.name)
        action: Action = "opened" if created else "updated"
    elif commit_needed or request.body != body:
        if request.body != body:
            forge.update_body(request.number, body)
        forge.comment(request.number, _what_changed(reason, proposed_until, data_until, head, commit_needed))
        action = "updated"
    else:
        action = "unchanged"
    log.info("retraining merge request !%s %s (%s into %s)", request.number, action, branch, training)
    if action != "unchanged":
        _notify(project, config, forge, request, action, reason, training, head, training_until, data_until)
    return RetrainProposal(
        number=request.number,
        url=request.url,
        action=action,
        branch=branch,
        commit=head,
        data_until=_text(data_until),
    )


def _refuse_others_commits(
    repo: git.Repo, training_tip: str, branch_tip: str, branch: str, number: int, bot: str
) -> None:
    """The retraining merge request is the bot's: its author is nobody who could approve it, so a commit
    someone else pushed onto its branch would be approved by a designated approver who may have written
    it, under a description that says only the data window moves. Such a branch is not built on."""
    others = [
        f"{c.hexsha[:12]} by {c.author.name}"
        for c in repo.iter_commits(f"{training_tip}..{branch_tip}")
        if c.author.name != bot
    ]
    if others:
        raise MergeError(
            f"the retraining merge request !{number} has commits on '{branch}' that are not the bot's "
            f"({', '.join(others[:5])}): a proposal the bot authors carries only its own change. Close "
            f"!{number} (the next alarm opens a new one from the training branch) or open your own merge "
            "request with those commits"
        )


def _open_request(forge: Forge, branch: str, training: str) -> MergeRequest | None:
    """The open merge request from the retraining branch into training (a forge keeps at most one)."""
    return next((mr for mr in forge.list(state="open", target=training) if mr.source == branch), None)


def _until(project: Project, commit: str) -> date | None:
    config = project.config_at(commit)
    return config.data.until if config.data else None


def _text(until: date | None) -> str | None:
    return until.isoformat() if until else None


def _window_commit(project: Project, base: str, until: date | None, reason: str) -> str:
    """The bot's commit on ``base`` that sets ``data.until``; with the window already there, an empty
    commit, so that the merge request still has a merge to approve and the retrain a merge to run on."""
    repo, bot = project.repo, project.config.bot
    raw = gitops.read_file(repo, base, str(CONFIG_PATH))
    if raw is None:
        raise ConfigError(f"{base[:12]}:{CONFIG_PATH}: configuration file not found")
    text = raw.decode("utf-8")
    edited = set_data_until(text, until, f"{CONFIG_PATH} @ {base[:12]}")
    summary = f"Retrain on data until {_text(until) or 'the latest day there is'}"
    message = f"{summary}\n\nProposed by branchops monitor: {reason.strip()}\n"
    return gitops.build_commit(
        repo,
        base,
        {str(CONFIG_PATH): edited.encode("utf-8")},
        message,
        gitops.Identity(bot.name, bot.email),
        overwrite=True,
    )


def _move_branch(repo: git.Repo, remote: str | None, branch: str, new: str, old: str | None) -> None:
    """Point ``branch`` at ``new`` if it still is at ``old`` (None: if it does not exist yet).

    ``new`` descends from ``old`` while a merge request from the branch is open. It does not when the last
    proposal was closed unmerged: that branch is replaced (its review is over; the closed request keeps
    its commits on the forge), and only if nobody moved it meanwhile (a lease).
    """
    if remote is None:
        if not gitops.compare_and_swap(repo, branch, new, old):
            raise _BranchMoved()
        return
    if old is None or gitops.is_ancestor(repo, old, new):
        try:
            gitops.push(repo, remote, f"{new}:refs/heads/{branch}")
        except gitops.BranchMoved:
            raise _BranchMoved() from None
    else:
        _push_replacing(repo, remote, branch, new, old)
    repo.git.update_ref(f"refs/remotes/{remote}/{branch}", new)


def _push_replacing(repo: git.Repo, remote: str, branch: str, new: str, old: str) -> None:
    proc = subprocess.run(
        [
            "git",
            "push",
            "--porcelain",
            f"--force-with-lease=refs/heads/{branch}:{old}",
            remote,
            f"{new}:refs/heads/{branch}",
        ],
        cwd=repo.git_dir,
        capture_output=True,
        text=True,
        errors="replace",
    )
    if proc.returncode == 0:
        return
    if "stale info" in proc.stdout:  # the lease: the remote's branch is no longer ``old``
        raise _BranchMoved()
    said = " ".join(line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip())
    raise ExternalError(f"git push {remote} {branch} (replacing a closed proposal's branch) failed: {said}")


def _body(
    reason: str,
    evidence: str,
    training: str,
    approvers: list[str],
    current: date | None,
    proposed: date | None,
) -> str:
    head = (
        "## Retraining proposed by branchops monitor\n\n"
        f"**Why:** {reason.strip()}\n\n"
        f"**Data refresh:** `data.until` in `{CONFIG_PATH}` goes from `{_text(current) or 'null'}` to "
        f"`{_text(proposed) or 'null'}`" + (" (all the data there is)" if proposed is None else "") + ".\n\n"
        f"Nothing retrains until a designated approver of `{training}` ({', '.join(approvers) or 'none'}) "
        "approves this merge request and it is merged: the merge runs the training stage on the refreshed "
        "window, and its model passes the KPI gate like any other. While it is open, later checks update "
        "it (a new commit only when the window moves) instead of opening another; close it to turn the "
        "proposal down.\n\n---\n\n"
    )
    cut = "\n\n*(evidence truncated: the full evidence is in the monitoring record)*"
    room = BODY_LIMIT - len(head)
    if len(evidence) > room:
        evidence = evidence[: room - len(cut)] + cut
    return head + evidence


def _what_changed(reason: str, before: date | None, after: date | None, head: str, commit_added: bool) -> str:
    if commit_added:
        window = (
            f"The data window moved: `data.until` from `{_text(before) or 'null'}` to "
            f"`{_text(after) or 'null'}` (commit {head[:12]}); an approval given before that commit no "
            "longer counts."
        )
    else:
        window = f"The data window is unchanged (`data.until: {_text(after) or 'null'}`)."
    text = (
        f"**branchops monitor updated this proposal.** {reason.strip()}\n\n{window} "
        "The description now holds the latest evidence."
    )
    return text[:BODY_LIMIT]


def _notify(
    project: Project,
    config: BranchopsConfig,
    forge: Forge,
    request: MergeRequest,
    action: Action,
    reason: str,
    training: str,
    head: str,
    current: date | None,
    proposed: date | None,
) -> None:
    what = "retraining proposed" if action == "opened" else "retraining proposal updated"
    message = (
        f"{what}: {reason.strip()} (data.until {_text(current) or 'null'} -> {_text(proposed) or 'null'}; "
        f"merge request !{request.number}{f' {request.url}' if request.url else ''})"
    )
    try:
        notifier = make_notifier(config, project.state_dir, forge)
    except BranchopsError as exc:  # the proposal stands; a notifier that cannot be built must not undo it
        log.warning("could not notify '%s': %s", what, exc)
        return
    notifier.notify(
        Event(
            "proposed",
            "training",
            training,
            head,
            message,
            merge_request=request.number,
            details={"action": action, "data_until": _text(proposed), "reason": reason.strip()},
        )
    )


def set_data_until(text: str, until: date | None, source: str = str(CONFIG_PATH)) -> str:
    """``text`` (config/branchops.yaml) with ``data.until`` set and every other byte as it was: comments,
    key order, quoting and layout stay, so the merge request's diff is that one line.

    The value of an existing ``until`` is replaced where it stands; a missing one is added as the data
    section's last key, after the lines (and comments) of the key before it. The result is checked: it
    must parse to the same configuration but for ``data.until``."""
    value = _text(until) or "null"
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{source}: the configuration must be a mapping of sections")
    data = next((v for k, v in root.value if k.value == "data"), None)
    if data is None or (isinstance(data, yaml.ScalarNode) and data.tag.endswith(":null")):
        if until is None:
            return text  # no data section: the window is already all the data there is
        raise ConfigError(
            f"{source}: no 'data' section, so there is no data window (data.until) to move; add the "
            "data source to the configuration"
        )
    if not isinstance(data, yaml.MappingNode):
        raise ConfigError(f"{source}: 'data' must be a mapping")
    current = next((v for k, v in data.value if k.value == "until"), None)
    if current is not None:
        if not isinstance(current, yaml.ScalarNode):
            raise ConfigError(f"{source}: data.until must be a date (YYYY-MM-DD) or null")
        start, end = current.start_mark.index, current.end_mark.index
        # `until:` with nothing after it: the empty value sits right after the colon
        edited = text[:start] + (value if end > start else f" {value}") + text[end:]
    elif data.flow_style:  # data: {source: folder, ...}
        close = data.end_mark.index - 1
        edited = text[:close] + (", " if data.value else "") + f"until: {value}" + text[close:]
    else:
        column = data.value[0][0].start_mark.column
        at = _line_after(text, _last_leaf(data).end_mark.index)
        # comments indented under the last key still belong to it (e.g. a commented-out option)
        while at < len(text):
            end = text.find("\n", at)
            line = text[at : len(text) if end < 0 else end + 1]
            stripped = line.lstrip(" ")
            if not (stripped.startswith("#") and len(line) - len(stripped) > column):
                break
            at += len(line)
        newline = "" if at == 0 or text[at - 1] == "\n" else "\n"
        edited = text[:at] + newline + " " * column + f"until: {value}\n" + text[at:]
    _check_only_until_changed(text, edited, until, source)
    return edited


def _line_after(text: str, index: int) -> int:
    """Where the line holding ``text[index - 1]`` ends (just after its newline)."""
    if index > 0 and text[index - 1] == "\n":
        return index
    end = text.find("\n", index)
    return len(text) if end < 0 else end + 1


def _last_leaf(node: yaml.Node) -> yaml.Node:
    """The node that ends a collection's text: its last value, all the way down."""
    while isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.value and not node.flow_style:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    return node


def _check_only_until_changed(before: str, after: str, until: date | None, source: str) -> None:
    """The edit must change ``data.until`` and nothing else (a guard on the edit above, not on the user)."""
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    changed = (new.get("data") or {}).get("until")
    for doc in (old, new):
        if isinstance(doc.get("data"), dict):
            doc["data"].pop("until", None)
    if old != new or changed != until:
        raise ConfigError(f"{source}: could not set data.until to {_text(until) or 'null'} in place")
    parse_config(after, source)  # still a valid configuration (e.g. until is a date)
