"""The JSON documents of ``status``, ``run`` and ``lineage`` are what docs/cli.md says: real output is
validated against the schemas written there, which list every key, so the documentation cannot fall behind."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from tests.conftest import REPO_ROOT
from tests.foundation import record_history as history
from tests.foundation.conftest import Project


def documented_schemas() -> dict[str, dict]:
    """The ```json <command> blocks of docs/cli.md."""
    text = (REPO_ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    return {
        name: json.loads(body) for name, body in re.findall(r"^```json (\w+)\n(.*?)^```", text, re.M | re.S)
    }


def check(command: str, document) -> None:
    schema = documented_schemas()[command]
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(document)


def approved_merge(project: Project, content: str) -> int:
    project.commit("ds1", "src/model.py", content)
    number = project.open_mr("build-components")
    project.run("mr", "approve", str(number), "--as", "lead")
    project.run("mr", "merge", str(number), "--as", "lead", "--no-run")
    return number


def test_the_schemas_are_documented():
    # exp_show, metrics_diff, plots_diff and tensorboard: checked in test_experiments.py and test_compare.py
    assert set(documented_schemas()) == {
        "status",
        "run",
        "lineage",
        "exp_show",
        "metrics_diff",
        "plots_diff",
        "tensorboard",
        "monitor",  # checked in tests/monitoring/test_monitor.py
    }


def test_status_before_and_after_runs(project: Project):
    check("status", json.loads(project.run("status", "--json").stdout))
    history.fill_history(project.path, 2)
    rows = json.loads(project.run("status", "--json").stdout)
    assert all("last_run" in row for row in rows)
    check("status", rows)


def test_run_reports_of_every_kind(project: Project):
    approved_merge(project, "VERSION = 2\n")
    planned = json.loads(project.run("run", "build-components", "--dry-run", "--json").stdout)
    succeeded = json.loads(project.run("run", "build-components", "--json").stdout)
    skipped = json.loads(project.run("run", "build-components", "--json").stdout)
    approved_merge(project, "VERSION = 3\n")
    project.commit("ds1", "src/FAIL", "fail")
    approved_merge(project, "VERSION = 4\n")
    failed = json.loads(project.run("run", "build-components", "--json", expect=1).stdout)
    statuses = [report["status"] for report in planned + succeeded + skipped + failed]
    assert statuses == ["planned", "succeeded", "skipped", "failed"]
    for reports in (planned, succeeded, skipped, failed):
        check("run", reports)


def test_lineage(project: Project):
    history.fill_history(project.path, 3)
    check("lineage", json.loads(project.run("lineage", str(history.FIRST_VERSION + 1), "--json").stdout))


@pytest.mark.parametrize(
    "command, add_key",
    [
        ("status", lambda doc: doc[0].update(undocumented=1)),
        ("run", lambda doc: doc[0].update(undocumented=1)),
        ("lineage", lambda doc: doc.update(undocumented=1)),
        ("lineage", lambda doc: doc["training"].update(undocumented=1)),
        ("lineage", lambda doc: doc["deployments"][0].update(undocumented=1)),
    ],
)
def test_a_key_the_documentation_does_not_list_is_an_error(project: Project, command, add_key):
    history.fill_history(project.path, 2)
    args = {
        "status": ["status"],
        "run": ["run", "build-components", "--dry-run"],
        "lineage": ["lineage", str(history.FIRST_VERSION + 1)],
    }[command]
    document = json.loads(project.run(*args, "--json", expect=None).stdout)
    check(command, document)
    add_key(document)
    with pytest.raises(jsonschema.ValidationError, match="undocumented"):
        check(command, document)
