from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from components import consolidate
from components.common.errors import ComponentError, DataError

COMBINED_ALL = "all_stocks_2006-01-01_to_2018-01-01.csv"
COMBINED_2017 = "all_stocks_2017-01-01_to_2018-01-01.csv"
VALUES = ["Date", "Open", "High", "Low", "Close", "Volume", "Name"]
REPO_ROOT = Path(__file__).resolve().parents[3]


def _run(source: Path, data: Path) -> dict:
    return consolidate.run(source_dir=str(source), data_dir=str(data))


def _prices(data: Path):
    import pandas as pd

    frame = pd.read_parquet(data / "prices.parquet")
    return frame[VALUES].sort_values(["Name", "Date"]).reset_index(drop=True)


def _write_combined(djia_dir: Path, target: Path, since: str | None = None) -> None:
    """A combined file the way the Kaggle archive has it: every ticker's rows, the same columns."""
    import pandas as pd

    frames = [
        pd.read_csv(path, dtype=str, keep_default_na=False) for path in sorted(djia_dir.glob("*_2006-*.csv"))
    ]
    combined = pd.concat(frames, ignore_index=True).sort_values(["Date", "Name"], kind="stable")
    if since:
        combined = combined[combined["Date"] >= since]
    combined.to_csv(target, index=False)


def test_real_files_consolidate_to_all_rows(djia_dir, tmp_path):
    summary = _run(djia_dir, tmp_path / "data")
    assert summary["rows"] == 93_612
    assert summary["n_tickers"] == 31
    assert summary["date_range"] == {"first": "2006-01-03", "last": "2017-12-29"}
    report = json.loads((tmp_path / "data" / "data_report.json").read_text())
    assert report["rows"] == 93_612 and len(report["tickers"]) == 31
    # PROVENANCE.md: 55 empty cells (Open 25, Low 20, High 10), kept for validate to decide
    assert report["empty_cells"] == {"Open": 25, "High": 10, "Low": 20, "Close": 0, "Volume": 0}
    # 23 tickers have 3,020 rows; 7 lack 2010-04-01 and MRK lacks 2009-08-11
    assert sorted(report["rows_per_ticker"].values()) == [3019] * 8 + [3020] * 23
    assert report["rows_per_ticker"]["MRK"] == 3019 and report["rows_per_ticker"]["HD"] == 3020
    prices = _prices(tmp_path / "data")
    hd = prices[(prices["Name"] == "HD") & (prices["Date"] == "2009-04-17")]
    assert float(hd["Low"].iloc[0]) == 0.0  # no value is changed here


def test_per_ticker_combined_and_mixed_layouts_give_identical_data(djia_dir, tmp_path):
    per_ticker = tmp_path / "per-ticker"
    combined = tmp_path / "combined"
    mixed = tmp_path / "mixed"
    combined.mkdir()
    mixed.mkdir()
    shutil.copytree(djia_dir, per_ticker, ignore=shutil.ignore_patterns("*.md", "SHA256SUMS"))
    _write_combined(djia_dir, combined / COMBINED_ALL)
    _write_combined(djia_dir, mixed / COMBINED_ALL)
    _write_combined(djia_dir, mixed / COMBINED_2017, since="2017-01-01")
    for ticker in ("AAPL", "HD", "MRK"):
        shutil.copy(djia_dir / f"{ticker}_2006-01-01_to_2018-01-01.csv", mixed)

    results = {
        name: _run(folder, tmp_path / f"out-{name}")
        for name, folder in (("per-ticker", per_ticker), ("combined", combined), ("mixed", mixed))
    }
    reference = _prices(tmp_path / "out-per-ticker")
    assert len(reference) == 93_612
    for name in ("combined", "mixed"):
        assert results[name]["rows"] == 93_612
        other = _prices(tmp_path / f"out-{name}")
        assert other.equals(reference), f"{name} layout consolidated to different data"
    rows_2017 = int((reference["Date"] >= "2017-01-01").sum())
    per_ticker_rows = sum(int((reference["Name"] == t).sum()) for t in ("AAPL", "HD", "MRK"))
    assert results["mixed"]["duplicate_rows_across_files_dropped"] == rows_2017 + per_ticker_rows
    assert results["per-ticker"]["duplicate_rows_across_files_dropped"] == 0


