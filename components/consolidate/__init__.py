"""Consolidate: gather the DJIA CSV files into one Parquet table with provenance.

Reads a folder in the Kaggle dataset's layout -- the 31 per-ticker files
(``AAPL_2006-01-01_to_2018-01-01.csv`` ...) and/or the two combined files
(``all_stocks_2006-01-01_to_2018-01-01.csv``, ``all_stocks_2017-01-01_to_2018-01-01.csv``), in any mix --
and writes ``prices.parquet`` and ``data_report.json`` to the data folder.  A row that appears
identically in several files is kept once; the same ticker and date with different values in two files
is an error.  Files that cannot be trusted (not CSV, empty, missing a column, values that do not parse,
a per-ticker file holding another ticker, a source with a single ticker) are rejected and nothing is
written.  Repairs of the values themselves are the validate component's job.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

from components.common.errors import ComponentError, DataError
from components.common.io import staged_outputs, write_json_atomic
from components.common.schema import CSV_COLUMNS, PRICE_COLUMNS, SOURCE_FILE, SOURCE_LINE

log = logging.getLogger(__name__)

PRICES_FILE = "prices.parquet"
REPORT_FILE = "data_report.json"
COMBINED_PREFIX = "all_stocks_"
# Per-ticker files are named TICKER_<from>_to_<to>.csv in the Kaggle dataset.
_PER_TICKER_NAME = re.compile(r"^(?P<ticker>[A-Za-z.\-]+)_\d{4}-\d{2}-\d{2}_to_\d{4}-\d{2}-\d{2}\.csv$")
_SNIFF_BYTES = 8192
DOWNLOAD_PROGRESS_S = 10.0  # how often a quiet Kaggle download says how far it has got


def run(source_dir: str, data_dir: str, kaggle_dataset: str | None = None) -> dict[str, Any]:
    started = time.monotonic()
    source = Path(source_dir)
    if kaggle_dataset:
        download_kaggle_dataset(kaggle_dataset, source)
    if not source.is_dir():
        raise DataError(f"source folder {source} does not exist")
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if not files:
        raise DataError(
            f"no CSV files in {source}; expected the Kaggle dataset's layout "
            "(TICKER_2006-01-01_to_2018-01-01.csv files and/or all_stocks_*.csv)"
        )
    tables = [read_price_file(path) for path in files]
    prices, file_stats, dropped = _merge(tables)
    tickers = sorted(prices["Name"].unique().tolist())
    if len(tickers) < 2:
        raise DataError(
            f"only one ticker ({', '.join(tickers)}) in {source}; the features use the returns of all "
            "tickers, so the source must hold at least two",
            file=str(source),
        )
    report = {
        "source_dir": str(source),
        "kaggle_dataset": kaggle_dataset,
        "rows": len(prices),
        "tickers": tickers,
        "n_tickers": len(tickers),
        "date_range": {"first": _day(prices["Date"].min()), "last": _day(prices["Date"].max())},
        "rows_per_ticker": {k: int(v) for k, v in prices.groupby("Name").size().items()},
        "files": file_stats,
        "rows_read": int(sum(s["rows"] for s in file_stats)),
        "repaired": {
            # Consolidation changes no value; it only drops rows that several files hold identically.
            "duplicate_rows_across_files_dropped": int(dropped),
        },
        "empty_cells": {c: int(prices[c].isna().sum()) for c in (*PRICE_COLUMNS, "Volume")},
        "note": "value repairs (empty cells, zero prices, High/Low, calendar gaps) are decided and "
        "counted by the validate component in validation_report.json",
    }
    with staged_outputs(data_dir) as staging:
        prices.to_parquet(staging / PRICES_FILE, index=False)
        write_json_atomic(staging / REPORT_FILE, report)
    log.info(
        "consolidated %d rows of %d tickers from %d files in %.1fs",
        len(prices),
        len(tickers),
        len(files),
        time.monotonic() - started,
    )
    return {
        "prices": str(Path(data_dir) / PRICES_FILE),
        "report": str(Path(data_dir) / REPORT_FILE),
        "rows": report["rows"],
        "n_tickers": len(tickers),
        "date_range": report["date_range"],
        "files": len(files),
        "duplicate_rows_across_files_dropped": int(dropped),
    }


def read_price_file(path: Path):
    """Read one CSV of the dataset with every value checked; raise DataError naming file/line/column."""
    import numpy as np
    import pandas as pd

    name = path.name
    if path.stat().st_size == 0:
        raise DataError(
            "the file is empty (0 bytes); expected a CSV with columns " + ",".join(CSV_COLUMNS), file=name
        )
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    try:
        if b"\x00" in head:
            raise UnicodeDecodeError("utf-8", head, 0, 1, "NUL byte")
        head.decode("utf-8")
    except UnicodeDecodeError:
        # a cut in the middle of a multi-byte character at the sniff boundary is not binary
        if b"\x00" in head or not _decodes_if_truncated(head):
            raise DataError(
                "not a CSV text file (binary content); expected UTF-8 text with columns "
                + ",".join(CSV_COLUMNS),
                file=name,
            ) from None
    numeric = (*PRICE_COLUMNS, "Volume")
    try:
        # Typed read with the C parser (fast); only an empty cell counts as missing, so "NaN", "null" or
        # "n/a" in a price column leave it non-numeric and are reported below with their line.
        frame = pd.read_csv(
            path,
            dtype={"Date": str, "Name": str},
            keep_default_na=False,
            na_values={c: [""] for c in numeric},
            skipinitialspace=True,
        )
    except pd.errors.EmptyDataError:
        raise DataError(
            "the file has no header line; expected columns " + ",".join(CSV_COLUMNS), file=name
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"not a well-formed CSV file: {exc}".strip(), file=name) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(missing)}; found {', '.join(frame.columns) or 'none'}, "
            f"expected {', '.join(CSV_COLUMNS)}",
            file=name,
            row=1,
        )
    extra = [c for c in frame.columns if c not in CSV_COLUMNS]
    if extra:
        log.warning("%s: ignoring extra column(s) %s", name, ", ".join(extra))
    frame = frame[list(CSV_COLUMNS)]
    if frame.empty:
        raise DataError("the file has a header but no data rows", file=name)
    lines = pd.RangeIndex(2, len(frame) + 2)  # header is line 1
    frame.index = lines

    out = pd.DataFrame(index=lines)
    dates = frame["Date"].fillna("").astype(str).str.strip()
    parsed = pd.to_datetime(dates, format="%Y-%m-%d", errors="coerce")
    bad = parsed.isna()
    if bad.any():
        line = int(bad.idxmax())
        shown = dates[line] or "(empty)"
        raise DataError(f"{shown!r} is not a date; expected YYYY-MM-DD", file=name, row=line, column="Date")
    out["Date"] = parsed.astype("datetime64[ns]")
    for column in numeric:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            text = values.astype(str).str.strip()
            converted = pd.to_numeric(text.where(values.notna() & (text != ""), None), errors="coerce")
            bad = converted.isna() & values.notna() & (text != "")
            line = int(bad.idxmax()) if bad.any() else int(lines[0])
            raise DataError(f"{text[line]!r} is not a number", file=name, row=line, column=column)
        # The C parser reads inf, -Infinity and numbers too large for a double as infinite floats; like
        # "NaN" they are not prices (a single inf Close trains a model that answers the same for every row).
        infinite = values.notna() & ~np.isfinite(values.to_numpy(dtype="float64", na_value=np.nan))
        if infinite.any():
            line = int(infinite.idxmax())
            raise DataError(
                f"{_raw_cell(path, line, column)!r} is not a finite number",
                file=name,
                row=line,
                column=column,
            )
        out[column] = values.astype("float64")
    volume = out["Volume"]
    fractional = volume.notna() & (volume != volume.round())
    if fractional.any():
        line = int(fractional.idxmax())
        raise DataError(
            f"Volume {volume[line]!r} is not a whole number of shares", file=name, row=line, column="Volume"
        )
    out["Volume"] = volume.astype("Int64")
    tickers = frame["Name"].fillna("").astype(str).str.strip()
    empty = tickers == ""
    if empty.any():
        line = int(empty.idxmax())
        raise DataError("empty ticker name", file=name, row=line, column="Name")
    out["Name"] = tickers.astype(str)
    match = _PER_TICKER_NAME.match(name)
    if match and not name.startswith(COMBINED_PREFIX):
        expected = match.group("ticker")
        other = tickers != expected
        if other.any():
            line = int(other.idxmax())
            raise DataError(
                f"the file is named for ticker {expected} but holds rows of {tickers[line]}; a per-ticker "
                "file must hold one ticker (combined files are named all_stocks_*.csv)",
                file=name,
                row=line,
                column="Name",
            )
    out[SOURCE_FILE] = name
    out[SOURCE_LINE] = lines.to_numpy(dtype="int64")
    return out.reset_index(drop=True)


def _raw_cell(path: Path, line: int, column: str) -> str:
    """The text of one cell as written in the file (for the message; pandas has already parsed it)."""
    with path.open(newline="", encoding="utf-8") as handle:
        # numbered like pandas reads them: blank lines are skipped, the header is line 1
        rows = (row for row in csv.reader(handle) if row)
        header = [cell.strip() for cell in next(rows)]
        for number, row in enumerate(rows, start=2):
            if number == line:
                return row[header.index(column)].strip()
    return "?"


def _decodes_if_truncated(head: bytes) -> bool:
    for cut in range(1, 4):
        try:
            head[:-cut].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def _merge(tables: list):
    """Concatenate the files, keep each identical row once, and refuse disagreeing files."""
    import pandas as pd

    frame = pd.concat(tables, ignore_index=True)
    value_columns = ["Name", "Date", *PRICE_COLUMNS, "Volume"]
    seen: set[str] = set()
    overlap = False
    for table in tables:
        names = set(table["Name"].unique().tolist())
        overlap = overlap or bool(names & seen)
        seen |= names
    if not overlap:
        # the usual per-ticker layout: no ticker in two files, so no row can be counted twice
        frame = frame.sort_values(["Name", "Date", SOURCE_FILE, SOURCE_LINE], kind="stable").reset_index(
            drop=True
        )
        return frame, _file_stats(tables, frame), 0
    # A row identical to a row of an earlier file (a combined file and a per-ticker file, or the two
    # combined files overlapping in 2017) is the same observation: keep the first file's copy only.
    # Duplicates inside one file are left for validate, which reports them with their lines.
    first_file = frame.groupby(value_columns, dropna=False, sort=False)[SOURCE_FILE].transform("first")
    keep = frame[SOURCE_FILE] == first_file
    dropped = int((~keep).sum())
    frame = frame[keep]
    files_per_day = frame.groupby(["Name", "Date"], sort=False)[SOURCE_FILE].transform("nunique")
    conflicts = frame[files_per_day > 1].sort_values(["Name", "Date", SOURCE_FILE])
    if not conflicts.empty:
        first = conflicts.iloc[0]
        same = conflicts[(conflicts["Name"] == first["Name"]) & (conflicts["Date"] == first["Date"])]
        other = same[same[SOURCE_FILE] != first[SOURCE_FILE]].iloc[0]
        differing = [c for c in (*PRICE_COLUMNS, "Volume") if not _same(first[c], other[c])]
        detail = ", ".join(f"{c} {first[c]} vs {other[c]}" for c in differing)
        raise DataError(
            f"{first['Name']} on {_day(first['Date'])} differs between {first[SOURCE_FILE]} line "
            f"{first[SOURCE_LINE]} and {other[SOURCE_FILE]} line {other[SOURCE_LINE]} ({detail}); the files "
            "do not come from the same dataset -- remove one of them",
            file=str(first[SOURCE_FILE]),
            row=int(first[SOURCE_LINE]),
            column=differing[0] if differing else None,
        )
    frame = frame.sort_values(["Name", "Date", SOURCE_FILE, SOURCE_LINE], kind="stable").reset_index(
        drop=True
    )
    return frame, _file_stats(tables, frame), dropped


def _file_stats(tables: list, frame) -> list[dict[str, Any]]:
    used = frame[SOURCE_FILE].value_counts()
    stats = []
    for table in tables:
        name = table[SOURCE_FILE].iloc[0]
        rows_used = int(used.get(name, 0))
        stats.append(
            {
                "file": name,
                "layout": "combined" if name.startswith(COMBINED_PREFIX) else "per-ticker",
                "rows": len(table),
                "rows_used": rows_used,
                "rows_already_in_other_files": len(table) - rows_used,
            }
        )
    return stats


def _same(a: Any, b: Any) -> bool:
    import pandas as pd

    if pd.isna(a) and pd.isna(b):
        return True
    return bool(a == b)


def _day(value: Any) -> str:
    return value.strftime("%Y-%m-%d")


def download_kaggle_dataset(dataset: str, target: Path) -> None:
    """Download and unzip a Kaggle dataset with the kaggle package's API class.

    Credentials come from KAGGLE_USERNAME/KAGGLE_KEY (or KAGGLE_API_TOKEN), or a kaggle.json in
    KAGGLE_CONFIG_DIR (a mounted Kubernetes secret) or ~/.kaggle.  ``import kaggle`` authenticates and
    may print; everything the package prints is sent to the log so the component's stdout stays a single
    JSON line.
    """
    if not re.fullmatch(r"[^/\s]+/[^/\s]+", dataset):
        raise DataError(f"Kaggle dataset {dataset!r} is not of the form owner/name")
    if not _kaggle_credentials_present():
        raise ComponentError(
            "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or mount "
            "kaggle.json and point KAGGLE_CONFIG_DIR at its folder"
        )
    target.mkdir(parents=True, exist_ok=True)
    captured = io.StringIO()
    # On a terminal the kaggle package's own progress bar (tqdm, on stderr) shows the download; in a log
    # (a pipeline step, CI) a bar is one endless line, so it stays quiet and a line every few seconds
    # says how much has arrived.
    on_terminal = sys.stderr.isatty()
    try:
        with (
            contextlib.redirect_stdout(captured),
            _download_progress(dataset, target, enabled=not on_terminal),
        ):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
            api.dataset_download_files(dataset, path=str(target), unzip=True, quiet=not on_terminal)
    except SystemExit:
        raise ComponentError(f"Kaggle refused the credentials: {captured.getvalue().strip()}") from None
    except Exception as exc:  # network, 403/404 from Kaggle: say which dataset and why
        raise ComponentError(
            f"downloading Kaggle dataset {dataset} failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if captured.getvalue().strip():
            log.info("kaggle: %s", captured.getvalue().strip())
    log.info("downloaded Kaggle dataset %s into %s", dataset, target)


@contextlib.contextmanager
def _download_progress(dataset: str, target: Path, enabled: bool):
    """Log every DOWNLOAD_PROGRESS_S seconds how many bytes have arrived in ``target`` and for how long."""
    if not enabled:
        yield
        return
    stop = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not stop.wait(DOWNLOAD_PROGRESS_S):
            arrived = _bytes_under(target)
            log.info(
                "downloading Kaggle dataset %s: %.1f MB so far (%ds)",
                dataset,
                arrived / 1e6,
                time.monotonic() - started,
            )

    thread = threading.Thread(target=report, name="kaggle download progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _bytes_under(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):  # the archive is deleted once it is unzipped
            if path.is_file():
                total += path.stat().st_size
    return total


def _kaggle_credentials_present() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    if os.environ.get("KAGGLE_API_TOKEN"):  # kaggle >= 1.8 access tokens (a value or a file path)
        return True
    folders = [
        os.environ.get("KAGGLE_CONFIG_DIR"),
        str(Path.home() / ".kaggle"),
        str(Path.home() / ".config" / "kaggle"),
    ]
    return any(folder and (Path(folder) / "kaggle.json").is_file() for folder in folders)
