from __future__ import annotations

import json

import numpy as np
import pytest

from components import evaluate
from components.common.errors import DataError


def test_metrics_on_a_hand_checked_example():
    y = [0, 0, 1, 1]
    score = [0.1, 0.4, 0.35, 0.8]
    m = evaluate.classification_metrics(y, score)
    assert m["roc_auc"] == 0.75  # 3 of the 4 (positive, negative) pairs are ordered right
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]
    assert (m["accuracy"], m["precision"], m["recall"]) == (0.75, 1.0, 0.5)
    assert m["f1"] == pytest.approx(2 / 3, abs=1e-6)


def test_constant_scores_have_auc_one_half_and_no_precision():
    m = evaluate.classification_metrics([0, 1, 1, 0, 1], [0.0] * 5)
    assert m["roc_auc"] == 0.5 and m["precision"] == 0.0 and m["f1"] == 0.0
    assert evaluate.roc_auc([1, 1, 1], [0.2, 0.4, 0.9]) is None


def test_metrics_file_compares_the_model_with_both_baselines(trained_work_dir):
    metrics = json.loads((trained_work_dir / "metrics.json").read_text())
    with np.load(trained_work_dir / "features.npz") as data:
        y_test, persistence, y_train = data["y_test"], data["persistence_test"], data["y_train"]
    assert metrics["rows"] == len(y_test) and metrics["split"] == "test"
    for section in (metrics["model"], *metrics["baselines"].values()):
        assert set(section) >= {"accuracy", "roc_auc", "precision", "recall", "f1", "confusion_matrix"}
        assert sum(map(sum, section["confusion_matrix"])) == len(y_test)
    assert metrics["baselines"]["persistence"]["accuracy"] == pytest.approx(
        float(np.mean(y_test == persistence)), abs=1e-6
    )
    assert metrics["baselines"]["majority_class"]["roc_auc"] == 0.5
    # the comparisons the KPI gate reads: one per baseline, the point estimate inside its interval
    assert [c["baseline"] for c in metrics["comparisons"]] == ["majority_class", "persistence"]
    for c in metrics["comparisons"]:
        assert (
            c["metric"] == "roc_auc" and c["confidence"] == 0.95 and c["low"] <= c["difference"] <= c["high"]
        )
        expected = metrics["roc_auc"] - metrics["baselines"][c["baseline"]]["roc_auc"]
        assert c["difference"] == pytest.approx(expected, abs=1e-5)
        assert metrics["beats_baselines"][c["baseline"]]["roc_auc"] is (c["low"] > 0)
    share = float(np.mean(y_train))
    constant = -np.mean(y_test * np.log(share) + (1 - y_test) * np.log(1 - share))
    assert metrics["log_loss_constant"] == pytest.approx(constant, abs=1e-5)
    assert metrics["accuracy"] == metrics["model"]["accuracy"]
    assert ("NOT significantly" in metrics["summary"]) is not all(
        c["low"] > 0 for c in metrics["comparisons"]
    )


def test_validation_section_holds_walk_forward_folds_before_the_test_period(trained_work_dir):
    metrics = json.loads((trained_work_dir / "metrics.json").read_text())
    validation = metrics["validation"]
    assert validation["folds_count"] == len(validation["folds"]) == 5
    assert all(f["last_date"] < metrics["first_date"] for f in validation["folds"])
    assert validation["roc_auc"] == pytest.approx(
        np.mean([f["roc_auc"] for f in validation["folds"]]), abs=1e-5
    )
    interval = validation["intervals"]["roc_auc"]
    assert interval["low"] <= validation["roc_auc"] <= interval["high"]
    assert [c["baseline"] for c in validation["comparisons"]] == ["majority_class", "persistence"]


def _serially_dependent_labels(n, seed):
    """Labels that come in runs, like overlapping 5-day labels: an AR(1) signal thresholded."""
    rng = np.random.default_rng(seed)
    signal = np.zeros(n)
    for i in range(1, n):
        signal[i] = 0.8 * signal[i - 1] + rng.normal()
    return (signal > 0).astype(int), signal


def test_an_informative_model_is_significantly_better_and_a_constant_one_is_not():
    y, signal = _serially_dependent_labels(400, 0)
    rng = np.random.default_rng(1)
    informative = 1 / (1 + np.exp(-(signal + rng.normal(size=400))))
    persistence = np.roll(y, 5)
    comparisons, intervals = evaluate.compare(
        y, informative, {"majority_class": np.zeros(400), "persistence": persistence}, 0.5, 0.95, seed=3
    )
    assert all(c["low"] > 0 for c in comparisons)
    assert intervals["log_loss_gain"]["low"] > 0
    constant, _ = evaluate.compare(y, np.full(400, 0.5), {"majority_class": np.zeros(400)}, 0.5, 0.95, seed=3)
    assert constant[0]["difference"] == 0 and constant[0]["low"] <= 0


def test_block_bootstrap_intervals_are_wider_than_independent_days_for_dependent_labels():
    """Resampling single days would pretend 400 independent labels; blocks keep the runs together."""
    y, signal = _serially_dependent_labels(400, 1)
    # the model's errors persist too (a regime it misreads for weeks)
    noise = np.convolve(np.random.default_rng(6).normal(size=400), np.ones(10) / 3, "same")
    score = signal * 0.3 + noise
    blocks, _ = evaluate.compare(
        y, score, {"majority_class": np.zeros(400)}, 0.5, 0.95, seed=1, block_days=20
    )
    days, _ = evaluate.compare(y, score, {"majority_class": np.zeros(400)}, 0.5, 0.95, seed=1, block_days=1)
    assert blocks[0]["high"] - blocks[0]["low"] > 1.3 * (days[0]["high"] - days[0]["low"])


def test_bootstrap_is_seeded():
    y, signal = _serially_dependent_labels(200, 2)
    first = evaluate.compare(y, signal, {"majority_class": np.zeros(200)}, 0.5, 0.95, seed=4)
    assert evaluate.compare(y, signal, {"majority_class": np.zeros(200)}, 0.5, 0.95, seed=4) == first


def test_fast_auc_matches_the_reference_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    score = rng.integers(0, 7, 300).astype(float)
    assert evaluate.fast_roc_auc(y, score) == pytest.approx(evaluate.roc_auc(y, score), abs=1e-12)


def test_plots_are_png_files(trained_work_dir):
    for name in ("learning_curves.png", "roc.png", "confusion_matrix.png"):
        data = (trained_work_dir / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_missing_model_says_which_component_to_run(tmp_path):
    with pytest.raises(DataError, match="model.keras; run the train component first"):
        evaluate.run(str(tmp_path))


def test_metrics_file_carries_the_curves_plots_diff_overlays(trained_work_dir):
    metrics = json.loads((trained_work_dir / "metrics.json").read_text())
    history = json.loads((trained_work_dir / "history.json").read_text())
    assert metrics["curves"]["learning"] == history["history"]
    fpr, tpr = metrics["curves"]["roc"]["fpr"], metrics["curves"]["roc"]["tpr"]
    assert 2 < len(fpr) == len(tpr) <= evaluate.ROC_POINTS
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert fpr == sorted(fpr) and tpr == sorted(tpr)
    # the thinned curve still encloses the model's ROC AUC
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(fpr, fpr[1:], tpr, tpr[1:]))
    assert area == pytest.approx(metrics["roc_auc"], abs=0.01)