def test_files_that_disagree_are_rejected_naming_both(small_source, tmp_path):
    lines = (small_source / "AAPL_2006-01-01_to_2018-01-01.csv").read_text().splitlines()
    changed = lines[5].split(",")
    changed[4] = "999.99"  # Close
    (small_source / COMBINED_2017.replace("2017-01-01", "2006-01-01")).write_text(
        "\n".join([lines[0], ",".join(changed)]) + "\n"
    )
    with pytest.raises(DataError) as err:
        _run(small_source, tmp_path / "data")
    message = str(err.value)
    assert "AAPL" in message and "AAPL_2006-01-01_to_2018-01-01.csv line 6" in message
    assert "all_stocks_2006-01-01_to_2018-01-01.csv line 2" in message and "999.99" in message
    assert not (tmp_path / "data" / "prices.parquet").exists()


# ---- malformed inputs: each gives the message a user needs, and nothing is written ----


def _assert_rejected(source: Path, tmp_path: Path, *fragments: str) -> DataError:
    data = tmp_path / "data"
    with pytest.raises(DataError) as err:
        _run(source, data)
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in {str(err.value)!r}"
    assert not data.exists() or not any(p for p in data.iterdir() if not p.name.startswith(".")), (
        "a rejected source must write nothing"
    )
    assert not data.exists() or not list(data.iterdir()), "no staging leftovers"
    return err.value


def test_empty_file_is_rejected(small_source, tmp_path):
    (small_source / "IBM_2006-01-01_to_2018-01-01.csv").write_bytes(b"")
    _assert_rejected(small_source, tmp_path, "IBM_2006-01-01_to_2018-01-01.csv", "empty (0 bytes)")


def test_binary_file_is_rejected_as_not_csv(small_source, tmp_path):
    path = small_source / "MSFT_2006-01-01_to_2018-01-01.csv"
    path.write_bytes(gzip.compress(path.read_bytes()))
    _assert_rejected(small_source, tmp_path, "MSFT_2006-01-01_to_2018-01-01.csv", "not a CSV text file")


def test_missing_column_is_rejected(small_source, tmp_path):
    path = small_source / "AAPL_2006-01-01_to_2018-01-01.csv"
    rows = [line.split(",") for line in path.read_text().splitlines()]
    path.write_text("\n".join(",".join(r[:3] + r[4:]) for r in rows) + "\n")  # drop Low
    error = _assert_rejected(
        small_source,
        tmp_path,
        "AAPL_2006-01-01_to_2018-01-01.csv",
        "missing column(s) Low",
        "expected Date, Open, High, Low, Close, Volume, Name",
    )
    assert error.column is None and error.row == 1


def test_header_only_file_is_rejected(small_source, tmp_path):
    (small_source / "IBM_2006-01-01_to_2018-01-01.csv").write_text("Date,Open,High,Low,Close,Volume,Name\n")
    _assert_rejected(small_source, tmp_path, "IBM_2006-01-01_to_2018-01-01.csv", "header but no data rows")


def test_unparseable_date_names_file_line_and_column(small_source, tmp_path):
    path = small_source / "MSFT_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    lines[9] = lines[9].replace("2006-01-", "2006-13-", 1)
    path.write_text("\n".join(lines) + "\n")
    error = _assert_rejected(
        small_source,
        tmp_path,
        "MSFT_2006-01-01_to_2018-01-01.csv, line 10, column Date",
        "is not a date; expected YYYY-MM-DD",
    )
    assert (error.file, error.row, error.column) == ("MSFT_2006-01-01_to_2018-01-01.csv", 10, "Date")


def test_non_numeric_price_names_file_line_and_column(small_source, tmp_path):
    path = small_source / "IBM_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    fields = lines[20].split(",")
    fields[4] = "12,5".replace(",", ";")  # a value from a locale with decimal commas
    lines[20] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    _assert_rejected(
        small_source,
        tmp_path,
        "IBM_2006-01-01_to_2018-01-01.csv, line 21, column Close",
        "'12;5' is not a number",
    )


@pytest.mark.parametrize(
    ("column", "text"),
    [
        ("Close", "inf"),
        ("Close", "-inf"),
        ("High", "inf"),
        ("Low", "-Infinity"),
        ("Open", "1e999"),
        ("Volume", "inf"),
    ],
)
def test_infinite_value_is_rejected_like_a_non_number(small_source, tmp_path, column, text):
    """pandas reads inf, -Infinity and overflowing numbers as floats; a price must be a finite number."""
    path = small_source / "MSFT_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    fields = lines[11].split(",")
    fields[VALUES.index(column)] = text
    lines[11] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    error = _assert_rejected(
        small_source,
        tmp_path,
        f"MSFT_2006-01-01_to_2018-01-01.csv, line 12, column {column}",
        f"{text!r} is not a finite number",
    )
    assert (error.file, error.row, error.column) == ("MSFT_2006-01-01_to_2018-01-01.csv", 12, column)


