"""Errors a component raises when its input cannot be used.

Components run in plain images without branchops, so they define their own error classes.  The
``python -m components`` entry point maps ``DataError`` to exit code 7 (the code branchops uses for bad
input data) and everything else to 1.
"""

from __future__ import annotations


class ComponentError(Exception):
    """A component could not do its work for a reason other than bad data (exit code 1)."""


class DataError(ComponentError):
    """Input data that cannot be trusted, with where the problem is.

    ``row`` is the 1-based line number in ``file`` (the header is line 1), so a user can open the file
    at that line.
    """

    def __init__(
        self, message: str, *, file: str | None = None, row: int | None = None, column: str | None = None
    ) -> None:
        self.file = file
        self.row = row
        self.column = column
        self.reason = message
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"line {row}")
        if column is not None:
            where.append(f"column {column}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
