"""Evaluate: the model against naive baselines, with intervals, on the test split and on walk-forward folds.

Writes ``metrics.json`` and ``plots/learning_curves.png``, ``plots/roc.png``, ``plots/confusion_matrix.png``.

``metrics.json`` (the shape the toolkit's KPI gate reads, see docs/architecture.md §8):

* top level: the model's test metrics (accuracy, roc_auc, precision, recall, f1, log_loss) and
  ``log_loss_constant``, the log loss of a constant predictor answering the training split's share of
  positives every day;
* ``comparisons``: ``[{"baseline", "metric", "difference", "low", "high", "confidence"}]`` -- the model's
  ROC AUC minus each baseline's on the test days, with a paired moving-block bootstrap interval over the
  test days (blocks keep the days' serial dependence and the overlap of multi-day labels; seeded, numpy
  only).  A model earns its deploy when every ``low`` is above zero and ``log_loss`` < ``log_loss_constant``;
* ``intervals``: the model's test ROC AUC with its interval, and ``log_loss_gain`` (the constant's log
  loss minus the model's, with its interval);
* ``validation``: the same metrics and comparisons on the walk-forward folds (rows before the test
  period only; see train), per fold and as the mean over folds with an interval.  Experiments are ranked on
  this section, so the test split is used once, for the chosen model;
* ``baselines``: each baseline's test metrics; ``beats_baselines``: whether each comparison is significant;
* ``curves``: what ``branchops plots diff`` overlays: ``learning`` (train's per-epoch history: loss,
  val_loss, accuracy, val_accuracy) and ``roc`` (the model's test ROC, ``fpr`` and ``tpr``, at most
  ``ROC_POINTS`` points).

Baselines: **majority_class** (the training split's majority every day) and **persistence** (the last
label known on the label day: for direction, yesterday's direction; for turbulence, whether the 5 days
before were more turbulent than the 22 before them).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from components.common.errors import DataError
from components.common.io import require_file, staged_outputs, write_json_atomic

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"
THRESHOLD = 0.5


def classification_metrics(y_true, probability, threshold: float = THRESHOLD) -> dict[str, Any]:
    """Binary metrics from scores; precision/F1 are 0.0 when nothing is predicted up (and said so)."""
    import numpy as np

    y_true = np.asarray(y_true).astype(int).ravel()
    probability = np.asarray(probability, dtype="float64").ravel()
    predicted = (probability >= threshold).astype(int)
    tp = int(((predicted == 1) & (y_true == 1)).sum())
    tn = int(((predicted == 0) & (y_true == 0)).sum())
    fp = int(((predicted == 1) & (y_true == 0)).sum())
    fn = int(((predicted == 0) & (y_true == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auc = roc_auc(y_true, probability)
    return {
        "accuracy": round((tp + tn) / len(y_true), 6),
        "roc_auc": None if auc is None else round(auc, 6),
        "precision": round(precision, 6),
        "recall": round(recall, 6),
        "f1": round(f1, 6),
        # rows: actual down, actual up; columns: predicted down, predicted up
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "predicted_up_share": round(float(predicted.mean()), 6),
    }


def roc_auc(y_true, score) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties count one half); None with a single class."""
    import numpy as np

    y_true = np.asarray(y_true).astype(int).ravel()
    score = np.asarray(score, dtype="float64").ravel()
    n_pos = int(y_true.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype="float64")
    sorted_scores = score[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(score)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[y_true == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true, score):
    import numpy as np

    y_true = np.asarray(y_true).astype(int).ravel()
    score = np.asarray(score, dtype="float64").ravel()
    thresholds = np.concatenate([[np.inf], np.unique(score)[::-1]])
    pos = max(int(y_true.sum()), 1)
    neg = max(len(y_true) - int(y_true.sum()), 1)
    fpr = [float(((score >= t) & (y_true == 0)).sum() / neg) for t in thresholds]
    tpr = [float(((score >= t) & (y_true == 1)).sum() / pos) for t in thresholds]
    return fpr, tpr


# The ROC kept in metrics.json (and so in the run's record): enough points to draw it, few enough to keep
# the record small whatever the test period's length.
ROC_POINTS = 101


def roc_points(y_true, score, limit: int = ROC_POINTS) -> dict[str, list[float]]:
    """The ROC curve thinned to at most ``limit`` points, its first and last kept."""
    fpr, tpr = roc_curve(y_true, score)
    if len(fpr) > limit:
        picks = sorted({round(i * (len(fpr) - 1) / (limit - 1)) for i in range(limit)})
        fpr, tpr = [fpr[i] for i in picks], [tpr[i] for i in picks]
    return {"fpr": [round(v, 5) for v in fpr], "tpr": [round(v, 5) for v in tpr]}


BASELINES = ("majority_class", "persistence")
BOOTSTRAP_RESAMPLES = 1000
# About a trading month: longer than the 5-day label windows, so overlapping labels stay in one block
BLOCK_DAYS = 20
LOG_LOSS_EPS = 1e-7


def log_loss(y_true, probability) -> float:
    import numpy as np

    return float(np.mean(_day_log_loss(np.asarray(y_true), np.asarray(probability, dtype="float64"))))


def _day_log_loss(y, p):
    import numpy as np

    p = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def fast_roc_auc(y, score) -> float:
    """roc_auc for bootstrap loops (average ranks by binary search; NaN with a single class)."""
    import numpy as np

    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ordered = np.sort(score)
    ranks = (np.searchsorted(ordered, score, "left") + np.searchsorted(ordered, score, "right") + 1) / 2.0
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def block_bootstrap_indices(n: int, resamples: int, block_days: int, rng):
    """Moving-block resamples of 0..n-1: each row a list of n indices made of consecutive runs."""
    import numpy as np

    block = max(1, min(block_days, n))
    blocks = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=(resamples, blocks))
    return (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :n]


