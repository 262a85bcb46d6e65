"""The training pipeline of the minimal project: prepare → train.

Each step is a KFP v2 lightweight component whose body only calls ``components.<name>.run(...)``: the
code lives in ``components/`` (tested there, built into one image per component), the pipeline only
wires it. The steps hand data to each other through two volumes, which the training stage snapshots
for lineage: ``prepare`` reads the raw CSV from the data volume (``source_dir``) and writes the split
into the run's folder on the model volume (``work_dir``), where ``train`` reads it and writes the
metrics, the plot and the SavedModel (``export_base``).

branchops passes the toolkit inputs this pipeline declares (``source_dir``, ``work_dir``,
``export_base``, ``version``, ``commit``, ``data_pvc``, ``model_pvc``) and each experiment's ``params``
(config/branchops.yaml, training.experiments) for the others; every other input keeps its default.
On Kubeflow the volumes are the PVCs named by ``data_pvc``/``model_pvc``, mounted where branchops'
storage port says (``mounts``); Kubeflow's local runner ignores the mounts.
"""

# No `from __future__ import annotations` here: KFP reads the components' and the pipeline's type
# annotations at compile time and needs them as real types, not strings.

from collections.abc import Mapping
from typing import Any, NamedTuple

PIPELINE_NAME = "minimal-classifier"

# Used only when no registry is configured: the local runner executes the steps as processes in the
# current environment and never pulls an image.
UNPINNED_IMAGE = "python:3.11-slim"


class PipelineOutputs(NamedTuple):
    """What a run returns and the training stage records: the test metrics and where the model went."""

    metrics: dict
    model: dict


def build_pipeline(
    images: Mapping[str, str] | None = None,
    gpu: Any | None = None,
    mounts: Mapping[str, str] | None = None,
    secrets: Mapping[str, Mapping[str, Any]] | None = None,
):
    """The pipeline function, with ``images`` (component name -> image reference) and ``mounts`` (where
    the data and model volumes are mounted in a step: {"data": path, "models": path}) applied.

    ``secrets`` are the Kubernetes Secrets branchops asks to bind to the steps ({"kaggle": {"name": secret,
    "env": {secret key: variable}}}, from data.kaggle.secret). This pipeline downloads nothing, so none is
    accepted; a pipeline that does binds each to its downloading step with
    ``kfp.kubernetes.use_secret_as_env(task, secret_name=..., secret_key_to_env=...)``."""
    from kfp import dsl, kubernetes

    if secrets:
        raise ValueError(
            f"Kubernetes Secrets are configured for this pipeline's steps ({', '.join(sorted(secrets))}), "
            "but none of its steps downloads anything: its raw data comes from data.source folder or script"
        )

    if int(getattr(gpu, "count", 0) or 0) > 0:
        # The train image holds tensorflow-cpu: a GPU request would only hold a node's GPU idle.
        raise ValueError(
            "training.gpu.count > 0, but this project's train image is CPU-only; build a GPU "
            "variant (docker/train-gpu/Dockerfile with TensorFlow's CUDA wheels) and request "
            "the accelerator for the train step here"
        )
    images = dict(images or {})
    mount = {"data": "/mnt/data", "models": "/mnt/models", **dict(mounts or {})}

    def image(name: str) -> str:
        return images.get(name, UNPINNED_IMAGE)

    # The images carry their dependencies (kfp included): nothing is pip-installed when a step starts.
    @dsl.component(base_image=image("prepare"), install_kfp_package=False)
    def prepare(source_dir: str, work_dir: str, test_fraction: float, val_fraction: float) -> dict:
        from components.prepare import run

        return run(
            source_dir=source_dir, work_dir=work_dir, test_fraction=test_fraction, val_fraction=val_fraction
        )

    @dsl.component(base_image=image("train"), install_kfp_package=False)
    def train(
        work_dir: str,
        export_base: str,
        version: int,
        commit: str,
        hidden_units: int,
        learning_rate: float,
        epochs: int,
        l2: float,
        seed: int,
        confidence: float,
    ) -> NamedTuple("TrainOutputs", [("metrics", dict), ("model", dict)]):
        from components.train import run

        result = run(
            work_dir=work_dir,
            export_base=export_base,
            version=version,
            commit=commit,
            hidden_units=hidden_units,
            learning_rate=learning_rate,
            epochs=epochs,
            l2=l2,
            seed=seed,
            confidence=confidence,
        )
        return result["metrics"], result["model"]

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Generated points: prepare (check, split), train (fit, evaluate, export)",
    )
    def minimal_pipeline(
        source_dir: str,
        work_dir: str,
        export_base: str,
        version: int,
        commit: str,
        data_pvc: str = "minimal-data",
        model_pvc: str = "minimal-models",
        test_fraction: float = 0.2,
        val_fraction: float = 0.2,
        hidden_units: int = 0,
        learning_rate: float = 0.05,
        epochs: int = 20,
        l2: float = 0.0,
        seed: int = 1,
        confidence: float = 0.95,
    ) -> PipelineOutputs:
        prepared = prepare(
            source_dir=source_dir, work_dir=work_dir, test_fraction=test_fraction, val_fraction=val_fraction
        )
        trained = train(
            work_dir=work_dir,
            export_base=export_base,
            version=version,
            commit=commit,
            hidden_units=hidden_units,
            learning_rate=learning_rate,
            epochs=epochs,
            l2=l2,
            seed=seed,
            confidence=confidence,
        ).after(prepared)
        for step in (prepared, trained):
            # No step is cached: each writes its results into a volume, and a cache hit would skip that
            # write (a fresh or cloned volume would then lack the files the next step reads).
            step.set_caching_options(False)
            kubernetes.mount_pvc(step, pvc_name=data_pvc, mount_path=mount["data"])
            kubernetes.mount_pvc(step, pvc_name=model_pvc, mount_path=mount["models"])
        return PipelineOutputs(metrics=trained.outputs["metrics"], model=trained.outputs["model"])

    return minimal_pipeline
