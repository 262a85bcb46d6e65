"""The split that ``prepare`` writes into the work folder and ``train`` reads: one NumPy file holding
the features and labels of the training, validation and test rows, in the column order of ``FEATURES``.

The model is fitted on the training rows; experiments are compared on the validation rows; the test
rows are scored once, for the model an experiment produced (so choosing the best experiment does not
tune it to the test rows)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from components.common.errors import DataError

FEATURES = ("x1", "x2", "x3", "x4")
LABEL = "label"
SPLIT_FILE = "split.npz"
ARRAYS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")


def save_split(work_dir: str | Path, arrays: dict[str, Any]) -> Path:
    """Write the split under a temporary name and rename it: a reader never sees half a file."""
    import numpy as np

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=work, prefix=f".{SPLIT_FILE}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **{name: arrays[name] for name in ARRAYS})
        os.replace(tmp, work / SPLIT_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return work / SPLIT_FILE


def load_split(work_dir: str | Path) -> dict[str, Any]:
    import numpy as np

    path = Path(work_dir) / SPLIT_FILE
    if not path.is_file():
        raise DataError(f"{SPLIT_FILE} is missing: run the prepare component first", file=str(path))
    with np.load(path) as data:
        missing = [name for name in ARRAYS if name not in data.files]
        if missing:
            raise DataError(
                f"missing array(s) {', '.join(missing)}: run the prepare component again", file=str(path)
            )
        arrays = {name: data[name] for name in ARRAYS}
    if arrays["X_train"].shape[1:] != (len(FEATURES),):
        raise DataError(
            f"X_train has shape {arrays['X_train'].shape}, expected (rows, {len(FEATURES)})", file=str(path)
        )
    return arrays
