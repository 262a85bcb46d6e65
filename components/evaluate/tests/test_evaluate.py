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
        y_test, yesterday = data["y_test"], data["yesterday_up_test"]
    assert metrics["rows"] == len(y_test) and metrics["split"] == "test"
    for section in (metrics["model"], *metrics["baselines"].values()):
        assert set(section) >= {"accuracy", "roc_auc", "precision", "recall", "f1", "confusion_matrix"}
        assert sum(map(sum, section["confusion_matrix"])) == len(y_test)
    same = metrics["baselines"]["same_as_yesterday"]
    assert same["accuracy"] == pytest.approx(float(np.mean(y_test == yesterday)), abs=1e-6)
    assert metrics["baselines"]["majority_class"]["roc_auc"] == 0.5
    for baseline in ("majority_class", "same_as_yesterday"):
        for metric in ("accuracy", "roc_auc"):
            expected = metrics["model"][metric] > metrics["baselines"][baseline][metric]
            assert metrics["beats_baselines"][baseline][metric] is expected
    assert metrics["beats_baselines"]["all"] is all(
        metrics["beats_baselines"][b][m] for b in ("majority_class", "same_as_yesterday") for m in ("accuracy", "roc_auc"))
    assert metrics["accuracy"] == metrics["model"]["accuracy"]
    assert ("does NOT beat" in metrics["summary"]) is not metrics["beats_baselines"]["all"]


def test_plots_are_png_files(trained_work_dir):
    for name in ("learning_curves.png", "roc.png", "confusion_matrix.png"):
        data = (trained_work_dir / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_missing_model_says_which_component_to_run(tmp_path):
    with pytest.raises(DataError, match="model.keras; run the train component first"):
        evaluate.run(str(tmp_path))
