"""`branchops init`, then what a newcomer does with it: a merge request from ds1 into a stage branch,
approved and merged, runs the real stage and commits its record; a dry run touches nothing."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from branchops.cli import main
from tests.conftest import git


def cli(*args, expect=0):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result


def untouchable_state(project: Path) -> tuple[str, str, dict[str, bytes]]:
    """What a dry run must leave as it found it: every ref, the checkout, and branchops' local state
    (merge requests, registered pipelines, records and logs under .branchops)."""
    refs = git(project, "for-each-ref", "--format=%(refname) %(objectname)")
    checkout = git(project, "status", "--porcelain", "--ignored", "--branch")
    files = {
        str(path.relative_to(project)): path.read_bytes()
        for path in sorted(project.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(project).parts
    }
    return refs, checkout, files


def test_init_scaffolds_a_repository_whose_stage_runs_on_an_approved_merge(tmp_path):
    project = tmp_path / "proj"
    cli("init", str(project), "--approver", "lead", "--approver", "head-of-ds")
    branches = git(project, "branch", "--format=%(refname:short)").split()
    assert sorted(branches) == sorted(
        ["main", "ds1", "build-components", "kf-pipeline", "training", "deploy-model"]
    )
    for folder in ("components", "pipelines", "docker", "serving", "config", "jenkins"):
        assert (project / folder).is_dir(), folder
    config = yaml.safe_load((project / "config" / "branchops.yaml").read_text())
    assert config["approvers"]["training"] == ["lead", "head-of-ds"]
    cli("-C", str(project), "config", "validate")

    before = git(project, "rev-parse", "kf-pipeline")
    opened = json.loads(
        cli(
            "-C",
            str(project),
            "mr",
            "open",
            "--source",
            "ds1",
            "--target",
            "kf-pipeline",
            "--title",
            "pipeline",
            "--as",
            "ds1",
            "--json",
        ).output
    )
    cli("-C", str(project), "mr", "approve", str(opened["number"]), "--as", "lead")
    cli("-C", str(project), "mr", "merge", str(opened["number"]), "--as", "lead", "--no-run")
    merged = git(project, "rev-parse", "kf-pipeline")
    assert merged != before
    before_dry_run = untouchable_state(project)
    planned = cli("-C", str(project), "run", "kf-pipeline", "--dry-run").output
    assert "compile pipelines/djia_pipeline.py" in planned and "approved by lead" in planned
    assert untouchable_state(project) == before_dry_run  # the dry run moved, wrote and recorded nothing

    done = json.loads(cli("-C", str(project), "run", "kf-pipeline", "--json").output)[0]
    assert done["status"] == "succeeded" and done["outputs"]["spec_hash"]
    record = json.loads(git(project, "show", f"kf-pipeline:{done['record_path']}"))
    assert record["outputs"]["uploaded"] is True and record["merge_request"]["approved_by"] == ["lead"]
    assert "pipeline.yaml" in record["artifacts"]
    # run again on the same merge: nothing new
    again = json.loads(cli("-C", str(project), "run", "kf-pipeline", "--commit", merged, "--json").output)[0]
    assert again["status"] == "skipped" and "already ran successfully" in again["message"]


def test_init_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    result = cli("init", str(tmp_path / "x"), expect=2)
    assert "not empty" in result.output and (tmp_path / "x" / "file").read_text() == "keep me"
