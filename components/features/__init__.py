"""Features and label for one of two targets (``target_kind``), from Closes of the days before the label.

* ``direction``: on trading day t, 1 if the target ticker's Close of day t is above its Close of day t-1
  ("up"), else 0 (down or unchanged); features: the log returns of all tickers on days t-1 ... t-window.
  Label horizon 1 day.  On this data it has no honest signal: it is kept so the KPI gate can refuse it.
* ``turbulence``: 1 if the target's mean absolute log return over days t ... t+4 is above its mean over
  the 22 trading days before t ("the next 5 days are more turbulent than the last month"); features: the
  mean absolute log return of the target and of the market (the mean return of all tickers) over the
  last 1, 5, 22 and 250 trading days before t.  Label horizon 5 days.

Every feature uses Closes of day t-1 or earlier.  Rows are split chronologically (train, then validation,
then test), and ``purge_gap`` labelled days (at least the label horizon) are dropped before each later
split, so no training label's window reaches into a day that a later split's label covers
(:func:`check_no_leak`).  The arrays are raw; normalisation is learnt from the training split inside the
model (see train), so the exported model takes raw values too.

``data_until`` (a day, ``YYYY-MM-DD``; empty: all the data) is the data window's last day: prices after it
are dropped before anything is computed, so no feature comes from a later day and a label whose window
would reach past it is not made at all (the run trains as if the data ended that day).
"""

from __future__ import annotations

import itertools
import logging
import time
from datetime import date
from pathlib import Path
from typing import Any

from components.common.errors import DataError
from components.common.io import require_file, staged_outputs, write_json_atomic

log = logging.getLogger(__name__)

INPUT_FILE = "validated.parquet"
ARRAYS_FILE = "features.npz"
META_FILE = "features.json"
SPLITS = ("train", "val", "test")
MIN_ROWS_PER_SPLIT = 20
TARGET_KINDS = ("direction", "turbulence")
# trading days a label looks ahead (its window is t .. t + horizon - 1)
LABEL_HORIZON = {"direction": 1, "turbulence": 5}
TURBULENCE_LOOKBACK = 22
TURBULENCE_SPANS = (1, 5, 22, 250)
PREDICTS = {
    "direction": "whether {target} closes above the previous trading day's Close (1 = up)",
    "turbulence": "whether {target}'s mean absolute daily log return over the next 5 trading days (the label "
    "day and the 4 after it) is above its mean over the 22 trading days before (1 = more turbulent)",
}


def feature_names(tickers: list[str], window: int) -> list[str]:
    """Column order of X: lag 1 of every ticker, then lag 2, ... (lag k = return k days before the label)."""
    return [f"{ticker}_ret_lag{lag}" for lag in range(1, window + 1) for ticker in tickers]


def _closes_and_returns(prices, target: str):
    import numpy as np

    closes = prices.pivot(index="Date", columns="Name", values="Close").sort_index()
    tickers = sorted(closes.columns.tolist())
    closes = closes[tickers]
    if closes.isna().any().any():
        day, ticker = closes.isna().stack().idxmax()
        raise DataError(
            f"{ticker} has no Close on {day:%Y-%m-%d} while other tickers do; run the validate "
            "component first (it fills short calendar gaps)",
            file=INPUT_FILE,
            column="Close",
        )
    if target not in tickers:
        raise DataError(f"target ticker {target!r} is not in the data; tickers: {', '.join(tickers)}")
    returns = np.log(closes.to_numpy(dtype="float64"))
    returns = returns[1:] - returns[:-1]  # returns[i] is the return on day i+1 (close i+1 over close i)
    return closes, tickers, returns, closes.index[1:]


