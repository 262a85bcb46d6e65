"""The plan of one pipeline run, shared by the training stage and ``branchops reproduce``.

A project's pipeline (``kubeflow.pipeline_module``) defines ``build_pipeline(images, gpu, mounts)`` (and
may take ``secrets``, the Kubernetes Secrets to bind to its steps: see :func:`step_secrets`) and
declares the inputs it wants. branchops provides the toolkit inputs (``config.TOOLKIT_INPUTS``: where the
raw data is, the data and work directories, where to export the model, the model version and the commit,
the volumes' names, the data window's last day) to those that the pipeline declares, and the
experiment's ``params`` to the rest.

What a run leaves in its work directory (``work_dir``) is the contract back: ``metrics.json`` (a JSON
object holding at least the metrics ``training.metrics`` names), ``plots/*.png`` (committed beside the
record) and the exported SavedModel under ``export_base/<version>``. The work directory is a folder of
the model volume, and branchops reads it back through the storage port (``Storage.read_file``), so the
same code reads a local directory and a PVC that only pods can mount (docs/architecture.md, training).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from branchops.errors import ConfigError, StageFailed

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig
    from branchops.engine.base import CompiledPipeline
    from branchops.storage.base import Storage, Volume

METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class Paths:
    """Where a run reads and writes, as the pipeline's steps see it (local dirs, or PVC mount paths)."""

    source_dir: str
    data_dir: str
    work_dir: str
    export_base: str
    # A file of the work dir, by name relative to it, read through the storage port; None if absent.
    read_work_file: Callable[[str], bytes | None]


def component_images(config: BranchopsConfig, workspace: Path) -> dict[str, str]:
    """Each component's image pinned by digest, looked up in the registry by its content tag; empty when
    no registry is configured (the local engine runs components as processes, not images)."""
    if not config.registry.url:
        if config.kubeflow.backend == "kubeflow":
            raise ConfigError(
                "kubeflow.backend 'kubeflow' runs component images, so it needs registry.url: "
                "configure the registry and merge into build-components first"
            )
        return {}
    from branchops.images import image_digests  # the registry client is only needed with a registry

    return image_digests(Path(workspace), config.registry)


def compile_workspace(config: BranchopsConfig, workspace: Path) -> tuple[CompiledPipeline, dict[str, str]]:
    """Compile the configured pipeline module of ``workspace`` exactly as kf-pipeline uploads it: the
    same commit and configuration give the same spec hash (what training and reproduce look up)."""
    from branchops.engine.compile import compile_pipeline
    from branchops.storage.base import STEP_MOUNTS

    images = component_images(config, workspace)
    compiled = compile_pipeline(
        Path(workspace),
        config.kubeflow.pipeline_module,
        images or None,
        config.training.gpu,
        dict(STEP_MOUNTS),
        step_secrets(config),
    )
    return compiled, images


def step_secrets(config: BranchopsConfig) -> dict[str, dict[str, Any]]:
    """The Kubernetes Secrets the pipeline binds to its steps, by purpose: ``{"kaggle": {"name": ...,
    "env": {secret key: variable}}}`` when the data comes from Kaggle and ``data.kaggle.secret`` names one.
    Part of the compiled spec (and so of its hash): kf-pipeline and training compile the same."""
    data = config.data
    if data is None or data.source != "kaggle" or data.kaggle is None or not data.kaggle.secret:
        return {}
    return {"kaggle": {"name": data.kaggle.secret, "env": dict(data.kaggle.secret_keys)}}


def run_paths(storage: Storage, data_volume: Volume, model_volume: Volume, folder: str) -> Paths:
    """The directories of a run whose work goes to ``folder`` of the model volume (``runs/<name>``)."""
    data, models = storage.step_dir(data_volume, "data"), storage.step_dir(model_volume, "models")
    work = f"{models.rstrip('/')}/{folder}"
    return Paths(
        f"{data.rstrip('/')}/raw",
        data,
        work,
        f"{work}/export",
        lambda name: storage.read_file(model_volume, f"{folder}/{name}"),
    )


def data_until_input(config: BranchopsConfig) -> str:
    """The ``data_until`` toolkit input: the data window's last day (``data.until``) as YYYY-MM-DD, or ""
    when the window is open (no data section, or no ``until``)."""
    until = config.data.until if config.data is not None else None
    return until.isoformat() if until else ""


def pipeline_params(
    spec: bytes | dict[str, Any],
    paths: Paths,
    version: int,
    commit: str,
    kaggle: str | None,
    data_volume: Volume,
    model_volume: Volume,
    params: dict[str, Any],
    data_until: str = "",
) -> dict[str, Any]:
    """One run's parameters: the toolkit inputs the pipeline declares, then the experiment's ``params``;
    checked against the compiled pipeline (unknown names, missing required ones, wrong types).
    ``data_until`` is the data window's last day (see :func:`data_until_input`), "" for all the data."""
    from branchops.engine.base import spec_parameters, validate_params

    toolkit = {
        "source_dir": paths.source_dir,
        "data_dir": paths.data_dir,
        "work_dir": paths.work_dir,
        "export_base": paths.export_base,
        "version": version,
        "commit": commit,
        "kaggle_dataset": kaggle or "",
        "data_pvc": data_volume.name,
        "model_pvc": model_volume.name,
        "data_until": data_until,
    }
    declared = spec_parameters(spec)
    merged = {name: value for name, value in toolkit.items() if name in declared} | dict(params)
    validate_params(spec, merged)
    return merged


def read_metrics(outputs: dict[str, Any], paths: Paths, names: list[str]) -> dict[str, Any]:
    """The run's metrics: ``metrics.json`` of its work dir, read through the storage port (the Kubeflow
    API returns only the steps' states, never the values they returned), else what the engine returned as
    the run's ``metrics`` output. Every metric in ``names`` must be a number."""
    metrics = outputs.get("metrics") if isinstance(outputs.get("metrics"), dict) else None
    content = paths.read_work_file(METRICS_FILE)
    if content is not None:
        try:
            metrics = json.loads(content)
        except ValueError as exc:
            raise StageFailed(f"the run's {METRICS_FILE} in {paths.work_dir} is not JSON: {exc}") from None
    if not metrics or not isinstance(metrics, dict):
        raise StageFailed(f"the run finished but reported no metrics (no {METRICS_FILE} in {paths.work_dir})")
    missing = [
        n for n in names if not isinstance(metrics.get(n), (int, float)) or isinstance(metrics.get(n), bool)
    ]
    if missing:
        raise StageFailed(
            f"the run's {METRICS_FILE} lacks the metrics training.metrics names: {', '.join(missing)}"
        )
    return metrics
