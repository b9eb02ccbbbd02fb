"""The data-quality package's errors, all QualityError subclasses.

    QualityError
    ├── InvalidExpectationError     an Expectation field is out of its domain (also a ValueError)
    ├── InvalidReadingsError        the readings lack a lake column or have one of the wrong type (also a ValueError)
    └── UnknownSeriesError          a report holds no such (tenant, device, channel) (also a LookupError)
"""

from __future__ import annotations

__all__ = ["InvalidExpectationError", "InvalidReadingsError", "QualityError", "UnknownSeriesError"]


class QualityError(Exception):
    """Base of every error the data-quality checks raise."""


class InvalidExpectationError(QualityError, ValueError):
    pass


class InvalidReadingsError(QualityError, ValueError):
    pass


class UnknownSeriesError(QualityError, LookupError):
    pass
