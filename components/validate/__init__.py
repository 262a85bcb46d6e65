"""Validate: check the consolidated prices, repair the dirt we can repair, reject the rest.

Reads ``prices.parquet`` from the data folder and writes ``validated.parquet`` and
``validation_report.json`` next to it -- or, when the data cannot be trusted, raises ``DataError`` naming
the source file, line and column, and writes nothing.  Every decision is one entry of ``RULES`` below
(documented in components/README.md) and is counted in the report with a few examples.

The features use only Close, so Close is never guessed: an empty, zero or negative Close is rejected.
Open/High/Low are kept for users who build other features, and their dirt is repaired conservatively.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from components.common.errors import DataError
from components.common.io import require_file, staged_outputs, write_json_atomic
from components.common.schema import PRICE_COLUMNS, SOURCE_FILE, SOURCE_LINE

log = logging.getLogger(__name__)

INPUT_FILE = "prices.parquet"
VALIDATED_FILE = "validated.parquet"
REPORT_FILE = "validation_report.json"
# Longest run of missing trading days (per ticker, on the calendar of all tickers) that is filled by
# carrying the last Close forward.  Longer holes mean the ticker was not traded or the file is cut.
MAX_GAP_DAYS = 5
_EXAMPLES = 5

# kind -> (decision, rule); the report counts each kind.
RULES: dict[str, tuple[str, str]] = {
    "duplicate_rows": ("repaired", "the same ticker, date and values twice: one copy is kept"),
    "conflicting_duplicate_dates": ("rejected", "the same ticker and date with different values"),
    "empty_close": ("rejected", "Close is empty: the features are built from Close, which cannot be guessed"),
    "non_positive_close": ("rejected", "Close is zero or negative"),
    "negative_price": ("rejected", "Open, High or Low is negative"),
    "empty_open": ("repaired", ("Open is empty: set to the previous trading day's Close of the ticker "
                                "(the same day's Close on the ticker's first day)")),
    "zero_price": ("repaired", "Open, High or Low is 0.0 (a placeholder, not a price): treated as empty"),
    "empty_high_low": ("repaired", ("High or Low is empty: set to the largest / smallest of the row's "
                                    "Open and Close")),
    "high_low_not_bracketing": ("repaired", ("High below max(Open, Close) or Low above min(Open, Close): "
                                             "High/Low widened to bracket Open and Close")),
    "negative_volume": ("rejected", "Volume is negative"),
    "empty_volume": ("repaired", "Volume is empty: set to 0"),
    "zero_volume": ("kept", "Volume is 0 (counted only; volume is not a feature)"),
    "calendar_gaps": ("repaired", (f"a ticker misses up to {MAX_GAP_DAYS} consecutive trading days of the "
                                   "common calendar: rows added with the last Close carried forward "
                                   "(Open=High=Low=Close, Volume 0), so that day's return is 0")),
    "long_calendar_gaps": ("rejected", (f"a ticker misses more than {MAX_GAP_DAYS} consecutive trading days, "
                                        "or days before its first row")),
}


def run(data_dir: str) -> dict[str, Any]:
    import pandas as pd

    started = time.monotonic()
    source = require_file(Path(data_dir) / INPUT_FILE, "consolidate")
    try:
        prices = pd.read_parquet(source)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DataError(f"cannot read Parquet: {exc}", file=str(source)) from None
    validated, counts, examples, rows_in = validate_prices(prices, str(source))
    tickers = sorted(validated["Name"].unique().tolist())
    report = {
        "rows_in": rows_in,
        "rows_out": len(validated),
        "tickers": tickers,
        "date_range": {"first": validated["Date"].min().strftime("%Y-%m-%d"),
                       "last": validated["Date"].max().strftime("%Y-%m-%d")},
        "trading_days": int(validated["Date"].nunique()),
        "decisions": {
            kind: {"decision": decision, "rule": rule, "count": int(counts.get(kind, 0)),
                   "examples": examples.get(kind, [])}
            for kind, (decision, rule) in RULES.items()
        },
        "repaired_rows": int((validated["repairs"] != "").sum()),
    }
    with staged_outputs(data_dir) as staging:
        validated.to_parquet(staging / VALIDATED_FILE, index=False)
        write_json_atomic(staging / REPORT_FILE, report)
    summary_counts = {k: v["count"] for k, v in report["decisions"].items() if v["count"]}
    log.info("validated %d rows (%d out) in %.1fs: %s", rows_in, len(validated), time.monotonic() - started,
             summary_counts)
    return {
        "validated": str(Path(data_dir) / VALIDATED_FILE),
        "report": str(Path(data_dir) / REPORT_FILE),
        "rows_in": rows_in,
        "rows_out": len(validated),
        "n_tickers": len(tickers),
        "counts": summary_counts,
    }


def validate_prices(prices, parquet_name: str = INPUT_FILE):
    """Return (validated frame, counts per kind, examples per kind, rows in). Raises DataError."""
    import numpy as np
    import pandas as pd

    _check_schema(prices, parquet_name)
    frame = prices.copy()
    rows_in = len(frame)
    if rows_in == 0:
        raise DataError("the price table has no rows", file=parquet_name)
    if SOURCE_FILE not in frame.columns:
        # a table not made by consolidate: point at its own rows (1-based, as a reader would count)
        frame[SOURCE_FILE] = parquet_name
        frame[SOURCE_LINE] = np.arange(1, len(frame) + 1, dtype="int64")
    frame["Date"] = pd.to_datetime(frame["Date"]).astype("datetime64[ns]")
    for column in PRICE_COLUMNS:
        frame[column] = frame[column].astype("float64")
    frame["Volume"] = frame["Volume"].astype("Float64").astype("float64")
    frame = frame.sort_values(["Name", "Date", SOURCE_FILE, SOURCE_LINE], kind="stable").reset_index(drop=True)
    counts: dict[str, int] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    repairs = pd.Series([""] * len(frame), index=frame.index, dtype=object)

    def note(kind: str, mask, column: str | None = None, text: str | None = None) -> None:
        hit = frame.index[np.asarray(mask, dtype=bool)]
        if len(hit) == 0:
            return
        counts[kind] = counts.get(kind, 0) + len(hit)
        bucket = examples.setdefault(kind, [])
        for i in hit[: max(0, _EXAMPLES - len(bucket))]:
            bucket.append(_where(frame, i, column))
        if text:
            repairs.loc[hit] = repairs.loc[hit].map(lambda old: f"{old}; {text}" if old else text)

    def reject(kind: str, mask, column: str, message: str) -> None:
        hit = np.flatnonzero(np.asarray(mask, dtype=bool))
        if len(hit):
            row = frame.iloc[hit[0]]
            raise DataError(f"{row['Name']} {row['Date']:%Y-%m-%d}: {message} (rejected: {RULES[kind][1]}; "
                            f"{len(hit)} such row(s) in all)",
                            file=str(row[SOURCE_FILE]), row=int(row[SOURCE_LINE]), column=column)

    # 1. duplicate dates per ticker
    value_columns = ["Name", "Date", *PRICE_COLUMNS, "Volume"]
    exact = frame.duplicated(subset=value_columns, keep="first")
    note("duplicate_rows", exact)
    frame = frame[~exact]
    repairs = repairs[~exact]
    clash = frame.duplicated(subset=["Name", "Date"], keep=False)
    if clash.any():
        rows = frame[clash]
        first, second = rows.iloc[0], rows.iloc[1]
        raise DataError(
            f"{first['Name']} has two different rows for {first['Date']:%Y-%m-%d} (the other is "
            f"{second[SOURCE_FILE]} line {second[SOURCE_LINE]}); rejected: which one is right cannot be "
            "decided", file=str(first[SOURCE_FILE]), row=int(first[SOURCE_LINE]), column="Date")
    frame = frame.reset_index(drop=True)
    repairs = repairs.reset_index(drop=True)

    # 2. Close: the only column the features read, so never guessed
    reject("empty_close", frame["Close"].isna(), "Close", "Close is empty")
    reject("non_positive_close", frame["Close"] <= 0, "Close", f"Close is {_first(frame, frame['Close'] <= 0, 'Close')}")
    for column in ("Open", "High", "Low"):
        reject("negative_price", frame[column] < 0, column,
               f"{column} is {_first(frame, frame[column] < 0, column)}")
    reject("negative_volume", frame["Volume"] < 0, "Volume",
           f"Volume is {_first(frame, frame['Volume'] < 0, 'Volume')}")

    # 3. Open/High/Low: zero is a placeholder for "unknown"
    for column in ("Open", "High", "Low"):
        zero = frame[column] == 0
        note("zero_price", zero, column, f"{column} 0.0 treated as empty")
        frame.loc[zero, column] = np.nan
    previous_close = frame.groupby("Name", sort=False)["Close"].shift(1)
    empty_open = frame["Open"].isna()
    note("empty_open", empty_open, "Open", "Open set to previous Close")
    frame.loc[empty_open, "Open"] = previous_close[empty_open].fillna(frame["Close"][empty_open])
    for column, pick in (("High", np.fmax), ("Low", np.fmin)):
        empty = frame[column].isna()
        note("empty_high_low", empty, column, f"{column} set from Open/Close")
        frame.loc[empty, column] = pick(frame["Open"], frame["Close"])[empty]
    top = frame[["Open", "Close"]].max(axis=1)
    bottom = frame[["Open", "Close"]].min(axis=1)
    unbracketed = (frame["High"] < top) | (frame["Low"] > bottom)
    note("high_low_not_bracketing", unbracketed, "High", "High/Low widened to bracket Open/Close")
    frame["High"] = np.fmax(frame["High"], top)
    frame["Low"] = np.fmin(frame["Low"], bottom)

    # 4. Volume
    empty_volume = frame["Volume"].isna()
    note("empty_volume", empty_volume, "Volume", "Volume set to 0")
    frame.loc[empty_volume, "Volume"] = 0
    note("zero_volume", (frame["Volume"] == 0) & ~empty_volume, "Volume")
    frame["repairs"] = repairs.astype(str)

    # 5. the common calendar
    frame, gaps = _fill_calendar_gaps(frame)
    if gaps:
        counts["calendar_gaps"] = sum(len(g["dates"]) for g in gaps)
        examples["calendar_gaps"] = gaps[:_EXAMPLES * 2]
    frame["Volume"] = frame["Volume"].astype("int64")
    frame[SOURCE_LINE] = frame[SOURCE_LINE].astype("Int64")
    ordered = ["Date", "Name", *PRICE_COLUMNS, "Volume", "repairs", SOURCE_FILE, SOURCE_LINE]
    return frame[ordered].reset_index(drop=True), counts, examples, rows_in


def _fill_calendar_gaps(frame):
    """Add rows for short holes in a ticker's dates; reject long ones (see RULES)."""
    import numpy as np
    import pandas as pd

    calendar = pd.DatetimeIndex(np.sort(frame["Date"].unique()))
    position = pd.Series(np.arange(len(calendar)), index=calendar)
    added = []
    gaps = []
    for name, rows in frame.groupby("Name", sort=True):
        have = position[rows["Date"]].to_numpy()
        if have[0] > 0:
            first = rows.iloc[0]
            raise DataError(
                f"{name} has no rows before {first['Date']:%Y-%m-%d} while other tickers start on "
                f"{calendar[0]:%Y-%m-%d} ({have[0]} trading days); rejected: {RULES['long_calendar_gaps'][1]}. "
                f"Remove {name}'s rows or the other tickers' earlier days",
                file=str(first[SOURCE_FILE]), row=int(first[SOURCE_LINE]), column="Date")
        expected = np.arange(have[0], len(calendar))
        missing = np.setdiff1d(expected, have)
        if len(missing) == 0:
            continue
        # split the missing positions into runs of consecutive trading days
        runs = np.split(missing, np.flatnonzero(np.diff(missing) != 1) + 1)
        for run_ in runs:
            if len(run_) > MAX_GAP_DAYS:
                before = rows[rows["Date"] < calendar[run_[0]]].iloc[-1]
                raise DataError(
                    f"{name} has no rows from {calendar[run_[0]]:%Y-%m-%d} to {calendar[run_[-1]]:%Y-%m-%d} "
                    f"({len(run_)} trading days); rejected: {RULES['long_calendar_gaps'][1]}",
                    file=str(before[SOURCE_FILE]), row=int(before[SOURCE_LINE]), column="Date")
        carried = rows.set_index("Date")["Close"].reindex(calendar[have[0]:]).ffill()
        for day in calendar[missing]:
            close = float(carried[day])
            added.append({"Date": day, "Name": name, "Open": close, "High": close, "Low": close,
                          "Close": close, "Volume": 0.0, "repairs": "calendar gap: last Close carried forward",
                          SOURCE_FILE: "", SOURCE_LINE: pd.NA})
        gaps.append({"ticker": name, "dates": [f"{d:%Y-%m-%d}" for d in calendar[missing]]})
    if added:
        frame = pd.concat([frame, pd.DataFrame(added)], ignore_index=True)
        frame = frame.sort_values(["Name", "Date"], kind="stable").reset_index(drop=True)
    return frame, gaps


