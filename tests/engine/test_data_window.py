"""The data window (``data.until``) reaches the pipelines that declare the ``data_until`` input, and the
reference pipeline hands it to its features step (which drops every later price: components/features)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from branchops.config import load_config, parse_config
from branchops.engine.compile import compile_pipeline
from branchops.errors import ConfigError
from branchops.runplan import Paths, data_until_input, pipeline_params
from branchops.storage.base import Volume

REPO_ROOT = Path(__file__).resolve().parents[2]
MINIMAL = REPO_ROOT / "src" / "branchops" / "templates" / "minimal"
PATHS = Paths("/d/raw", "/d", "/m/runs/x", "/m/runs/x/export", lambda name: None)
VOLUMES = (Volume("djia-data", "/d", None), Volume("djia-models", "/m", None))


@pytest.fixture(scope="module")
def reference_spec() -> bytes:
    return compile_pipeline(REPO_ROOT, "pipelines/djia_pipeline.py", None, None).spec


def config_with_until(until: str | None, data: bool = True):
    document = yaml.safe_load((REPO_ROOT / "config" / "branchops.yaml").read_text())
    if not data:
        document.pop("data")
    elif until is not None:
        document["data"]["until"] = until
    return parse_config(yaml.safe_dump(document), "config/branchops.yaml")


def test_data_until_input_is_the_configured_day_or_empty():
    assert data_until_input(config_with_until("2015-12-31")) == "2015-12-31"
    assert data_until_input(config_with_until(None)) == ""  # the reference config leaves the window open
    assert data_until_input(config_with_until(None, data=False)) == ""
    with pytest.raises(ConfigError, match="until"):
        config_with_until("2015-02-30")


def test_the_reference_pipeline_gets_the_window_and_its_features_step_uses_it(reference_spec):
    params = pipeline_params(
        reference_spec, PATHS, 3, "c" * 40, None, *VOLUMES, {"target": "AAPL"}, "2015-12-31"
    )
    assert params["data_until"] == "2015-12-31" and params["target"] == "AAPL"
    # an open window is the empty string, which the pipeline declares as its default
    assert pipeline_params(reference_spec, PATHS, 3, "c" * 40, None, *VOLUMES, {})["data_until"] == ""

    document = next(iter(yaml.safe_load_all(reference_spec)))
    declared = document["root"]["inputDefinitions"]["parameters"]["data_until"]
    assert declared["parameterType"] == "STRING" and declared.get("defaultValue") == ""
    tasks = document["root"]["dag"]["tasks"]
    takes_window = sorted(
        name
        for name, task in tasks.items()
        if task.get("inputs", {}).get("parameters", {}).get("data_until", {}).get("componentInputParameter")
        == "data_until"
    )
    assert takes_window == ["features"]


def test_a_pipeline_that_does_not_declare_the_window_runs_without_it():
    spec = compile_pipeline(MINIMAL, "pipelines/pipeline.py", None, None, {}, {}).spec
    params = pipeline_params(spec, PATHS, 1, "c" * 40, None, *VOLUMES, {}, "2015-12-31")
    assert "data_until" not in params


def test_an_experiment_may_not_set_the_window_itself():
    document = yaml.safe_load((REPO_ROOT / "config" / "branchops.yaml").read_text())
    document["training"]["experiments"][0]["params"]["data_until"] = "2015-12-31"
    with pytest.raises(ConfigError, match="data_until: set by branchops for every run"):
        parse_config(yaml.safe_dump(document), "config/branchops.yaml")
    assert load_config(REPO_ROOT).data.until is None
