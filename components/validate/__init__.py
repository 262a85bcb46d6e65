"""Validate: check the consolidated prices, repair the dirt we can repair, reject the rest.

Reads ``prices.parquet`` from the data folder and writes ``validated.parquet`` and
``validation_report.json`` next to it -- or, when the data cannot be trusted, raises ``DataError`` naming
the source file, line and column, and writes nothing.  Every decision is one entry of ``RULES`` below
(documented in components/README.md) and is counted in the report with a few examples.

The features use only Close, so Close is never guessed: an empty, zero, negative or infinite Close, or
one that jumps by more than ``max_daily_move`` from the day before, is rejected.  Rows must lie on days the
exchange was open (``exchange_calendar``, a maintained calendar of the ``exchange_calendars`` package),
inside the range their file's name states and not after today, and the tickers must be the configured
universe (``tickers``).  Open/High/Low are kept for users who build other features, and their dirt is
repaired conservatively -- never by widening High/Low to a value beyond the daily-move bound.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.common.errors import ComponentError, DataError
from components.common.io import require_file, staged_outputs, write_json_atomic
from components.common.schema import PRICE_COLUMNS, SOURCE_FILE, SOURCE_LINE, STATED_RANGE

log = logging.getLogger(__name__)

INPUT_FILE = "prices.parquet"
VALIDATED_FILE = "validated.parquet"
REPORT_FILE = "validation_report.json"
# Longest run of missing trading days (per ticker, on the calendar of all tickers) that is filled by
# carrying the last Close forward.  Longer holes mean the ticker was not traded or the file is cut.
MAX_GAP_DAYS = 5
_EXAMPLES = 5
# The configured universe of the reference project: the 31 tickers of the Kaggle dataset (the 30 Dow Jones
# stocks of 2017 and AABA).  The features and the served model's input are built from exactly these.
REFERENCE_TICKERS = (
    "AABA",
    "AAPL",
    "AMZN",
    "AXP",
    "BA",
    "CAT",
    "CSCO",
    "CVX",
    "DIS",
    "GE",
    "GOOGL",
    "GS",
    "HD",
    "IBM",
    "INTC",
    "JNJ",
    "JPM",
    "KO",
    "MCD",
    "MMM",
    "MRK",
    "MSFT",
    "NKE",
    "PFE",
    "PG",
    "TRV",
    "UNH",
    "UTX",
    "VZ",
    "WMT",
    "XOM",
)
# Split-adjusted Closes of these stocks moved at most 1.48x in a day from 2006 to 2017 (AABA, 2008-02-01,
# the Microsoft bid); a factor of 3 between consecutive Closes is a typo or an unadjusted split.
MAX_DAILY_MOVE = 3.0
# The New York Stock Exchange in exchange_calendars, which keeps its holidays and unscheduled closures.
EXCHANGE_CALENDAR = "XNYS"

# kind -> (decision, rule); the report counts each kind.
RULES: dict[str, tuple[str, str]] = {
    "missing_ticker": (
        "rejected",
        (
            "a ticker of the configured universe (tickers) has no rows: the features "
            "and the model's input would silently lose it"
        ),
    ),
    "unexpected_ticker": ("rejected", "a ticker that is not in the configured universe (tickers)"),
    "duplicate_rows": ("repaired", "the same ticker, date and values twice: one copy is kept"),
    "conflicting_duplicate_dates": ("rejected", "the same ticker and date with different values"),
    "non_finite_value": (
        "rejected",
        (
            "Open, High, Low, Close or Volume is infinite (inf, -inf): like an empty "
            "Close it cannot be trained on, and a High/Low repair would spread it"
        ),
    ),
    "empty_close": ("rejected", "Close is empty: the features are built from Close, which cannot be guessed"),
    "non_positive_close": ("rejected", "Close is zero or negative"),
    "negative_price": ("rejected", "Open, High or Low is negative"),
    "outside_stated_range": (
        "rejected",
        ("dated outside the range its file's name states (TICKER_<first>_to_<last>.csv)"),
    ),
    "future_date": ("rejected", "dated after today"),
    "not_a_trading_day": (
        "rejected",
        (
            "dated on a day the exchange was closed: a weekend, a holiday or an "
            "unscheduled closure, as the maintained calendar exchange_calendar "
            "records them"
        ),
    ),
    "daily_move_beyond_bound": (
        "rejected",
        (
            "Close moved by more than the factor max_daily_move from the "
            "ticker's previous Close: split-adjusted prices do not jump like "
            "that, so the value or the split adjustment is wrong"
        ),
    ),
    "empty_open": (
        "repaired",
        (
            "Open is empty: set to the previous trading day's Close of the ticker "
            "(the same day's Close on the ticker's first day)"
        ),
    ),
    "zero_price": ("repaired", "Open, High or Low is 0.0 (a placeholder, not a price): treated as empty"),
    "empty_high_low": (
        "repaired",
        ("High or Low is empty: set to the largest / smallest of the row's Open and Close"),
    ),
    "high_low_not_bracketing": (
        "repaired",
        (
            "High below max(Open, Close) or Low above min(Open, Close): "
            "High/Low widened to bracket Open and Close"
        ),
    ),
    "repair_beyond_bound": (
        "rejected",
        (
            "filling or widening High/Low would take an Open more than the factor "
            "max_daily_move away from the row's Close: a repair never writes a "
            "bad value"
        ),
    ),
    "negative_volume": ("rejected", "Volume is negative"),
    "empty_volume": ("repaired", "Volume is empty: set to 0"),
    "zero_volume": ("kept", "Volume is 0 (counted only; volume is not a feature)"),
    "calendar_gaps": (
        "repaired",
        (
            f"a ticker misses up to {MAX_GAP_DAYS} consecutive trading days of the "
            "common calendar: rows added with the last Close carried forward "
            "(Open=High=Low=Close, Volume 0), so that day's return is 0"
        ),
    ),
    "long_calendar_gaps": (
        "rejected",
        (f"a ticker misses more than {MAX_GAP_DAYS} consecutive trading days, or days before its first row"),
    ),
}


def run(
    data_dir: str,
    tickers: Sequence[str] = REFERENCE_TICKERS,
    max_daily_move: float = MAX_DAILY_MOVE,
    exchange_calendar: str = EXCHANGE_CALENDAR,
) -> dict[str, Any]:
    import pandas as pd

    started = time.monotonic()
    checks = _checked_parameters(tickers, max_daily_move, exchange_calendar)
    source = require_file(Path(data_dir) / INPUT_FILE, "consolidate")
    try:
        prices = pd.read_parquet(source)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DataError(f"cannot read Parquet: {exc}", file=str(source)) from None
    validated, counts, examples, rows_in = validate_prices(prices, str(source), **checks)
    tickers = sorted(validated["Name"].unique().tolist())
    report = {
        "rows_in": rows_in,
        "rows_out": len(validated),
        "tickers": tickers,
        "checks": {
            "tickers": sorted(checks["tickers"]),
            "max_daily_move": checks["max_daily_move"],
            "exchange_calendar": checks["exchange_calendar"],
        },
        "date_range": {
            "first": validated["Date"].min().strftime("%Y-%m-%d"),
            "last": validated["Date"].max().strftime("%Y-%m-%d"),
        },
        "trading_days": int(validated["Date"].nunique()),
        "decisions": {
            kind: {
                "decision": decision,
                "rule": rule,
                "count": int(counts.get(kind, 0)),
                "examples": examples.get(kind, []),
            }
            for kind, (decision, rule) in RULES.items()
        },
        "repaired_rows": int((validated["repairs"] != "").sum()),
    }
    with staged_outputs(data_dir) as staging:
        validated.to_parquet(staging / VALIDATED_FILE, index=False)
        write_json_atomic(staging / REPORT_FILE, report)
    summary_counts = {k: v["count"] for k, v in report["decisions"].items() if v["count"]}
    log.info(
        "validated %d rows (%d out) in %.1fs: %s",
        rows_in,
        len(validated),
        time.monotonic() - started,
        summary_counts,
    )
    return {
        "validated": str(Path(data_dir) / VALIDATED_FILE),
        "report": str(Path(data_dir) / REPORT_FILE),
        "rows_in": rows_in,
        "rows_out": len(validated),
        "n_tickers": len(tickers),
        "counts": summary_counts,
    }


def _checked_parameters(tickers, max_daily_move, exchange_calendar) -> dict[str, Any]:
    """Refuse parameters that would weaken a check (exit 1: the pipeline is wrong, not the data)."""
    import exchange_calendars

    if (
        isinstance(tickers, str)
        or not isinstance(tickers, Sequence)
        or not tickers
        or not all(isinstance(t, str) and t.strip() for t in tickers)
    ):
        raise ComponentError(f"tickers must be a non-empty list of ticker names, not {tickers!r}")
    if (
        isinstance(max_daily_move, bool)
        or not isinstance(max_daily_move, (int, float))
        or not math.isfinite(max_daily_move)
        or max_daily_move <= 1
    ):
        raise ComponentError(
            f"max_daily_move must be a finite factor above 1 (e.g. 3 for a 3x jump), not {max_daily_move!r}"
        )
    if exchange_calendar not in exchange_calendars.get_calendar_names(include_aliases=True):
        raise ComponentError(
            f"exchange_calendar {exchange_calendar!r} is not a calendar of exchange_calendars "
            "(e.g. XNYS for the New York Stock Exchange)"
        )
    return {
        "tickers": tuple(t.strip() for t in tickers),
        "max_daily_move": float(max_daily_move),
        "exchange_calendar": exchange_calendar,
    }


def validate_prices(
    prices,
    parquet_name: str = INPUT_FILE,
    *,
    tickers: Sequence[str] = REFERENCE_TICKERS,
    max_daily_move: float = MAX_DAILY_MOVE,
    exchange_calendar: str = EXCHANGE_CALENDAR,
):
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
    frame = frame.sort_values(["Name", "Date", SOURCE_FILE, SOURCE_LINE], kind="stable").reset_index(
        drop=True
    )
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
            raise DataError(
                f"{row['Name']} {row['Date']:%Y-%m-%d}: {message} (rejected: {RULES[kind][1]}; "
                f"{len(hit)} such row(s) in all)",
                file=str(row[SOURCE_FILE]),
                row=int(row[SOURCE_LINE]),
                column=column,
            )

    def first_hit(mask):
        hit = np.flatnonzero(np.asarray(mask, dtype=bool))
        return frame.iloc[hit[0]] if len(hit) else None

    # 0. the configured universe: exactly these tickers, each with rows
    present = set(frame["Name"].unique().tolist())
    missing = sorted(set(tickers) - present)
    if missing:
        raise DataError(
            f"no rows of {', '.join(missing)}, which the configured universe of {len(set(tickers))} tickers "
            f"expects (rejected: {RULES['missing_ticker'][1]}); add their files or change the universe",
            file=parquet_name,
            column="Name",
        )
    foreign = ~frame["Name"].isin(list(tickers))
    row = first_hit(foreign)
    if row is not None:
        reject(
            "unexpected_ticker",
            foreign,
            "Name",
            f"{row['Name']} is not in the configured universe of {len(set(tickers))} tickers; add it there "
            "or remove its rows",
        )

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
            "decided",
            file=str(first[SOURCE_FILE]),
            row=int(first[SOURCE_LINE]),
            column="Date",
        )
    frame = frame.reset_index(drop=True)
    repairs = repairs.reset_index(drop=True)

    # 2. Close: the only column the features read, so never guessed
    for column in ("Close", "Open", "High", "Low", "Volume"):
        infinite = np.isinf(frame[column].to_numpy())
        reject("non_finite_value", infinite, column, f"{column} is {_first(frame, infinite, column)}")
    reject("empty_close", frame["Close"].isna(), "Close", "Close is empty")
    reject(
        "non_positive_close",
        frame["Close"] <= 0,
        "Close",
        f"Close is {_first(frame, frame['Close'] <= 0, 'Close')}",
    )
    for column in ("Open", "High", "Low"):
        reject(
            "negative_price",
            frame[column] < 0,
            column,
            f"{column} is {_first(frame, frame[column] < 0, column)}",
        )
    reject(
        "negative_volume",
        frame["Volume"] < 0,
        "Volume",
        f"Volume is {_first(frame, frame['Volume'] < 0, 'Volume')}",
    )

    # 3. dates: inside the file's stated range, not in the future, on days the exchange was open
    first_day, last_day = _stated_ranges(frame[SOURCE_FILE])
    for outside, bound, side in (
        (frame["Date"] > last_day, last_day, "after"),
        (frame["Date"] < first_day, first_day, "before"),
    ):
        row = first_hit(outside)
        if row is not None:
            stated = bound[row.name]
            reject(
                "outside_stated_range",
                outside,
                "Date",
                f"dated {side} {stated:%Y-%m-%d}, the {'last' if side == 'after' else 'first'} day its file "
                "name states",
            )
    today = pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()
    reject("future_date", frame["Date"] > today, "Date", f"dated after today ({today:%Y-%m-%d})")
    sessions = _sessions(exchange_calendar, frame["Date"].min(), frame["Date"].max())
    closed = ~frame["Date"].isin(sessions)
    row = first_hit(closed)
    if row is not None:
        reject(
            "not_a_trading_day",
            closed,
            "Date",
            f"{exchange_calendar} was closed on {row['Date']:%Y-%m-%d} (a {row['Date']:%A})",
        )

    # 4. Close against the ticker's previous Close: a jump beyond the bound is a typo or a missed split
    previous = frame.groupby("Name", sort=False)[["Close", "Date", SOURCE_FILE, SOURCE_LINE]].shift(1)
    ratio = frame["Close"] / previous["Close"]
    jump = (np.abs(np.log(ratio)) > math.log(max_daily_move)).fillna(False)
    row = first_hit(jump)
    if row is not None:
        before = previous.loc[row.name]
        where = (
            f"line {int(before[SOURCE_LINE])}"
            if before[SOURCE_FILE] == row[SOURCE_FILE]
            else f"{before[SOURCE_FILE]} line {int(before[SOURCE_LINE])}"
        )
        reject(
            "daily_move_beyond_bound",
            jump,
            "Close",
            f"Close {float(row['Close'])!r} is {ratio[row.name]:.3g} times the previous Close "
            f"{float(before['Close'])!r} on {before['Date']:%Y-%m-%d} ({where}), more than a factor of "
            f"{max_daily_move:g}",
        )

    # 5. Open/High/Low: zero is a placeholder for "unknown"
    for column in ("Open", "High", "Low"):
        zero = frame[column] == 0
        note("zero_price", zero, column, f"{column} 0.0 treated as empty")
        frame.loc[zero, column] = np.nan
    previous_close = frame.groupby("Name", sort=False)["Close"].shift(1)
    empty_open = frame["Open"].isna()
    note("empty_open", empty_open, "Open", "Open set to previous Close")
    frame.loc[empty_open, "Open"] = previous_close[empty_open].fillna(frame["Close"][empty_open])
    recorded = frame[["High", "Low"]].copy()
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
    # Close and a filled Open are within the bound by now, so a repaired High/Low beyond it came from an Open
    # that is itself wrong; writing it would hide the bad value inside the recorded range.
    for column, beyond in (
        ("High", frame["High"] > frame["Close"] * max_daily_move),
        ("Low", frame["Low"] < frame["Close"] / max_daily_move),
    ):
        widened = beyond & (frame[column] != recorded[column])
        row = first_hit(widened)
        if row is not None:
            reject(
                "repair_beyond_bound",
                widened,
                "Open",
                f"Open {float(row['Open'])!r} is {row['Open'] / row['Close']:.3g} times the row's Close "
                f"{float(row['Close'])!r}; the repair would widen {column} to {float(row[column])!r}, more "
                f"than a factor of {max_daily_move:g} from Close",
            )

    # 6. Volume
    empty_volume = frame["Volume"].isna()
    note("empty_volume", empty_volume, "Volume", "Volume set to 0")
    frame.loc[empty_volume, "Volume"] = 0
    note("zero_volume", (frame["Volume"] == 0) & ~empty_volume, "Volume")
    frame["repairs"] = repairs.astype(str)

    # 7. the common calendar
    frame, gaps = _fill_calendar_gaps(frame)
    if gaps:
        counts["calendar_gaps"] = sum(len(g["dates"]) for g in gaps)
        examples["calendar_gaps"] = gaps[: _EXAMPLES * 2]
    frame["Volume"] = frame["Volume"].astype("int64")
    frame[SOURCE_LINE] = frame[SOURCE_LINE].astype("Int64")
    ordered = ["Date", "Name", *PRICE_COLUMNS, "Volume", "repairs", SOURCE_FILE, SOURCE_LINE]
    return frame[ordered].reset_index(drop=True), counts, examples, rows_in


def _stated_ranges(files):
    """Per row, the first and last day its file's name states (NaT where the name states none)."""
    import pandas as pd

    first, last = {}, {}
    for name in files.unique().tolist():
        match = re.search(STATED_RANGE, str(name))
        if not match:
            continue
        try:
            first[name], last[name] = (pd.Timestamp(match.group(g)) for g in ("first", "last"))
        except ValueError:
            raise DataError(
                f"the file name states the range {match.group('first')} to {match.group('last')}, "
                "which are not dates",
                file=str(name),
            ) from None
    return files.map(first).astype("datetime64[ns]"), files.map(last).astype("datetime64[ns]")


