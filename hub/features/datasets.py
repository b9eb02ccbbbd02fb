"""Training datasets: labels joined point-in-time with a feature view, frozen as a versioned snapshot.

    build_dataset(data_dir, view, labels, name=...)   point_in_time → data.parquet + a `datasets` row
    list_datasets(data_dir, name=None)                 every dataset version, oldest first (no lineage)
    get_dataset(data_dir, name, version)               one version's record, lineage included
    load_dataset(data_dir, name, version)              its table, after checking the file's sha256

A dataset lives at `<data_dir>/datasets/<name>/<version>/data.parquet`. Its version is a content
hash: the first 16 hex digits of sha256(data.parquet bytes + lineage JSON), so the same labels,
view version, runs, semantics and label source give the same version, and rebuilding them adds
nothing. The lineage pins the materialization runs the features came from: without `as_of_run`
the view's latest run at build time is used and recorded, so a later run makes a new version
rather than silently changing an old one.

Labels are never dropped: a label with no feature window (before the device's first reading, an
unknown device) keeps null features and is counted in `null_feature_rows`, as is a label whose
window has a null or NaN feature.

The file is written before its row is committed (tmp + fsync + rename); the row is the commit
point, as for materialization runs. A folder no row names is a crash's leftover and never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .definitions import FeatureView
from .errors import DatasetIntegrityError, InvalidFeatureViewError, UnknownFeatureError
from .registry import FeatureRegistry, RunRecord
from .retrieval import SEMANTICS, point_in_time

__all__ = ["DatasetIntegrityError", "build_dataset", "get_dataset", "list_datasets", "load_dataset"]

# A dataset's name is a folder under <data_dir>/datasets, like a view's under <data_dir>/features.
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_FILE = "data.parquet"

_TABLE = """
CREATE TABLE IF NOT EXISTS datasets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    view_name TEXT NOT NULL,
    view_version TEXT NOT NULL,
    run_ids TEXT NOT NULL,
    semantics TEXT NOT NULL,
    label_source TEXT NOT NULL,
    label_rows INTEGER NOT NULL,
    null_feature_rows INTEGER NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    lineage TEXT NOT NULL,
    UNIQUE (name, version)
);
"""


def build_dataset(
    data_dir: Path,
    view: FeatureView,
    labels: pa.Table,
    *,
    name: str,
    semantics: str = "arrival",
    as_of_run: str | None = None,
    label_source: str = "",
    registry: FeatureRegistry | None = None,
    now_us: int | None = None,
) -> dict:
    """Join `labels` (tenant, device, ts_us, label, any more columns) with `view` and record the snapshot."""
    data_dir = Path(data_dir)
    _check_name(name)
    if semantics not in SEMANTICS:
        raise InvalidFeatureViewError(f"Retrieval semantics {semantics!r} is not one of {list(SEMANTICS)!r}.")
    if not isinstance(labels, pa.Table) or "label" not in labels.column_names:
        got = labels.column_names if isinstance(labels, pa.Table) else type(labels).__name__
        raise InvalidFeatureViewError(f"Dataset labels must be a table with a 'label' column; got {got!r}.")
    if not isinstance(label_source, str):
        raise InvalidFeatureViewError(f"Dataset label_source {label_source!r} must be a string.")
    own = registry is None
    registry = FeatureRegistry(data_dir) if own else registry
    try:
        registered = registry.get(view.name, view.version)
        runs = _runs_used(registry, view, as_of_run)
        table = point_in_time(data_dir, view, labels, semantics=semantics, as_of_run=runs[-1].run_id)
        lineage = {
            "view": {"name": view.name, "version": view.version, "source": registered.view.source_lineage()},
            "semantics": semantics,
            "as_of_run": runs[-1].run_id,
            "runs": [_run_lineage(r) for r in runs],
            "label_source": label_source,
            "label_rows": labels.num_rows,
            "null_feature_rows": _null_feature_rows(table, view),
            "columns": table.column_names,
        }
        data = _parquet_bytes(table)
        sha = hashlib.sha256(data).hexdigest()
        version = hashlib.sha256(data + _canonical(lineage).encode()).hexdigest()[:16]
        path = data_dir / "datasets" / name / version / _FILE
        if not (path.is_file() and _sha256(path) == sha):  # an identical rebuild leaves the file alone
            _write_atomic(path, data)
        row = (
            name, version, time.time_ns() // 1000 if now_us is None else now_us, view.name, view.version,
            json.dumps([r.run_id for r in runs]), semantics, label_source, labels.num_rows,
            lineage["null_feature_rows"], str(path), sha, _canonical(lineage),
        )
        db = registry.db
        db.executescript(_TABLE)
        db.execute("BEGIN IMMEDIATE")  # read-then-insert must not race another hub process
        try:
            db.execute(
                "INSERT OR IGNORE INTO datasets (name, version, created_at_us, view_name, view_version, run_ids,"
                " semantics, label_source, label_rows, null_feature_rows, path, sha256, lineage)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return _get(db, name, version)
    finally:
        if own:
            registry.close()


def list_datasets(data_dir: Path, name: str | None = None) -> list[dict]:
    """Every dataset version (of `name`, if given), oldest first, without lineage."""
    with FeatureRegistry(data_dir) as registry:
        registry.db.executescript(_TABLE)
        if name is None:
            rows = registry.db.execute("SELECT * FROM datasets ORDER BY seq").fetchall()
        else:
            rows = registry.db.execute("SELECT * FROM datasets WHERE name = ? ORDER BY seq", (name,)).fetchall()
    out = []
    for r in rows:
        record = _record(r)
        del record["lineage"]
        out.append(record)
    return out


def get_dataset(data_dir: Path, name: str, version: str) -> dict:
    """One dataset version's record: counts, view, runs, path, sha256 and lineage."""
    with FeatureRegistry(data_dir) as registry:
        registry.db.executescript(_TABLE)
        return _get(registry.db, name, version)


