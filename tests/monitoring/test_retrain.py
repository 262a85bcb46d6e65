"""The retraining merge request (branchops.monitoring.retrain) with the local forge, on real git: one bot
merge request into training that moves only the data window, updated rather than duplicated while it is
open, nothing written on a dry run, a new one after a rejection, and the approval gate in front of the
retrain it proposes."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from branchops import gate, gitops
from branchops.errors import ConfigError, MergeError
from branchops.forge.local import LocalForge
from branchops.monitoring.retrain import propose_retrain, set_data_until
from branchops.stages import REGISTRY
from tests.conftest import git
from tests.foundation.conftest import STAGES, make_project
from tests.monitoring import window_stage

CONFIG = """\
# a retraining test project
approvers:
  build-components: [lead]
  kf-pipeline: [lead]
  training: [lead, head-of-ds]
  deploy-model: [head-of-ds]

# where a new data volume's raw files come from
data:
  source: script
  script: data/make.py       # writes the raw files
  until: 2016-01-01          # the window's last day
  # files: "*.csv"

notifications:
  - kind: log_file
  - kind: forge
"""
BRANCH = "branchops/retrain"
CONFIG_FILE = "config/branchops.yaml"
JUNE, SEPTEMBER = date(2016, 6, 30), date(2016, 9, 30)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A project whose training stage records the data window it ran on instead of training."""
    from tests.foundation import recording_stage

    for stage in STAGES:
        monkeypatch.setitem(REGISTRY, stage, window_stage if stage == "training" else recording_stage)
    monkeypatch.setenv("BRANCHOPS_TEST_STAGE_LOG", str(tmp_path / "stage-calls.log"))
    return make_project(tmp_path, CONFIG)


@pytest.fixture
def stage_calls(tmp_path: Path):
    def read() -> list[str]:
        path = tmp_path / "stage-calls.log"
        return path.read_text().splitlines() if path.exists() else []

    return read


def propose(
    project, until: date | None = JUNE, evidence: str = "| feature | psi |\n|---|---|\n| x | 0.4 |", **kw
):
    return propose_retrain(
        project.path,
        reason=kw.pop("reason", "drift on 2 consecutive checks (psi 0.41 on 'x')"),
        evidence_markdown=evidence,
        data_until=until,
        **kw,
    )


def forge(project) -> LocalForge:
    return LocalForge(gitops.open_repo(project.path))


def open_proposals(project) -> list[int]:
    return [mr.number for mr in forge(project).list(state="open", target="training") if mr.source == BRANCH]


def notifications(project) -> list[dict]:
    path = project.path / ".branchops" / "notifications.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def until_at(project, rev: str) -> str:
    return next(
        line.split("#")[0].split(":", 1)[1].strip()
        for line in git(project.path, "show", f"{rev}:{CONFIG_FILE}").splitlines()
        if line.strip().startswith("until:")
    )


def test_a_proposal_is_one_bot_merge_request_into_training_that_moves_only_the_data_window(project):
    training_tip = project.tip("training")
    proposal = propose(project)
    assert (proposal.action, proposal.branch, proposal.data_until) == ("opened", BRANCH, "2016-06-30")
    mr = forge(project).get(proposal.number)
    assert (mr.source, mr.target, mr.author, mr.state) == (BRANCH, "training", "branchops-bot", "open")
    assert mr.head_sha == proposal.commit == project.tip(BRANCH)
    assert "drift on 2 consecutive checks" in mr.body and "| x | 0.4 |" in mr.body
    assert "`2016-01-01` to `2016-06-30`" in mr.body
    # one commit on training's tip, changing one line of the configuration: comments and layout kept
    assert git(project.path, "rev-parse", f"{BRANCH}^") == training_tip
    diff = git(project.path, "diff", "--unified=0", "training", BRANCH)
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == [
        "-  until: 2016-01-01          # the window's last day",
        "+  until: 2016-06-30          # the window's last day",
    ]
    # the bot's commit, but a change to review: no bot trailer, and never taken for a record commit
    author, message = git(project.path, "log", "-1", "--format=%an <%ae>%n%B", BRANCH).split("\n", 1)
    assert author == "branchops-bot <branchops-bot@users.noreply.local>"
    assert "Branchops-Bot" not in message and "drift on 2 consecutive checks" in message
    assert not gate.is_own_commit(gitops.open_repo(project.path), proposal.commit, "Branchops-Bot")
    [event] = notifications(project)
    assert (event["kind"], event["merge_request"]) == ("proposed", proposal.number)
    assert event["message"].startswith("retraining proposed: drift on 2 consecutive checks")


def test_a_proposal_never_shrinks_the_window_training_already_has(project):
    # traffic replayed from days before training's window (its outcomes end in 2009) must not propose
    # training on less data than the model in production had
    proposal = propose(project, until=date(2009, 1, 23))
    assert (proposal.action, proposal.data_until) == ("opened", "2016-01-01")
    assert git(project.path, "diff", "training", BRANCH) == ""