def build_features(prices, target: str, window: int):
    """Direction: (X float32 [n, window*tickers], y int32 [n], persistence int32 [n], label dates, tickers);
    persistence is 1 if the target went up on the day before the label day."""
    import numpy as np

    closes, tickers, returns, return_days = _closes_and_returns(prices, target)
    target_col = tickers.index(target)
    n = len(returns) - window
    if n <= 0:
        raise DataError(f"{len(closes)} trading days are not enough for a window of {window} days")
    # sample j: label day = return day window+j; lag k feature = return on day window+j-k (k = 1..window)
    X = np.concatenate([returns[window - lag : window - lag + n] for lag in range(1, window + 1)], axis=1)
    label_returns = returns[window : window + n, target_col]
    y = (label_returns > 0).astype("int32")
    yesterday_up = (returns[window - 1 : window - 1 + n, target_col] > 0).astype("int32")
    dates = return_days[window : window + n]
    return X.astype("float32"), y, yesterday_up, dates, tickers


def turbulence_feature_names(target: str) -> list[str]:
    return [f"{who}_mean_abs_ret_{span}d" for who in (target, "market") for span in TURBULENCE_SPANS]


def build_turbulence_features(prices, target: str):
    """Turbulence: (X float32 [n, 8], y int32 [n], persistence int32 [n], label dates, tickers).

    persistence is the last label known on day t: were days t-5 .. t-1 more turbulent than the 22 days
    before them?"""
    import numpy as np

    closes, tickers, returns, return_days = _closes_and_returns(prices, target)
    horizon, lookback = LABEL_HORIZON["turbulence"], TURBULENCE_LOOKBACK
    stock = np.abs(returns[:, tickers.index(target)])
    market = np.abs(returns.mean(axis=1))

    # trailing[k][i]: mean of the k values before index i (indices i-k .. i-1)
    def trailing(values, k):
        sums = np.concatenate([[0.0], np.cumsum(values)])
        out = np.full(len(values) + 1, np.nan)
        out[k:] = (sums[k:] - sums[:-k]) / k
        return out[:-1]

    first = max(max(TURBULENCE_SPANS), lookback + horizon)
    last = len(returns) - horizon  # the label window t .. t+4 must lie inside the data
    if last - first <= 0:
        raise DataError(
            f"{len(closes)} trading days are not enough for the turbulence target "
            f"({first + horizon + 1} at least)"
        )
    days = np.arange(first, last + 1)
    X = np.stack(
        [trailing(series, span)[days] for series in (stock, market) for span in TURBULENCE_SPANS], axis=1
    )
    ahead = np.array([stock[t : t + horizon].mean() for t in days])
    month = trailing(stock, lookback)[days]
    y = (ahead > month).astype("int32")
    recent = trailing(stock, horizon)[days]
    month_before = trailing(stock, lookback)[days - horizon]
    persistence = (recent > month_before).astype("int32")
    return X.astype("float32"), y, persistence, return_days[days], tickers


def check_no_leak(label_days, bounds: dict[str, tuple[int, int]], horizon: int) -> None:
    """Refuse splits where a label of an earlier split covers a day that a later split's label covers:
    the last label window of each split must end before the first label day of the next one."""
    ordered = [s for s in SPLITS if s in bounds]
    for earlier, later in itertools.pairwise(ordered):
        last_label_window_end = bounds[earlier][1] - 1 + horizon - 1
        if last_label_window_end >= bounds[later][0]:
            raise DataError(
                f"the {earlier} split's last label looks {horizon} day(s) ahead to "
                f"{label_days[min(last_label_window_end, len(label_days) - 1)]}, which is a label day "
                f"of the {later} split (from {label_days[bounds[later][0]]}): labels leak across the "
                f"splits; the purge gap must be at least the label horizon ({horizon})"
            )


def split_bounds(
    n: int, val_fraction: float, test_fraction: float, purge_gap: int = 0
) -> dict[str, tuple[int, int]]:
    """Row ranges of the splits; ``purge_gap`` rows before validation and before test belong to none."""
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    n_train = n - n_val - n_test - 2 * purge_gap
    val_start = n_train + purge_gap
    test_start = val_start + n_val + purge_gap
    return {"train": (0, n_train), "val": (val_start, val_start + n_val), "test": (test_start, n)}


