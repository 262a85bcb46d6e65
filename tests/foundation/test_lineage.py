"""lineage: a model version's deployments are the deploy-model runs whose release was that version (read
from the typed record, not found by its digits anywhere in the record), and a training run is found by
its model version or a unique prefix of its run id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from branchops import gitops
from branchops.errors import BadArgument, NotFound
from branchops.lineage import find_training_run
from tests.foundation import record_history as history
from tests.foundation.conftest import make_project


def test_lineage_lists_the_deployments_of_the_version_and_no_others(tmp_path: Path) -> None:
    """Deploy run 2 rolled serving from version 1 to 2: its record names version 1 (as ``before``), but it
    deployed version 2. Run 3 deployed version 1 again (a rollback) and is one of version 1's deployments."""
    project = make_project(tmp_path)
    history.fill_history(project.path, 3)
    version_1 = history.FIRST_VERSION + 1
    history.add_records(
        project.path,
        "deploy-model",
        "deploy-model",
        [history.deployment(3, version=version_1, before=history.FIRST_VERSION + 2)],
    )

    chain = json.loads(project.run("lineage", str(version_1), "--json").output)
    assert [d["run_id"] for d in chain["deployments"]] == [history.run_id(1), history.run_id(3)]
    assert chain["training"]["run_id"] == history.run_id(1)
    assert chain["pipeline"]["uploaded_by"]["run_id"] == history.run_id(1)
    assert chain["images"]["built_by"]["run_id"] == history.run_id(1)
    text = project.run("lineage", str(version_1)).output
    assert text.count("deployed         succeeded by deploy-model run") == 2


def test_a_training_run_is_found_by_version_or_by_a_unique_prefix(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    history.fill_history(project.path, 40)  # more than one batch of newest-first reads
    repo = gitops.open_repo(project.path)
    tip = project.tip("training")

    assert find_training_run(repo, tip, str(history.FIRST_VERSION)).run_id == history.run_id(0)
    assert find_training_run(repo, tip, str(history.FIRST_VERSION + 39)).run_id == history.run_id(39)
    assert find_training_run(repo, tip, history.run_id(17)[:20]).run_id == history.run_id(17)
    with pytest.raises(BadArgument, match="more than one training run matches '20260101T'"):
        find_training_run(repo, tip, "20260101T")
    unknown = str(history.FIRST_VERSION - 1)
    with pytest.raises(NotFound, match=f"no training run produced model version {unknown}"):
        find_training_run(repo, tip, unknown)


def test_the_upload_and_the_build_named_are_those_the_run_used(tmp_path: Path) -> None:
    """A kf-pipeline or build-components run after the training run, on the same sources (same spec, same
    image digests), did not upload or build what the training run used: the newest one before it did."""
    project = make_project(tmp_path)
    history.fill_history(project.path, 3)
    later = history.run_id(5)
    history.add_records(
        project.path, "kf-pipeline", "kf-pipeline", [history.pipeline_upload(1) | {"run_id": later}]
    )
    history.add_records(
        project.path, "build-components", "build-components", [history.build(1) | {"run_id": later}]
    )

    chain = json.loads(project.run("lineage", str(history.FIRST_VERSION + 1), "--json").output)
    assert chain["pipeline"]["uploaded_by"]["run_id"] == history.run_id(1)
    assert chain["images"]["built_by"]["run_id"] == history.run_id(1)
