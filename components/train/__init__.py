"""Train: a Keras MLP (no hidden layer: a logistic regression) on the features, seeded, with early
stopping and resumable checkpoints, and a walk-forward evaluation of the same configuration.

Reads ``features.npz`` from the work folder and writes ``model.keras``, ``walk_forward.npz``,
``history.json`` and TensorBoard event files of the training history (``tensorboard/train`` and
``tensorboard/validation``, what ``branchops tensorboard`` opens).  The model starts with a Normalization
layer adapted on the training split, so it takes raw values.  The final model is trained on the training
split, early-stopped on the validation split.

Walk-forward (rolling origin): the rows before the test period (train and validation) are cut into
``walk_forward_folds`` consecutive folds after an initial window; for each fold a fresh model of the same
configuration is trained for ``epochs`` epochs on every row before it, less the last ``purge_gap`` rows
(the features' purge gap, at least the label horizon), and predicts the fold.  The test period is never
touched.  ``walk_forward.npz`` holds each fold's labels, predictions, persistence inputs and its training
rows' share of positives, for evaluate.

Resuming: after an epoch (at most every ``CHECKPOINT_EVERY_S`` seconds) the full model with its optimizer
state, the best weights so far and the early-stopping state are written to ``checkpoints/epoch-NNNNN/``
and ``checkpoints/latest.json`` is switched to it atomically.  A rerun with the same parameters and the
same features continues from there; different parameters or features start afresh.  Each epoch's batch
order and dropout masks are derived from (seed, epoch) only, so a resumed run ends with the weights an
uninterrupted run would have.  After the last epoch the model is written instead of a checkpoint, the
checkpoints are removed, and a rerun of the finished run is a no-op.

A GPU is used when TensorFlow sees one; nothing to configure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from components.common.errors import ComponentError, DataError
from components.common.io import require_file, write_json_atomic

log = logging.getLogger(__name__)

FEATURES_FILE = "features.npz"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
WALK_FORWARD_FILE = "walk_forward.npz"
TENSORBOARD_DIR = "tensorboard"
MIN_WALK_FORWARD_FOLDS = 2
CHECKPOINT_DIR = "checkpoints"
# Saving a checkpoint costs a few tens of milliseconds; an epoch on this data costs about as much, so
# checkpoints are time-based to keep the training throughput within a few percent of a bare fit.
CHECKPOINT_EVERY_S = 20.0
MONITOR = "val_loss"


def run(
    work_dir: str,
    hidden_units: list[int],
    dropout: float,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    patience: int,
    seed: int,
    walk_forward_folds: int = 5,
    final_fit: str = "train_split",
) -> dict[str, Any]:
    return train(
        work_dir,
        hidden_units=hidden_units,
        dropout=dropout,
        learning_rate=learning_rate,
        batch_size=batch_size,
        epochs=epochs,
        patience=patience,
        seed=seed,
        walk_forward_folds=walk_forward_folds,
        final_fit=final_fit,
    )


def load_training_arrays(work_dir: str | Path):
    import numpy as np

    path = require_file(Path(work_dir) / FEATURES_FILE, "features")
    with np.load(path) as data:
        needed = (
            "X_train",
            "y_train",
            "X_val",
            "y_val",
            "persistence_train",
            "persistence_val",
            "dates_train",
            "dates_val",
            "purge_gap",
        )
        missing = [k for k in needed if k not in data.files]
        if missing:
            raise DataError(
                f"missing array(s) {', '.join(missing)}; rerun the features component", file=str(path)
            )
        return {k: data[k] for k in needed}


# How the deployed model is trained, as the configuration's `final_fit` says (the report quotes it).
FINAL_FITS = {
    "train_split": "trained on the training split, early-stopped on the validation split",
    "all_before_test": (
        "trained on every row before the test period (training and validation splits) for {best_epoch} "
        "epochs, the number early stopping chose on the validation split"
    ),
}


def refit_before_test(arrays: dict[str, Any], params: dict[str, Any], epochs: int):
    """A fresh model of the same architecture and seed, fitted on the training and validation rows for
    ``epochs`` epochs: nothing from the test period, and no early stopping left to peek at validation."""
    import keras
    import numpy as np

    X = np.concatenate([arrays["X_train"], arrays["X_val"]])
    y = np.concatenate([arrays["y_train"], arrays["y_val"]])
    keras.utils.set_random_seed(params["seed"])
    model = build_model(X, params["hidden_units"], params["dropout"], params["learning_rate"], params["seed"])
    batch_size = params["batch_size"]
    model.fit(
        epoch_batches(X, y, batch_size, params["seed"], 0, epochs),
        epochs=epochs,
        steps_per_epoch=math.ceil(len(y) / batch_size),
        shuffle=False,
        verbose=0,
    )
    return model


def fold_bounds(n_rows: int, folds: int, purge_gap: int) -> list[tuple[int, int, int]]:
    """(end of the fold's training rows, fold start, fold end) for each fold: an initial window of about a
    third of the rows, then ``folds`` folds of equal length up to ``n_rows``."""
    size = n_rows // (folds + 2)
    first = n_rows - folds * size
    bounds = [(start - purge_gap, start, start + size) for start in range(first, n_rows, size)]
    if size < 20 or bounds[0][0] < 20:
        raise DataError(f"{n_rows} rows before the test period are too few for {folds} walk-forward folds")
    return bounds


def walk_forward(arrays: dict[str, Any], params: dict[str, Any], folds: int) -> dict[str, Any]:
    """Rolling-origin predictions of fresh models of this configuration; the test split is not used."""
    import keras
    import numpy as np

    X = np.concatenate([arrays["X_train"], arrays["X_val"]])
    y = np.concatenate([arrays["y_train"], arrays["y_val"]])
    persistence = np.concatenate([arrays["persistence_train"], arrays["persistence_val"]])
    dates = np.concatenate([arrays["dates_train"], arrays["dates_val"]])
    out: dict[str, list] = {k: [] for k in ("fold", "y", "probability", "persistence", "dates")}
    train_share, train_rows = [], []
    for index, (train_end, start, end) in enumerate(fold_bounds(len(y), folds, int(arrays["purge_gap"]))):
        keras.utils.set_random_seed(params["seed"] + 1000 * (index + 1))
        model = build_model(
            X[:train_end], params["hidden_units"], params["dropout"], params["learning_rate"], params["seed"]
        )
        model.fit(
            X[:train_end],
            y[:train_end].astype("float32"),
            batch_size=params["batch_size"],
            epochs=params["epochs"],
            shuffle=True,
            verbose=0,
        )
        out["fold"].append(np.full(end - start, index, dtype="int32"))
        out["probability"].append(model.predict(X[start:end], batch_size=4096, verbose=0).ravel())
        for key, values in (("y", y), ("persistence", persistence), ("dates", dates)):
            out[key].append(values[start:end])
        train_share.append(float(y[:train_end].mean()))
        train_rows.append(train_end)
        log.info(
            "walk-forward fold %d/%d: trained on %d rows up to %s, predicted %s .. %s",
            index + 1,
            folds,
            train_end,
            dates[train_end - 1],
            dates[start],
            dates[end - 1],
        )
    return {
        **{k: np.concatenate(v) for k, v in out.items()},
        "train_share": np.array(train_share),
        "train_rows": np.array(train_rows),
        "purge_gap": arrays["purge_gap"],
    }


def build_model(X_train, hidden_units: list[int], dropout: float, learning_rate: float, seed: int):
    """The MLP: Normalization (mean/variance of X_train) -> Dense/ReLU (+Dropout) ... -> sigmoid."""
    import keras

    inputs = keras.Input(shape=(X_train.shape[1],), name="lagged_returns", dtype="float32")
    # the training split's statistics, fixed in the graph (no adapt(): numpy is exact and quicker here)
    mean = X_train.astype("float64").mean(axis=0)
    variance = X_train.astype("float64").var(axis=0)
    normalise = keras.layers.Normalization(mean=mean, variance=variance, name="normalise")
    x = normalise(inputs)
    # no hidden layer: a logistic regression
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, seed=seed + i, name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability_up")(x)
    model = keras.Model(inputs, outputs, name="djia_mlp")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def epoch_batches(X, y, batch_size: int, seed: int, first_epoch: int, last_epoch: int):
    """A tf.data pipeline of the batches of epochs first_epoch..last_epoch-1.

    The permutation of epoch e depends only on (seed, e): resuming at epoch e replays exactly the batches
    an uninterrupted run would have used from e on.
    """
    import tensorflow as tf

    n = len(y)
    X_t = tf.constant(X)
    y_t = tf.constant(y.astype("float32").reshape(-1, 1))

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), epoch])
        )
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    return (
        tf.data.Dataset.range(first_epoch, last_epoch)
        .flat_map(one_epoch)
        .map(lambda idx: (tf.gather(X_t, idx), tf.gather(y_t, idx)), num_parallel_calls=1)
        .prefetch(2)
    )


def train(
    work_dir: str,
    *,
    hidden_units: list[int],
    dropout: float,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    patience: int,
    seed: int,
    walk_forward_folds: int = 5,
    final_fit: str = "train_split",
    checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    extra_callbacks: tuple = (),
) -> dict[str, Any]:
    """run() with knobs for tests and benchmarks (checkpoint cadence, extra Keras callbacks)."""
    params = _check_params(hidden_units, dropout, learning_rate, batch_size, epochs, patience, seed)
    if (
        isinstance(walk_forward_folds, bool)
        or not isinstance(walk_forward_folds, int)
        or walk_forward_folds < MIN_WALK_FORWARD_FOLDS
    ):
        raise DataError(
            f"walk_forward_folds must be a whole number >= {MIN_WALK_FORWARD_FOLDS}, "
            f"got {walk_forward_folds!r}"
        )
    params["walk_forward_folds"] = walk_forward_folds
    if final_fit not in FINAL_FITS:
        raise DataError(f"final_fit must be one of {', '.join(FINAL_FITS)}, got {final_fit!r}")
    params["final_fit"] = final_fit
    started = time.monotonic()
    work = Path(work_dir)
    arrays = load_training_arrays(work)
    fingerprint = {**params, "features_sha256": _file_hash(work / FEATURES_FILE)}
    finished = _finished_run(work, fingerprint)
    if finished is not None:
        log.info("already trained with these parameters and features (%s); nothing to do", work / MODEL_FILE)
        return _summary(work, finished, already_trained=True)

    import keras
    import numpy as np
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # share the GPU politely with other processes on the node
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    device = f"GPU x{len(gpus)}" if gpus else "CPU"
    keras.utils.set_random_seed(seed)

    checkpoints = Checkpoints(work / CHECKPOINT_DIR, fingerprint=fingerprint)
    state = checkpoints.load_state()
    best_weights = None
    if state is not None:
        model = keras.models.load_model(checkpoints.model_path(state))
        best_weights = checkpoints.load_best_weights(state)
        state["resumed_at"].append(int(state["epoch"]))
        log.info(
            "resuming from checkpoint after epoch %d of %d (best %s %.4f at epoch %d)",
            state["epoch"],
            epochs,
            MONITOR,
            state["best"],
            state["best_epoch"],
        )
    else:
        model = build_model(arrays["X_train"], hidden_units, dropout, learning_rate, seed)
        state = {
            "epoch": 0,
            "best": math.inf,
            "best_epoch": 0,
            "wait": 0,
            "history": {},
            "resumed_at": [],
            "train_seconds": 0.0,
        }
    log.info(
        "training on %s: %d train rows, %d val rows, %d features, up to %d epochs",
        device,
        len(arrays["y_train"]),
        len(arrays["y_val"]),
        arrays["X_train"].shape[1],
        epochs,
    )

    first_epoch = int(state["epoch"])
    if first_epoch < epochs and state["wait"] < patience:
        steps = math.ceil(len(arrays["y_train"]) / batch_size)
        data = epoch_batches(arrays["X_train"], arrays["y_train"], batch_size, seed, first_epoch, epochs)
        tracker = ResumableEarlyStopping(
            checkpoints,
            state,
            best_weights,
            epochs=epochs,
            patience=patience,
            checkpoint_every_s=checkpoint_every_s,
            seed=seed,
        )
        model.fit(
            data,
            epochs=epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=steps,
            validation_data=(arrays["X_val"], arrays["y_val"].astype("float32")),
            validation_batch_size=max(batch_size, 1024),
            callbacks=[tracker, *extra_callbacks],
            shuffle=False,
            verbose=0,
        )
        best_weights = tracker.best_weights
    if best_weights is None:
        raise ComponentError("training ended without any epoch; nothing to save")
    model.set_weights(best_weights)
    if final_fit == "all_before_test":
        model = refit_before_test(arrays, params, max(int(state["best_epoch"]), 1))
    # No checkpoint after the last epoch: the model file is written instead (atomically), and history.json
    # (written last) marks the run as finished, so a rerun with the same inputs is a no-op.
    staging = work / f".{MODEL_FILE}.{np.random.default_rng().integers(1 << 30)}.keras"
    model.save(staging)
    staging.replace(work / MODEL_FILE)
    folds = walk_forward(arrays, params, walk_forward_folds)
    wf_staging = work / f".{WALK_FORWARD_FILE}.{np.random.default_rng().integers(1 << 30)}.npz"
    with open(wf_staging, "wb") as handle:
        np.savez(handle, **folds)
    wf_staging.replace(work / WALK_FORWARD_FILE)
    history = {
        "params": params,
        "device": device,
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        f"best_{MONITOR}": state["best"],
        "stopped_early": state["wait"] >= patience and state["epoch"] < epochs,
        "final_model": FINAL_FITS[final_fit].format(best_epoch=max(int(state["best_epoch"]), 1)),
        "walk_forward": {
            "folds": walk_forward_folds,
            "purge_gap": int(arrays["purge_gap"]),
            "train_rows": [int(r) for r in folds["train_rows"]],
            "epochs": epochs,
            "early_stopping": False,
        },
        "resumed_at_epochs": state["resumed_at"],
        "train_seconds": round(state["train_seconds"], 3),
        "history": state["history"],
        "fingerprint": fingerprint,
    }
    write_tensorboard(work / TENSORBOARD_DIR, state["history"])
    write_json_atomic(work / HISTORY_FILE, history)
    checkpoints.clear()
    log.info(
        "trained %d epochs (best epoch %d, %s %.4f) in %.1fs",
        history["epochs_run"],
        history["best_epoch"],
        MONITOR,
        history[f"best_{MONITOR}"],
        time.monotonic() - started,
    )
    return _summary(work, history, already_trained=False)


def write_tensorboard(folder: Path, curves: dict[str, list[float]]) -> None:
    """The training history as TensorBoard event files, laid out as Keras' TensorBoard callback lays them
    out (``train/`` and ``validation/``, scalars ``epoch_<metric>``, steps from 0).

    Written from the history after the fit rather than by the callback during it: the history survives an
    interruption in the checkpoints, so a resumed run still gets every epoch's curve, once. The folder is
    replaced, so a rerun with other parameters shows only its own curves."""
    import tensorflow as tf

    shutil.rmtree(folder, ignore_errors=True)
    for part, prefix in (("train", ""), ("validation", "val_")):
        writer = tf.summary.create_file_writer(str(folder / part))
        with writer.as_default():
            for key, values in sorted(curves.items()):
                metric = key[len(prefix) :] if prefix else key
                if (prefix and not key.startswith(prefix)) or (not prefix and key.startswith("val_")):
                    continue
                for step, value in enumerate(values):
                    tf.summary.scalar(f"epoch_{metric}", value, step=step)
        writer.close()


def _finished_run(work: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    try:
        history = json.loads((work / HISTORY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if (
        history.get("fingerprint") == fingerprint
        and (work / MODEL_FILE).is_file()
        and (work / WALK_FORWARD_FILE).is_file()
    ):
        return history
    return None


def _summary(work: Path, history: dict[str, Any], *, already_trained: bool) -> dict[str, Any]:
    return {
        "model": str(work / MODEL_FILE),
        "history": str(work / HISTORY_FILE),
        "epochs_run": history["epochs_run"],
        "best_epoch": history["best_epoch"],
        f"best_{MONITOR}": round(history[f"best_{MONITOR}"], 6),
        "stopped_early": history["stopped_early"],
        "resumed_at_epochs": history["resumed_at_epochs"],
        "device": history["device"],
        "already_trained": already_trained,
    }


class Checkpoints:
    """checkpoints/epoch-NNNNN/{model.keras,best.npz,state.json} and a pointer latest.json."""

    def __init__(self, folder: Path, fingerprint: dict[str, Any]) -> None:
        self.folder = folder
        self.fingerprint = fingerprint

    def load_state(self) -> dict[str, Any] | None:
        pointer = self.folder / "latest.json"
        if not pointer.is_file():
            return None
        try:
            latest = json.loads(pointer.read_text())
            state = json.loads((self.folder / latest["folder"] / "state.json").read_text())
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable checkpoint in %s (%s); starting afresh", self.folder, exc)
            return None
        if state.pop("fingerprint", None) != self.fingerprint:
            log.warning(
                "checkpoint in %s was made with other parameters or features; starting afresh", self.folder
            )
            return None
        state["folder"] = latest["folder"]
        return state

    def model_path(self, state: dict[str, Any]) -> Path:
        return self.folder / state["folder"] / "model.keras"

    def load_best_weights(self, state: dict[str, Any]) -> list:
        import numpy as np

        with np.load(self.folder / state["folder"] / "best.npz") as data:
            return [data[f"w{i}"] for i in range(len(data.files))]

    def save(self, model, best_weights: list, state: dict[str, Any]) -> None:
        import numpy as np

        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{state['epoch']:05d}"
        staging = self.folder / f".{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        model.save(staging / "model.keras")  # weights and optimizer state
        np.savez(staging / "best.npz", **{f"w{i}": w for i, w in enumerate(best_weights)})
        payload = {k: v for k, v in state.items() if k != "folder"}
        payload["fingerprint"] = self.fingerprint
        (staging / "state.json").write_text(json.dumps(payload, default=float))
        final = self.folder / name
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        write_json_atomic(self.folder / "latest.json", {"folder": name})  # the switch: atomic
        for old in self.folder.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _keras_callback_base():
    import keras

    return keras.callbacks.Callback


class ResumableEarlyStopping:
    """Early stopping whose state (best, wait, history) survives an interruption, plus ETA logging.

    Built lazily as a keras Callback subclass so importing this module does not import keras.
    """

    def __new__(cls, *args, **kwargs):
        base = _keras_callback_base()
        impl = type("ResumableEarlyStoppingImpl", (_ResumableMixin, base), {})
        obj = impl()
        obj._setup(*args, **kwargs)
        return obj


class _ResumableMixin:
    def _setup(
        self,
        checkpoints: Checkpoints,
        state: dict[str, Any],
        best_weights: list | None,
        *,
        epochs: int,
        patience: int,
        checkpoint_every_s: float,
        seed: int,
    ) -> None:
        self.checkpoints = checkpoints
        self.state = state
        self.best_weights = best_weights
        self.epochs = epochs
        self.patience = patience
        self.checkpoint_every_s = checkpoint_every_s
        self.seed = seed
        self.last_saved = time.monotonic()
        self.epoch_started = time.monotonic()
        self.epoch_times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.monotonic()
        # Dropout draws from a per-layer seed generator whose counter a checkpoint does not restore;
        # deriving its state from (seed, epoch) makes a resumed epoch draw the same masks.
        import numpy as np

        for index, layer in enumerate(self.model.layers):
            generator = getattr(layer, "seed_generator", None)
            if generator is not None:
                dtype = generator.state.dtype
                generator.state.assign(np.array([self.seed + index, epoch * 1_000_003], dtype=dtype))

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        seconds = time.monotonic() - self.epoch_started
        self.epoch_times.append(seconds)
        self.state["train_seconds"] += seconds
        for key, value in logs.items():
            self.state["history"].setdefault(key, []).append(float(value))
        self.state["epoch"] = epoch + 1
        current = float(logs.get(MONITOR, math.inf))
        if current < self.state["best"]:
            self.state.update(best=current, best_epoch=epoch + 1, wait=0)
            self.best_weights = self.model.get_weights()
        else:
            self.state["wait"] += 1
        stop = self.state["wait"] >= self.patience
        remaining = self.epochs - (epoch + 1)
        # the first epoch includes tracing; the recent ones predict the rest better
        recent = self.epoch_times[1:][-5:] or self.epoch_times
        mean = sum(recent) / len(recent)
        log.info(
            "epoch %d/%d: loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f (%.2fs/epoch, ETA %s)%s",
            epoch + 1,
            self.epochs,
            logs.get("loss", math.nan),
            logs.get("accuracy", math.nan),
            logs.get("val_loss", math.nan),
            logs.get("val_accuracy", math.nan),
            mean,
            _duration(0 if stop else remaining * mean),
            " - early stop" if stop else "",
        )
        if stop:
            self.model.stop_training = True
        elif remaining > 0 and time.monotonic() - self.last_saved >= self.checkpoint_every_s:
            if self.best_weights is None:
                self.best_weights = self.model.get_weights()
            self.checkpoints.save(self.model, self.best_weights, self.state)
            self.last_saved = time.monotonic()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_params(hidden_units, dropout, learning_rate, batch_size, epochs, patience, seed) -> dict[str, Any]:
    def whole(name, value, minimum):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise DataError(f"{name} must be a whole number >= {minimum}, got {value!r}")

    if not isinstance(hidden_units, (list, tuple)):
        raise DataError(
            f"hidden_units must be a list of layer sizes (empty: a logistic regression), got {hidden_units!r}"
        )
    for units in hidden_units:
        whole("each of hidden_units", units, 1)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise DataError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, (int, float))
        or not 0 < learning_rate <= 1
    ):
        raise DataError(f"learning_rate must be a number in (0, 1], got {learning_rate!r}")
    whole("batch_size", batch_size, 1)
    whole("epochs", epochs, 1)
    whole("patience", patience, 1)
    whole("seed", seed, 0)
    return {
        "hidden_units": [int(u) for u in hidden_units],
        "dropout": float(dropout),
        "learning_rate": float(learning_rate),
        "batch_size": int(batch_size),
        "epochs": int(epochs),
        "patience": int(patience),
        "seed": int(seed),
    }
