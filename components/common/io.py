"""Writing outputs so that a failure never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON next to ``path`` and rename it into place (a reader never sees half a file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False, default=_json_default)
            handle.write("\n")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays appear in summaries; keep the component code free of conversions.
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


@contextlib.contextmanager
def staged_outputs(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a private staging folder; on success move every file in it into ``out_dir``.

    On any error the staging folder is removed and ``out_dir`` is left exactly as it was.  Files are
    moved with ``os.replace`` (atomic per file, same file system since the staging folder lives inside
    ``out_dir``'s parent tree).
    """
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target))
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            destination = target / item.name
            if item.is_dir():
                if destination.exists():
                    shutil.rmtree(destination)
                os.replace(item, destination)
            else:
                os.replace(item, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def require_file(path: Path, produced_by: str) -> Path:
    """Fail with a message that names the missing input and the component that makes it."""
    from components.common.errors import DataError

    if not path.is_file():
        raise DataError(f"missing input {path}; run the {produced_by} component first")
    return path
