"""The champion's training reference: the feature sample a model version was trained on, kept for drift.

The registry's provenance (hub/registry/provenance.py) records *how* the training data was made
(the recipe's split: devices, segments, windows), not the rows, so drift needs its own copy.
The retraining pipeline calls `save_reference` once per registered version; the drift monitor
reads it back with `load_reference`:

    <data_dir>/drift/reference/<name>/<version>.parquet

    <feature> ...   float64, the model's input features (e.g. vibration_rms.mean), one row per window
    prediction      optional: the class the model predicted for the window (string, or int index)
    label           optional: the window's true class (string, or int index)
    tenant, device  optional: where the window came from (kept, never judged)

With `prediction` the monitor judges prediction drift against the model's own outputs on its
training windows (else against `label`); with both, their agreement is the reference accuracy
that concept drift compares labelled live windows to.

A file is written once (tmp + fsync + rename) and never rewritten: a second save of the same
version is refused, so a drift verdict always refers to the sample the version was trained on.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DriftError, InvalidDriftInputError

__all__ = ["PREDICTION", "LABEL", "ReferenceExistsError", "UnknownReferenceError", "load_reference",
           "reference_path", "reference_table", "save_reference"]

PREDICTION = "prediction"
LABEL = "label"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")  # the registry's rule for names and versions


class UnknownReferenceError(DriftError, LookupError):
    """No reference sample is saved for this model version (also a LookupError)."""


class ReferenceExistsError(DriftError):
    """A reference sample is already saved for this model version; it is never replaced."""


def reference_path(data_dir: Path | str, name: str, version: str) -> Path:
    for what, value in (("name", name), ("version", version)):
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise InvalidDriftInputError(
                f"Model {what} {value!r} is not 1-64 characters of A-Z a-z 0-9 . _ + -, starting with a letter or digit.")
    return Path(data_dir) / "drift" / "reference" / name / f"{version}.parquet"


def reference_table(
    features: np.ndarray,
    names: Sequence[str],
    *,
    predictions: Sequence[object] | np.ndarray | None = None,
    labels: Sequence[object] | np.ndarray | None = None,
    classes: Sequence[str] | None = None,
) -> pa.Table:
    """A reference table from a feature matrix (rows × names); int predictions/labels become class names."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(names):
        raise InvalidDriftInputError(f"Reference features have shape {x.shape}; expected (rows, {len(names)}).")
    cols: dict[str, pa.Array] = {n: pa.array(x[:, i]) for i, n in enumerate(names)}
    for col, values in ((PREDICTION, predictions), (LABEL, labels)):
        if values is None:
            continue
        v = np.asarray(values)
        if len(v) != len(x):
            raise InvalidDriftInputError(f"{len(v)} {col}s for {len(x)} reference rows.")
        if v.dtype.kind in "iu" and classes is not None:
            v = np.asarray(classes, dtype=object)[v]
        cols[col] = pa.array(v.tolist())
    return pa.table(cols)


def save_reference(data_dir: Path | str, name: str, version: str, table: pa.Table) -> Path:
    """Write `table` as the reference of model `name` `version`; refused if one is already saved."""
    path = reference_path(data_dir, name, version)
    if path.exists():
        raise ReferenceExistsError(f"{name} {version} already has a reference sample at {path}; it is never replaced.")
    if not isinstance(table, pa.Table) or table.num_rows == 0:
        raise InvalidDriftInputError(f"The reference for {name} {version} must be a non-empty Arrow table.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)  # the rename survives a crash only once the folder is synced
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def load_reference(data_dir: Path | str, name: str, version: str) -> pa.Table:
    """The saved reference of `name` `version`; UnknownReferenceError when none was saved."""
    path = reference_path(data_dir, name, version)
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        raise UnknownReferenceError(
            f"No drift reference is saved for {name} {version} (looked for {path}); the retraining pipeline "
            "saves one with hub.drift.save_reference when it registers a version.") from None