def _sessions(calendar_name: str, first_day, last_day):
    """The exchange's trading days from first_day to last_day, from the maintained calendar."""
    import exchange_calendars
    import pandas as pd

    # a margin on both sides so that a range of closed days still yields a calendar (it needs a session)
    margin = pd.Timedelta(days=14)
    try:
        with warnings.catch_warnings():
            # exchange_calendars 4.13 reads tz-aware Series.values, which pandas 3.1 deprecates; the values it
            # gets are still right at the pinned pandas, and the warning would fill every validate log
            warnings.filterwarnings(
                "ignore", message="Series.values returning an ndarray that drops timezone"
            )
            calendar = exchange_calendars.get_calendar(
                calendar_name, start=first_day - margin, end=last_day + margin
            )
    except exchange_calendars.errors.CalendarError as exc:
        raise DataError(
            f"the {calendar_name} calendar cannot check the dates {first_day:%Y-%m-%d} to "
            f"{last_day:%Y-%m-%d}: {exc}"
        ) from None
    return calendar.sessions


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
                f"{calendar[0]:%Y-%m-%d} ({have[0]} trading days); "
                f"rejected: {RULES['long_calendar_gaps'][1]}. "
                f"Remove {name}'s rows or the other tickers' earlier days",
                file=str(first[SOURCE_FILE]),
                row=int(first[SOURCE_LINE]),
                column="Date",
            )
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
                    file=str(before[SOURCE_FILE]),
                    row=int(before[SOURCE_LINE]),
                    column="Date",
                )
        carried = rows.set_index("Date")["Close"].reindex(calendar[have[0] :]).ffill()
        for day in calendar[missing]:
            close = float(carried[day])
            added.append(
                {
                    "Date": day,
                    "Name": name,
                    "Open": close,
                    "High": close,
                    "Low": close,
                    "Close": close,
                    "Volume": 0.0,
                    "repairs": "calendar gap: last Close carried forward",
                    SOURCE_FILE: "",
                    SOURCE_LINE: pd.NA,
                }
            )
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
        raise DataError(
            f"missing column(s) {', '.join(missing)}; expected {', '.join(expected)}", file=parquet_name
        )
    if not types.is_datetime64_any_dtype(prices["Date"]):
        raise DataError(
            f"Date has type {prices['Date'].dtype}; expected dates (datetime64)",
            file=parquet_name,
            column="Date",
        )
    for column in (*PRICE_COLUMNS, "Volume"):
        if not types.is_numeric_dtype(prices[column]) or types.is_bool_dtype(prices[column]):
            raise DataError(
                f"{column} has type {prices[column].dtype}; expected numbers",
                file=parquet_name,
                column=column,
            )
    if not (types.is_string_dtype(prices["Name"]) or types.is_object_dtype(prices["Name"])):
        raise DataError(
            f"Name has type {prices['Name'].dtype}; expected ticker strings", file=parquet_name, column="Name"
        )
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
    return {
        "ticker": str(row["Name"]),
        "date": f"{row['Date']:%Y-%m-%d}",
        "file": str(row[SOURCE_FILE]),
        "line": int(row[SOURCE_LINE]),
        "column": column,
    }