def compare(
    y,
    model_score,
    baseline_scores: dict,
    constant,
    confidence: float,
    seed: int,
    groups=None,
    block_days: int = BLOCK_DAYS,
) -> tuple[list[dict], dict]:
    """The model's advantage over each baseline (roc_auc) and over the constant (log_loss), with paired
    bootstrap intervals; and the model's own roc_auc interval.  With ``groups`` (walk-forward folds) the
    days are resampled within each group and the statistic is the mean of the groups' values.  ``constant``:
    the constant predictor's probability, one number or one per day."""
    import numpy as np

    y = np.asarray(y).astype(int)
    model_score = np.asarray(model_score, dtype="float64")
    groups = np.zeros(len(y), dtype=int) if groups is None else np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    constant_loss = _day_log_loss(y, np.broadcast_to(np.asarray(constant, dtype="float64"), y.shape))
    model_loss = _day_log_loss(y, model_score)
    statistics = {
        ("model", "roc_auc"): lambda idx: fast_roc_auc(y[idx], model_score[idx]),
        ("constant", "log_loss"): lambda idx: float(np.mean(constant_loss[idx] - model_loss[idx])),
    }

    def auc_advantage(baseline_score):
        return lambda idx: fast_roc_auc(y[idx], model_score[idx]) - fast_roc_auc(y[idx], baseline_score[idx])

    for name, score in baseline_scores.items():
        statistics[(name, "roc_auc")] = auc_advantage(np.asarray(score, dtype="float64"))

    def over_groups(statistic, picks):
        return float(np.mean([statistic(m[p]) for m, p in zip(members, picks)]))

    rng = np.random.default_rng(seed)
    resampled = [block_bootstrap_indices(len(m), BOOTSTRAP_RESAMPLES, block_days, rng) for m in members]
    identity = [np.arange(len(m)) for m in members]
    alpha = 1 - confidence
    results = {}
    for key, statistic in statistics.items():
        point = over_groups(statistic, identity)
        draws = np.array(
            [over_groups(statistic, [r[b] for r in resampled]) for b in range(BOOTSTRAP_RESAMPLES)]
        )
        draws = draws[np.isfinite(draws)]
        low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
        results[key] = {
            "difference": round(point, 6),
            "low": round(float(low), 6),
            "high": round(float(high), 6),
            "confidence": confidence,
        }
    comparisons = [
        {"baseline": name, "metric": metric, **results[(name, metric)]}
        for name, metric in results
        if name not in ("model", "constant")
    ]
    own = results[("model", "roc_auc")]
    return comparisons, {
        "roc_auc": {
            "value": own["difference"],
            "low": own["low"],
            "high": own["high"],
            "confidence": confidence,
        },
        # the constant's log loss minus the model's: positive when the model is better
        "log_loss_gain": results[("constant", "log_loss")],
    }


