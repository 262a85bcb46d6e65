from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from components import export
from components.common.errors import ComponentError, DataError


@pytest.fixture(scope="module")
def exported(trained_work_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    summary = export.run(work_dir=str(trained_work_dir), export_base=str(base), version=3, commit="0123abc")
    return base, summary


def test_saved_model_has_the_serving_contract_and_answers_the_sample(exported, trained_work_dir):
    import tensorflow as tf

    base, summary = exported
    assert summary["export_path"] == str(base / "3")
    assert sorted(p.name for p in base.iterdir()) == ["3"]  # no temporary folder left behind
    meta = json.loads((base / "3" / "assets.extra" / "branchops_model.json").read_text())
    features_meta = json.loads((trained_work_dir / "features.json").read_text())
    assert meta["input"] == "lagged_returns" and meta["outputs"] == ["probability_up", "direction"]
    assert (
        meta["feature_names"] == features_meta["feature_names"]
        and meta["tickers"] == features_meta["tickers"]
    )
    assert (meta["target"], meta["window"], meta["commit"], meta["version"]) == ("AAPL", 5, "0123abc", 3)
    # what the served probability means travels with the model
    assert meta["target_kind"] == "direction" and meta["predicts"] == features_meta["predicts"]
    assert "closes above the previous trading day's Close" in meta["outputs_meaning"]["probability_up"]
    assert len(meta["sample"]["instances"]) == 8
    # the serving image must be able to load what this TensorFlow wrote, and clients rely on this contract
    assert meta["tensorflow_version"] == tf.__version__
    n = len(meta["feature_names"])
    assert meta["serving_contract"] == {
        "inputs": {"lagged_returns": {"dtype": "DT_FLOAT", "shape": [-1, n]}},
        "outputs": {
            "direction": {"dtype": "DT_INT64", "shape": [-1]},
            "probability_up": {"dtype": "DT_FLOAT", "shape": [-1]},
        },
    }

    serving = tf.saved_model.load(str(base / "3")).signatures["serving_default"]
    assert list(serving.structured_input_signature[1]) == ["lagged_returns"]
    spec = serving.structured_input_signature[1]["lagged_returns"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, len(meta["feature_names"])]
    answer = serving(lagged_returns=tf.constant(meta["sample"]["instances"], dtype=tf.float32))
    assert answer["probability_up"].dtype == tf.float32 and answer["direction"].dtype == tf.int64
    assert answer["probability_up"].shape.as_list() == [8]
    np.testing.assert_allclose(
        answer["probability_up"].numpy(), meta["sample"]["predictions"]["probability_up"], atol=1e-6
    )
    assert answer["direction"].numpy().tolist() == meta["sample"]["predictions"]["direction"]
    assert answer["direction"].numpy().tolist() == [int(p >= 0.5) for p in answer["probability_up"].numpy()]


def test_raw_returns_go_in_normalisation_is_in_the_graph(exported, trained_work_dir):
    """The server gets raw lagged returns: feeding the Keras model the same raw rows gives the same answer."""
    import keras
    import tensorflow as tf

    base, _ = exported
    with np.load(trained_work_dir / "features.npz") as data:
        rows = data["X_test"][:50]
    keras_answer = keras.models.load_model(trained_work_dir / "model.keras").predict(rows, verbose=0).ravel()
    served = tf.saved_model.load(str(base / "3")).signatures["serving_default"]
    np.testing.assert_allclose(
        served(lagged_returns=tf.constant(rows))["probability_up"].numpy(), keras_answer, atol=1e-5
    )


def test_exporting_a_version_again(exported, trained_work_dir):
    base, _ = exported
    again = export.run(work_dir=str(trained_work_dir), export_base=str(base), version=3, commit="0123abc")
    assert again["already_exported"] is True
    before = (base / "3" / "assets.extra" / "branchops_model.json").read_text()
    with pytest.raises(
        ComponentError, match=r"version 3 already exists .*\(commit 0123abc\); versions are immutable"
    ):
        export.run(work_dir=str(trained_work_dir), export_base=str(base), version=3, commit="fedcba9")
    assert (base / "3" / "assets.extra" / "branchops_model.json").read_text() == before
    assert sorted(p.name for p in base.iterdir()) == ["3"]


@pytest.mark.parametrize(
    "version, message",
    [(0, "version must be a whole number >= 1"), ("2", "version must be a whole number >= 1")],
)
def test_bad_version_is_rejected(tmp_path, version, message):
    with pytest.raises(DataError, match=message):
        export.run(work_dir=str(tmp_path), export_base=str(tmp_path / "m"), version=version, commit="abc")


def test_missing_model_says_which_component_to_run(tmp_path):
    with pytest.raises(DataError, match="model.keras; run the train component first"):
        export.run(work_dir=str(tmp_path), export_base=str(tmp_path / "m"), version=1, commit="abc")
    shutil.rmtree(tmp_path / "m", ignore_errors=True)


def test_the_served_outputs_are_named_for_what_the_model_predicts(trained_work_dir, tmp_path):
    """A turbulence model answers `probability_turbulent` and `turbulent` (not `probability_up`)."""
    import tensorflow as tf

    work = tmp_path / "work"
    shutil.copytree(trained_work_dir, work)
    features_meta = json.loads((work / "features.json").read_text())
    features_meta.update(target_kind="turbulence", predicts="whether the next 5 days are more turbulent")
    (work / "features.json").write_text(json.dumps(features_meta))

    summary = export.run(
        work_dir=str(work), export_base=str(tmp_path / "models"), version=1, commit="0123abc"
    )

    assert summary["outputs"] == ["probability_turbulent", "turbulent"]
    meta = json.loads((tmp_path / "models" / "1" / "assets.extra" / "branchops_model.json").read_text())
    assert meta["outputs"] == ["probability_turbulent", "turbulent"]
    assert "more turbulent" in meta["outputs_meaning"]["probability_turbulent"]
    assert set(meta["sample"]["predictions"]) == {"probability_turbulent", "turbulent"}
    served = tf.saved_model.load(str(tmp_path / "models" / "1")).signatures["serving_default"]
    assert set(served.structured_outputs) == {"probability_turbulent", "turbulent"}


def test_the_reference_distribution_travels_with_the_model(exported, trained_work_dir):
    """branchops monitor measures drift against these: the training split's features and predictions."""
    import tensorflow as tf

    base, _ = exported
    path = base / "3" / "assets.extra" / "branchops_model.json"
    meta = json.loads(path.read_text())
    with np.load(trained_work_dir / "features.npz") as data:
        X_train = data["X_train"].astype("float32")
    reference = meta["reference"]
    assert (reference["split"], reference["rows"], reference["input"]) == (
        "train",
        len(X_train),
        "lagged_returns",
    )
    assert list(reference["features"]) == meta["feature_names"]
    # the direction model's 155 features: the sample shrinks for a wide input and the file stays small
    assert len(meta["feature_names"]) == 155 and path.stat().st_size < 400_000
    levels = np.linspace(0, 1, 101)
    sample_rows = {len(f["sample"]) for f in reference["features"].values()}
    assert len(sample_rows) == 1 and 100 <= sample_rows.pop() <= 500
    for j, name in enumerate(meta["feature_names"]):
        np.testing.assert_allclose(
            reference["features"][name]["quantiles"], np.quantile(X_train[:, j], levels), rtol=1e-4, atol=1e-9
        )
    # the sample is whole training rows (the same rows for every feature), not values drawn per feature
    columns = np.array([reference["features"][name]["sample"] for name in meta["feature_names"]]).T
    for row in columns:
        assert np.isclose(X_train, row, rtol=1e-4, atol=1e-9).all(axis=1).any()
    assert len({tuple(row) for row in columns}) == len(columns)  # drawn without replacement

    served = tf.saved_model.load(str(base / "3")).signatures["serving_default"]
    probability = served(lagged_returns=tf.constant(X_train))["probability_up"].numpy()
    prediction = reference["prediction"]
    assert prediction["output"] == "probability_up" and len(prediction["sample"]) == len(columns)
    np.testing.assert_allclose(
        prediction["quantiles"], np.quantile(probability, levels), rtol=1e-4, atol=1e-6
    )
    assert all(np.isclose(probability, p, rtol=1e-4).any() for p in prediction["sample"])


def test_the_reference_is_the_same_for_the_same_training_data(exported, trained_work_dir, tmp_path):
    base, _ = exported
    again = export.run(work_dir=str(trained_work_dir), export_base=str(tmp_path), version=3, commit="0123abc")
    first = json.loads((base / "3" / "assets.extra" / "branchops_model.json").read_text())["reference"]
    second = json.loads((tmp_path / "3" / "assets.extra" / "branchops_model.json").read_text())["reference"]
    assert again["already_exported"] is False and first == second
