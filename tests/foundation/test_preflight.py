"""A stage that lacks a library says which one and how to get it, before it starts, and records nothing.

The missing library is made missing for real in a child process: an import hook there answers
``ModuleNotFoundError`` for it, as Python does when the package is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.foundation.conftest import make_project

HIDE_MODULES = textwrap.dedent("""\
    import importlib.abc, os, sys

    HIDDEN = set(os.environ["HIDE_MODULES"].split(","))

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
""")


def branchops_without(tmp_path: Path, hidden: list[str], *args: str) -> subprocess.CompletedProcess:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(HIDE_MODULES)
    env = {
        **os.environ,
        "HIDE_MODULES": ",".join(hidden),
        "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", "from branchops.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def approved_merge(project, target: str) -> None:
    number = project.open_mr(target)
    project.run("mr", "approve", str(number), "--as", "lead")
    project.run("mr", "merge", str(number), "--as", "lead", "--no-run")


@pytest.mark.parametrize(
    "stage, hidden, named, extra",
    [
        ("kf-pipeline", ["kfp"], "'kfp'", "branchops[kubeflow]"),
        ("build-components", ["pytest"], "'pytest'", "branchops[build]"),
    ],
)
def test_a_missing_library_is_named_before_the_stage_starts(tmp_path, stage, hidden, named, extra):
    project = make_project(tmp_path)
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    approved_merge(project, stage)
    refs_before = project.refs()

    result = branchops_without(tmp_path, hidden, "-C", str(project.path), "run", stage)

    assert result.returncode == 8, result.stdout + result.stderr
    assert named in result.stderr and extra in result.stderr, result.stderr
    assert "tests failed" not in result.stderr + result.stdout
    assert project.refs() == refs_before, "nothing may be recorded when the machine lacks a library"
    assert project.files(stage) == []


def test_with_everything_installed_the_same_merge_gets_past_the_check(tmp_path):
    """The same call with nothing hidden does not stop at the check (it reaches the stage and records)."""
    project = make_project(tmp_path)
    project.commit("ds1", "src/model.py", "VERSION = 2\n")
    approved_merge(project, "build-components")
    result = branchops_without(
        tmp_path, ["a_module_nobody_imports"], "-C", str(project.path), "run", "build-components"
    )
    assert result.returncode != 8, result.stderr
    assert "not installed" not in result.stderr
    assert project.files("build-components"), "the stage ran and wrote its record"


def test_the_tensorflow_extras_never_install_two_tensorflow_wheels():
    """Only `cpu` and `gpu` name a TensorFlow wheel, and no extra pulls in both, so `[train,serve,gpu]` (or
    `[all]`) is one TensorFlow."""
    import tomllib

    from packaging.requirements import Requirement

    extras = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def tensorflow_wheels(extra: str) -> set[str]:
        wheels: set[str] = set()
        for spec in extras[extra]:
            req = Requirement(spec)
            if req.name == "branchops":
                wheels = wheels.union(*(tensorflow_wheels(inner) for inner in req.extras))
            elif req.name.startswith("tensorflow"):
                wheels.add(req.name)
        return wheels

    assert tensorflow_wheels("cpu") == {"tensorflow-cpu"} and tensorflow_wheels("gpu") == {"tensorflow"}
    for extra in extras:
        assert len(tensorflow_wheels(extra)) <= 1, f"[{extra}] installs {sorted(tensorflow_wheels(extra))}"
        if extra not in ("cpu", "gpu", "all", "dev"):
            assert not tensorflow_wheels(extra), f"[{extra}] must leave the TensorFlow flavour to cpu or gpu"


def test_requirements_of_a_config_without_a_data_section():
    """A project may leave `data` out (its volume already holds the data): the check still answers."""
    from branchops.config import parse_config
    from branchops.preflight import requirements

    config = parse_config(
        "approvers: {build-components: [l], kf-pipeline: [l], training: [l], deploy-model: [l]}\n"
    )
    names = {need.module for need in requirements(config, "training")}
    assert "kfp" in names and "kaggle" not in names
