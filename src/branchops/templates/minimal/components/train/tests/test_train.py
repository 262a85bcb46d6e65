"""train on a small split written here: the metrics it reports are the exported model's, and the export
meets what the deploy-model stage checks (signature, metadata, a sample the graph really answers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.common.dataset import save_split
from components.common.errors import ComponentError, DataError
from components.train import INPUT_NAME, METADATA_FILE, SIGNATURE, evaluate, export, log_loss, roc_auc, run

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def linear_split(rows: int = 500, seed: int = 3) -> dict[str, np.ndarray]:
    """Points labelled by a noisy linear rule, split 3:1:1."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 4)).astype("float32")
    logit = 2.5 * X[:, 0] - 2.0 * X[:, 1] + 0.5
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype("int64")
    train, val = rows * 3 // 5, rows * 4 // 5
    return {
        "X_train": X[:train],
        "y_train": y[:train],
        "X_val": X[train:val],
        "y_val": y[train:val],
        "X_test": X[val:],
        "y_test": y[val:],
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    split = linear_split()
    save_split(work, split)
    result = run(
        work_dir=str(work),
        export_base=str(work / "export"),
        version=7,
        commit=COMMIT,
        hidden_units=0,
        learning_rate=0.1,
        epochs=8,
        l2=0.0,
        seed=1,
    )
    return work, split, result


def test_roc_auc_and_log_loss_match_their_definitions():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5  # ties count half
    assert roc_auc([1, 0, 1], [0.9, 0.2, 0.5]) == 1.0
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    with pytest.raises(DataError, match="both classes"):
        roc_auc([1, 1], [0.2, 0.7])


def test_the_reported_metrics_are_those_of_the_exported_model(trained):
    import tensorflow as tf

    work, split, result = trained
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics == result["metrics"]
    assert {"accuracy", "roc_auc", "log_loss", "baselines", "summary"} <= set(metrics)

    served = tf.saved_model.load(result["model"]["export_path"]).signatures[SIGNATURE]
    answer = served(**{INPUT_NAME: tf.constant(split["X_test"])})
    probability = answer["probability"].numpy()
    assert metrics["accuracy"] == pytest.approx(np.mean((probability >= 0.5) == split["y_test"]), abs=1e-9)
    assert metrics["roc_auc"] == pytest.approx(roc_auc(split["y_test"], probability), abs=1e-6)
    assert np.array_equal(answer["label"].numpy(), (probability >= 0.5).astype("int64"))
    # a learnable rule: the model must do clearly better than answering the majority class
    majority = metrics["baselines"]["majority"]
    assert metrics["roc_auc"] > 0.85 and metrics["accuracy"] > majority["accuracy"]
    assert majority["roc_auc"] == 0.5
    assert majority["accuracy"] == pytest.approx(max(np.mean(split["y_test"]), 1 - np.mean(split["y_test"])))
    assert metrics["log_loss"] < metrics["log_loss_constant"] == majority["log_loss"]

    # the validation section (what experiments are ranked on) is the model's, on the validation rows
    val_probability = served(**{INPUT_NAME: tf.constant(split["X_val"])})["probability"].numpy()
    assert metrics["validation"]["rows"] == len(split["y_val"])
    assert metrics["validation"]["roc_auc"] == pytest.approx(
        roc_auc(split["y_val"], val_probability), abs=1e-6
    )
    assert metrics["validation"]["roc_auc"] != metrics["roc_auc"]


def test_the_advantage_over_the_baseline_comes_with_an_interval_that_excludes_zero(trained):
    _, _, result = trained
    metrics = result["metrics"]
    comparisons = {c["metric"]: c for c in metrics["comparisons"]}
    assert sorted(comparisons) == ["accuracy", "roc_auc"]
    for metric, c in comparisons.items():
        assert c["baseline"] == "majority" and c["confidence"] == 0.95
        assert c["difference"] == pytest.approx(metrics[metric] - metrics["baselines"]["majority"][metric])
        assert 0 < c["low"] <= c["difference"] <= c["high"]
        own = metrics["intervals"][metric]
        assert own["low"] <= own["value"] == metrics[metric] <= own["high"]
    assert metrics["beats_baselines"] == {"majority": {"accuracy": True, "roc_auc": True}, "all": True}


def test_a_model_no_better_than_the_baseline_is_not_significant():
    y = np.array([0, 0, 0, 1, 1] * 40)
    constant = np.full(len(y), 0.3)  # always class 0, the majority, and it ranks nothing
    metrics = evaluate(y, constant, y)
    for c in metrics["comparisons"]:
        assert c["difference"] == 0 and c["low"] <= 0, c
    assert metrics["beats_baselines"]["all"] is False


def test_the_export_carries_a_sample_the_exported_graph_answers(trained):
    import tensorflow as tf

    work, _, result = trained
    version_dir = Path(result["model"]["export_path"])
    assert version_dir == work / "export" / "7" and (version_dir / "saved_model.pb").is_file()
    meta = json.loads((version_dir / METADATA_FILE).read_text())
    assert meta["input"] == "features" and meta["outputs"] == ["probability", "label"]
    assert meta["commit"] == COMMIT and meta["version"] == 7 and len(meta["feature_names"]) == 4
    instances = meta["sample"]["instances"]
    assert 1 <= len(instances) <= 8 and all(len(row) == 4 for row in instances)

    signature = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE]
    assert list(signature.structured_input_signature[1]) == ["features"]
    answer = signature(features=tf.constant(instances, dtype=tf.float32))
    assert meta["sample"]["predictions"]["probability"] == pytest.approx(
        answer["probability"].numpy().tolist(), abs=1e-6
    )
    assert meta["sample"]["predictions"]["label"] == answer["label"].numpy().tolist()
    # nothing half-written is left beside the version (a server watches this folder)
    assert sorted(p.name for p in (work / "export").iterdir()) == ["7"]


def test_the_learning_curve_is_a_png(trained):
    work, _, _ = trained
    assert (work / "plots" / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_exported_version_is_never_overwritten(trained):
    import keras

    work, split, _ = trained
    before = (work / "export" / "7" / "saved_model.pb").read_bytes()
    other = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(1, activation="sigmoid")])
    with pytest.raises(ComponentError, match="version 7 already exists"):
        export(other, split["X_test"], work / "export", 7, COMMIT)
    assert (work / "export" / "7" / "saved_model.pb").read_bytes() == before


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"epochs": 0}, "epochs must be a whole number >= 1"),
        ({"learning_rate": -0.1}, "learning_rate must be a positive number"),
        ({"version": 0}, "version must be a whole number >= 1"),
        ({"hidden_units": 2.5}, "hidden_units must be a whole number >= 0"),
        ({"confidence": 1.0}, "confidence must be a number in \\[0.5, 1\\)"),
    ],
)
def test_bad_parameters_are_refused_before_training(tmp_path, params, expected):
    arguments = {
        "work_dir": str(tmp_path),
        "export_base": str(tmp_path / "export"),
        "version": 1,
        "commit": COMMIT,
        **params,
    }
    with pytest.raises(DataError, match=expected):
        run(**arguments)


def test_a_missing_split_says_which_component_to_run(tmp_path):
    with pytest.raises(DataError, match="run the prepare component first"):
        run(work_dir=str(tmp_path), export_base=str(tmp_path / "export"), version=1, commit=COMMIT)
