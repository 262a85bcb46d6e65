"""The KPI gate's significance rule, fed by the reference project's evaluation (components/evaluate):
a model passes only when its advantage over every baseline has a lower confidence bound above zero, on the
test period and on the validation folds, and its log loss beats a constant predictor's; experiments are
ranked on validation, never on the test period."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from branchops.config import KpiSection
from branchops.records import ExperimentEntry
from branchops.stages.training import kpi_verdict, select_best, significance_failures
from components import evaluate

DAYS = 400


def labels(seed):
    """Labels in runs (like overlapping multi-day labels), from a latent AR(1) signal."""
    rng = np.random.default_rng(seed)
    signal = np.zeros(DAYS)
    for i in range(1, DAYS):
        signal[i] = 0.8 * signal[i - 1] + rng.normal()
    return (signal > 0).astype(int), signal


def evaluation(y, probability, train_share, seed=0):
    """The parts of metrics.json the gate reads, computed by the project's own evaluate component."""
    baselines = {
        "majority_class": np.full(DAYS, 1.0 if train_share >= 0.5 else 0.0),
        "persistence": np.roll(y, 5).astype(float),
    }
    comparisons, intervals = evaluate.compare(y, probability, baselines, train_share, 0.95, seed)
    return {
        "roc_auc": evaluate.roc_auc(y, probability),
        "comparisons": comparisons,
        "intervals": intervals,
        "log_loss": evaluate.log_loss(y, probability),
        "log_loss_constant": evaluate.log_loss(y, np.full(DAYS, train_share)),
    }


def logistic_fit(x, y):
    """A one-feature logistic regression (Newton steps): the 'model' of these tests."""
    X = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(2)
    for _ in range(25):
        p = 1 / (1 + np.exp(-X @ w))
        w -= np.linalg.solve(X.T @ (X * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2), X.T @ (p - y))
    return lambda new_x: 1 / (1 + np.exp(-(w[0] + w[1] * new_x)))


def run_metrics(test, validation):
    return {
        **test,
        "validation": {"roc_auc": validation["roc_auc"], "comparisons": validation["comparisons"]},
    }


def context(**kpis):
    return SimpleNamespace(
        config=SimpleNamespace(training=SimpleNamespace(kpis=KpiSection(**kpis), select_by="roc_auc"))
    )


def entry(name, metrics):
    return ExperimentEntry(experiment=name, state="SUCCEEDED", metrics=metrics)


@pytest.fixture(scope="module")
def periods():
    """Three consecutive periods of one process: training, validation, test; a noisy view of the signal
    is the feature."""
    out = {}
    for name, seed in (("train", 10), ("validation", 11), ("test", 12)):
        y, signal = labels(seed)
        feature = signal + np.random.default_rng(seed + 100).normal(scale=3.0, size=DAYS)
        out[name] = (y, feature)
    return out


def test_an_honest_model_passes(periods):
    model = logistic_fit(periods["train"][1], periods["train"][0])
    share = float(periods["train"][0].mean())
    metrics = run_metrics(
        evaluation(periods["test"][0], model(periods["test"][1]), share),
        evaluation(periods["validation"][0], model(periods["validation"][1]), share),
    )
    assert significance_failures(metrics, 0.95) == []
    assert kpi_verdict(context(), entry("honest", metrics), None) == []


def test_a_constant_model_is_refused(periods):
    share = float(periods["train"][0].mean())
    constant = np.full(DAYS, share)
    metrics = run_metrics(
        evaluation(periods["test"][0], constant, share), evaluation(periods["validation"][0], constant, share)
    )
    failures = kpi_verdict(context(), entry("constant", metrics), None)
    assert any("against majority_class on roc_auc: +0.0000" in f and "95% interval" in f for f in failures)
    assert any("does not beat the constant predictor's" in f for f in failures)


def test_a_model_trained_on_shuffled_labels_is_refused(periods):
    y_train, x_train = periods["train"]
    shuffled = np.random.default_rng(0).permutation(y_train)
    model = logistic_fit(x_train, shuffled)
    share = float(shuffled.mean())
    metrics = run_metrics(
        evaluation(periods["test"][0], model(periods["test"][1]), share),
        evaluation(periods["validation"][0], model(periods["validation"][1]), share),
    )
    failures = kpi_verdict(context(), entry("shuffled", metrics), None)
    assert failures and any("not significantly better" in f or "worse" in f for f in failures)


