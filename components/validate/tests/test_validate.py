from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components import consolidate, validate
from components.common.errors import DataError
from components.common.schema import SOURCE_FILE, SOURCE_LINE

REPO_ROOT = Path(__file__).resolve().parents[3]
# The tickers of the small_source fixture: the universe its tables are validated against.
SMALL_TICKERS = ["AAPL", "IBM", "MSFT"]


def _decisions(data: Path) -> dict:
    report = json.loads((data / "validation_report.json").read_text())
    return {kind: entry["count"] for kind, entry in report["decisions"].items()}


def test_real_files_known_dirt_is_repaired_and_counted(real_data_dir):
    import pandas as pd

    counts = _decisions(real_data_dir)
    # PROVENANCE.md: 55 empty cells (Open 25, High 10, Low 20), HD Low = 0.0 on 2009-04-17,
    # 151 rows whose High/Low do not bracket Open/Close, 8 missing ticker-days.
    assert counts["empty_open"] == 25
    assert counts["zero_price"] == 1
    assert counts["empty_high_low"] == 10 + 20 + 1  # the zero Low is repaired like an empty one
    assert counts["high_low_not_bracketing"] == 151
    assert counts["calendar_gaps"] == 8
    assert counts["zero_volume"] == 1  # DIS 2012-08-01
    for rejected in (
        "empty_close",
        "non_positive_close",
        "conflicting_duplicate_dates",
        "long_calendar_gaps",
        "non_finite_value",
        "missing_ticker",
        "unexpected_ticker",
        "outside_stated_range",
        "future_date",
        "not_a_trading_day",
        "daily_move_beyond_bound",
        "repair_beyond_bound",
    ):
        assert counts[rejected] == 0
    report = json.loads((real_data_dir / "validation_report.json").read_text())
    assert report["rows_in"] == 93_612 and report["rows_out"] == 93_620
    # every real date is an NYSE session, every ticker of the universe is there, no Close jumps 3x
    assert report["checks"] == {
        "tickers": sorted(validate.REFERENCE_TICKERS),
        "max_daily_move": 3.0,
        "exchange_calendar": "XNYS",
    }
    assert report["tickers"] == sorted(validate.REFERENCE_TICKERS) and len(report["tickers"]) == 31
    zero = report["decisions"]["zero_price"]["examples"][0]
    assert zero == {
        "ticker": "HD",
        "date": "2009-04-17",
        "file": "HD_2006-01-01_to_2018-01-01.csv",
        "line": 829,
        "column": "Low",
    }
    gaps = {g["ticker"]: g["dates"] for g in report["decisions"]["calendar_gaps"]["examples"]}
    assert gaps["MRK"] == ["2009-08-11"]
    assert sum(d == ["2010-04-01"] for d in gaps.values()) == 7

    prices = pd.read_parquet(real_data_dir / "validated.parquet")
    assert not prices[["Open", "High", "Low", "Close", "Volume"]].isna().any().any()
    assert (prices[["Open", "High", "Low", "Close"]] > 0).all().all()
    assert (prices["High"] >= prices[["Open", "Close"]].max(axis=1)).all()
    assert (prices["Low"] <= prices[["Open", "Close"]].min(axis=1)).all()
    assert (prices.groupby("Name").size() == prices["Date"].nunique()).all()  # one common calendar
    hd = prices[(prices["Name"] == "HD") & (prices["Date"] == "2009-04-17")].iloc[0]
    assert hd["Low"] == min(hd["Open"], hd["Close"]) and "Low 0.0 treated as empty" in hd["repairs"]
    mrk = prices[(prices["Name"] == "MRK") & (prices["Date"] == "2009-08-11")].iloc[0]
    previous = prices[(prices["Name"] == "MRK") & (prices["Date"] == "2009-08-10")].iloc[0]
    assert mrk["Close"] == previous["Close"] and mrk["Volume"] == 0


