from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from components import train
from components.common.errors import DataError

SMALL = {
    "hidden_units": [16, 8],
    "dropout": 0.3,
    "learning_rate": 0.002,
    "batch_size": 128,
    "epochs": 4,
    "patience": 50,
    "seed": 11,
}


def _work(real_work_dir: Path, target: Path) -> Path:
    target.mkdir()
    for name in ("features.npz", "features.json"):
        shutil.copy(real_work_dir / name, target / name)
    return target


def _weights(path: Path):
    import keras

    return keras.models.load_model(path).get_weights()


@pytest.mark.slow
def test_interrupted_run_resumes_and_matches_an_uninterrupted_run(real_work_dir, tmp_path, caplog):
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated pod eviction")

    straight = _work(real_work_dir, tmp_path / "straight")
    resumed = _work(real_work_dir, tmp_path / "resumed")
    train.train(str(straight), checkpoint_every_s=0, **SMALL)
    with pytest.raises(KeyboardInterrupt):
        train.train(str(resumed), checkpoint_every_s=0, extra_callbacks=(Interrupt(),), **SMALL)
    assert not (resumed / "model.keras").exists()
    latest = json.loads((resumed / "checkpoints" / "latest.json").read_text())
    assert latest == {"folder": "epoch-00002"}

    caplog.set_level("INFO", logger="components.train")
    summary = train.run(str(resumed), **SMALL)
    assert summary["resumed_at_epochs"] == [2] and summary["epochs_run"] == 4
    assert "resuming from checkpoint after epoch 2 of 4" in caplog.text
    assert "ETA" in caplog.text
    history = json.loads((resumed / "history.json").read_text())
    straight_history = json.loads((straight / "history.json").read_text())
    assert len(history["history"]["loss"]) == 4
    # same seed, same batches and dropout masks per epoch: the resumed run ends where the straight one does
    assert history["history"]["loss"] == straight_history["history"]["loss"]
    for a, b in zip(_weights(straight / "model.keras"), _weights(resumed / "model.keras")):
        np.testing.assert_array_equal(a, b)
    assert not (resumed / "checkpoints").exists()  # a finished run keeps its model, not its checkpoints
    again = train.run(str(resumed), **SMALL)
    assert again["already_trained"] is True and again["epochs_run"] == 4


def test_changed_parameters_start_afresh(real_work_dir, tmp_path):
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    work = _work(real_work_dir, tmp_path / "w")
    with pytest.raises(KeyboardInterrupt):
        train.train(str(work), checkpoint_every_s=0, extra_callbacks=(Interrupt(),), **{**SMALL, "epochs": 2})
    assert (work / "checkpoints" / "latest.json").is_file()
    summary = train.run(str(work), **{**SMALL, "epochs": 2, "learning_rate": 0.01})
    assert summary["resumed_at_epochs"] == [] and summary["epochs_run"] == 2
    assert summary["already_trained"] is False


@pytest.mark.parametrize(
    "override, message",
    [
        ({"hidden_units": 16}, "hidden_units must be a list of layer sizes (empty: a logistic regression)"),
        ({"walk_forward_folds": 1}, "walk_forward_folds must be a whole number >= 2, got 1"),
        ({"hidden_units": [64, 0]}, "each of hidden_units must be a whole number >= 1, got 0"),
        ({"dropout": 1.0}, "dropout must be a number in [0, 1), got 1.0"),
        ({"learning_rate": 0}, "learning_rate must be a number in (0, 1], got 0"),
        ({"batch_size": "64"}, "batch_size must be a whole number >= 1, got '64'"),
        ({"epochs": True}, "epochs must be a whole number >= 1, got True"),
        ({"final_fit": "all"}, "final_fit must be one of train_split, all_before_test, got 'all'"),
    ],
)
def test_bad_hyper_parameters_are_named(tmp_path, override, message):
    with pytest.raises(DataError) as err:
        train.run(str(tmp_path), **{**SMALL, **override})
    assert message in str(err.value)


def test_missing_features_say_which_component_to_run(tmp_path):
    with pytest.raises(DataError, match="features.npz; run the features component first"):
        train.run(str(tmp_path), **SMALL)


