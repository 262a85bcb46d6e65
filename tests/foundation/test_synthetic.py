"""Without data the demo says how to get some; the reference project's synthetic data script
(data/synthetic_prices.py, what --synthetic runs) writes DJIA-shaped prices that pass the project's own
validation, and marks them so that branchops says "synthetic" in every report."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

from click.testing import CliRunner

from branchops.cli import main
from branchops.stages.training import SYNTHETIC_MARKER, is_synthetic

SCRIPT = Path(__file__).resolve().parents[2] / "data" / "synthetic_prices.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("synthetic_prices", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


synthetic = _load_script()


def test_demo_without_data_explains_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "demo")])
    assert result.exit_code == 1
    assert (
        "--data DIR" in result.output
        and "KAGGLE_USERNAME" in result.output
        and "--synthetic" in result.output
    )
    assert not (tmp_path / "demo").exists()


# The Kaggle dataset "DJIA 30 Stock Time Series" (szrlee/stock-time-series-20050101-to-20171231): one file
# per ticker, named and laid out like this, trading days from 2006-01-03 to 2017-12-29.
KAGGLE_TICKERS = {
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
}
KAGGLE_HEADER = ["Date", "Open", "High", "Low", "Close", "Volume", "Name"]
FIRST_DAY, LAST_DAY = date(2006, 1, 3), date(2017, 12, 29)


def price_files(folder: Path) -> dict[str, Path]:
    return {path.name.split("_", 1)[0]: path for path in folder.glob("*_2006-01-01_to_2018-01-01.csv")}


def test_synthetic_prices_have_the_kaggle_layout_and_are_marked(tmp_path):
    folder = synthetic.generate(tmp_path / "raw")
    files = price_files(folder)
    assert set(files) == KAGGLE_TICKERS
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".csv") == sorted(
        p.name for p in files.values()
    )
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

    # The marker is what says "synthetic" to branchops: the same files without it are not.
    assert synthetic.MARKER == SYNTHETIC_MARKER and is_synthetic(folder)
    assert "SYNTHETIC" in (folder / SYNTHETIC_MARKER).read_text()
    (folder / SYNTHETIC_MARKER).unlink()
    assert not is_synthetic(folder)
    assert not is_synthetic(tmp_path / "never-generated")


def test_the_script_runs_as_data_source_script_runs_it(tmp_path):
    """data.source: script runs `python <script> <raw folder>`: the same files, and the marker."""
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "raw")], check=True, capture_output=True)
    direct = synthetic.generate(tmp_path / "direct")
    assert is_synthetic(tmp_path / "raw")
    for name, path in price_files(direct).items():
        assert (tmp_path / "raw" / path.name).read_bytes() == path.read_bytes(), name


def test_synthetic_prices_are_repeatable_for_a_seed_and_differ_between_seeds(tmp_path):
    first = synthetic.generate(tmp_path / "first", seed=7)
    again = synthetic.generate(tmp_path / "again", seed=7)
    other = synthetic.generate(tmp_path / "other", seed=8)
    for name in (path.name for path in price_files(first).values()):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name
    assert all(
        (other / name).read_bytes() != (first / name).read_bytes()
        for name in (path.name for path in price_files(first).values())
    )
    assert is_synthetic(again) and is_synthetic(other)


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