def test_infinite_close_exits_7_through_the_entry_point(small_source, tmp_path):
    path = small_source / "AAPL_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    fields = lines[4].split(",")
    fields[VALUES.index("Close")] = "inf"
    lines[4] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    params = {"source_dir": str(small_source), "data_dir": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-m", "components", "consolidate", "--params", json.dumps(params)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 7, done.stderr[-2000:]
    assert done.stdout == ""
    assert (
        "data error: AAPL_2006-01-01_to_2018-01-01.csv, line 5, column Close: 'inf' is not a finite number"
        in done.stderr
    )
    assert not (tmp_path / "data" / "prices.parquet").exists()


def test_ragged_csv_is_rejected(small_source, tmp_path):
    path = small_source / "AAPL_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    lines[30] += ",extra,fields"
    path.write_text("\n".join(lines) + "\n")
    _assert_rejected(
        small_source, tmp_path, "AAPL_2006-01-01_to_2018-01-01.csv", "not a well-formed CSV", "line 31"
    )


def test_single_ticker_source_is_rejected(small_source, tmp_path):
    for name in ("MSFT", "IBM"):
        (small_source / f"{name}_2006-01-01_to_2018-01-01.csv").unlink()
    _assert_rejected(small_source, tmp_path, "only one ticker (AAPL)", "at least two")


def test_per_ticker_file_holding_another_ticker_is_rejected(small_source, tmp_path):
    path = small_source / "AAPL_2006-01-01_to_2018-01-01.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(",AAPL", ",MSFT")
    path.write_text("\n".join(lines) + "\n")
    _assert_rejected(
        small_source,
        tmp_path,
        "AAPL_2006-01-01_to_2018-01-01.csv, line 4, column Name",
        "named for ticker AAPL but holds rows of MSFT",
    )


def test_folder_without_csv_files_is_rejected(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "README.md").write_text("not data")
    _assert_rejected(source, tmp_path, "no CSV files in", "all_stocks_*.csv")


def test_rejected_rerun_leaves_previous_output_untouched(small_source, tmp_path):
    data = tmp_path / "data"
    _run(small_source, data)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.iterdir()}
    (small_source / "IBM_2006-01-01_to_2018-01-01.csv").write_bytes(b"")
    with pytest.raises(DataError):
        _run(small_source, data)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.iterdir()}
    assert after == before


def test_kaggle_without_credentials_says_how_to_provide_them(tmp_path, monkeypatch, capsys):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-such-dir"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ComponentError, match="no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY"):
        consolidate.run(
            source_dir=str(tmp_path / "src"),
            data_dir=str(tmp_path / "data"),
            kaggle_dataset="szrlee/stock-time-series-20050101-to-20171231",
        )
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "data").exists()


def test_kaggle_download_goes_through_the_api_class_and_keeps_stdout_clean(
    djia_dir, tmp_path, monkeypatch, capsys
):
    """The kaggle package is replaced at its API class (no network here); it 'unzips' real files."""
    calls = []

    class FakeKaggleApi:
        def authenticate(self):
            print("Warning: Your Kaggle API key is readable by other users")  # what the real one prints

        def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False):
            calls.append((dataset, path, unzip))
            for ticker in ("AAPL", "MSFT"):
                shutil.copy(djia_dir / f"{ticker}_2006-01-01_to_2018-01-01.csv", path)

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = FakeKaggleApi
    for name in ("kaggle", "kaggle.api"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    summary = consolidate.run(
        source_dir=str(tmp_path / "src"),
        data_dir=str(tmp_path / "data"),
        kaggle_dataset="szrlee/stock-time-series-20050101-to-20171231",
    )
    assert calls == [("szrlee/stock-time-series-20050101-to-20171231", str(tmp_path / "src"), True)]
    expected = sum(
        len((djia_dir / f"{t}_2006-01-01_to_2018-01-01.csv").read_text().splitlines()) - 1
        for t in ("AAPL", "MSFT")
    )
    assert summary["rows"] == expected and summary["n_tickers"] == 2
    assert capsys.readouterr().out == ""