def _check_schema(prices, parquet_name: str) -> None:
    from pandas.api import types

    expected = ("Date", *PRICE_COLUMNS, "Volume", "Name")
    missing = [c for c in expected if c not in prices.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; expected {', '.join(expected)}",
                        file=parquet_name)
    if not types.is_datetime64_any_dtype(prices["Date"]):
        raise DataError(f"Date has type {prices['Date'].dtype}; expected dates (datetime64)", file=parquet_name,
                        column="Date")
    for column in (*PRICE_COLUMNS, "Volume"):
        if not types.is_numeric_dtype(prices[column]) or types.is_bool_dtype(prices[column]):
            raise DataError(f"{column} has type {prices[column].dtype}; expected numbers", file=parquet_name,
                            column=column)
    if not (types.is_string_dtype(prices["Name"]) or types.is_object_dtype(prices["Name"])):
        raise DataError(f"Name has type {prices['Name'].dtype}; expected ticker strings", file=parquet_name,
                        column="Name")
    if prices["Date"].isna().any():
        raise DataError("empty Date", file=parquet_name, column="Date")
    if prices["Name"].isna().any() or (prices["Name"].astype(str).str.strip() == "").any():
        raise DataError("empty ticker name", file=parquet_name, column="Name")


def _first(frame, mask, column: str) -> str:
    import numpy as np

    hit = np.flatnonzero(np.asarray(mask, dtype=bool))
    return repr(float(frame[column].iloc[hit[0]])) if len(hit) else "?"


def _where(frame, index, column: str | None) -> dict[str, Any]:
    row = frame.loc[index]
    return {"ticker": str(row["Name"]), "date": f"{row['Date']:%Y-%m-%d}", "file": str(row[SOURCE_FILE]),
            "line": int(row[SOURCE_LINE]), "column": column}
