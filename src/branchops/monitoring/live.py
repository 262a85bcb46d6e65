"""The live metric: the metric training selects models by (``training.select_by``), computed on the served
rows whose outcome has arrived, with a bootstrap interval, against the value validated at training.

Supported metrics are those a served probability and a 0/1 outcome define on their own:

* ``roc_auc``: the area under the ROC curve as the reference project's evaluate component defines it
  (the Mann-Whitney U of the positives' scores against the negatives', ties counting one half, over
  n_pos * n_neg), here through ``scipy.stats.mannwhitneyu``;
* ``accuracy``: the share of rows whose label at the model's threshold (0.5 unless the metadata says
  otherwise) is the outcome.

The interval is a percentile bootstrap over the joined rows (seeded, so a check is reproducible), each
resample's U statistic computed from how many times it drew each row (the rows sorted once, not each
resample); resamples holding a single class, where ROC AUC is undefined, are left out.
The live metric is "significantly below" the validated one when the interval's upper bound is below it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

SUPPORTED = ("roc_auc", "accuracy")
RESAMPLES = 1000
SEED = 15
# resamples computed at once: 100 x 10,000 rows is 8 MB a matrix
CHUNK = 100


@dataclass
class LiveMetric:
    name: str
    value: float | None
    low: float | None
    high: float | None
    n: int
    validated: float | None
    confidence: float
    note: str | None = None  # why there is no value (too few outcomes, one class only, ...)

    @property
    def below_validated(self) -> bool:
        """The whole interval lies below the validated value: the served model does worse than at training."""
        return self.high is not None and self.validated is not None and self.high < self.validated

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["below_validated"] = self.below_validated
        return data


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U / (n_pos * n_neg)); None with a single class."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype="float64")
    positives, negatives = s[y == 1], s[y == 0]
    if positives.size == 0 or negatives.size == 0:
        return None
    u = mannwhitneyu(positives, negatives, alternative="two-sided", method="asymptotic").statistic
    return float(u) / (positives.size * negatives.size)


def accuracy(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> float | None:
    import numpy as np

    y = np.asarray(labels, dtype=int)
    if y.size == 0:
        return None
    return float(np.mean((np.asarray(scores, dtype="float64") >= threshold).astype(int) == y))


def metric_function(name: str, threshold: float) -> Callable[[Any, Any], float | None] | None:
    if name == "roc_auc":
        return roc_auc
    if name == "accuracy":
        return lambda labels, scores: accuracy(labels, scores, threshold)
    return None


def live_metric(
    name: str,
    labels: Sequence[int],
    scores: Sequence[float],
    *,
    validated: float | None,
    confidence: float,
    min_outcomes: int,
    threshold: float = 0.5,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> LiveMetric:
    """``name`` on the joined rows with its ``confidence`` bootstrap interval; no value (and a note saying
    why) with fewer than ``min_outcomes`` rows or a metric not computed live."""
    import numpy as np

    n = len(labels)
    empty = LiveMetric(name, None, None, None, n, validated, confidence)
    compute = metric_function(name, threshold)
    if compute is None:
        empty.note = f"'{name}' is not computed live (supported: {', '.join(SUPPORTED)})"
        return empty
    if n < min_outcomes:
        empty.note = f"{n} served rows have an outcome; the live metric needs {min_outcomes}"
        return empty
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype="float64")
    value = compute(y, s)
    if value is None:
        empty.note = "every outcome so far has the same label: the metric is undefined"
        return empty
    estimates = _bootstrap(name, y, s, threshold, resamples, seed)
    if not estimates.size:
        empty.note = "too few outcomes of one of the labels for an interval"
        return empty
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return LiveMetric(
        name, round(value, 6), round(float(low), 6), round(float(high), 6), n, validated, confidence
    )


def _bootstrap(name: str, y: Any, s: Any, threshold: float, resamples: int, seed: int) -> Any:
    """The metric on ``resamples`` resamples of the rows, with replacement (undefined ones left out).

    A resample is the count of times it drew each row. ROC AUC then needs no sorting per resample: the
    rows are sorted once, grouped by equal score, and a resample's U statistic is, over the score groups,
    the positives drawn in a group times the negatives drawn below it plus half those drawn in it (ties
    count one half), which is what ranking the resample would give."""
    import numpy as np

    generator = np.random.default_rng(seed)
    n = len(y)
    order = np.argsort(s, kind="mergesort")
    sorted_scores, sorted_labels = s[order], y[order]
    group_starts = np.flatnonzero(np.r_[True, np.diff(sorted_scores) != 0])
    predicted_right = ((s >= threshold).astype(int) == y).astype(float)
    found = []
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        picks = generator.integers(0, n, (size, n))
        counts = np.bincount((picks + n * np.arange(size)[:, None]).ravel(), minlength=size * n).reshape(
            size, n
        )
        if name == "accuracy":
            found.append(counts @ predicted_right / n)
            continue
        drawn = counts[:, order]
        positives = np.add.reduceat(drawn * sorted_labels, group_starts, axis=1)
        negatives = np.add.reduceat(drawn * (1 - sorted_labels), group_starts, axis=1)
        below = np.cumsum(negatives, axis=1) - negatives
        u = (positives * (below + 0.5 * negatives)).sum(axis=1)
        n_pos, n_neg = positives.sum(axis=1), negatives.sum(axis=1)
        defined = (n_pos > 0) & (n_neg > 0)
        found.append(u[defined] / (n_pos[defined] * n_neg[defined]))
    return np.concatenate(found) if found else np.zeros(0)
