"""Drift: how far current data has moved from the champion model's training reference.

    ks, wasserstein, psi, jensen_shannon   the statistics, numpy only (stats.py)
    drift_report                           one ColumnDrift per feature, method chosen by kind and size
    prediction_drift                       JS distance of predicted-class counts
    DriftMonitor                           per-cohort checks, quality-gated, debounced into DriftTriggers (monitor.py)
    save_reference, load_reference         the champion's training sample, per model version (reference.py)
    render_report                          index.html + PNG charts of a cohort's latest check (report.py)

The rule that picks a method, and why, is in stats.py's docstring. Errors are DriftError
subclasses (errors.py).
"""

from .errors import DriftError, EmptySampleError, InvalidDriftInputError
from .monitor import (
    ConceptDrift, DriftCheck, DriftMonitor, DriftPolicy, DriftTrigger, Histogram, PredictionDrift, QualityProblem, State,
)
from .reference import (
    ReferenceExistsError, UnknownReferenceError, load_reference, reference_path, reference_table, save_reference,
)
from .report import render_report
from .stats import (
    CATEGORICAL_MAX_UNIQUE, KS_MAX_N, PSI_EPSILON, THRESHOLDS, ColumnDrift, Kind, Method, drift_report,
    jensen_shannon, kolmogorov_sf, ks, prediction_drift, psi, wasserstein,
)

__all__ = [
    "CATEGORICAL_MAX_UNIQUE", "KS_MAX_N", "PSI_EPSILON", "THRESHOLDS",
    "ColumnDrift", "ConceptDrift", "DriftCheck", "DriftError", "DriftMonitor", "DriftPolicy", "DriftTrigger",
    "EmptySampleError", "Histogram", "InvalidDriftInputError", "Kind", "Method", "PredictionDrift", "QualityProblem",
    "ReferenceExistsError", "State", "UnknownReferenceError",
    "drift_report", "jensen_shannon", "kolmogorov_sf", "ks", "load_reference", "prediction_drift", "psi",
    "reference_path", "reference_table", "render_report", "save_reference", "wasserstein",
]
