"""Tiny SavedModels in the export component's layout, for the serving tests and the benchmark.

``<base>/<version>/`` with a ``serving_default`` signature and ``assets.extra/branchops_model.json``
holding a sample and the predictions the model gave for it. Broken variants are built on purpose.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

N_FEATURES = 4
FEATURES = [f"r{i}" for i in range(N_FEATURES)]
SAMPLE = [[0.01, -0.02, 0.003, 0.0], [-0.05, 0.04, 0.02, -0.01], [0.0, 0.0, 0.0, 0.0]]


def build_model(
    target: Path,
    weights: list[float],
    bias: float = 0.0,
    *,
    input_name: str = "lagged_returns",
    prob_name: str = "probability_up",
    direction_name: str = "direction",
    sample_shift: float = 0.0,
    declared_width: int | None = N_FEATURES,
    record_contract: bool = True,
) -> Path:
    """Save a logistic model; ``sample_shift`` falsifies the recorded sample predictions.

    It takes ``len(weights)`` features; ``declared_width`` is the feature dimension its signature declares
    (None: any width, so a row of the wrong width fails only when predicted). ``record_contract`` writes
    the served signature into the metadata as ``serving_contract``, as the export component does."""
    import tensorflow as tf

    width = len(weights)
    sample = (
        SAMPLE
        if width == N_FEATURES
        else [[round(0.01 * (i + j), 4) for j in range(width)] for i in range(3)]
    )

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.constant(weights, tf.float32))
            self.b = tf.Variable(bias, dtype=tf.float32)

    model = Model()

    def serve(x):
        p = tf.sigmoid(tf.linalg.matvec(x, model.w) + model.b)
        return {prob_name: p, direction_name: tf.cast(p > 0.5, tf.int64)}

    spec = tf.TensorSpec([None, declared_width], tf.float32, name=input_name)
    # The signature's argument name is the input's name in TF Serving; build a function with that name.
    namespace: dict = {}
    exec(f"def signature({input_name}):\n    return serve({input_name})", {"serve": serve}, namespace)  # noqa: S102
    signature = tf.function(namespace["signature"], input_signature=[spec])
    target.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(model, str(target), signatures={"serving_default": signature})
    out = signature(tf.constant(sample, tf.float32))
    probs = [float(v) + sample_shift for v in out[prob_name].numpy()]
    meta = {
        "input": input_name if input_name == "lagged_returns" else "lagged_returns",
        "outputs": ["probability_up", "direction"],
        "feature_names": [f"r{i}" for i in range(width)],
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "version": int(target.name),
        "sample": {
            "instances": sample,
            "predictions": {
                "probability_up": probs,
                "direction": [int(v) for v in out[direction_name].numpy()],
            },
        },
    }
    if record_contract:
        meta["serving_contract"] = {
            "signature": "serving_default",
            "inputs": {input_name: {"dtype": "DT_FLOAT", "shape": [-1, declared_width or -1]}},
            "outputs": sorted([prob_name, direction_name]),
        }
    (target / "assets.extra").mkdir(exist_ok=True)
    (target / "assets.extra" / "branchops_model.json").write_text(json.dumps(meta, indent=1))
    return target


def corrupt_copy(good: Path, target: Path) -> Path:
    """Same files, but a saved_model.pb that is not a protobuf."""
    shutil.copytree(good, target)
    (target / "saved_model.pb").write_bytes(b"this is not a SavedModel protobuf\x00\xff" * 10)
    meta_file = target / "assets.extra" / "branchops_model.json"
    meta = json.loads(meta_file.read_text())
    meta["version"] = int(target.name)
    meta_file.write_text(json.dumps(meta))
    return target


def build_all(root: Path) -> dict[str, Path]:
    """Every model the serving tests use, each as a version directory named by its version."""
    models = {
        "v1": build_model(root / "good" / "1", [1.0, -1.0, 0.5, 0.2], 0.1),
        "v2": build_model(root / "good" / "2", [2.0, -0.5, 0.1, 0.3], -0.1),
        "v3": build_model(root / "good" / "3", [-1.0, 1.5, 0.7, -0.2], 0.0),
        "wrong_signature": build_model(
            root / "wrong" / "7", [1.0, 1.0, 1.0, 1.0], input_name="x", prob_name="score"
        ),
        "mismatch": build_model(root / "mismatch" / "8", [0.3, 0.3, 0.3, 0.3], sample_shift=0.25),
    }
    wide = [0.5, -0.5, 0.25, 0.1, 0.3, -0.2, 0.05, 0.4]
    # The 10-day-window experiment of issue 13: twice the inputs of what clients send.
    models["wide"] = build_model(root / "wide" / "4", wide, declared_width=len(wide))
    models["wide_unrecorded"] = build_model(
        root / "wide_unrecorded" / "4", wide, declared_width=len(wide), record_contract=False
    )
    # Declares any width (so its contract fits clients' 4-feature rows) but computes on 8 features.
    models["any_width"] = build_model(root / "any_width" / "5", wide, declared_width=None)
    models["corrupt"] = corrupt_copy(models["v1"], root / "corrupt" / "6")
    return models