def test_walk_forward_folds_end_before_the_test_period_and_purge_the_gap(real_work_dir, tmp_path):
    work = _work(real_work_dir, tmp_path / "w")
    train.run(str(work), **{**SMALL, "hidden_units": [], "epochs": 1, "walk_forward_folds": 5})
    with np.load(work / "walk_forward.npz") as data:
        folds = {k: data[k] for k in data.files}
    with np.load(work / "features.npz") as data:
        test_first, val_last = data["dates_test"][0], data["dates_val"][-1]
        before_test = np.concatenate([data["dates_train"], data["dates_val"]])
        purge_gap = int(data["purge_gap"])
    assert sorted(set(folds["fold"].tolist())) == [0, 1, 2, 3, 4]
    assert max(folds["dates"]) == val_last < test_first  # the test period is never predicted
    for index in range(5):
        fold_dates = folds["dates"][folds["fold"] == index]
        fold_start = int(np.flatnonzero(before_test == fold_dates[0])[0])
        # the fold's model saw the rows before it, less the purge gap
        assert folds["train_rows"][index] == fold_start - purge_gap
        assert len(fold_dates) >= 20 and list(fold_dates) == sorted(fold_dates)
    assert len(folds["probability"]) == len(folds["y"]) == len(folds["persistence"])
    history = json.loads((work / "history.json").read_text())
    assert history["walk_forward"]["folds"] == 5 and "validation split" in history["final_model"]


def test_fold_bounds_purge_and_refuse_too_few_rows():
    bounds = train.fold_bounds(700, 5, 5)
    assert len(bounds) == 5 and bounds[-1][2] == 700
    for train_end, start, end in bounds:
        assert start - train_end == 5 and end - start == 100
    with pytest.raises(DataError, match="too few for 5 walk-forward folds"):
        train.fold_bounds(100, 5, 5)


def test_the_final_model_is_fitted_as_final_fit_says(real_work_dir, tmp_path):
    """all_before_test refits on the training and validation rows for the epochs early stopping chose: a
    different model, never shown the test period, and the history (quoted by the report) says how."""
    import keras

    params = {**SMALL, "hidden_units": [], "epochs": 3, "walk_forward_folds": 5}
    split = _work(real_work_dir, tmp_path / "split")
    refit = _work(real_work_dir, tmp_path / "refit")
    train.run(str(split), **params)
    train.run(str(refit), **params, final_fit="all_before_test")

    history = json.loads((refit / "history.json").read_text())
    best_epoch = history["best_epoch"]
    assert history["final_model"].startswith("trained on every row before the test period")
    assert f"for {max(best_epoch, 1)} epochs" in history["final_model"]
    assert "validation split" in json.loads((split / "history.json").read_text())["final_model"]
    with np.load(refit / "features.npz") as data:
        X_test = data["X_test"].astype("float32")
    answers = [
        keras.models.load_model(w / "model.keras").predict(X_test[:20], verbose=0) for w in (split, refit)
    ]
    assert not np.allclose(answers[0], answers[1])  # another model: it was fitted on more rows


def test_the_training_history_is_written_for_tensorboard(real_work_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    work = _work(real_work_dir, tmp_path / "work")
    train.run(str(work), **{**SMALL, "epochs": 3})
    history = json.loads((work / "history.json").read_text())["history"]
    for part, prefix in (("train", ""), ("validation", "val_")):
        events = EventAccumulator(str(work / train.TENSORBOARD_DIR / part), size_guidance={"tensors": 0})
        events.Reload()
        assert sorted(events.Tags()["tensors"]) == ["epoch_accuracy", "epoch_loss"]
        for metric in ("loss", "accuracy"):
            points = events.Tensors(f"epoch_{metric}")
            assert [p.step for p in points] == [0, 1, 2]
            values = [float(np.asarray(tf_value(p))) for p in points]
            assert values == pytest.approx(history[f"{prefix}{metric}"], rel=1e-6)


def tf_value(point):
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(point.tensor_proto)
