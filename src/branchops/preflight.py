"""What a stage needs installed on this machine, checked before the stage starts.

A stage that dies half-way with ``No module named 'kfp'`` leaves a failed record that blames the work,
not the machine. So before the gate and before anything is written, the runner asks this module what the
stage needs under the configured backends, and a missing library or program ends the command with
:class:`~branchops.errors.MissingRequirement`: which one, why the stage needs it and how to install it.
Nothing is imported here: ``find_spec`` only looks, so the check costs milliseconds.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

from branchops.errors import MissingRequirement

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig


@dataclass(frozen=True)
class Requirement:
    """One library (``module``) or program (``program``) a stage needs, and how a user gets it."""

    why: str
    install: str
    module: str | None = None
    program: str | None = None

    @property
    def name(self) -> str:
        return f"the Python module '{self.module}'" if self.module else f"the program '{self.program}'"

    def satisfied(self) -> bool:
        if self.program:
            return shutil.which(self.program) is not None
        try:
            return importlib.util.find_spec(self.module) is not None  # type: ignore[arg-type]
        except (ImportError, ValueError):  # a parent package missing, or an import hook that says no
            return False


def _extra(module: str, extra: str, why: str) -> Requirement:
    return Requirement(why=why, install=f"pip install 'branchops[{extra}]'", module=module)


def _tensorflow(why: str) -> Requirement:
    return Requirement(
        why=why,
        module="tensorflow",
        install="pip install 'branchops[cpu]' (or 'branchops[gpu]' on a GPU machine)",
    )


def _kubernetes(why: str) -> list[Requirement]:
    return [
        _extra("kubernetes", "kubernetes", why),
        _extra("kubernetes_validate", "kubernetes", f"{why} (every object is validated before it is sent)"),
        _extra("jsonschema", "kubernetes", f"{why} (CSI snapshot objects are validated against their CRD)"),
    ]


def requirements(config: BranchopsConfig, stage: str) -> list[Requirement]:
    """What ``stage`` needs under ``config``'s backends (the gate's forge included)."""
    needs: list[Requirement] = []
    if config.forge.backend == "github":
        needs.append(_extra("github", "github", "forge.backend is 'github' (the gate reads pull requests)"))
    if stage == "build-components":
        needs.append(_extra("pytest", "build", "build-components runs each component's tests with pytest"))
    elif stage in ("kf-pipeline", "training"):
        needs.append(
            _extra("kfp", "kubeflow", f"{stage} compiles the pipeline with the Kubeflow Pipelines SDK")
        )
        if config.kubeflow.backend == "local":
            needs.append(_extra("docker", "kubeflow", "Kubeflow's local runner imports the docker SDK"))
    # What a project's own components import (pandas, TensorFlow, ...) is the project's to install: a
    # missing one fails that step with its ModuleNotFoundError in the run's record. Here: the toolkit's own.
    if stage == "training":
        if config.storage.backend == "trident":
            needs += _kubernetes("storage.backend is 'trident'")
    if stage == "deploy-model":
        if config.serving.backend == "local":
            why = "serving.backend is 'local' (the model server runs here)"
            needs += [_extra("flask", "serve", why), _extra("waitress", "serve", why), _tensorflow(why)]
        else:
            needs += _kubernetes("serving.backend is 'kubernetes'")
    return needs


def check(config: BranchopsConfig, stages: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`MissingRequirement` naming everything ``stages`` need that is not installed."""
    missing: dict[str, Requirement] = {}  # by name: a library two stages need is named once
    for stage in stages:
        for need in requirements(config, stage):
            if need.name not in missing and not need.satisfied():
                missing[need.name] = need
    if not missing:
        return
    lines = [f"{', '.join(stages)} cannot run on this machine: something it needs is not installed."]
    lines += [f"  - {name}: {need.why}. Install it with: {need.install}" for name, need in missing.items()]
    lines.append("Nothing was run and nothing was recorded. (scripts/setup.sh installs every extra.)")
    raise MissingRequirement("\n".join(lines))