def test_a_proposal_keeps_all_the_data_when_training_already_uses_all_of_it(tmp_path):
    # no data.until on training: it trains on all the data there is, so a day taken from the outcomes
    # would be a smaller window, not a refresh
    unbounded = make_project(
        tmp_path, CONFIG.replace("  until: 2016-01-01          # the window's last day\n", "")
    )
    proposal = propose(unbounded, until=JUNE)
    assert (proposal.action, proposal.data_until) == ("opened", None)
    assert until_at(unbounded, BRANCH) == "null"


def test_commits_of_others_on_the_open_proposal_are_never_built_on(project):
    # the bot authors the merge request, so no approver is its author: a commit someone pushed onto its
    # branch would be approved under a description that says only the data window moves
    first = propose(project)
    git(project.path, "checkout", "-q", BRANCH)
    (project.path / "src" / "model.py").write_text("VERSION = 2  # not the data window\n")
    git(project.path, "commit", "-q", "-am", "sneak a change in", "--author", "lead <lead@users.local>")
    pushed = project.tip(BRANCH)
    git(project.path, "checkout", "-q", "ds1")
    with pytest.raises(MergeError, match=rf"!{first.number} has commits .* by lead"):
        propose(project, until=SEPTEMBER)
    assert project.tip(BRANCH) == pushed and len(forge(project).comments(first.number)) == 0


def test_a_window_commit_is_never_taken_for_the_bots_own_even_with_the_trailer(project):
    """Were the proposal's commit ever marked with the bot trailer (or a person copied it), it changes
    config/, so the gate still counts it as a change to approve, not as a record commit."""
    proposal = propose(project)
    repo = gitops.open_repo(project.path)
    marked = gitops.build_commit(
        repo,
        project.tip("training"),
        {CONFIG_FILE: git(project.path, "show", f"{proposal.commit}:{CONFIG_FILE}").encode() + b"\n"},
        gitops.bot_message("Retrain on data until 2016-06-30", "", "Branchops-Bot"),
        gitops.Identity("branchops-bot", "branchops-bot@users.noreply.local"),
        overwrite=True,
    )
    assert gitops.trailer_marks(repo.commit(marked).message, "Branchops-Bot")
    assert not gate.is_own_commit(repo, marked, "Branchops-Bot")


def test_repeated_proposals_keep_one_open_merge_request_and_add_a_commit_only_when_the_window_moves(project):
    first = propose(project)
    assert open_proposals(project) == [first.number]

    # a later check, same window, newer evidence: the description is replaced, no commit, a comment says so
    again = propose(project, evidence="| feature | psi |\n|---|---|\n| x | 0.55 |")
    assert (again.action, again.number, again.commit) == ("updated", first.number, first.commit)
    assert project.tip(BRANCH) == first.commit
    mr = forge(project).get(first.number)
    assert "| x | 0.55 |" in mr.body and "| x | 0.4 |" not in mr.body
    [comment] = forge(project).comments(first.number)
    assert "The data window is unchanged (`data.until: 2016-06-30`)" in comment["body"]

    # nothing new at all: nothing changes, nobody is told again
    same = propose(project, evidence="| feature | psi |\n|---|---|\n| x | 0.55 |")
    assert (same.action, same.number, same.commit) == ("unchanged", first.number, first.commit)
    assert len(forge(project).comments(first.number)) == 1 and len(notifications(project)) == 2

    # the window moved: one new commit on top of the reviewed one (the branch is never rewritten)
    moved = propose(project, until=SEPTEMBER)
    assert (moved.action, moved.number) == ("updated", first.number)
    assert git(project.path, "rev-parse", f"{BRANCH}^") == first.commit
    assert until_at(project, BRANCH) == "2016-09-30" and until_at(project, "training") == "2016-01-01"
    assert forge(project).get(first.number).head_sha == moved.commit == project.tip(BRANCH)
    assert (
        "`data.until` from `2016-06-30` to `2016-09-30`" in forge(project).comments(first.number)[-1]["body"]
    )
    assert "`2016-01-01` to `2016-09-30`" in forge(project).get(first.number).body
    assert open_proposals(project) == [first.number]
    assert [e["message"].split(":")[0] for e in notifications(project)] == [
        "retraining proposed",
        "retraining proposal updated",
        "retraining proposal updated",
    ]


def state_files(project) -> list[str]:
    """The files of the local state (merge requests, comments, notifications, statuses)."""
    return sorted(str(p) for p in (project.path / ".branchops").rglob("*") if p.is_file())


