"""Evaluate: the model against two naive baselines on the test split, plus plots.

Writes ``metrics.json`` (accuracy, ROC AUC, precision, recall, F1 and the confusion matrix for the
model, the majority-class baseline and the "same as yesterday" baseline, and whether the model beats
each baseline) and ``plots/learning_curves.png``, ``plots/roc.png``, ``plots/confusion_matrix.png``.
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
# a baseline is beaten when the model is strictly better on these
COMPARED_ON = ("accuracy", "roc_auc")


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


def run(work_dir: str) -> dict[str, Any]:
    import numpy as np

    work = Path(work_dir)
    model_path = require_file(work / "model.keras", "train")
    features_path = require_file(work / "features.npz", "features")
    history_path = require_file(work / "history.json", "train")
    with np.load(features_path) as data:
        needed = ("X_test", "y_test", "yesterday_up_test", "y_train", "dates_test")
        missing = [k for k in needed if k not in data.files]
        if missing:
            raise DataError(f"missing array(s) {', '.join(missing)}; rerun the features component",
                            file=str(features_path))
        X_test, y_test = data["X_test"], data["y_test"]
        yesterday_up, y_train, dates = data["yesterday_up_test"], data["y_train"], data["dates_test"]
    history = json.loads(history_path.read_text())

    import keras

    model = keras.models.load_model(model_path)
    if model.input_shape[-1] != X_test.shape[1]:
        raise DataError(f"the model takes {model.input_shape[-1]} features but features.npz has "
                        f"{X_test.shape[1]}; retrain after rerunning features", file=str(model_path))
    probability = model.predict(X_test, batch_size=4096, verbose=0).ravel()

    share_up_train = float(np.mean(y_train))
    majority = 1 if share_up_train >= 0.5 else 0
    scores = {
        "model": probability,
        # a constant score: predicts the training split's majority class every day
        "majority_class": np.full(len(y_test), float(majority)),
        "same_as_yesterday": yesterday_up.astype("float64"),
    }
    results = {name: classification_metrics(y_test, score) for name, score in scores.items()}
    model_metrics = results["model"]
    beats: dict[str, Any] = {}
    for baseline in ("majority_class", "same_as_yesterday"):
        beats[baseline] = {
            metric: _better(model_metrics[metric], results[baseline][metric]) for metric in COMPARED_ON
        }
    beats["all"] = all(v for b in ("majority_class", "same_as_yesterday") for v in beats[b].values())
    summary = _summary(model_metrics, results, beats)
    metrics = {
        **{k: model_metrics[k] for k in ("accuracy", "roc_auc", "precision", "recall", "f1")},
        "split": "test",
        "rows": len(y_test),
        "first_date": str(dates[0]),
        "last_date": str(dates[-1]),
        "threshold": THRESHOLD,
        "share_up": round(float(np.mean(y_test)), 6),
        "model": model_metrics,
        "baselines": {
            "majority_class": {**results["majority_class"], "predicts": "up" if majority else "down",
                               "share_up_in_train": round(share_up_train, 6)},
            "same_as_yesterday": {**results["same_as_yesterday"],
                                  "predicts": "the target's direction on the day before the label day"},
        },
        "beats_baselines": beats,
        "compared_on": list(COMPARED_ON),
        "summary": summary,
        "training": {k: history.get(k) for k in ("epochs_run", "best_epoch", "stopped_early", "device")},
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
        "plots": [str(work / PLOTS_DIR / n) for n in ("learning_curves.png", "roc.png", "confusion_matrix.png")],
        **{k: metrics[k] for k in ("accuracy", "roc_auc", "precision", "recall", "f1")},
        "beats_baselines": beats,
        "summary": summary,
    }


def _better(model_value, baseline_value) -> bool:
    if model_value is None:
        return False
    if baseline_value is None:
        return True
    return model_value > baseline_value


def _summary(model_metrics, results, beats) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    parts = [f"model accuracy {fmt(model_metrics['accuracy'])}, ROC AUC {fmt(model_metrics['roc_auc'])}"]
    for baseline in ("majority_class", "same_as_yesterday"):
        verdict = "beats" if all(beats[baseline].values()) else "does NOT beat"
        parts.append(f"{verdict} {baseline.replace('_', '-')} (accuracy {fmt(results[baseline]['accuracy'])}, "
                     f"ROC AUC {fmt(results[baseline]['roc_auc'])})")
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
