"""Drift: how far current data has moved from the champion model's training reference.

    ks, wasserstein, psi, jensen_shannon   the statistics, numpy only (stats.py)
    drift_report                           one ColumnDrift per feature, method chosen by kind and size
    prediction_drift                       JS distance of predicted-class counts

The rule that picks a method, and why, is in stats.py's docstring. Errors are DriftError
subclasses (errors.py).
"""

from .errors import DriftError, EmptySampleError, InvalidDriftInputError
from .stats import (
    CATEGORICAL_MAX_UNIQUE, KS_MAX_N, PSI_EPSILON, THRESHOLDS, ColumnDrift, Kind, Method, drift_report,
    jensen_shannon, kolmogorov_sf, ks, prediction_drift, psi, wasserstein,
)

__all__ = [
    "CATEGORICAL_MAX_UNIQUE", "KS_MAX_N", "PSI_EPSILON", "THRESHOLDS",
    "ColumnDrift", "DriftError", "EmptySampleError", "InvalidDriftInputError", "Kind", "Method",
    "drift_report", "jensen_shannon", "kolmogorov_sf", "ks", "prediction_drift", "psi", "wasserstein",
]
