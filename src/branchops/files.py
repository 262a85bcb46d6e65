"""Reading a text file a user wrote (the configuration, a release file, a manifest): one place that says
clearly when it is missing or not UTF-8 text, with the error type the caller reports."""

from __future__ import annotations

from pathlib import Path

from branchops.errors import BranchopsError, ConfigError


def read_text(path: str | Path, *, missing: str, error: type[BranchopsError] = ConfigError) -> str:
    """The file's text; ``error`` naming the file and ``missing`` (what to do) when it is not there."""
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{file}: {missing}") from None
    except IsADirectoryError:
        raise error(f"{file}: is a directory, not a file") from None
    except UnicodeDecodeError:
        raise error(f"{file}: not a UTF-8 text file") from None
