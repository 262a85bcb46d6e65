"""Without data the demo says how to get some; --synthetic data is DJIA-shaped, passes the reference
project's own validation, and is marked as synthetic so that every report can say so."""

from __future__ import annotations

import csv
import json
import re
from datetime import date
from pathlib import Path

from click.testing import CliRunner

from branchops import synthetic
from branchops.cli import main


def test_demo_without_data_explains_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "demo")])
    assert result.exit_code == 1
    assert "--data DIR" in result.output and "KAGGLE_USERNAME" in result.output and "--synthetic" in result.output
    assert not (tmp_path / "demo").exists()


# The Kaggle dataset "DJIA 30 Stock Time Series" (szrlee/stock-time-series-20050101-to-20171231): one file
# per ticker, named and laid out like this, trading days from 2006-01-03 to 2017-12-29.
KAGGLE_TICKERS = {"AABA", "AAPL", "AMZN", "AXP", "BA", "CAT", "CSCO", "CVX", "DIS", "GE", "GOOGL", "GS", "HD",
                  "IBM", "INTC", "JNJ", "JPM", "KO", "MCD", "MMM", "MRK", "MSFT", "NKE", "PFE", "PG", "TRV",
                  "UNH", "UTX", "VZ", "WMT", "XOM"}
KAGGLE_HEADER = ["Date", "Open", "High", "Low", "Close", "Volume", "Name"]
FIRST_DAY, LAST_DAY = date(2006, 1, 3), date(2017, 12, 29)


def price_files(folder: Path) -> dict[str, Path]:
    return {path.name.split("_", 1)[0]: path for path in folder.glob("*_2006-01-01_to_2018-01-01.csv")}


def test_synthetic_prices_have_the_kaggle_layout_and_are_marked(tmp_path):
    folder = synthetic.generate(tmp_path / "raw")
    files = price_files(folder)
    assert set(files) == KAGGLE_TICKERS
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".csv") == sorted(p.name for p in files.values())
    calendars = set()
    for ticker, path in files.items():
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == KAGGLE_HEADER, path.name
        days = [date.fromisoformat(row[0]) for row in rows[1:]]
        assert days[0] == FIRST_DAY and days[-1] == LAST_DAY and days == sorted(set(days)), path.name
        assert all(day.weekday() < 5 for day in days), path.name
        calendars.add(tuple(days))
        for row in rows[1:]:
            open_, high, low, close = (float(value) for value in row[1:5])
            assert 0 < low <= min(open_, close) and max(open_, close) <= high, (path.name, row)
            assert all(re.fullmatch(r"\d+\.\d{2}", value) for value in row[1:5]), (path.name, row)
            assert int(row[5]) > 0 and row[6] == ticker, (path.name, row)
    assert len(calendars) == 1  # every ticker trades on the same days, as the features expect

    # The marker is what says "synthetic": the same files without it are not.
    assert synthetic.is_synthetic(folder)
    assert "SYNTHETIC" in (folder / synthetic.MARKER).read_text()
    (folder / synthetic.MARKER).unlink()
    assert not synthetic.is_synthetic(folder)
    assert not synthetic.is_synthetic(tmp_path / "never-generated")


def test_synthetic_prices_are_repeatable_for_a_seed_and_differ_between_seeds(tmp_path):
    first = synthetic.generate(tmp_path / "first", seed=7)
    again = synthetic.generate(tmp_path / "again", seed=7)
    other = synthetic.generate(tmp_path / "other", seed=8)
    for name in (path.name for path in price_files(first).values()):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name
    assert all((other / name).read_bytes() != (first / name).read_bytes()
               for name in (path.name for path in price_files(first).values()))
    assert synthetic.is_synthetic(again) and synthetic.is_synthetic(other)


def test_synthetic_prices_pass_the_reference_validation_without_a_repair(tmp_path):
    from components import consolidate, validate

    folder = synthetic.generate(tmp_path / "raw")
    consolidated = consolidate.run(source_dir=str(folder), data_dir=str(tmp_path / "data"))
    trading_days = len(synthetic.business_days(FIRST_DAY, LAST_DAY))
    assert consolidated["n_tickers"] == len(KAGGLE_TICKERS) and consolidated["files"] == len(KAGGLE_TICKERS)
    assert consolidated["rows"] == len(KAGGLE_TICKERS) * trading_days
    assert consolidated["date_range"] == {"first": "2006-01-03", "last": "2017-12-29"}

    summary = validate.run(data_dir=str(tmp_path / "data"))
    # Clean by construction: nothing to repair, nothing dropped, no gap filled.
    assert summary["counts"] == {}
    assert summary["rows_in"] == summary["rows_out"] == consolidated["rows"]
    report = json.loads((tmp_path / "data" / "validation_report.json").read_text())
    assert set(report["tickers"]) == KAGGLE_TICKERS and report["trading_days"] == trading_days
    assert report["repaired_rows"] == 0
    assert (tmp_path / "data" / "validated.parquet").exists()