def within_window(prices, data_until: str | None):
    """The price rows dated no later than ``data_until`` (all of them when it is empty or None)."""
    import pandas as pd

    if not data_until:
        return prices
    try:
        last_day = pd.Timestamp(date.fromisoformat(data_until))
    except (TypeError, ValueError):
        raise DataError(
            f"data_until must be a day as YYYY-MM-DD (or empty for all data), got {data_until!r}"
        ) from None
    kept = prices[prices["Date"] <= last_day]
    if kept.empty:
        first = prices["Date"].min()
        raise DataError(
            f"data_until {data_until} is before the first trading day of the data"
            + (f" ({first:%Y-%m-%d})" if not prices.empty else "")
        )
    return kept


def rows_by_day(
    data_dir: str,
    target: str,
    target_kind: str = "direction",
    window: int = 5,
    first_day: str = "",
    last_day: str = "",
) -> dict[str, Any]:
    """The features and label of each labelled trading day from ``first_day`` to ``last_day`` (inclusive;
    empty: unbounded), computed exactly as :func:`run` computes them for training, from all the prices in
    ``data_dir``: what a client sends the served model on that day (the features use Closes of the days
    before only) and the label that becomes known ``label_horizon`` days later. Days whose label window
    reaches past the data are left out. Returns ``{"dates": [YYYY-MM-DD...], "X": float32 [n, features],
    "y": int32 [n], "feature_names": [...], "label_horizon": int}``."""
    import numpy as np
    import pandas as pd

    if target_kind not in TARGET_KINDS:
        raise DataError(f"target_kind must be one of {', '.join(TARGET_KINDS)}, got {target_kind!r}")
    source = require_file(Path(data_dir) / INPUT_FILE, "validate")
    prices = pd.read_parquet(source, columns=["Date", "Name", "Close"])
    if target_kind == "direction":
        X, y, _, dates, tickers = build_features(prices, target, window)
        names = feature_names(tickers, window)
    else:
        X, y, _, dates, tickers = build_turbulence_features(prices, target)
        names = turbulence_feature_names(target)
    day_strings = np.array([f"{d:%Y-%m-%d}" for d in dates])
    keep = np.ones(len(day_strings), dtype=bool)
    if first_day:
        keep &= day_strings >= first_day
    if last_day:
        keep &= day_strings <= last_day
    return {
        "dates": day_strings[keep].tolist(),
        "X": X[keep],
        "y": y[keep],
        "feature_names": names,
        "label_horizon": LABEL_HORIZON[target_kind],
    }


