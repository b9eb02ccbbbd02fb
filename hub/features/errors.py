"""The feature store's errors, all FeatureError subclasses.

    FeatureError
    ├── InvalidFeatureViewError     a view, label table or argument is malformed (also a ValueError)
    ├── FeatureConflictError        a name and version already registered with other metadata
    ├── UnknownFeatureError         no such view, version or materialization run (also a LookupError)
    └── DatasetIntegrityError       a dataset's file is missing or no longer hashes to its recorded sha256
"""

from __future__ import annotations

__all__ = ["DatasetIntegrityError", "FeatureConflictError", "FeatureError", "InvalidFeatureViewError",
           "UnknownFeatureError"]


class FeatureError(Exception):
    """Base of every error the feature store raises."""


class InvalidFeatureViewError(FeatureError, ValueError):
    pass


class FeatureConflictError(FeatureError):
    pass


class UnknownFeatureError(FeatureError, LookupError):
    pass


class DatasetIntegrityError(FeatureError):
    pass