def _consolidated(source: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    consolidate.run(source_dir=str(source), data_dir=str(data))
    return data


def _edit(source: Path, ticker: str, line: int, column: str, value: str) -> None:
    path = source / f"{ticker}_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    fields = lines[line - 1].split(",")
    fields[header.index(column)] = value
    lines[line - 1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


def _assert_rejected(data: Path, *fragments: str, tickers: list[str] = SMALL_TICKERS) -> DataError:
    with pytest.raises(DataError) as err:
        validate.run(data_dir=str(data), tickers=tickers)
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in {str(err.value)!r}"
    assert not (data / "validated.parquet").exists() and not (data / "validation_report.json").exists()
    assert not [p for p in data.iterdir() if p.name.startswith(".staging")]
    return err.value


def test_empty_close_is_rejected_with_file_line_column(small_source, tmp_path):
    _edit(small_source, "MSFT", 12, "Close", "")
    error = _assert_rejected(
        _consolidated(small_source, tmp_path),
        "MSFT_2006-01-01_to_2018-01-01.csv, line 12, column Close",
        "Close is empty",
    )
    assert (error.file, error.row, error.column) == ("MSFT_2006-01-01_to_2018-01-01.csv", 12, "Close")


def test_zero_close_is_rejected(small_source, tmp_path):
    _edit(small_source, "IBM", 40, "Close", "0.0")
    _assert_rejected(
        _consolidated(small_source, tmp_path),
        "IBM_2006-01-01_to_2018-01-01.csv, line 40, column Close",
        "Close is 0.0",
    )


def test_negative_low_is_rejected(small_source, tmp_path):
    _edit(small_source, "AAPL", 7, "Low", "-3.5")
    _assert_rejected(
        _consolidated(small_source, tmp_path),
        "AAPL_2006-01-01_to_2018-01-01.csv, line 7, column Low",
        "Low is -3.5",
    )


def test_conflicting_duplicate_date_is_rejected_naming_both_lines(small_source, tmp_path):
    path = small_source / "AAPL_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    fields = lines[5].split(",")
    fields[4] = str(float(fields[4]) + 1)
    lines.append(",".join(fields))  # same date as line 6, another Close, as line 82
    path.write_text("\n".join(lines) + "\n")
    _assert_rejected(
        _consolidated(small_source, tmp_path),
        "AAPL has two different rows for",
        "AAPL_2006-01-01_to_2018-01-01.csv, line 6, column Date",
        "line 82",
    )


def test_exact_duplicate_row_is_dropped_and_counted(small_source, tmp_path):
    path = small_source / "MSFT_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[10]]) + "\n")
    data = _consolidated(small_source, tmp_path)
    summary = validate.run(data_dir=str(data), tickers=SMALL_TICKERS)
    assert _decisions(data)["duplicate_rows"] == 1
    assert summary["rows_in"] == 3 * 80 + 1 and summary["rows_out"] == 3 * 80


def test_long_calendar_gap_is_rejected(small_source, tmp_path):
    path = small_source / "IBM_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:30] + lines[40:]) + "\n")  # ten trading days missing
    _assert_rejected(
        _consolidated(small_source, tmp_path),
        "IBM has no rows from",
        "(10 trading days)",
        "more than 5 consecutive trading days",
        "IBM_2006-01-01_to_2018-01-01.csv, line 30",
    )


def test_short_calendar_gap_is_filled(small_source, tmp_path):
    import pandas as pd

    path = small_source / "IBM_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:30] + lines[32:]) + "\n")  # two trading days missing
    data = _consolidated(small_source, tmp_path)
    validate.run(data_dir=str(data), tickers=SMALL_TICKERS)
    assert _decisions(data)["calendar_gaps"] == 2
    prices = pd.read_parquet(data / "validated.parquet")
    assert (prices.groupby("Name").size() == 80).all()


def test_ticker_starting_late_is_rejected(small_source, tmp_path):
    path = small_source / "MSFT_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + lines[4:]) + "\n")
    _assert_rejected(
        _consolidated(small_source, tmp_path), "MSFT has no rows before", "while other tickers start on"
    )


def test_price_column_with_text_type_is_rejected(small_source, tmp_path):
    import pandas as pd

    data = _consolidated(small_source, tmp_path)
    prices = pd.read_parquet(data / "prices.parquet")
    prices["Close"] = prices["Close"].astype(str)
    prices.to_parquet(data / "prices.parquet")
    _assert_rejected(data, "column Close", "expected numbers")


def test_missing_input_says_which_component_to_run(tmp_path):
    with pytest.raises(DataError, match="prices.parquet; run the consolidate component first"):
        validate.run(data_dir=str(tmp_path))


# ---- poisoned inputs (issue "An honest KPI gate", items 4 and 6): each stops the run before training ----
# Every case makes one bad value in the small source, then validate must refuse it naming ticker, date,
# file, line and column where there is one, write nothing, and the entry point must exit 7.


def _append_row(source: Path, ticker: str, like_line: int, day: str) -> None:
    """A copy of ``like_line`` dated ``day``, appended as the file's last line (line 82 in small_source)."""
    path = source / f"{ticker}_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    fields = lines[like_line - 1].split(",")
    fields[0] = day
    path.write_text("\n".join([*lines, ",".join(fields)]) + "\n")


def _poison_parquet(data: Path, ticker: str, line: int, column: str, value: float) -> None:
    """Write a value consolidate would refuse straight into prices.parquet (a table from another tool)."""
    import pandas as pd

    prices = pd.read_parquet(data / "prices.parquet")
    row = (prices["Name"] == ticker) & (prices[SOURCE_LINE] == line)
    assert row.sum() == 1
    prices.loc[row, column] = value
    prices.to_parquet(data / "prices.parquet", index=False)


def _inf_close(source, tmp_path):
    data = _consolidated(source, tmp_path)
    _poison_parquet(data, "MSFT", 12, "Close", float("inf"))
    return data, SMALL_TICKERS


def _minus_inf_close(source, tmp_path):
    data = _consolidated(source, tmp_path)
    _poison_parquet(data, "IBM", 40, "Close", float("-inf"))
    return data, SMALL_TICKERS


def _inf_high(source, tmp_path):
    data = _consolidated(source, tmp_path)
    _poison_parquet(data, "AAPL", 7, "High", float("inf"))
    return data, SMALL_TICKERS


def _close_ten_times(source, tmp_path):
    _edit(source, "MSFT", 30, "Close", "266.9")  # 26.39 on 2006-02-13, after 26.69 the day before
    return _consolidated(source, tmp_path), SMALL_TICKERS


def _open_ten_times_above_high(source, tmp_path):
    _edit(source, "MSFT", 20, "Open", "278.2")  # 27.82 on 2006-01-30; High 28.18 would be widened to it
    return _consolidated(source, tmp_path), SMALL_TICKERS


def _row_in_2030(source, tmp_path):
    _append_row(source, "AAPL", 81, "2030-01-02")
    return _consolidated(source, tmp_path), SMALL_TICKERS


def _row_before_2006(source, tmp_path):
    _append_row(source, "AAPL", 2, "2005-12-30")  # an NYSE session, but before the file's stated range
    return _consolidated(source, tmp_path), SMALL_TICKERS


def _weekend_row(source, tmp_path):
    _append_row(source, "AAPL", 5, "2006-01-07")  # a Saturday, with Friday's prices
    return _consolidated(source, tmp_path), SMALL_TICKERS


def _holiday_row(source, tmp_path):
    _append_row(source, "MSFT", 10, "2006-01-16")  # Martin Luther King Jr. Day, a Monday
    return _consolidated(source, tmp_path), SMALL_TICKERS


def _ticker_missing(source, tmp_path):
    return _consolidated(source, tmp_path), [*SMALL_TICKERS, "KO"]


def _ticker_not_in_universe(source, tmp_path):
    return _consolidated(source, tmp_path), ["AAPL", "MSFT"]


MSFT, IBM, AAPL = (
    "MSFT_2006-01-01_to_2018-01-01.csv",
    "IBM_2006-01-01_to_2018-01-01.csv",
    "AAPL_2006-01-01_to_2018-01-01.csv",
)
POISONED = {
    "inf-close": (
        _inf_close,
        [f"{MSFT}, line 12, column Close", "MSFT 2006-01-18", "Close is inf", "infinite"],
    ),
    "minus-inf-close": (_minus_inf_close, [f"{IBM}, line 40, column Close", "Close is -inf", "infinite"]),
    "inf-high": (_inf_high, [f"{AAPL}, line 7, column High", "AAPL 2006-01-10", "High is inf", "infinite"]),
    "close-10x": (
        _close_ten_times,
        [
            f"{MSFT}, line 30, column Close",
            "MSFT 2006-02-13",
            "Close 266.9 is 10 times",
            "previous Close 26.69 on 2006-02-10 (line 29)",
            "factor of 3",
        ],
    ),
    "open-10x": (
        _open_ten_times_above_high,
        [f"{MSFT}, line 20, column Open", "MSFT 2006-01-30", "would widen High to 278.2", "factor of 3"],
    ),
    "row-2030": (
        _row_in_2030,
        [
            f"{AAPL}, line 82, column Date",
            "AAPL 2030-01-02",
            "after 2018-01-01, the last day its file name states",
        ],
    ),
    "row-2005": (
        _row_before_2006,
        [
            f"{AAPL}, line 82, column Date",
            "AAPL 2005-12-30",
            "before 2006-01-01, the first day its file name states",
        ],
    ),
    "weekend": (
        _weekend_row,
        [f"{AAPL}, line 82, column Date", "AAPL 2006-01-07", "XNYS was closed on 2006-01-07 (a Saturday)"],
    ),
    "holiday": (
        _holiday_row,
        [f"{MSFT}, line 82, column Date", "MSFT 2006-01-16", "XNYS was closed on 2006-01-16 (a Monday)"],
    ),
    "missing-ticker": (_ticker_missing, ["no rows of KO", "the configured universe"]),
    "ticker-not-in-universe": (
        _ticker_not_in_universe,
        [f"{IBM}, line 2, column Name", "IBM is not in the configured universe"],
    ),
}


def _component(name: str, **params) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "components", name, "--params", json.dumps(params)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("case", list(POISONED))
def test_poisoned_input_is_rejected_and_the_entry_point_exits_7(case, small_source, tmp_path):
    poison, fragments = POISONED[case]
    data, tickers = poison(small_source, tmp_path)
    error = _assert_rejected(data, *fragments, tickers=tickers)
    done = _component("validate", data_dir=str(data), tickers=tickers)
    assert done.returncode == 7, done.stderr[-2000:]
    assert done.stdout == ""
    assert f"data error: {error}" in done.stderr
    assert not (data / "validated.parquet").exists()


def test_real_data_with_one_ticker_missing_is_rejected(real_data_dir, tmp_path):
    """The issue's folder of 30 files: the reference universe is the 31 tickers of the dataset."""
    import pandas as pd

    prices = pd.read_parquet(real_data_dir / "prices.parquet")
    (tmp_path / "data").mkdir()
    prices[prices["Name"] != "AABA"].to_parquet(tmp_path / "data" / "prices.parquet", index=False)
    with pytest.raises(DataError, match="no rows of AABA, which the configured universe"):
        validate.run(data_dir=str(tmp_path / "data"))


@pytest.mark.parametrize("day", ["2012-10-29", "2012-10-30", "2007-01-02"])
def test_real_data_with_a_row_on_an_unscheduled_closure_is_rejected(real_data_dir, tmp_path, day):
    """Hurricane Sandy (2012-10-29/30) and President Ford's day of mourning (2007-01-02) were weekdays
    outside the regular holiday rules: only a maintained calendar knows the exchange was closed."""
    import pandas as pd

    prices = pd.read_parquet(real_data_dir / "prices.parquet")
    extra = prices[prices["Name"] == "KO"].iloc[[0]].assign(Date=pd.Timestamp(day), **{SOURCE_LINE: 9999})
    (tmp_path / "data").mkdir()
    pd.concat([prices, extra], ignore_index=True).to_parquet(
        tmp_path / "data" / "prices.parquet", index=False
    )
    with pytest.raises(DataError) as err:
        validate.run(data_dir=str(tmp_path / "data"))
    assert f"KO {day}" in str(err.value) and f"XNYS was closed on {day}" in str(err.value)
    assert (err.value.file, err.value.row, err.value.column) == (
        "KO_2006-01-01_to_2018-01-01.csv",
        9999,
        "Date",
    )


def test_row_after_today_is_rejected_when_no_file_name_states_a_range(small_source, tmp_path):
    import pandas as pd

    data = _consolidated(small_source, tmp_path)
    prices = pd.read_parquet(data / "prices.parquet").drop(columns=[SOURCE_FILE, SOURCE_LINE])
    tomorrow = pd.Timestamp.now().normalize() + pd.Timedelta(days=2)
    extra = prices.iloc[[len(prices) - 1]].assign(Date=tomorrow)
    pd.concat([prices, extra], ignore_index=True).to_parquet(data / "prices.parquet", index=False)
    _assert_rejected(data, f"prices.parquet, line {len(prices) + 1}, column Date", "after today")


def test_a_large_move_within_the_bound_is_kept_and_the_bound_is_a_parameter(small_source, tmp_path):
    _edit(small_source, "MSFT", 30, "Close", "53.38")  # twice the day before, back to 26.65 the next day
    data = _consolidated(small_source, tmp_path)
    summary = validate.run(data_dir=str(data), tickers=SMALL_TICKERS)
    assert summary["rows_out"] == 3 * 80
    with pytest.raises(DataError) as err:
        validate.run(data_dir=str(data), tickers=SMALL_TICKERS, max_daily_move=1.5)
    for fragment in (f"{MSFT}, line 30, column Close", "Close 53.38 is 2 times", "factor of 1.5"):
        assert fragment in str(err.value), f"{fragment!r} not in {str(err.value)!r}"


@pytest.mark.parametrize(
    "params",
    [
        {"tickers": []},
        {"tickers": "AAPL"},
        {"max_daily_move": 1.0},
        {"max_daily_move": float("nan")},
        {"exchange_calendar": "NOPE"},
    ],
)
def test_bad_parameters_are_refused_before_reading_the_data(params, tmp_path):
    from components.common.errors import ComponentError

    with pytest.raises(ComponentError) as err:
        validate.run(data_dir=str(tmp_path), **params)
    assert not isinstance(err.value, DataError)
