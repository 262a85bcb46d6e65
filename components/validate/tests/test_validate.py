from __future__ import annotations

import json
from pathlib import Path

import pytest

from components import consolidate, validate
from components.common.errors import DataError


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
    for rejected in ("empty_close", "non_positive_close", "conflicting_duplicate_dates", "long_calendar_gaps"):
        assert counts[rejected] == 0
    report = json.loads((real_data_dir / "validation_report.json").read_text())
    assert report["rows_in"] == 93_612 and report["rows_out"] == 93_620
    zero = report["decisions"]["zero_price"]["examples"][0]
    assert zero == {"ticker": "HD", "date": "2009-04-17", "file": "HD_2006-01-01_to_2018-01-01.csv", "line": 829,
                    "column": "Low"}
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


def _assert_rejected(data: Path, *fragments: str) -> DataError:
    with pytest.raises(DataError) as err:
        validate.run(data_dir=str(data))
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in {str(err.value)!r}"
    assert not (data / "validated.parquet").exists() and not (data / "validation_report.json").exists()
    assert not [p for p in data.iterdir() if p.name.startswith(".staging")]
    return err.value


def test_empty_close_is_rejected_with_file_line_column(small_source, tmp_path):
    _edit(small_source, "MSFT", 12, "Close", "")
    error = _assert_rejected(_consolidated(small_source, tmp_path),
                             "MSFT_2006-01-01_to_2018-01-01.csv, line 12, column Close", "Close is empty")
    assert (error.file, error.row, error.column) == ("MSFT_2006-01-01_to_2018-01-01.csv", 12, "Close")


def test_zero_close_is_rejected(small_source, tmp_path):
    _edit(small_source, "IBM", 40, "Close", "0.0")
    _assert_rejected(_consolidated(small_source, tmp_path),
                     "IBM_2006-01-01_to_2018-01-01.csv, line 40, column Close", "Close is 0.0")


def test_negative_low_is_rejected(small_source, tmp_path):
    _edit(small_source, "AAPL", 7, "Low", "-3.5")
    _assert_rejected(_consolidated(small_source, tmp_path),
                     "AAPL_2006-01-01_to_2018-01-01.csv, line 7, column Low", "Low is -3.5")


def test_conflicting_duplicate_date_is_rejected_naming_both_lines(small_source, tmp_path):
    path = small_source / "AAPL_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    fields = lines[5].split(",")
    fields[4] = str(float(fields[4]) + 1)
    lines.append(",".join(fields))  # same date as line 6, another Close, as line 82
    path.write_text("\n".join(lines) + "\n")
    _assert_rejected(_consolidated(small_source, tmp_path), "AAPL has two different rows for",
                     "AAPL_2006-01-01_to_2018-01-01.csv, line 6, column Date", "line 82")


def test_exact_duplicate_row_is_dropped_and_counted(small_source, tmp_path):
    path = small_source / "MSFT_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[10]]) + "\n")
    data = _consolidated(small_source, tmp_path)
    summary = validate.run(data_dir=str(data))
    assert _decisions(data)["duplicate_rows"] == 1
    assert summary["rows_in"] == 3 * 80 + 1 and summary["rows_out"] == 3 * 80


def test_long_calendar_gap_is_rejected(small_source, tmp_path):
    path = small_source / "IBM_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:30] + lines[40:]) + "\n")  # ten trading days missing
    _assert_rejected(_consolidated(small_source, tmp_path), "IBM has no rows from", "(10 trading days)",
                     "more than 5 consecutive trading days", "IBM_2006-01-01_to_2018-01-01.csv, line 30")


def test_short_calendar_gap_is_filled(small_source, tmp_path):
    import pandas as pd

    path = small_source / "IBM_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:30] + lines[32:]) + "\n")  # two trading days missing
    data = _consolidated(small_source, tmp_path)
    validate.run(data_dir=str(data))
    assert _decisions(data)["calendar_gaps"] == 2
    prices = pd.read_parquet(data / "validated.parquet")
    assert (prices.groupby("Name").size() == 80).all()


def test_ticker_starting_late_is_rejected(small_source, tmp_path):
    path = small_source / "MSFT_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + lines[4:]) + "\n")
    _assert_rejected(_consolidated(small_source, tmp_path), "MSFT has no rows before", "while other tickers start on")


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
