"""Prepare: check the raw ``points.csv`` and split it into training, validation and test rows.

Reads ``source_dir/points.csv`` (header ``x1,x2,x3,x4,label``; features are finite numbers, the label is
0 or 1) and writes ``work_dir/split.npz`` (components.common.dataset). A file that cannot be trusted is
rejected whole with a DataError naming the line and column to look at; nothing is repaired or dropped
silently, so the model is trained on exactly the rows in the file.

The split is random but fixed (``SPLIT_SEED``): experiments with the same fractions are compared on the
same validation rows and scored on the same test rows.
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


def run(
    source_dir: str, work_dir: str, test_fraction: float = 0.2, val_fraction: float = 0.2
) -> dict[str, Any]:
    """Split the rows: ``test_fraction`` and ``val_fraction`` of them (each a share of all rows) for testing
    and validation, the rest for training."""
    import numpy as np

    for name, fraction in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
            raise DataError(f"{name} must lie between 0 and 1 (exclusive), got {fraction!r}")
    if test_fraction + val_fraction >= 1.0:
        raise DataError(
            f"test_fraction + val_fraction is {test_fraction + val_fraction:g}: no rows left to train on"
        )
    path = Path(source_dir) / SOURCE_FILE
    X, y = read_points(path)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_test, n_val = max(1, round(len(y) * test_fraction)), max(1, round(len(y) * val_fraction))
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    for name, part in parts.items():
        if len(set(y[part].tolist())) < 2:
            raise DataError(
                f"the {name} split holds {'only one class' if len(part) else 'no rows'}; change "
                "test_fraction or val_fraction, or add rows",
                file=str(path),
            )
    written = save_split(
        work_dir,
        {
            f"{axis}_{name}": (X if axis == "X" else y)[part]
            for name, part in parts.items()
            for axis in ("X", "y")
        },
    )
    result = {
        "rows": len(y),
        **{f"{name}_rows": len(part) for name, part in parts.items()},
        "positive_fraction": round(float(y.mean()), 4),
        "split": str(written),
    }
    log.info(
        "prepared %s: %d training, %d validation and %d test rows",
        path,
        len(parts["train"]),
        len(parts["val"]),
        len(parts["test"]),
    )
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
                raise DataError(
                    f"the header is {','.join(header)}; expected {','.join(expected)}", file=str(path), row=1
                )
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
        raise DataError(
            f"{value!r} is not a class: the label is 0 or 1", file=str(path), row=line, column=LABEL
        )
    return int(value)
