"""The price table's columns, shared by consolidate and validate."""

from __future__ import annotations

# The columns of every file in the Kaggle dataset (per-ticker and combined layouts alike).
CSV_COLUMNS = ("Date", "Open", "High", "Low", "Close", "Volume", "Name")
PRICE_COLUMNS = ("Open", "High", "Low", "Close")
# Provenance columns consolidate adds so that validate can point at the source file and line.
SOURCE_FILE = "source_file"
SOURCE_LINE = "source_line"
# The dataset's file names state the dates they cover: AAPL_2006-01-01_to_2018-01-01.csv,
# all_stocks_2017-01-01_to_2018-01-01.csv.  A row outside that range does not belong to the file.
STATED_RANGE = r"_(?P<first>\d{4}-\d{2}-\d{2})_to_(?P<last>\d{4}-\d{2}-\d{2})\.csv$"
