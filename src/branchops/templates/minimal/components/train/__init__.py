"""Train: fit a small Keras classifier on the split, score it on the test rows, export it for serving.

Reads ``work_dir/split.npz`` (written by prepare): the model is fitted on the training rows, watched on
the validation rows (the learning curve, and ``validation`` in metrics.json, on which branchops ranks the
experiments), and scored on the test rows. Writes what branchops reads back from a run:

* ``work_dir/metrics.json``: accuracy, ROC AUC and log loss on the test rows, and what the KPI gate
  weighs them against: the same metrics of a baseline that always answers the training split's majority
  class (``baselines``), the log loss of the constant predictor answering the training share of positives
  (``log_loss_constant``), the model's advantage over the baseline with a bootstrap interval
  (``comparisons``: ``[{baseline, metric, difference, low, high, confidence}]``; significant when ``low``
  is above zero), the model's own metrics with intervals (``intervals``), the validation rows' metrics
  (``validation``), and a one-sentence summary;
* ``work_dir/plots/learning_curve.png``: the loss per epoch on the training and validation rows;
* ``export_base/<version>/``: a SavedModel in TensorFlow Serving's layout. Its ``serving_default``
  signature takes ``features`` (float32 [None, 4], raw values in the order of FEATURES: the
  normalisation is inside the graph) and returns ``probability`` (float32 [None]) and ``label`` (int64
  [None], 1 when probability >= 0.5). ``assets.extra/branchops_model.json`` holds a sample of test rows
  with the predictions the exported graph gave for them, which the deploy-model stage replays against
  the server before any traffic reaches the model.

``hidden_units: 0`` is a logistic regression; more adds one hidden ReLU layer of that width.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from components.common.dataset import FEATURES, load_split
from components.common.errors import ComponentError, DataError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PLOT_FILE = Path("plots") / "learning_curve.png"
INPUT_NAME = "features"
OUTPUTS = ("probability", "label")
SIGNATURE = "serving_default"
METADATA_FILE = Path("assets.extra") / "branchops_model.json"
THRESHOLD = 0.5
BATCH_SIZE = 64
SAMPLE_ROWS = 8
EPSILON = 1e-7  # keeps log loss finite when a probability rounds to exactly 0 or 1
# The intervals: the test points are independent of each other, so the rows are resampled one by one,
# the same resamples for the model and the baseline (a paired comparison). Seeded: a rerun reports the
# same interval. `confidence` must be at least training.kpis.confidence or the gate does not count it.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def run(
    work_dir: str,
    export_base: str,
    version: int,
    commit: str,
    hidden_units: int = 0,
    learning_rate: float = 0.05,
    epochs: int = 20,
    l2: float = 0.0,
    seed: int = 1,
    confidence: float = 0.95,
) -> dict[str, Any]:
    _check(version, commit, hidden_units, learning_rate, epochs, l2, seed, confidence)
    work = Path(work_dir)
    split = load_split(work)

    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    model = build_model(split["X_train"], hidden_units, float(learning_rate), float(l2))
    log.info(
        "training on CPU: %d training rows, %d validation rows, %d epochs",
        len(split["y_train"]),
        len(split["y_val"]),
        epochs,
    )
    history = model.fit(
        split["X_train"],
        split["y_train"].astype("float32"),
        batch_size=BATCH_SIZE,
        epochs=epochs,
        validation_data=(split["X_val"], split["y_val"].astype("float32")),
        verbose=0,
        callbacks=[_epoch_log(epochs)],
    )

    def predict(X):
        return model.predict(X, batch_size=1024, verbose=0).ravel()

    metrics = evaluate(split["y_test"], predict(split["X_test"]), split["y_train"], float(confidence))
    val_probability = predict(split["X_val"])
    metrics["validation"] = {
        "accuracy": float(np.mean((val_probability >= THRESHOLD) == split["y_val"])),
        "roc_auc": roc_auc(split["y_val"], val_probability),
        "log_loss": log_loss(split["y_val"], val_probability),
        "rows": len(split["y_val"]),
    }
    _write_json(work / METRICS_FILE, metrics)
    plot_learning_curve(history.history, work / PLOT_FILE)
    exported = export(model, split["X_test"], Path(export_base), version, commit)
    log.info("%s", metrics["summary"])
    return {"metrics": metrics, "model": exported}


def build_model(X_train, hidden_units: int, learning_rate: float, l2: float):
    """Normalisation (the training rows' mean and variance, fixed in the graph) -> [Dense/ReLU] -> sigmoid."""
    import keras

    inputs = keras.Input(shape=(len(FEATURES),), name=INPUT_NAME, dtype="float32")
    x = keras.layers.Normalization(mean=X_train.mean(axis=0), variance=X_train.var(axis=0), name="normalise")(
        inputs
    )
    regulariser = keras.regularizers.L2(l2) if l2 > 0 else None
    if hidden_units > 0:
        x = keras.layers.Dense(
            hidden_units, activation="relu", kernel_regularizer=regulariser, name="hidden"
        )(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_regularizer=regulariser, name="probability")(
        x
    )
    model = keras.Model(inputs, outputs, name="points_classifier")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


# -- metrics ------------------------------------------------------------------------------------------


def roc_auc(y, score) -> float:
    """The probability that a random positive row scores above a random negative one (ties count half):
    the Mann-Whitney U statistic from the rows' average ranks."""
    import numpy as np

    y, score = np.asarray(y), np.asarray(score, dtype="float64")
    positives = int((y == 1).sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        raise DataError("ROC AUC needs rows of both classes")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1
    ranks = (first_rank + (counts - 1) / 2.0)[inverse]
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def log_loss(y, probability) -> float:
    import numpy as np

    p = np.clip(np.asarray(probability, dtype="float64"), EPSILON, 1 - EPSILON)
    y = np.asarray(y, dtype="float64")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def evaluate(y_test, probability, y_train, confidence: float = 0.95) -> dict[str, Any]:
    """The model's test metrics, the majority-class baseline's, and the model's advantage over it with
    bootstrap intervals (the baseline answers one class with the training share of positives as its
    probability: it ranks nothing, so its ROC AUC is 0.5)."""
    import numpy as np

    y, p = np.asarray(y_test).astype("int64"), np.asarray(probability, dtype="float64")
    prior = float(np.mean(y_train))
    correct = ((p >= THRESHOLD).astype("int64") == y).astype("float64")
    majority_correct = (y == int(prior >= 0.5)).astype("float64")
    baseline = {
        "accuracy": float(majority_correct.mean()),
        "roc_auc": 0.5,
        "log_loss": log_loss(y, np.full(len(y), prior)),
    }
    model = {"accuracy": float(correct.mean()), "roc_auc": roc_auc(y, p), "log_loss": log_loss(y, p)}

    picks = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(y), size=(BOOTSTRAP_RESAMPLES, len(y)))
    accuracy_draws = correct[picks].mean(axis=1)
    auc_draws = np.array([_roc_auc_or_nan(y[idx], p[idx]) for idx in picks])
    draws = {
        "accuracy": (accuracy_draws, accuracy_draws - majority_correct[picks].mean(axis=1)),
        "roc_auc": (auc_draws, auc_draws - 0.5),
    }
    comparisons, intervals = [], {}
    for metric, (own, advantage) in draws.items():
        low, high = _percentile_interval(own, confidence)
        intervals[metric] = {"value": model[metric], "low": low, "high": high, "confidence": confidence}
        low, high = _percentile_interval(advantage, confidence)
        comparisons.append(
            {
                "baseline": "majority",
                "metric": metric,
                "difference": model[metric] - baseline[metric],
                "low": low,
                "high": high,
                "confidence": confidence,
            }
        )
    beats = {"majority": {c["metric"]: c["low"] > 0 for c in comparisons}}
    beats["all"] = all(c["low"] > 0 for c in comparisons) and model["log_loss"] < baseline["log_loss"]
    auc = intervals["roc_auc"]
    summary = (
        f"{model['accuracy']:.1%} of {len(y)} test points classified right (always answering the majority "
        f"class: {baseline['accuracy']:.1%}); ROC AUC {model['roc_auc']:.3f} ({confidence:.0%} interval "
        f"{auc['low']:.3f} to {auc['high']:.3f}); log loss {model['log_loss']:.3f} (constant predictor: "
        f"{baseline['log_loss']:.3f})."
    )
    return {
        **model,
        "log_loss_constant": baseline["log_loss"],
        "test_rows": len(y),
        "baselines": {"majority": baseline},
        "comparisons": comparisons,
        "intervals": intervals,
        "beats_baselines": beats,
        "summary": summary,
    }


def _roc_auc_or_nan(y, score) -> float:
    """ROC AUC of a resample, NaN when it drew rows of one class only (left out of the interval)."""
    return roc_auc(y, score) if 0 < int(y.sum()) < len(y) else float("nan")


def _percentile_interval(draws, confidence: float) -> tuple[float, float]:
    import numpy as np

    finite = draws[np.isfinite(draws)]
    low, high = np.quantile(finite, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def plot_learning_curve(history: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display in a pipeline step
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 4))
    epochs = range(1, len(history["loss"]) + 1)
    axes.plot(epochs, history["loss"], label="training rows")
    axes.plot(epochs, history["val_loss"], label="validation rows")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss (binary cross-entropy)")
    axes.set_title("Learning curve")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


# -- export -------------------------------------------------------------------------------------------


def export(model, X_test, export_base: Path, version: int, commit: str) -> dict[str, Any]:
    """Write the SavedModel into ``export_base/<version>`` whole: it is built in a hidden folder and
    renamed into place, so a server watching ``export_base`` never sees half a version. A version is
    never overwritten: a model version names one model for good."""
    import keras
    import numpy as np
    import tensorflow as tf

    final = export_base / str(version)
    if final.exists():
        raise ComponentError(
            f"version {version} already exists in {export_base}; versions are immutable, export a new one"
        )
    export_base.mkdir(parents=True, exist_ok=True)
    rows = np.unique(np.linspace(0, len(X_test) - 1, min(SAMPLE_ROWS, len(X_test))).astype(int))
    instances = X_test[rows].astype("float32")
    staging = Path(tempfile.mkdtemp(prefix=f".export-{version}-", dir=export_base))
    try:
        target = staging / "model"
        archive = keras.export.ExportArchive()
        archive.track(model)

        def serve(features):
            probability = tf.reshape(model(features, training=False), [-1])
            return {
                "probability": tf.cast(probability, tf.float32),
                "label": tf.cast(probability >= THRESHOLD, tf.int64),
            }

        archive.add_endpoint(
            name=SIGNATURE,
            fn=serve,
            input_signature=[tf.TensorSpec(shape=(None, len(FEATURES)), dtype=tf.float32, name=INPUT_NAME)],
        )
        archive.write_out(str(target), verbose=False)

        # the sample's predictions come from the exported graph itself, as the server will compute them
        answer = tf.saved_model.load(str(target)).signatures[SIGNATURE](
            **{INPUT_NAME: tf.constant(instances)}
        )
        metadata = {
            "input": INPUT_NAME,
            "outputs": list(OUTPUTS),
            "signature": SIGNATURE,
            "feature_names": list(FEATURES),
            "threshold": THRESHOLD,
            "commit": commit,
            "version": version,
            "sample": {
                "instances": instances.tolist(),
                "predictions": {
                    "probability": [float(p) for p in answer["probability"].numpy()],
                    "label": [int(v) for v in answer["label"].numpy()],
                },
            },
        }
        _write_json(target / METADATA_FILE, metadata)
        os.rename(target, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported version %d to %s", version, final)
    return {
        "export_path": str(final),
        "version": version,
        "commit": commit,
        "signature": SIGNATURE,
        "input": INPUT_NAME,
        "outputs": list(OUTPUTS),
    }


# -- helpers ------------------------------------------------------------------------------------------


def _epoch_log(epochs: int):
    """One log line per epoch (the local engine forwards ``epoch N/M:`` lines as the run's progress)."""
    import keras

    def line(epoch: int, logs: dict) -> None:
        log.info(
            "epoch %d/%d: loss %.4f, accuracy %.4f, validation loss %.4f",
            epoch + 1,
            epochs,
            logs["loss"],
            logs["accuracy"],
            logs["val_loss"],
        )

    return keras.callbacks.LambdaCallback(on_epoch_end=line)


def _check(
    version: int,
    commit: str,
    hidden_units: int,
    learning_rate: float,
    epochs: int,
    l2: float,
    seed: int,
    confidence: float,
) -> None:
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    problems = []
    if not whole(version) or version < 1:
        problems.append(
            f"version must be a whole number >= 1 (TensorFlow Serving's folder name), got {version!r}"
        )
    if not isinstance(commit, str) or not commit.strip():
        problems.append("commit must name the git commit the model is trained from")
    if not whole(hidden_units) or hidden_units < 0:
        problems.append(f"hidden_units must be a whole number >= 0, got {hidden_units!r}")
    if not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
        problems.append(f"learning_rate must be a positive number, got {learning_rate!r}")
    if not whole(epochs) or epochs < 1:
        problems.append(f"epochs must be a whole number >= 1, got {epochs!r}")
    if not isinstance(l2, (int, float)) or l2 < 0:
        problems.append(f"l2 must be a number >= 0, got {l2!r}")
    if not whole(seed):
        problems.append(f"seed must be a whole number, got {seed!r}")
    if not isinstance(confidence, (int, float)) or isinstance(confidence, bool) or not 0.5 <= confidence < 1:
        problems.append(f"confidence must be a number in [0.5, 1), got {confidence!r}")
    if problems:
        raise DataError("; ".join(problems))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
