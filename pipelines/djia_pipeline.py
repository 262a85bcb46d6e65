"""The reference training pipeline (DJIA 30 "sentiment"): consolidate → validate → features → train →
evaluate → export.

Each step is a KFP v2 lightweight component whose body only calls ``components.<name>.run(...)``: the
code lives in ``components/`` (tested there, built into one image per component), the pipeline only
wires it. Steps hand data to each other through two volumes, not through KFP artifacts, because the
training stage snapshots exactly those volumes for lineage:

* the data volume (``data_dir``): the consolidated and validated prices;
* the model volume (``work_dir``, ``export_base``): features, checkpoints, metrics, plots, SavedModel.

On Kubeflow the volumes are the PVCs named by ``data_pvc`` / ``model_pvc``, mounted with kfp-kubernetes
where branchops' storage port says (``mounts``; the directories passed in lie under them). Kubeflow's
local runner ignores the mounts, and the directories are plain local directories.

The evaluate step also logs its metrics as KFP artifacts (``dsl.Metrics`` for the scalar metrics,
``dsl.ClassificationMetrics`` for the confusion matrix), which the Kubeflow UI shows on the run's page;
branchops itself reads ``metrics.json`` from the model volume.

The compiler calls :func:`build_pipeline`; it sets each step's image (pinned by digest when a registry
is configured), the training step's GPU request, node selector and tolerations, and binds the Kaggle
credentials' Kubernetes Secret (``secrets["kaggle"]``) to the step that downloads.
"""

# No `from __future__ import annotations` here: KFP reads the components' and the pipeline's type
# annotations at compile time and needs them as real types, not strings.

from collections.abc import Mapping
from typing import Any, NamedTuple

PIPELINE_NAME = "djia-sentiment"
COMPONENTS = ("consolidate", "validate", "features", "train", "evaluate", "export")

# Used only when no registry is configured: the local runner executes the steps as processes in the
# current environment and never pulls an image. Uploading such a spec to Kubeflow is refused upstream.
UNPINNED_IMAGE = "python:3.11-slim"

_TOLERATION_KEYS = {"key", "operator", "value", "effect"}


class PipelineOutputs(NamedTuple):
    """What a run returns, and what the training stage records: the evaluation metrics and where the
    exported model went (components.evaluate.run and components.export.run return these dicts)."""

    metrics: dict
    model: dict


