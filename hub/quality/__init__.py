"""Data quality: per-channel expectations, checks over lake readings, health scores, rows to quarantine.

    Expectation           one channel's bounds: range, nulls, stuck, spikes, sampling, silence, skew
    default_expectations  those of the simulator's channels, derived from their signal specs
    check_readings        Arrow table (lake schema) → QualityReport, per (tenant, device, channel)
    check_lake            the same over a window of the lake, read with DuckDB
    QualityReport         CheckResults per series, device health scores (formula in report.py), metrics
    flagged_rows          the rows to quarantine, with the checks that flagged them; nothing is deleted
    is_quality_problem    what the drift detector consults: did any check fail on this series?

Errors are QualityError subclasses (errors.py).
"""

from .checks import Expectation, check_lake, check_readings, default_expectations
from .errors import InvalidExpectationError, InvalidReadingsError, QualityError, UnknownSeriesError
from .report import ChannelReport, Check, CheckResult, QualityReport, flagged_rows, is_quality_problem

__all__ = [
    "ChannelReport", "Check", "CheckResult", "Expectation", "InvalidExpectationError", "InvalidReadingsError",
    "QualityError", "QualityReport", "UnknownSeriesError",
    "check_lake", "check_readings", "default_expectations", "flagged_rows", "is_quality_problem",
]