def test_a_dry_run_writes_nothing(project):
    before = (project.refs(), state_files(project))
    dry = propose(project, dry_run=True)
    assert (dry.action, dry.number, dry.commit) == ("would open", None, None)
    assert gitops.branch_tip(gitops.open_repo(project.path), BRANCH) is None
    assert open_proposals(project) == [] and notifications(project) == []
    assert (project.refs(), state_files(project)) == before

    opened = propose(project)
    mr, told = forge(project).get(opened.number), notifications(project)
    dry = propose(project, until=SEPTEMBER, evidence="newer", dry_run=True)
    assert (dry.action, dry.number, dry.commit) == ("would update", opened.number, opened.commit)
    assert project.tip(BRANCH) == opened.commit and forge(project).get(opened.number) == mr
    assert forge(project).comments(opened.number) == [] and notifications(project) == told


def test_a_closed_proposal_leads_to_a_new_merge_request_from_the_training_tip(project):
    rejected = propose(project)
    forge(project).close(rejected.number)
    project.commit("training", "src/model.py", "VERSION = 2\n", message="training moved on")
    training_tip = project.tip("training")

    fresh = propose(project, until=SEPTEMBER)
    assert fresh.action == "opened" and fresh.number != rejected.number
    assert open_proposals(project) == [fresh.number]
    # the branch starts again from training: the rejected commit is not in the new proposal
    assert git(project.path, "rev-parse", f"{BRANCH}^") == training_tip
    assert not gitops.is_ancestor(gitops.open_repo(project.path), rejected.commit, fresh.commit)
    old = forge(project).get(rejected.number)
    assert (old.state, old.head_sha) == ("closed", rejected.commit)


def test_merging_the_proposal_without_approval_runs_nothing(project, stage_calls):
    proposal = propose(project)
    before = project.files("training")
    result = project.run("mr", "merge", str(proposal.number), "--as", "lead", expect=None)
    assert result.exit_code == 4 and "nobody approved it" in result.output
    assert stage_calls() == [] and project.files("training") == before


def test_an_approved_proposal_retrains_on_the_refreshed_window(project, stage_calls):
    proposal = propose(project)
    project.run("mr", "approve", str(proposal.number), "--as", "head-of-ds")
    result = project.run("mr", "merge", str(proposal.number), "--as", "lead")
    assert "training on training: succeeded" in result.output
    merge = git(project.path, "rev-parse", "training^")  # under the bot's record commit
    assert stage_calls() == [f"training {merge} until=2016-06-30"]
    record = json.loads(
        git(
            project.path,
            "show",
            f"training:{next(f for f in project.files('training') if f.endswith('record.json'))}",
        )
    )
    assert record["merge_request"]["author"] == "branchops-bot"
    assert record["merge_request"]["approved_by"] == ["head-of-ds"]


def test_an_approval_given_before_the_window_moved_does_not_count(project, stage_calls):
    proposal = propose(project)
    project.run("mr", "approve", str(proposal.number), "--as", "head-of-ds")
    propose(project, until=SEPTEMBER)  # a later check moves the window: a new commit to approve
    result = project.run("mr", "merge", str(proposal.number), "--as", "lead", expect=None)
    assert result.exit_code == 4 and "before the last push" in result.output
    assert stage_calls() == []


# -- the in-place edit of config/branchops.yaml ----------------------------------------------------------

APPROVERS = "approvers: {build-components: [a], kf-pipeline: [a], training: [a], deploy-model: [a]}\n"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # a value replaced where it stands, its comment kept
        (
            "data:\n  source: script\n  script: x.py\n  until: '2015-01-01'  # cut-off\n",
            "data:\n  source: script\n  script: x.py\n  until: 2016-06-30  # cut-off\n",
        ),
        (
            "data:\n  source: script\n  script: x.py\n  until:\n",
            "data:\n  source: script\n  script: x.py\n  until: 2016-06-30\n",
        ),
        # a missing key added last, after the comments indented under the key before it
        (
            "data:\n  source: kaggle\n  kaggle:\n    dataset: a/b\n    # secret: s\n"
            "\n# next\nnotifications: []\n",
            "data:\n  source: kaggle\n  kaggle:\n    dataset: a/b\n    # secret: s\n  until: 2016-06-30\n"
            "\n# next\nnotifications: []\n",
        ),
        (
            "data:\n  source: script\n  script: |\n    x.py\n",
            "data:\n  source: script\n  script: |\n    x.py\n  until: 2016-06-30\n",
        ),
        (
            "data:\n  source: script\n  script: x.py",
            "data:\n  source: script\n  script: x.py\n  until: 2016-06-30\n",
        ),
        (
            "data: {source: script, script: x.py}\n",
            "data: {source: script, script: x.py, until: 2016-06-30}\n",
        ),
    ],
)
def test_set_data_until_changes_that_value_and_nothing_else(before: str, after: str) -> None:
    assert set_data_until(APPROVERS + before, JUNE) == APPROVERS + after


def test_set_data_until_without_a_data_section_says_there_is_no_window_to_move() -> None:
    with pytest.raises(ConfigError, match="no 'data' section"):
        set_data_until(APPROVERS, JUNE)
    assert set_data_until(APPROVERS, None) == APPROVERS
