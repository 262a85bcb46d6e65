"""Train: fit a small Keras classifier on the split, score it on the test rows, export it for serving.

Reads ``work_dir/split.npz`` (written by prepare) and writes what branchops reads back from a run:

* ``work_dir/metrics.json``: accuracy, ROC AUC and log loss on the test rows, the same metrics of a
  baseline that always answers the training split's majority class, and a one-sentence summary;
* ``work_dir/plots/learning_curve.png``: the loss per epoch on the training and test rows;
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


def run(work_dir: str, export_base: str, version: int, commit: str, hidden_units: int = 0,
        learning_rate: float = 0.05, epochs: int = 20, l2: float = 0.0, seed: int = 1) -> dict[str, Any]:
    _check(version, commit, hidden_units, learning_rate, epochs, l2, seed)
    work = Path(work_dir)
    split = load_split(work)

    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(split["X_train"], hidden_units, float(learning_rate), float(l2))
    log.info("training on CPU: %d training rows, %d test rows, %d epochs", len(split["y_train"]),
             len(split["y_test"]), epochs)
    history = model.fit(split["X_train"], split["y_train"].astype("float32"), batch_size=BATCH_SIZE, epochs=epochs,
                        validation_data=(split["X_test"], split["y_test"].astype("float32")), verbose=0,
                        callbacks=[_epoch_log(epochs)])

    probability = model.predict(split["X_test"], batch_size=1024, verbose=0).ravel()
    metrics = evaluate(split["y_test"], probability, split["y_train"])
    _write_json(work / METRICS_FILE, metrics)
    plot_learning_curve(history.history, work / PLOT_FILE)
    exported = export(model, split["X_test"], Path(export_base), version, commit)
    log.info("%s", metrics["summary"])
    return {"metrics": metrics, "model": exported}


def build_model(X_train, hidden_units: int, learning_rate: float, l2: float):
    """Normalisation (the training rows' mean and variance, fixed in the graph) -> [Dense/ReLU] -> sigmoid."""
    import keras

    inputs = keras.Input(shape=(len(FEATURES),), name=INPUT_NAME, dtype="float32")
    x = keras.layers.Normalization(mean=X_train.mean(axis=0), variance=X_train.var(axis=0), name="normalise")(inputs)
    regulariser = keras.regularizers.L2(l2) if l2 > 0 else None
    if hidden_units > 0:
        x = keras.layers.Dense(hidden_units, activation="relu", kernel_regularizer=regulariser, name="hidden")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_regularizer=regulariser, name="probability")(x)
    model = keras.Model(inputs, outputs, name="points_classifier")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="binary_crossentropy",
                  metrics=["accuracy"])
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


def evaluate(y_test, probability, y_train) -> dict[str, Any]:
    """The model's test metrics beside those of the baseline that answers the training majority class
    (with the training share of positives as its probability: a constant ranks nothing, AUC 0.5)."""
    import numpy as np

    y_test = np.asarray(y_test)
    accuracy = float(np.mean((probability >= THRESHOLD).astype("int64") == y_test))
    prior = float(np.mean(y_train))
    majority = int(prior >= 0.5)
    baseline = {"accuracy": float(np.mean(y_test == majority)), "roc_auc": 0.5,
                "log_loss": log_loss(y_test, np.full(len(y_test), prior))}
    metrics = {"accuracy": accuracy, "roc_auc": roc_auc(y_test, probability), "log_loss": log_loss(y_test, probability),
               "test_rows": len(y_test), "baselines": {"majority": baseline}}
    metrics["beats_baselines"] = bool(metrics["accuracy"] > baseline["accuracy"] and metrics["roc_auc"] > 0.5)
    metrics["summary"] = (f"{accuracy:.1%} of {len(y_test)} test points classified right (always answering the "
                          f"majority class: {baseline['accuracy']:.1%}); ROC AUC {metrics['roc_auc']:.3f}, "
                          f"log loss {metrics['log_loss']:.3f}.")
    return metrics


def plot_learning_curve(history: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display in a pipeline step
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 4))
    epochs = range(1, len(history["loss"]) + 1)
    axes.plot(epochs, history["loss"], label="training rows")
    axes.plot(epochs, history["val_loss"], label="test rows")
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
        raise ComponentError(f"version {version} already exists in {export_base}; versions are immutable, "
                             "export a new one")
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
            return {"probability": tf.cast(probability, tf.float32),
                    "label": tf.cast(probability >= THRESHOLD, tf.int64)}

        archive.add_endpoint(name=SIGNATURE, fn=serve, input_signature=[
            tf.TensorSpec(shape=(None, len(FEATURES)), dtype=tf.float32, name=INPUT_NAME)])
        archive.write_out(str(target), verbose=False)

        # the sample's predictions come from the exported graph itself, as the server will compute them
        answer = tf.saved_model.load(str(target)).signatures[SIGNATURE](**{INPUT_NAME: tf.constant(instances)})
        metadata = {
            "input": INPUT_NAME,
            "outputs": list(OUTPUTS),
            "signature": SIGNATURE,
            "feature_names": list(FEATURES),
            "threshold": THRESHOLD,
            "commit": commit,
            "version": version,
            "sample": {"instances": instances.tolist(),
                       "predictions": {"probability": [float(p) for p in answer["probability"].numpy()],
                                       "label": [int(v) for v in answer["label"].numpy()]}},
        }
        _write_json(target / METADATA_FILE, metadata)
        os.rename(target, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported version %d to %s", version, final)
    return {"export_path": str(final), "version": version, "commit": commit, "signature": SIGNATURE,
            "input": INPUT_NAME, "outputs": list(OUTPUTS)}


# -- helpers ------------------------------------------------------------------------------------------

def _epoch_log(epochs: int):
    """One log line per epoch (the local engine forwards ``epoch N/M:`` lines as the run's progress)."""
    import keras

    def line(epoch: int, logs: dict) -> None:
        log.info("epoch %d/%d: loss %.4f, accuracy %.4f, test loss %.4f", epoch + 1, epochs, logs["loss"],
                 logs["accuracy"], logs["val_loss"])

    return keras.callbacks.LambdaCallback(on_epoch_end=line)


def _check(version: int, commit: str, hidden_units: int, learning_rate: float, epochs: int, l2: float,
           seed: int) -> None:
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    problems = []
    if not whole(version) or version < 1:
        problems.append(f"version must be a whole number >= 1 (TensorFlow Serving's folder name), got {version!r}")
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
    if problems:
        raise DataError("; ".join(problems))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
