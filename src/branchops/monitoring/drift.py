"""Drift of the served traffic against the training reference the export stored with the model.

Per feature (and for the predicted probability) two measures, each against the reference of
``components/export`` (101 quantiles and a sample of training rows):

* the **Population Stability Index** over 10 bins cut at the reference's deciles:
  ``sum((live - expected) * ln(live / expected))``. The expected share of each bin comes from the
  reference quantiles (0.1 each for a continuous feature; a value many training rows share, such as 0,
  merges bins and their shares). An empty bin's share is floored at :data:`EPSILON` so the logarithm stays
  finite;
* a two-sample **Kolmogorov-Smirnov** test of the live rows against the reference sample
  (``scipy.stats.ks_2samp``).

A feature counts as drifted when both agree: its PSI reaches ``psi_threshold`` (a shift large enough to
matter) and its KS p-value is below ``ks_alpha`` divided by the number of features tested (Bonferroni:
``ks_alpha`` is then the chance that a check with no shift at all flags any feature, however many
features the model has). Neither alone would do: PSI alone flags small samples' noise, KS alone flags
shifts too small to matter once traffic is large.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from branchops.errors import DataError

BINS = 10
# the share given to an empty bin (of the live rows or of the reference): a bin no live row fell into
# adds a large but finite term
EPSILON = 1e-4


@dataclass
class Drift:
    name: str
    psi: float
    ks_statistic: float
    ks_pvalue: float
    drifted: bool
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def expected_shares(quantiles: Sequence[float]) -> tuple[list[float], list[float]]:
    """The bin edges (the distinct inner deciles) and each bin's share of the reference, read from the
    reference's 101 quantiles: the share of training rows at or below an edge is the highest quantile
    level whose value is at or below it."""
    if len(quantiles) != 101 or not all(isinstance(q, (int, float)) and math.isfinite(q) for q in quantiles):
        raise DataError("a reference distribution must have 101 finite quantiles (q0..q100)")
    step = (len(quantiles) - 1) // BINS
    edges = sorted({float(quantiles[i * step]) for i in range(1, BINS)})

    def at_or_below(edge: float) -> float:
        return max(i for i, q in enumerate(quantiles) if q <= edge) / (len(quantiles) - 1)

    cumulative = [0.0, *(at_or_below(edge) for edge in edges), 1.0]
    return edges, [b - a for a, b in zip(cumulative, cumulative[1:])]


def psi(quantiles: Sequence[float], live: Sequence[float]) -> float:
    """The Population Stability Index of ``live`` against the reference given by its quantiles."""
    import numpy as np

    edges, expected = expected_shares(quantiles)
    values = np.asarray(live, dtype="float64")
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise DataError("no finite live value to compare with the reference")
    # bin i holds edges[i-1] < x <= edges[i] (the reference's quantiles are "at or below" too)
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(expected))
    actual = np.maximum(counts / values.size, EPSILON)
    expected_arr = np.maximum(np.asarray(expected), EPSILON)
    return float(np.sum((actual - expected_arr) * np.log(actual / expected_arr)))


def ks(reference_sample: Sequence[float], live: Sequence[float]) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov statistic and p-value (scipy.stats.ks_2samp, two-sided)."""
    import numpy as np
    from scipy.stats import ks_2samp

    reference = np.asarray(reference_sample, dtype="float64")
    values = np.asarray(live, dtype="float64")
    result = ks_2samp(reference[np.isfinite(reference)], values[np.isfinite(values)])
    return float(result.statistic), float(result.pvalue)


def measure(
    name: str,
    reference: dict[str, Any],
    live: Sequence[float],
    *,
    psi_threshold: float,
    ks_alpha: float,
    tests: int = 1,
) -> Drift:
    """Drift of one column; ``tests``: how many columns the check tests at once (the KS correction)."""
    quantiles, sample = reference.get("quantiles"), reference.get("sample")
    if not isinstance(sample, list) or not sample:
        raise DataError(f"the reference of '{name}' has no sample to test against")
    value = psi(quantiles, live)
    statistic, pvalue = ks(sample, live)
    return Drift(
        name=name,
        psi=round(value, 6),
        ks_statistic=round(statistic, 6),
        ks_pvalue=pvalue,
        drifted=bool(value >= psi_threshold and pvalue < ks_alpha / max(tests, 1)),
        rows=len(live),
    )


def feature_drift(
    reference: dict[str, Any],
    feature_names: list[str],
    rows: list[list[float]],
    *,
    psi_threshold: float,
    ks_alpha: float,
    tests: int | None = None,
) -> list[Drift]:
    """Drift of every feature of the reference, its values taken from ``rows`` by position; ``tests``:
    the columns the check tests in all (default: these features)."""
    import numpy as np

    features = reference.get("features")
    if not isinstance(features, dict):
        raise DataError("the model's reference has no per-feature distributions ('features')")
    missing = [n for n in feature_names if n not in features]
    if missing:
        raise DataError(f"the model's reference lacks features {missing[:5]} of its feature_names")
    matrix = np.asarray(rows, dtype="float64").reshape(len(rows), len(feature_names))
    return [
        measure(
            name,
            features[name],
            matrix[:, j],
            psi_threshold=psi_threshold,
            ks_alpha=ks_alpha,
            tests=tests or len(feature_names),
        )
        for j, name in enumerate(feature_names)
    ]