def run(work_dir: str, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    import numpy as np

    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.5 <= confidence < 1:
        raise DataError(f"confidence must be a number in [0.5, 1), got {confidence!r}")
    work = Path(work_dir)
    model_path = require_file(work / "model.keras", "train")
    features_path = require_file(work / "features.npz", "features")
    history_path = require_file(work / "history.json", "train")
    walk_forward_path = require_file(work / "walk_forward.npz", "train")
    with np.load(features_path) as data:
        needed = ("X_test", "y_test", "persistence_test", "y_train", "dates_test")
        missing = [k for k in needed if k not in data.files]
        if missing:
            raise DataError(
                f"missing array(s) {', '.join(missing)}; rerun the features component",
                file=str(features_path),
            )
        X_test, y_test = data["X_test"], data["y_test"]
        persistence, y_train, dates = data["persistence_test"], data["y_train"], data["dates_test"]
    with np.load(walk_forward_path) as data:
        folds = {k: data[k] for k in data.files}
    history = json.loads(history_path.read_text())
    meta_path = work / "features.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}

    import keras

    model = keras.models.load_model(model_path)
    if model.input_shape[-1] != X_test.shape[1]:
        raise DataError(
            f"the model takes {model.input_shape[-1]} features but features.npz has "
            f"{X_test.shape[1]}; retrain after rerunning features",
            file=str(model_path),
        )
    probability = model.predict(X_test, batch_size=4096, verbose=0).ravel()

    share_up_train = float(np.mean(y_train))
    majority = 1 if share_up_train >= 0.5 else 0
    scores = {
        "model": probability,
        # a constant score: predicts the training split's majority class every day
        "majority_class": np.full(len(y_test), float(majority)),
        "persistence": persistence.astype("float64"),
    }
    results = {name: classification_metrics(y_test, score) for name, score in scores.items()}
    model_metrics = {**results["model"], "log_loss": round(log_loss(y_test, probability), 6)}
    comparisons, intervals = compare(
        y_test, probability, {b: scores[b] for b in BASELINES}, share_up_train, confidence, seed
    )
    validation = {**_walk_forward_section(folds, confidence, seed), "final_model": history.get("final_model")}
    log_loss_constant = round(log_loss(y_test, np.full(len(y_test), share_up_train)), 6)
    beats: dict[str, Any] = {c["baseline"]: {c["metric"]: c["low"] > 0} for c in comparisons}
    beats["constant"] = {"log_loss": model_metrics["log_loss"] < log_loss_constant}
    beats["all"] = all(c["low"] > 0 for c in comparisons) and beats["constant"]["log_loss"]
    summary = _summary(model_metrics, log_loss_constant, intervals, comparisons, validation, len(y_test))
    metrics = {
        **{k: model_metrics[k] for k in ("accuracy", "roc_auc", "precision", "recall", "f1", "log_loss")},
        "log_loss_constant": log_loss_constant,
        "predicts": meta.get("predicts"),
        "target_kind": meta.get("target_kind"),
        "split": "test",
        "rows": len(y_test),
        "first_date": str(dates[0]),
        "last_date": str(dates[-1]),
        "threshold": THRESHOLD,
        "share_up": round(float(np.mean(y_test)), 6),
        "model": model_metrics,
        "comparisons": comparisons,
        "intervals": intervals,
        "validation": validation,
        "baselines": {
            "majority_class": {
                **results["majority_class"],
                "predicts": "up" if majority else "down",
                "share_up_in_train": round(share_up_train, 6),
            },
            "persistence": {**results["persistence"], "predicts": "the last label known on the label day"},
        },
        "beats_baselines": beats,
        "bootstrap": {
            "resamples": BOOTSTRAP_RESAMPLES,
            "block_days": BLOCK_DAYS,
            "seed": seed,
            "interval": f"two-sided {confidence:.0%} percentile interval of a paired moving-block "
            "bootstrap over the evaluation days",
        },
        "summary": summary,
        "training": {
            k: history.get(k) for k in ("epochs_run", "best_epoch", "stopped_early", "device", "final_model")
        },
        "curves": {"learning": history.get("history", {}), "roc": roc_points(y_test, probability)},
    }
    with staged_outputs(work) as staging:
        write_json_atomic(staging / METRICS_FILE, metrics)
        plots = staging / PLOTS_DIR
        plots.mkdir()
        _plot_learning_curves(history, plots / "learning_curves.png")
        _plot_roc(y_test, scores, results, plots / "roc.png")
        _plot_confusion(model_metrics["confusion_matrix"], plots / "confusion_matrix.png")
    log.info("%s", summary)
    return {
        "metrics": str(work / METRICS_FILE),
        "plots": [
            str(work / PLOTS_DIR / n) for n in ("learning_curves.png", "roc.png", "confusion_matrix.png")
        ],
        **{
            k: metrics[k]
            for k in ("accuracy", "roc_auc", "precision", "recall", "f1", "log_loss", "log_loss_constant")
        },
        "comparisons": comparisons,
        "validation": {k: validation[k] for k in ("roc_auc", "accuracy", "log_loss", "folds_count")},
        "beats_baselines": beats,
        "summary": summary,
    }


def _walk_forward_section(folds: dict[str, Any], confidence: float, seed: int) -> dict[str, Any]:
    import numpy as np

    per_fold = []
    baselines = {
        "majority_class": np.zeros(len(folds["y"])),
        "persistence": folds["persistence"].astype("float64"),
    }
    constant = np.zeros(len(folds["y"]))
    for index in np.unique(folds["fold"]):
        rows = folds["fold"] == index
        y, p = folds["y"][rows], folds["probability"][rows]
        share = float(folds["train_share"][index])
        baselines["majority_class"][rows] = 1.0 if share >= 0.5 else 0.0
        constant[rows] = share
        auc = roc_auc(y, p)
        per_fold.append(
            {
                "fold": int(index) + 1,
                "first_date": str(folds["dates"][rows][0]),
                "last_date": str(folds["dates"][rows][-1]),
                "rows": int(rows.sum()),
                "train_rows": int(folds["train_rows"][index]),
                "roc_auc": None if auc is None else round(auc, 6),
                "accuracy": round(float(np.mean((p >= THRESHOLD) == y)), 6),
                "log_loss": round(log_loss(y, p), 6),
                "log_loss_constant": round(log_loss(y, np.full(len(y), share)), 6),
                "persistence_roc_auc": roc_auc(y, folds["persistence"][rows]),
            }
        )
    # the constant differs per fold (each fold's training share): it is passed per day
    comparisons, intervals = compare(
        folds["y"], folds["probability"], baselines, constant, confidence, seed, groups=folds["fold"]
    )

    def mean(key):
        values = [f[key] for f in per_fold if f[key] is not None]
        return round(float(np.mean(values)), 6) if values else None

    return {
        "source": "walk-forward folds before the test period (the test split is not used)",
        "purge_gap": int(folds["purge_gap"]),
        "folds_count": len(per_fold),
        "folds": per_fold,
        "roc_auc": mean("roc_auc"),
        "accuracy": mean("accuracy"),
        "log_loss": mean("log_loss"),
        "log_loss_constant": mean("log_loss_constant"),
        "intervals": intervals,
        "comparisons": comparisons,
    }


def _summary(model_metrics, log_loss_constant, intervals, comparisons, validation, rows) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    auc = intervals["roc_auc"]
    parts = [
        f"test ({rows} days): ROC AUC {fmt(model_metrics['roc_auc'])} "
        f"[{fmt(auc['low'])}, {fmt(auc['high'])}], "
        f"accuracy {fmt(model_metrics['accuracy'])}"
    ]
    for c in comparisons:
        verdict = "significantly better than" if c["low"] > 0 else "NOT significantly better than"
        parts.append(
            f"{verdict} {c['baseline'].replace('_', '-')} on {c['metric']} "
            f"({c['difference']:+.3f}, {c['confidence']:.0%} interval [{c['low']:+.3f}, {c['high']:+.3f}])"
        )
    verdict = "beats" if model_metrics["log_loss"] < log_loss_constant else "does NOT beat"
    parts.append(
        f"log loss {model_metrics['log_loss']:.3f} {verdict} the constant predictor's {log_loss_constant:.3f}"
    )
    wf = validation["intervals"]["roc_auc"]
    parts.append(
        f"walk-forward ({validation['folds_count']} folds) ROC AUC {fmt(validation['roc_auc'])} "
        f"[{fmt(wf['low'])}, {fmt(wf['high'])}]"
    )
    return "; ".join(parts)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_learning_curves(history: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    curves = history.get("history", {})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            values = curves.get(key, [])
            ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        if history.get("best_epoch"):
            ax.axvline(history["best_epoch"], color="grey", linestyle="--", linewidth=1, label="best epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
    fig.suptitle("Learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_roc(y_test, scores, results, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, score in scores.items():
        fpr, tpr = roc_curve(y_test, score)
        auc = results[name]["roc_auc"]
        ax.plot(fpr, tpr, label=f"{name} (AUC {'n/a' if auc is None else f'{auc:.3f}'})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC on the test split")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_confusion(matrix, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(matrix, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=14)
    ax.set_xticks([0, 1], labels=["down", "up"])
    ax.set_yticks([0, 1], labels=["down", "up"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("Confusion matrix (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