def run(
    data_dir: str,
    work_dir: str,
    target: str,
    window: int,
    val_fraction: float,
    test_fraction: float,
    target_kind: str = "direction",
    purge_gap: int | None = None,
    data_until: str = "",
) -> dict[str, Any]:
    """``purge_gap`` None: the label horizon of ``target_kind``; smaller than it is refused. ``data_until``:
    the last day of prices used (empty: all)."""
    import numpy as np
    import pandas as pd

    started = time.monotonic()
    _check_params(target, window, val_fraction, test_fraction)
    if target_kind not in TARGET_KINDS:
        raise DataError(f"target_kind must be one of {', '.join(TARGET_KINDS)}, got {target_kind!r}")
    horizon = LABEL_HORIZON[target_kind]
    purge_gap = horizon if purge_gap is None else purge_gap
    if isinstance(purge_gap, bool) or not isinstance(purge_gap, int) or purge_gap < horizon:
        raise DataError(
            f"purge_gap must be a whole number of days >= the label horizon of {target_kind} "
            f"({horizon}), got {purge_gap!r}"
        )
    source = require_file(Path(data_dir) / INPUT_FILE, "validate")
    prices = within_window(pd.read_parquet(source, columns=["Date", "Name", "Close"]), data_until)
    if target_kind == "direction":
        X, y, persistence, dates, tickers = build_features(prices, target, window)
        names = feature_names(tickers, window)
    else:
        X, y, persistence, dates, tickers = build_turbulence_features(prices, target)
        names = turbulence_feature_names(target)
    bounds = split_bounds(len(y), val_fraction, test_fraction, purge_gap)
    day_strings = np.array([f"{d:%Y-%m-%d}" for d in dates])
    check_no_leak(day_strings, bounds, horizon)
    for split, (lo, hi) in bounds.items():
        if hi - lo < MIN_ROWS_PER_SPLIT:
            raise DataError(
                f"the {split} split would have {hi - lo} rows (fewer than {MIN_ROWS_PER_SPLIT}); "
                f"{len(y)} labelled days in all -- use more data or other fractions"
            )
    arrays: dict[str, Any] = {}
    meta_splits = {}
    for split, (lo, hi) in bounds.items():
        arrays[f"X_{split}"] = X[lo:hi]
        arrays[f"y_{split}"] = y[lo:hi]
        arrays[f"persistence_{split}"] = persistence[lo:hi]
        arrays[f"dates_{split}"] = day_strings[lo:hi]
        meta_splits[split] = {
            "rows": hi - lo,
            "first_date": str(day_strings[lo]),
            "last_date": str(day_strings[hi - 1]),
            "share_up": round(float(y[lo:hi].mean()), 4),
        }
    meta = {
        "feature_names": names,
        "n_features": len(names),
        "tickers": tickers,
        "target": target,
        "target_kind": target_kind,
        "window": window if target_kind == "direction" else None,
        "label_horizon": horizon,
        "purge_gap": purge_gap,
        "predicts": PREDICTS[target_kind].format(target=target),
        "label": "1 if " + PREDICTS[target_kind].format(target=target).removeprefix("whether "),
        "features": (
            "log returns of every ticker on the `window` trading days before the label day "
            "(lag 1 = the day before); raw, not normalised"
        )
        if target_kind == "direction"
        else (
            f"mean absolute log return of {target} and of the market (mean return of all tickers) over "
            f"the last {', '.join(map(str, TURBULENCE_SPANS))} trading days before the label day; raw"
        ),
        "baseline_inputs": "persistence_<split>: "
        + (
            "1 if the target went up on the day before the label day"
            if target_kind == "direction"
            else "1 if the 5 days before the label day were more turbulent than the 22 days before them "
            "(the last label known on the label day)"
        ),
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "splits": meta_splits,
        "rows": len(y),
        # the data window: None when every price was used
        "data_until": data_until or None,
        "last_price_day": f"{prices['Date'].max():%Y-%m-%d}",
    }
    with staged_outputs(work_dir) as staging:
        with open(staging / ARRAYS_FILE, "wb") as handle:
            # train's walk-forward folds purge the same gap between their training rows and their fold
            np.savez(handle, **arrays, label_horizon=np.int32(horizon), purge_gap=np.int32(purge_gap))
        write_json_atomic(staging / META_FILE, meta)
    log.info(
        "features: %d rows x %d features for %s (window %d) in %.1fs; train %d, val %d, test %d",
        len(y),
        len(names),
        target,
        window,
        time.monotonic() - started,
        *(meta_splits[s]["rows"] for s in SPLITS),
    )
    return {
        "features": str(Path(work_dir) / ARRAYS_FILE),
        "metadata": str(Path(work_dir) / META_FILE),
        "rows": len(y),
        "n_features": len(names),
        "splits": meta_splits,
        "data_until": data_until or None,
    }


def _check_params(target: str, window: int, val_fraction: float, test_fraction: float) -> None:
    if not isinstance(target, str) or not target:
        raise DataError(f"target must be a ticker symbol, got {target!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise DataError(f"window must be a whole number of days >= 1, got {window!r}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 0.5:
            raise DataError(f"{name} must be a number between 0 and 0.5 (exclusive), got {value!r}")
