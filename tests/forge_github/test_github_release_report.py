"""The training report as the release pull request carries it on GitHub: its plots must render there.

The pull request is branchops/release-<model> -> deploy-model; the plots are committed with the run's
record on the training branch. A relative link resolves against neither branch of the pull request, so
GitHub shows a broken image: the links are absolute, on the repository's web address, served raw.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

from branchops.config import parse_config
from branchops.forge.base import MergeRequest
from branchops.records import ExperimentEntry, TrainingLineage, record_dir
from branchops.runplan import PLOTS_DIR
from branchops.stages.training import RELEASE_BRANCH_PREFIX, report_markdown
from tests.jenkins.conftest import REPO_ROOT

from .fake_github import FakeGitHub

RUN_ID = "20260103T000000Z-c3c3c3c3c3c3"


def training_context(forge) -> SimpleNamespace:
    config = parse_config((REPO_ROOT / "config" / "branchops.yaml").read_text(encoding="utf-8"))
    merged = MergeRequest(
        number=3,
        title="Wider network",
        source="ds1",
        target="training",
        author="ds1",
        state="merged",
        head_sha="a1" * 20,
        merged_by="lead",
    )
    return SimpleNamespace(
        config=config,
        source_commit="c3" * 20,
        merge_request=merged,
        run_id=RUN_ID,
        branch="training",
        record_dir=record_dir("training", RUN_ID),
        artifacts={f"wide/{PLOTS_DIR}/roc curve.png": b"png", f"wide/{PLOTS_DIR}/calibration.png": b"png"},
        forge=forge,
    )


def test_release_pull_request_links_its_plots_absolutely(fake_github: FakeGitHub, make_forge) -> None:
    forge = make_forge()
    ctx = training_context(forge)
    best = ExperimentEntry(experiment="wide", state="SUCCEEDED", metrics={"roc_auc": 0.64})
    report = report_markdown(ctx, [best], best, None, [], TrainingLineage(run_id=RUN_ID), False)

    mr, _ = forge.open_merge_request(f"{RELEASE_BRANCH_PREFIX}djia", "deploy-model", "Deploy djia v2", report)

    body = fake_github.pulls[mr.number].body
    images = re.findall(r"!\[([^\]]*)\]\(([^)]*)\)", body)
    at = f"https://github.com/octo/hello/blob/training/records/training/{RUN_ID}/wide/{PLOTS_DIR}"
    assert images == [
        ("calibration.png", f"{at}/calibration.png?raw=true"),
        ("roc curve.png", f"{at}/roc%20curve.png?raw=true"),
    ]


def test_the_setup_guide_describes_the_release_pull_request_the_code_opens() -> None:
    from branchops.config import parse_config

    guide = (REPO_ROOT / "docs" / "setup.md").read_text(encoding="utf-8")
    model = parse_config(
        (REPO_ROOT / "config" / "branchops.yaml").read_text(encoding="utf-8")
    ).serving.model_name
    assert f"`{RELEASE_BRANCH_PREFIX}{model}` → `deploy-model`" in guide
    assert f"`{RELEASE_BRANCH_PREFIX}<serving.model_name>`" in guide
    # no pull request from the training branch itself: the code never opens one
    assert not re.search(r"training\s*(→|->)\s*deploy-model", guide)
