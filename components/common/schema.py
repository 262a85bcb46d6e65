"""The price table's columns, shared by consolidate and validate."""

from __future__ import annotations

# The columns of every file in the Kaggle dataset (per-ticker and combined layouts alike).
CSV_COLUMNS = ("Date", "Open", "High", "Low", "Close", "Volume", "Name")
PRICE_COLUMNS = ("Open", "High", "Low", "Close")
# Provenance columns consolidate adds so that validate can point at the source file and line.
SOURCE_FILE = "source_file"
SOURCE_LINE = "source_line"
