"""The hub's model registry: registered versions, signed variants, signing keys, aliases per cohort.

    Registry      versions and their artifacts under <data_dir>/registry, tables in control.db
    KeyRing       the ed25519 signing keys under <data_dir>/keys (one active, older ones listed)
    cohorts       `*` or `k=v[,k=v...]` tag selectors: parse_cohort, cohort_key, cohort_matches

Errors are RegistryError subclasses carrying the HTTP status the API answers with (errors.py).
"""

from .cohort import FLEET, cohort_key, cohort_matches, normalize_cohort, parse_cohort, specificity
from .errors import (
    ArtifactRejectedError,
    ArtifactTooLargeError,
    InvalidModelError,
    ModelConflictError,
    NotSignedError,
    RegistryError,
    UnknownModelError,
)
from .files import MAX_ARTIFACT_BYTES, Upload, check_file_name
from .keys import KeyRing
from .provenance import code_version
from .store import Registry

__all__ = [
    "FLEET", "MAX_ARTIFACT_BYTES", "ArtifactRejectedError", "ArtifactTooLargeError", "InvalidModelError",
    "KeyRing", "ModelConflictError", "NotSignedError", "Registry", "RegistryError", "UnknownModelError",
    "Upload", "check_file_name", "code_version", "cohort_key", "cohort_matches", "normalize_cohort",
    "parse_cohort", "specificity",
]
