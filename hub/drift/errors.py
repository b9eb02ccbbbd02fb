"""Drift errors, all DriftError subclasses.

    DriftError
    ├── EmptySampleError        a column has no values left after dropping NaN/None (also a ValueError)
    └── InvalidDriftInputError  mismatched columns, shapes or kinds (also a ValueError)
"""

from __future__ import annotations

__all__ = ["DriftError", "EmptySampleError", "InvalidDriftInputError"]


class DriftError(Exception):
    """Base of every error the drift package raises."""


class EmptySampleError(DriftError, ValueError):
    """A sample is empty; `column` names it ("" for the bare statistics) and `side` says which."""

    def __init__(self, column: str, side: str) -> None:
        self.column = column
        self.side = side
        where = f"Column {column!r}" if column else "The sample"
        super().__init__(f"{where} has no {side} values left after dropping NaN/None; drift needs at least one.")


class InvalidDriftInputError(DriftError, ValueError):
    pass