def test_a_model_tuned_on_the_test_set_is_refused_and_not_selected(periods):
    """Tuning on the test period: many unrelated configurations, the one that looks best on the test
    labels kept. Its luck does not carry into the validation folds, and ranking on validation never
    prefers it to an honest model."""
    y_test, y_val = periods["test"][0], periods["validation"][0]
    share = float(periods["train"][0].mean())
    rng = np.random.default_rng(7)
    # 'configurations' whose scores follow the test labels a little by construction: what tuning on them buys
    candidates = [1.2 * y_test + rng.normal(size=DAYS) for _ in range(30)]
    tuned = max(candidates, key=lambda s: evaluate.roc_auc(y_test, s))
    tuned_metrics = run_metrics(
        evaluation(y_test, 1 / (1 + np.exp(-tuned)), share),
        evaluation(y_val, 1 / (1 + np.exp(-rng.normal(size=DAYS))), share),
    )
    # on the test period alone it would pass: only the validation comparisons give it away
    assert all(c["low"] > 0 for c in tuned_metrics["comparisons"])
    failures = kpi_verdict(context(), entry("tuned-on-test", tuned_metrics), None)
    assert failures and all(f.startswith("validation, ") for f in failures)

    model = logistic_fit(periods["train"][1], periods["train"][0])
    honest_metrics = run_metrics(
        evaluation(y_test, model(periods["test"][1]), share),
        evaluation(y_val, model(periods["validation"][1]), share),
    )
    assert tuned_metrics["roc_auc"] > honest_metrics["roc_auc"]  # better on the test period ...
    chosen = select_best([entry("tuned-on-test", tuned_metrics), entry("honest", honest_metrics)], "roc_auc")
    assert chosen.experiment == "honest"  # ... yet ranked on validation, it is not chosen


def test_metrics_without_comparisons_are_refused_unless_significance_is_switched_off():
    plain = {"roc_auc": 0.9, "accuracy": 0.9}
    failures = kpi_verdict(context(), entry("plain", plain), None)
    assert failures == [
        "the run's metrics.json reports no comparisons with baselines (\"comparisons\"), so it "
        "cannot show it beats them significantly (training.kpis.require_significant)"
    ]
    assert kpi_verdict(context(require_significant=False), entry("plain", plain), None) == []


def test_intervals_at_a_lower_confidence_than_configured_are_refused():
    comparison = {
        "baseline": "majority_class",
        "metric": "roc_auc",
        "difference": 0.2,
        "low": 0.1,
        "high": 0.3,
        "confidence": 0.9,
    }
    metrics = {"comparisons": [comparison], "log_loss": 0.6, "log_loss_constant": 0.7}
    assert kpi_verdict(context(), entry("e", metrics), None) == [
        "test period, against majority_class: interval at 0.9000 confidence, not the 95% the KPIs ask"
    ]
    assert kpi_verdict(context(confidence=0.9), entry("e", metrics), None) == []


def test_beating_production_uses_the_interval_when_there_is_one():
    comparison = {
        "baseline": "majority_class",
        "metric": "roc_auc",
        "difference": 0.2,
        "low": 0.1,
        "high": 0.3,
        "confidence": 0.95,
    }
    base = {"comparisons": [comparison], "log_loss": 0.6, "log_loss_constant": 0.7, "roc_auc": 0.70}
    production = {"roc_auc": 0.68}
    # the point estimate beats production, the interval's lower bound does not
    with_interval = {**base, "intervals": {"roc_auc": {"low": 0.62, "high": 0.78, "confidence": 0.95}}}
    failures = kpi_verdict(context(), entry("e", with_interval), production)
    assert failures == [
        "against production on roc_auc: ours 0.7000 (95% interval 0.6200 to 0.7800) does not "
        "clear production's 0.6800 by 0"
    ]
    assert kpi_verdict(context(), entry("e", base), production) == []  # no interval: the point estimate
    clear = {**base, "intervals": {"roc_auc": {"low": 0.69, "high": 0.71, "confidence": 0.95}}}
    assert kpi_verdict(context(), entry("e", clear), production) == []


def test_selection_ranks_on_validation_and_falls_back_to_the_metric():
    with_validation = entry("a", {"roc_auc": 0.55, "validation": {"roc_auc": 0.70}})
    test_only = entry("b", {"roc_auc": 0.65})
    assert select_best([with_validation, test_only], "roc_auc").experiment == "a"
    assert (
        select_best([entry("c", {"roc_auc": 0.6}), entry("d", {"roc_auc": 0.61})], "roc_auc").experiment
        == "d"
    )
