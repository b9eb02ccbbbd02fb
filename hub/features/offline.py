"""The offline store: feature views materialized from the lake into Parquet snapshots per run.

`materialize(data_dir, view)` reads the view's channels from the lake with DuckDB, computes
windows per (tenant, device) with `protocol.features.window_features` (the code the device
runs before inference, so hub and device features agree bit for bit on the same readings) and
writes one run under `<data_dir>/features/<name>/<version>/run=<run_id>/part-0.parquet`:

    tenant, device       the entity
    window_start         int64 µs, inclusive
    event_time           int64 µs, the window's end, exclusive: the first instant it is complete
    available_at         int64 µs, max `received` of the window's readings: when the hub could
                         first have computed the window as written
    materialized_at      int64 µs, when this run ran
    <channel>.<agg> ...  float64, one column per `spec.feature_names`

A run never rewrites an earlier one, so older snapshots stay readable (retrieval's `as_of_run`).
A run is committed when the registry records it; a folder no run record names is a crash's
leftover and is never read. Runs compose: the view as of run R holds, per window, the row of
the latest run up to R that computed it, so a run limited by `since_us`/`until_us` refreshes
only its range.

Hazards. `available_at` is conservative: a window whose readings arrived in parts is taken as
available only when its last reading arrived, never earlier (no leak, but the partial window
the hub briefly had is not kept). Readings repeated exactly (same tenant, device, channel,
ts, value: a redelivered batch) count once, at their first arrival; readings that differ in
value at one timestamp are kept as separate samples, as window_features counts them.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hub.storage.lake import Lake
from protocol import Readings
from protocol.features import window_features

from .definitions import FeatureView
from .errors import InvalidFeatureViewError
from .registry import FeatureRegistry, RunFile

__all__ = ["KEY_COLUMNS", "compute_features", "feature_schema", "materialize", "view_dir"]

KEY_COLUMNS = ("tenant", "device", "window_start", "event_time", "available_at", "materialized_at")


def view_dir(data_dir: Path, view: FeatureView) -> Path:
    return Path(data_dir) / "features" / view.name / view.version


def feature_schema(view: FeatureView) -> pa.Schema:
    return pa.schema(
        [("tenant", pa.string()), ("device", pa.string())]
        + [(c, pa.int64()) for c in KEY_COLUMNS[2:]]
        + [(name, pa.float64()) for name in view.feature_names]
    )


@dataclass(frozen=True)
class _Rows:
    """Lake readings of one view, sorted by (tenant, device)."""

    tenant: np.ndarray
    device: np.ndarray
    channel: np.ndarray  # index into the spec's channels
    ts: np.ndarray
    value: np.ndarray
    received: np.ndarray
    files: tuple[RunFile, ...]


def materialize(
    data_dir: Path,
    view: FeatureView,
    *,
    since_us: int | None = None,
    until_us: int | None = None,
    now_us: int | None = None,
    lake_version: int | None = None,
) -> dict[str, object]:
    """Compute `view` over the lake and commit a new run; returns the run's summary.

    `since_us`/`until_us` limit the readings by event time, widened to whole windows so that no
    window is computed from part of its readings. `lake_version` reads the lake as it was at that
    Delta version (time travel; default: the latest), and the run records the version it read.
    The view is registered if it is not yet.
    """
    data_dir = Path(data_dir)
    since_us, until_us = _range(view, since_us, until_us, lake_version)
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    # Sortable by time, unique across hub processes: run ids name folders and order listings.
    run_id = f"{now_us:017d}-{uuid.uuid4().hex[:8]}"

    with FeatureRegistry(data_dir) as registry:
        registry.register(view, now_us=now_us)  # first: a conflicting view must not leave a run behind
    lake = Lake(data_dir / "lake")
    latest = lake.version()
    if lake_version is not None and lake_version > latest:
        raise InvalidFeatureViewError(
            f"materialize lake_version is {lake_version}; the lake's latest version is {latest}."
        )
    read_version = latest if lake_version is None else lake_version
    rows = _read_lake(lake, view, since_us=since_us, until_us=until_us,
                      version=read_version if read_version >= 0 else None)
    table = _compute(view, rows, materialized_us=now_us)

    root = view_dir(data_dir, view)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"run={run_id}"
    tmp = root / f".run={run_id}.tmp"
    tmp.mkdir()
    try:
        with open(tmp / "part-0.parquet", "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with FeatureRegistry(data_dir) as registry:
        record = registry.record_run(
            view, run_id=run_id, materialized_us=now_us, since_us=since_us, until_us=until_us,
            rows_read=len(rows.ts), rows_written=table.num_rows, path=final, files=rows.files,
            lake_version=read_version if read_version >= 0 else None,
        )
    return {
        "name": view.name,
        "version": view.version,
        "run_id": record.run_id,
        "path": str(final),
        "since_us": since_us,
        "until_us": until_us,
        "rows_read": record.rows_read,
        "rows_written": record.rows_written,
        "lake_version": record.lake_version,
        "partitions": sorted({f.partition for f in record.files}),
        "materialized_at": now_us,
    }


def compute_features(
    data_dir: Path, view: FeatureView, *, since_us: int | None = None, until_us: int | None = None,
    lake_version: int | None = None, now_us: int | None = None,
) -> pa.Table:
    """The rows `materialize` would write for this range (feature_schema), without recording a run:
    for readers that want recent windows now (the drift monitor), not a snapshot to keep."""
    since_us, until_us = _range(view, since_us, until_us, lake_version)
    lake = Lake(Path(data_dir) / "lake")
    rows = _read_lake(lake, view, since_us=since_us, until_us=until_us, version=lake_version)
    return _compute(view, rows, materialized_us=time.time_ns() // 1000 if now_us is None else now_us)


def _range(view: FeatureView, since_us: int | None, until_us: int | None,
           lake_version: int | None) -> tuple[int | None, int | None]:
    """Check the bounds and widen them to whole windows."""
    window = view.spec.window_us
    for label, bound in (("since_us", since_us), ("until_us", until_us)):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)):
            raise InvalidFeatureViewError(f"materialize {label} is {bound!r}; it must be an int of µs or None.")
    if since_us is not None:
        since_us = since_us // window * window
    if until_us is not None:
        until_us = -(-until_us // window) * window
    if lake_version is not None and (isinstance(lake_version, bool) or not isinstance(lake_version, int)
                                     or lake_version < 0):
        raise InvalidFeatureViewError(f"materialize lake_version is {lake_version!r}; it must be an int >= 0 or None.")
    if since_us is not None and until_us is not None and since_us >= until_us:
        raise InvalidFeatureViewError(
            f"materialize range [{since_us}, {until_us}) µs is empty; since_us must come before until_us."
        )
    return since_us, until_us


def _read_lake(lake: Lake, view: FeatureView, *, since_us: int | None, until_us: int | None,
               version: int | None) -> _Rows:
    channels = list(view.spec.channels)
    empty = np.empty(0, np.int64)
    files = lake.files(version)
    if not files:
        return _Rows(np.empty(0, object), np.empty(0, object), empty, empty, np.empty(0), empty, ())
    where, params = ["kind = ?", "list_contains(?, channel)"], [view.source, channels]
    if since_us is not None:
        where.append("epoch_us(ts) >= ?")
        params.append(since_us)
    if until_us is not None:
        where.append("epoch_us(ts) < ?")
        params.append(until_us)
    source = "read_parquet(?, hive_partitioning = true, union_by_name = true, filename = true)"
    sql = f"""
        WITH picked AS (
            SELECT tenant, device, channel, epoch_us(ts) AS ts, value, epoch_us(received) AS received,
                   filename, date
            FROM {source} WHERE {" AND ".join(where)}
        ), first_arrival AS (
            -- a redelivered reading counts once, when the hub first had it
            SELECT tenant, device, channel, ts, value, min(received) AS received
            FROM picked GROUP BY tenant, device, channel, ts, value
        )
        SELECT * FROM first_arrival ORDER BY tenant, device
    """
    with duckdb.connect() as con:
        got = con.sql(sql, params=[files, *params]).to_arrow_table()
        per_file = con.execute(
            f"SELECT filename, date, count(*) FROM {source} WHERE {' AND '.join(where)}"
            " GROUP BY filename, date ORDER BY filename",
            [files, *params],
        ).fetchall()
    index = {c: i for i, c in enumerate(channels)}
    channel = np.fromiter((index[c] for c in got.column("channel").to_pylist()), np.uint16, got.num_rows)
    return _Rows(
        tenant=np.asarray(got.column("tenant").to_pylist(), dtype=object),
        device=np.asarray(got.column("device").to_pylist(), dtype=object),
        channel=channel,
        ts=got.column("ts").to_numpy().astype(np.int64),
        value=got.column("value").to_numpy().astype(np.float64),
        received=got.column("received").to_numpy().astype(np.int64),
        files=tuple(RunFile(str(f), f"date={d}", int(n)) for f, d, n in per_file),
    )


def _compute(view: FeatureView, rows: _Rows, *, materialized_us: int) -> pa.Table:
    spec = view.spec
    names = spec.feature_names
    cols: dict[str, list[np.ndarray]] = {c: [] for c in (*KEY_COLUMNS, *names)}
    n = len(rows.ts)
    if n:
        change = (rows.tenant[1:] != rows.tenant[:-1]) | (rows.device[1:] != rows.device[:-1])
        bounds = np.r_[0, np.flatnonzero(change) + 1, n]
    else:
        bounds = np.r_[0]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sl = slice(lo, hi)
        readings = Readings(spec.channels, rows.channel[sl], rows.ts[sl], rows.value[sl])
        _, matrix, ends = window_features(readings, spec)
        if not len(ends):
            continue
        window_ids = np.floor_divide(rows.ts[sl], spec.window_us)
        wanted = ends // spec.window_us - 1
        # available_at: the latest arrival among the readings the window was computed from.
        order = np.argsort(window_ids, kind="stable")
        ids_sorted = window_ids[order]
        starts = np.flatnonzero(np.r_[True, ids_sorted[1:] != ids_sorted[:-1]])
        latest = np.maximum.reduceat(rows.received[sl][order], starts)
        available = latest[np.searchsorted(ids_sorted[starts], wanted)]
        k = len(ends)
        cols["tenant"].append(np.full(k, rows.tenant[lo], dtype=object))
        cols["device"].append(np.full(k, rows.device[lo], dtype=object))
        cols["window_start"].append(ends - spec.window_us)
        cols["event_time"].append(ends)
        cols["available_at"].append(available)
        cols["materialized_at"].append(np.full(k, materialized_us, np.int64))
        for j, name in enumerate(names):
            cols[name].append(matrix[:, j])
    schema = feature_schema(view)
    arrays = [
        pa.array(np.concatenate(cols[f.name]) if cols[f.name] else [], type=f.type) for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)
