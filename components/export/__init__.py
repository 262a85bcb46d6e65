"""Export: the trained model as a SavedModel in TensorFlow Serving's layout, with metadata and a sample.

``export_base/<version>/`` holds ``saved_model.pb`` and ``variables/`` with the signature
``serving_default``: input ``lagged_returns`` (float32 [None, n_features], the raw features in the order
of ``feature_names``: lagged log returns for the direction target, lagged mean absolute returns for the
turbulence target; the normalisation is inside the graph) and two outputs named for what the model
predicts (:data:`OUTPUT_NAMES`): the probability that the label is 1 (float32 [None]; ``probability_up`` for
direction, ``probability_turbulent`` for turbulence) and the label itself (int64 [None], 1 when that
probability >= 0.5; ``direction`` or ``turbulent``).  ``assets.extra/branchops_model.json`` carries what the
model predicts (``predicts``, ``target_kind``), the feature order, tickers, window, training commit, a
fixed sample of test inputs with the predictions the exported graph gave for them (the deploy stage's
smoke test replays it), the exporting TensorFlow's version (``tensorflow_version``: the serving image
must be as new) and the served signature (``serving_contract``: each input's and output's dtype and
shape as TensorFlow Serving's signature_def metadata gives them, ``DT_FLOAT`` and ``-1`` for a free
dimension), read from the exported graph itself.

It also carries ``reference``, what ``branchops monitor`` measures the served traffic's drift against: the
training split's distribution of every feature (101 quantiles, q0 to q100, and a seeded sample of training
rows) and the same of the probability the exported graph answers for those training rows::

    "reference": {"split": "train", "rows": 1234, "input": "lagged_returns",
                  "features": {"<feature name>": {"quantiles": [...101], "sample": [...]}},
                  "prediction": {"output": "probability_up", "quantiles": [...101], "sample": [...]}}

The sample holds at most :data:`REFERENCE_SAMPLE_ROWS` rows, fewer for wide inputs (at most
:data:`REFERENCE_SAMPLE_VALUES` values over all features) so that the metadata stays a few hundred KB,
and its values are rounded to :data:`REFERENCE_DIGITS` significant digits.

The version is built in a hidden temporary folder under ``export_base`` and renamed into place, so
TensorFlow Serving (which watches ``export_base``) never sees half a version.  Versions are immutable:
exporting an existing version again is a no-op when it holds the same model from the same commit,
and an error otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from components.common.errors import ComponentError, DataError
from components.common.io import require_file

log = logging.getLogger(__name__)

INPUT_NAME = "lagged_returns"
# per target kind: (the probability that the label is 1, the label at THRESHOLD)
OUTPUT_NAMES = {
    "direction": ("probability_up", "direction"),
    "turbulence": ("probability_turbulent", "turbulent"),
}
SIGNATURE = "serving_default"
METADATA_FILE = "branchops_model.json"
SAMPLE_ROWS = 8
THRESHOLD = 0.5
# The reference distribution: 101 quantiles (q0..q100) per feature, and a sample of training rows for the
# two-sample tests. The whole metadata travels with every read of it (the Kubernetes backend prints it in a
# Job's log), so a wide input gets fewer sample rows: the direction model's 155 features x 500 rows would
# be about 1.5 MB of JSON; at most REFERENCE_SAMPLE_VALUES values keep it under 400 KB (100 rows there).
REFERENCE_QUANTILES = 101
REFERENCE_SAMPLE_ROWS = 500
REFERENCE_SAMPLE_VALUES = 15_500
# a KS test needs enough reference rows to have power, even for the widest input
REFERENCE_MIN_SAMPLE_ROWS = 100
REFERENCE_SEED = 20_151
# float32 features carry ~7 significant digits; 5 change no drift statistic and save a third of the bytes
REFERENCE_DIGITS = 5


def run(work_dir: str, export_base: str, version: int, commit: str) -> dict[str, Any]:
    import numpy as np

    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DataError(
            f"version must be a whole number >= 1 (TensorFlow Serving's version folders), got {version!r}"
        )
    if not isinstance(commit, str) or not commit.strip():
        raise DataError("commit must name the git commit the model was trained from")
    work = Path(work_dir)
    model_path = require_file(work / "model.keras", "train")
    meta = json.loads(require_file(work / "features.json", "features").read_text())
    with np.load(require_file(work / "features.npz", "features")) as data:
        X_test = data["X_test"].astype("float32")
        X_train = data["X_train"].astype("float32")
    sample_index = np.unique(np.linspace(0, len(X_test) - 1, min(SAMPLE_ROWS, len(X_test))).astype(int))
    instances = X_test[sample_index]

    base = Path(export_base)
    final = base / str(version)
    base.mkdir(parents=True, exist_ok=True)

    import keras
    import tensorflow as tf

    model = keras.models.load_model(model_path)
    n_features = int(model.input_shape[-1])
    if n_features != len(meta["feature_names"]):
        raise DataError(
            f"the model takes {n_features} features but features.json lists "
            f"{len(meta['feature_names'])}; retrain after rerunning features",
            file=str(model_path),
        )

    target_kind = meta.get("target_kind", "direction")
    probability_name, label_name = OUTPUT_NAMES[target_kind]
    staging = Path(tempfile.mkdtemp(prefix=f".export-{version}-", dir=base))
    try:
        target = staging / "model"
        archive = keras.export.ExportArchive()
        archive.track(model)

        def serve(lagged_returns):
            probability = tf.reshape(model(lagged_returns, training=False), [-1])
            return {
                probability_name: tf.cast(probability, tf.float32),
                label_name: tf.cast(probability >= THRESHOLD, tf.int64),
            }

        archive.add_endpoint(
            name=SIGNATURE,
            fn=serve,
            input_signature=[tf.TensorSpec(shape=(None, n_features), dtype=tf.float32, name=INPUT_NAME)],
        )
        archive.write_out(str(target), verbose=False)

        # the sample's predictions come from the exported graph itself, as a server would compute them
        served = tf.saved_model.load(str(target)).signatures[SIGNATURE]
        answer = served(**{INPUT_NAME: tf.constant(instances)})
        probability = answer[probability_name].numpy()
        label = answer[label_name].numpy()
        keras_probability = model.predict(instances, verbose=0).ravel()
        if not np.allclose(probability, keras_probability, atol=1e-5):
            raise ComponentError(
                "the exported graph answers differently from the trained model "
                f"({probability[:3]} vs {keras_probability[:3]})"
            )
        train_probability = _predict_in_batches(served, probability_name, X_train)
        metadata = {
            "tensorflow_version": tf.__version__,
            "serving_contract": serving_contract(served),
            "input": INPUT_NAME,
            "outputs": [probability_name, label_name],
            "signature": SIGNATURE,
            "n_features": n_features,
            "feature_names": meta["feature_names"],
            "tickers": meta["tickers"],
            "target": meta["target"],
            "window": meta["window"],
            "label": meta.get("label"),
            # what the served numbers mean, in words an API client can read
            "target_kind": target_kind,
            "predicts": meta.get("predicts"),
            "outputs_meaning": {
                probability_name: f"probability that {meta.get('predicts') or 'the label is 1'}",
                label_name: f"1 when {probability_name} >= {THRESHOLD}, else 0",
            },
            "threshold": THRESHOLD,
            "commit": commit,
            "version": version,
            "sample": {
                "dates": [str(d) for d in _test_dates(work, sample_index)],
                "instances": instances.tolist(),
                "predictions": {
                    probability_name: [float(p) for p in probability],
                    label_name: [int(d) for d in label],
                },
            },
            "reference": reference_statistics(
                X_train, meta["feature_names"], train_probability, probability_name
            ),
        }
        _write_metadata(target / "assets.extra" / METADATA_FILE, metadata)
        if final.exists():
            return _existing_version(final, metadata)
        os.rename(target, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported version %d of %s to %s", version, meta["target"], final)
    return {
        "export_path": str(final),
        "version": version,
        "commit": commit,
        "signature": SIGNATURE,
        "input": INPUT_NAME,
        "outputs": [probability_name, label_name],
        "n_features": n_features,
        "already_exported": False,
        "metadata": str(final / "assets.extra" / METADATA_FILE),
    }


def reference_statistics(
    X_train: Any, feature_names: list[str], probability: Any, probability_name: str
) -> dict[str, Any]:
    """The training split's distribution of each feature and of the model's probability (``reference``).

    The sample is the same training rows for every feature and for the prediction, drawn without
    replacement with a fixed seed: the same training data gives the same reference."""
    import numpy as np

    rows, n_features = X_train.shape
    if rows == 0:
        raise DataError("the training split is empty: there is no reference distribution to export")
    wanted = min(
        REFERENCE_SAMPLE_ROWS,
        max(REFERENCE_MIN_SAMPLE_ROWS, REFERENCE_SAMPLE_VALUES // max(n_features, 1)),
    )
    generator = np.random.default_rng(REFERENCE_SEED)
    picked = np.sort(generator.choice(rows, size=min(wanted, rows), replace=False))
    levels = np.linspace(0.0, 1.0, REFERENCE_QUANTILES)

    def distribution(values: Any) -> dict[str, list[float]]:
        values = np.asarray(values, dtype="float64")
        return {
            "quantiles": _rounded(np.quantile(values, levels)),
            "sample": _rounded(values[picked]),
        }

    return {
        "split": "train",
        "rows": int(rows),
        "input": INPUT_NAME,
        "features": {name: distribution(X_train[:, j]) for j, name in enumerate(feature_names)},
        "prediction": {"output": probability_name, **distribution(probability)},
    }


def _rounded(values: Any) -> list[float]:
    return [float(f"{v:.{REFERENCE_DIGITS}g}") for v in values.tolist()]


def _predict_in_batches(served: Any, output: str, rows: Any, batch: int = 4096) -> Any:
    """The exported graph's ``output`` for every row (the training split can be larger than one call)."""
    import numpy as np
    import tensorflow as tf

    parts = [
        served(**{INPUT_NAME: tf.constant(rows[start : start + batch])})[output].numpy()
        for start in range(0, len(rows), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype="float32")


# a list of numbers alone, as json.dumps(indent=2) lays it out: one number per line (a raw newline is never
# inside a JSON string, so this matches no text)
_NUMBER_LIST = re.compile(r"\[\n\s*(-?[0-9][-+0-9.eE]*(?:,\n\s*-?[0-9][-+0-9.eE]*)*)\n\s*\]")


def _write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """The metadata as indented JSON with each list of numbers on one line: one number per line would
    double the reference's bytes with indentation alone."""
    text = json.dumps(metadata, indent=2)
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(re.split(r",\s*", m.group(1))) + "]", text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")


def serving_contract(signature: Any) -> dict[str, Any]:
    """The signature's inputs and outputs as TF Serving's metadata describes them: ``{"inputs": {name:
    {"dtype": "DT_FLOAT", "shape": [-1, n]}}, "outputs": {...}}`` (-1: any size; shape None: unknown rank).
    A release whose contract differs from the serving version's breaks its clients."""
    _, inputs = signature.structured_input_signature

    def describe(spec: Any) -> dict[str, Any]:
        shape = (
            None if spec.shape.rank is None else [-1 if d is None else int(d) for d in spec.shape.as_list()]
        )
        return {"dtype": _dtype_enum(spec.dtype), "shape": shape}

    return {
        "inputs": {name: describe(spec) for name, spec in sorted(inputs.items())},
        "outputs": {name: describe(spec) for name, spec in sorted(signature.structured_outputs.items())},
    }


def _dtype_enum(dtype: Any) -> str:
    """TF Serving's name for a dtype in signature metadata: the DataType enum (types.proto), DT_FLOAT..."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype.as_datatype_enum)


def _existing_version(final: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    existing_file = final / "assets.extra" / METADATA_FILE
    try:
        existing = json.loads(existing_file.read_text())
    except (OSError, ValueError):
        existing = {}
    same = (
        existing.get("commit") == metadata["commit"]
        and existing.get("feature_names") == metadata["feature_names"]
        and _close(
            existing.get("sample", {}).get("predictions", {}).get(metadata["outputs"][0]),
            metadata["sample"]["predictions"][metadata["outputs"][0]],
        )
    )
    if not same:
        raise ComponentError(
            f"version {metadata['version']} already exists in {final.parent} with another model "
            f"(commit {existing.get('commit', 'unknown')}); versions are immutable -- export a new version"
        )
    log.info(
        "version %d already exported from commit %s; nothing to do", metadata["version"], metadata["commit"]
    )
    return {
        "export_path": str(final),
        "version": metadata["version"],
        "commit": metadata["commit"],
        "signature": SIGNATURE,
        "input": INPUT_NAME,
        "outputs": list(metadata["outputs"]),
        "n_features": metadata["n_features"],
        "already_exported": True,
        "metadata": str(existing_file),
    }


def _close(a, b) -> bool:
    import numpy as np

    return a is not None and len(a) == len(b) and bool(np.allclose(a, b, atol=1e-6))


def _test_dates(work: Path, index):
    import numpy as np

    with np.load(work / "features.npz") as data:
        if "dates_test" not in data.files:
            return []
        return data["dates_test"][index].tolist()
