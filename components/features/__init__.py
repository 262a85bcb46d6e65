"""Features and label: lagged log returns of every ticker, and the target's direction the next day.

For a label on trading day t (the target ticker's Close of day t above its Close of day t-1 is "up" = 1,
anything else -- down or unchanged -- is 0) the features are the log returns of all tickers on days
t-1, t-2, ..., t-window: each uses Closes of day t-1 or earlier, so nothing from the label's day or later
enters a feature.  Rows are split chronologically (train, then validation, then test).  The arrays are
raw returns; normalisation is learnt from the training split inside the model (see train), so the
exported model takes raw returns too.
"""

from __future__ import annotations

import logging
import time
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


def feature_names(tickers: list[str], window: int) -> list[str]:
    """Column order of X: lag 1 of every ticker, then lag 2, ... (lag k = return k days before the label)."""
    return [f"{ticker}_ret_lag{lag}" for lag in range(1, window + 1) for ticker in tickers]


def build_features(prices, target: str, window: int):
    """Return (X float32 [n, window*tickers], y int32 [n], yesterday_up int32 [n], label dates, tickers)."""
    import numpy as np

    closes = prices.pivot(index="Date", columns="Name", values="Close").sort_index()
    tickers = sorted(closes.columns.tolist())
    closes = closes[tickers]
    if closes.isna().any().any():
        day, ticker = closes.isna().stack().idxmax()
        raise DataError(f"{ticker} has no Close on {day:%Y-%m-%d} while other tickers do; run the validate "
                        "component first (it fills short calendar gaps)", file=INPUT_FILE, column="Close")
    if target not in tickers:
        raise DataError(f"target ticker {target!r} is not in the data; tickers: {', '.join(tickers)}")
    returns = np.log(closes.to_numpy(dtype="float64"))
    returns = returns[1:] - returns[:-1]  # returns[i] is the return on day i+1 (close i+1 over close i)
    return_days = closes.index[1:]
    target_col = tickers.index(target)
    n = len(returns) - window
    if n <= 0:
        raise DataError(f"{len(closes)} trading days are not enough for a window of {window} days")
    # sample j: label day = return day window+j; lag k feature = return on day window+j-k (k = 1..window)
    X = np.concatenate([returns[window - lag: window - lag + n] for lag in range(1, window + 1)], axis=1)
    label_returns = returns[window: window + n, target_col]
    y = (label_returns > 0).astype("int32")
    yesterday_up = (returns[window - 1: window - 1 + n, target_col] > 0).astype("int32")
    dates = return_days[window: window + n]
    return X.astype("float32"), y, yesterday_up, dates, tickers


def split_bounds(n: int, val_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    n_train = n - n_val - n_test
    return {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}


def run(data_dir: str, work_dir: str, target: str, window: int, val_fraction: float,
        test_fraction: float) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    started = time.monotonic()
    _check_params(target, window, val_fraction, test_fraction)
    source = require_file(Path(data_dir) / INPUT_FILE, "validate")
    prices = pd.read_parquet(source, columns=["Date", "Name", "Close"])
    X, y, yesterday_up, dates, tickers = build_features(prices, target, window)
    bounds = split_bounds(len(y), val_fraction, test_fraction)
    for split, (lo, hi) in bounds.items():
        if hi - lo < MIN_ROWS_PER_SPLIT:
            raise DataError(f"the {split} split would have {hi - lo} rows (fewer than {MIN_ROWS_PER_SPLIT}); "
                            f"{len(y)} labelled days in all -- use more data or other fractions")
    arrays: dict[str, Any] = {}
    meta_splits = {}
    day_strings = np.array([f"{d:%Y-%m-%d}" for d in dates])
    for split, (lo, hi) in bounds.items():
        arrays[f"X_{split}"] = X[lo:hi]
        arrays[f"y_{split}"] = y[lo:hi]
        arrays[f"yesterday_up_{split}"] = yesterday_up[lo:hi]
        arrays[f"dates_{split}"] = day_strings[lo:hi]
        meta_splits[split] = {"rows": hi - lo, "first_date": str(day_strings[lo]),
                              "last_date": str(day_strings[hi - 1]),
                              "share_up": round(float(y[lo:hi].mean()), 4)}
    names = feature_names(tickers, window)
    meta = {
        "feature_names": names,
        "n_features": len(names),
        "tickers": tickers,
        "target": target,
        "window": window,
        "label": f"1 if {target}'s Close on the label day is above the previous trading day's Close, else 0",
        "features": "log returns of every ticker on the `window` trading days before the label day "
                    "(lag 1 = the day before); raw, not normalised",
        "baseline_inputs": "yesterday_up_<split>: 1 if the target went up on the day before the label day",
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "splits": meta_splits,
        "rows": len(y),
    }
    with staged_outputs(work_dir) as staging:
        with open(staging / ARRAYS_FILE, "wb") as handle:
            np.savez(handle, **arrays)
        write_json_atomic(staging / META_FILE, meta)
    log.info("features: %d rows x %d features for %s (window %d) in %.1fs; train %d, val %d, test %d",
             len(y), len(names), target, window, time.monotonic() - started,
             *(meta_splits[s]["rows"] for s in SPLITS))
    return {
        "features": str(Path(work_dir) / ARRAYS_FILE),
        "metadata": str(Path(work_dir) / META_FILE),
        "rows": len(y),
        "n_features": len(names),
        "splits": meta_splits,
    }


def _check_params(target: str, window: int, val_fraction: float, test_fraction: float) -> None:
    if not isinstance(target, str) or not target:
        raise DataError(f"target must be a ticker symbol, got {target!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise DataError(f"window must be a whole number of days >= 1, got {window!r}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 0.5:
            raise DataError(f"{name} must be a number between 0 and 0.5 (exclusive), got {value!r}")