def load_dataset(data_dir: Path, name: str, version: str) -> pa.Table:
    """The dataset's table; DatasetIntegrityError if its file is missing or changed since it was built."""
    record = get_dataset(data_dir, name, version)
    path = Path(record["path"])
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DatasetIntegrityError(f"Dataset {name!r} version {version} has no file at {path}.") from exc
    sha = hashlib.sha256(data).hexdigest()
    if sha != record["sha256"]:
        raise DatasetIntegrityError(
            f"Dataset {name!r} version {version} file {path} has sha256 {sha}; it was built with"
            f" {record['sha256']}, so the file changed since."
        )
    return pq.read_table(pa.BufferReader(data))


# --- helpers ----------------------------------------------------------------------------------
def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidFeatureViewError(
            f"Dataset name {name!r} must be 1-64 characters of a-z 0-9 _ . -, starting with a letter or digit."
        )


def _runs_used(registry: FeatureRegistry, view: FeatureView, as_of_run: str | None) -> list[RunRecord]:
    """The runs retrieval reads as of `as_of_run` (the latest when None), oldest first."""
    runs = registry.runs(view.name, view.version)
    if not runs:
        raise InvalidFeatureViewError(
            f"Feature view {view.name!r} version {view.version} has no materialization run;"
            " materialize it before building a dataset from it."
        )
    if as_of_run is None:
        return runs
    at = next((r for r in runs if r.run_id == as_of_run), None)
    if at is None:
        raise UnknownFeatureError(
            f"Materialization run {as_of_run!r} is not a run of feature view {view.name!r} version {view.version}."
        )
    return [r for r in runs if r.seq <= at.seq]


def _run_lineage(r: RunRecord) -> dict:
    # Partitions, not lake files: the files of each run stay in the registry (FeatureRegistry.lineage).
    return {
        "run_id": r.run_id, "materialized_us": r.materialized_us, "since_us": r.since_us, "until_us": r.until_us,
        "rows_read": r.rows_read, "rows_written": r.rows_written, "lake_version": r.lake_version,
        "partitions": sorted({f.partition for f in r.files}),
    }


def _null_feature_rows(table: pa.Table, view: FeatureView) -> int:
    if table.num_rows == 0 or not view.feature_names:
        return 0
    masks = [pc.is_null(table.column(n), nan_is_null=True) for n in view.feature_names]
    any_null = masks[0]
    for m in masks[1:]:
        any_null = pc.or_(any_null, m)
    return int(pc.sum(any_null.cast(pa.int64())).as_py() or 0)


def _parquet_bytes(table: pa.Table) -> bytes:
    # Same table, same pyarrow → same bytes: the version hash depends on it.
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # two builders never share a tmp
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a crash only once the folder is synced
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _get(db, name: str, version: str) -> dict:
    row = db.execute("SELECT * FROM datasets WHERE name = ? AND version = ?", (name, version)).fetchone()
    if row is None:
        raise UnknownFeatureError(f"Dataset {name!r} version {version!r} is not recorded.")
    return _record(row)


def _record(row) -> dict:
    return {
        "name": row["name"], "version": row["version"], "created_at_us": row["created_at_us"],
        "view": row["view_name"], "view_version": row["view_version"], "run_ids": json.loads(row["run_ids"]),
        "semantics": row["semantics"], "label_source": row["label_source"], "label_rows": row["label_rows"],
        "null_feature_rows": row["null_feature_rows"], "path": row["path"], "sha256": row["sha256"],
        "lineage": json.loads(row["lineage"]),
    }
