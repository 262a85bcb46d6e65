"""Prepare: check the raw ``points.csv`` and split it into training and test rows.

Reads ``source_dir/points.csv`` (header ``x1,x2,x3,x4,label``; features are finite numbers, the label is
0 or 1) and writes ``work_dir/split.npz`` (components.common.dataset). A file that cannot be trusted is
rejected whole with a DataError naming the line and column to look at; nothing is repaired or dropped
silently, so the model is trained on exactly the rows in the file.

The split is random but fixed (``SPLIT_SEED``): every experiment of a commit is scored on the same
test rows, so their metrics compare.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

from components.common.dataset import FEATURES, LABEL, save_split
from components.common.errors import DataError

log = logging.getLogger(__name__)

SOURCE_FILE = "points.csv"
SPLIT_SEED = 0
MIN_ROWS = 20  # fewer leave a test split too small to say anything


def run(source_dir: str, work_dir: str, test_fraction: float = 0.2) -> dict[str, Any]:
    import numpy as np

    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must lie between 0 and 1 (exclusive), got {test_fraction!r}")
    path = Path(source_dir) / SOURCE_FILE
    X, y = read_points(path)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_test = max(1, round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    for name, part in (("training", train), ("test", test)):
        if len(set(y[part].tolist())) < 2:
            raise DataError(f"the {name} split holds only one class; change test_fraction or add rows",
                            file=str(path))
    written = save_split(work_dir, {"X_train": X[train], "y_train": y[train], "X_test": X[test], "y_test": y[test]})
    result = {"rows": len(y), "train_rows": len(train), "test_rows": len(test),
              "positive_fraction": round(float(y.mean()), 4), "split": str(written)}
    log.info("prepared %s: %d training and %d test rows", path, len(train), len(test))
    return result


def read_points(path: Path):
    """The features (float32, one column per FEATURES) and labels (int64) of ``path``, or a DataError."""
    import numpy as np

    if not path.is_file():
        raise DataError(f"{SOURCE_FILE} not found (is the data volume filled?)", file=str(path))
    expected = [*FEATURES, LABEL]
    features: list[list[float]] = []
    labels: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError("the file is empty", file=str(path))
            if [h.strip() for h in header] != expected:
                raise DataError(f"the header is {','.join(header)}; expected {','.join(expected)}",
                                file=str(path), row=1)
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue  # a blank line (a trailing newline, say) holds no point
                if len(row) != len(expected):
                    raise DataError(f"{len(row)} fields, expected {len(expected)}", file=str(path), row=line)
                features.append([_feature(value, path, line, name) for name, value in zip(FEATURES, row)])
                labels.append(_label(row[-1], path, line))
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=str(path)) from None
    except csv.Error as exc:
        raise DataError(f"not a well-formed CSV file: {exc}", file=str(path)) from None
    if len(labels) < MIN_ROWS:
        raise DataError(f"{len(labels)} rows; at least {MIN_ROWS} are needed", file=str(path))
    return np.asarray(features, dtype="float32"), np.asarray(labels, dtype="int64")


def _feature(value: str, path: Path, line: int, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{value!r} is not a number", file=str(path), row=line, column=column) from None
    if not math.isfinite(number):
        raise DataError(f"{value!r} is not a finite number", file=str(path), row=line, column=column)
    return number


def _label(value: str, path: Path, line: int) -> int:
    if value.strip() not in ("0", "1"):
        raise DataError(f"{value!r} is not a class: the label is 0 or 1", file=str(path), row=line, column=LABEL)
    return int(value)