def build_pipeline(
    images: Mapping[str, str] | None = None,
    gpu: Any | None = None,
    mounts: Mapping[str, str] | None = None,
    secrets: Mapping[str, Mapping[str, Any]] | None = None,
):
    """The pipeline function, with ``images`` (component name -> image reference), ``gpu`` (a
    GpuSection-like object: count, resource, node_selector, tolerations), ``mounts`` (where the data
    and model volumes are mounted in a step: {"data": path, "models": path}) and ``secrets`` (Kubernetes
    Secrets for the steps: {"kaggle": {"name": secret, "env": {secret key: variable}}}) applied."""
    from kfp import dsl, kubernetes

    images = dict(images or {})
    secrets = dict(secrets or {})
    mount = {"data": "/mnt/data", "models": "/mnt/models", **dict(mounts or {})}
    gpu_count = int(getattr(gpu, "count", 0) or 0)

    def image(name: str) -> str:
        if name == "train" and gpu_count > 0 and "train-gpu" in images:
            return images["train-gpu"]
        return images.get(name, UNPINNED_IMAGE)

    # The images carry their dependencies (kfp included): nothing is pip-installed when a step starts.
    @dsl.component(base_image=image("consolidate"), install_kfp_package=False)
    def consolidate(source_dir: str, data_dir: str, kaggle_dataset: str) -> dict:
        from components.consolidate import run

        return run(source_dir=source_dir, data_dir=data_dir, kaggle_dataset=kaggle_dataset or None)

    @dsl.component(base_image=image("validate"), install_kfp_package=False)
    def validate(data_dir: str) -> dict:
        from components.validate import run

        return run(data_dir=data_dir)

    @dsl.component(base_image=image("features"), install_kfp_package=False)
    def features(
        data_dir: str,
        work_dir: str,
        target: str,
        target_kind: str,
        window: int,
        val_fraction: float,
        test_fraction: float,
        purge_gap: int,
        data_until: str,
    ) -> dict:
        from components.features import run

        return run(
            data_dir=data_dir,
            work_dir=work_dir,
            target=target,
            target_kind=target_kind,
            window=window,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            purge_gap=purge_gap,
            data_until=data_until,
        )

    @dsl.component(base_image=image("train"), install_kfp_package=False)
    def train(
        work_dir: str,
        hidden_units: list,
        dropout: float,
        learning_rate: float,
        batch_size: int,
        epochs: int,
        patience: int,
        seed: int,
        walk_forward_folds: int,
        final_fit: str,
    ) -> dict:
        from components.train import run

        # KFP passes lists as protobuf ListValues, whose numbers are doubles.
        return run(
            work_dir=work_dir,
            hidden_units=[int(u) for u in hidden_units],
            dropout=dropout,
            learning_rate=learning_rate,
            batch_size=batch_size,
            epochs=epochs,
            patience=patience,
            seed=seed,
            walk_forward_folds=walk_forward_folds,
            final_fit=final_fit,
        )

    @dsl.component(base_image=image("evaluate"), install_kfp_package=False)
    def evaluate(
        work_dir: str,
        confidence: float,
        seed: int,
        metrics: dsl.Output[dsl.Metrics],
        confusion: dsl.Output[dsl.ClassificationMetrics],
    ) -> dict:
        import json

        from components.evaluate import run

        result = run(work_dir=work_dir, confidence=confidence, seed=seed)
        # The same numbers as metrics.json, as artifacts the Kubeflow UI shows on the run's page.
        with open(result["metrics"]) as f:
            reported = json.load(f)
        for name, value in sorted(reported.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.log_metric(name, value)
        matrix = (reported.get("model") or {}).get("confusion_matrix")  # [[tn, fp], [fn, tp]]
        if matrix:
            # the classes by the features step's target_kind (the body runs alone: no module constants)
            names = {"turbulence": ["calmer", "more turbulent"], "direction": ["down", "up"]}
            classes = names.get(reported.get("target_kind"), ["negative", "positive"])
            confusion.log_confusion_matrix(classes, [[int(n) for n in row] for row in matrix])
        return result

    @dsl.component(base_image=image("export"), install_kfp_package=False)
    def export(work_dir: str, export_base: str, version: int, commit: str) -> dict:
        from components.export import run

        return run(work_dir=work_dir, export_base=export_base, version=version, commit=commit)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="DJIA 30: consolidate, validate, features (direction or turbulence target), train "
        "with walk-forward folds, evaluate against baselines with intervals, export",
    )
    def djia_pipeline(
        source_dir: str,
        data_dir: str,
        work_dir: str,
        export_base: str,
        version: int,
        commit: str,
        kaggle_dataset: str = "",
        # the data window's last day (YYYY-MM-DD; branchops passes config data.until), "" for all the data
        data_until: str = "",
        data_pvc: str = "djia-data",
        model_pvc: str = "djia-models",
        target: str = "AAPL",
        # direction: next-day up/down; turbulence: next 5 days more turbulent than the last month
        target_kind: str = "direction",
        window: int = 5,
        # labelled days dropped between the splits and before each walk-forward fold: >= the label horizon
        purge_gap: int = 5,
        walk_forward_folds: int = 5,
        # the deployed model: "train_split" (early-stopped on validation) or "all_before_test" (refitted on
        # the training and validation rows for the epochs early stopping chose)
        final_fit: str = "train_split",
        # of the intervals of the model's advantage over each baseline (the KPI gate reads them)
        confidence: float = 0.95,
        hidden_units: list = [64, 32],  # noqa: B006 - a KFP default value, never mutated
        dropout: float = 0.1,
        learning_rate: float = 0.001,
        batch_size: int = 64,
        epochs: int = 30,
        patience: int = 5,
        seed: int = 42,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
    ) -> PipelineOutputs:
        steps = []
        consolidated = consolidate(source_dir=source_dir, data_dir=data_dir, kaggle_dataset=kaggle_dataset)
        steps.append(consolidated)
        if "kaggle" in secrets:
            # The download's credentials, from the Secret in the run's namespace (never in the spec).
            # Optional: a missing Secret would hold the pod in CreateContainerConfigError until the run
            # times out, even when no download is needed; without it the step says "no Kaggle credentials".
            kubernetes.use_secret_as_env(
                consolidated,
                secret_name=secrets["kaggle"]["name"],
                secret_key_to_env=dict(secrets["kaggle"]["env"]),
                optional=True,
            )
        validated = validate(data_dir=data_dir).after(consolidated)
        steps.append(validated)
        featured = features(
            data_dir=data_dir,
            work_dir=work_dir,
            target=target,
            target_kind=target_kind,
            window=window,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            purge_gap=purge_gap,
            data_until=data_until,
        ).after(validated)
        steps.append(featured)
        trained = train(
            work_dir=work_dir,
            hidden_units=hidden_units,
            dropout=dropout,
            learning_rate=learning_rate,
            batch_size=batch_size,
            epochs=epochs,
            patience=patience,
            seed=seed,
            walk_forward_folds=walk_forward_folds,
            final_fit=final_fit,
        ).after(featured)
        steps.append(trained)
        evaluated = evaluate(work_dir=work_dir, confidence=confidence, seed=seed).after(trained)
        steps.append(evaluated)
        exported = export(work_dir=work_dir, export_base=export_base, version=version, commit=commit).after(
            evaluated
        )
        steps.append(exported)

        for step in steps:
            # No step is cached: each writes its results into a volume, and a cache hit would skip
            # that write (a fresh or cloned volume would then lack the files the next step reads).
            step.set_caching_options(False)
            kubernetes.mount_pvc(step, pvc_name=data_pvc, mount_path=mount["data"])
            kubernetes.mount_pvc(step, pvc_name=model_pvc, mount_path=mount["models"])

        if gpu_count > 0:
            trained.set_accelerator_type(gpu.resource).set_accelerator_limit(gpu_count)
            for label, value in sorted((gpu.node_selector or {}).items()):
                kubernetes.add_node_selector(trained, label_key=label, label_value=value)
            for toleration in gpu.tolerations or []:
                unknown = set(toleration) - _TOLERATION_KEYS
                if unknown:
                    raise ValueError(
                        f"training.gpu.tolerations: unknown keys {sorted(unknown)}; "
                        f"expected some of {sorted(_TOLERATION_KEYS)}"
                    )
                kubernetes.add_toleration(
                    trained,
                    key=toleration.get("key"),
                    operator=toleration.get("operator", "Equal"),
                    value=toleration.get("value"),
                    effect=toleration.get("effect"),
                )

        # The pipeline's outputs: what the training stage records (metrics, where the model went).
        return PipelineOutputs(metrics=evaluated.outputs["Output"], model=exported.output)

    return djia_pipeline
