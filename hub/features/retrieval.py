"""Point-in-time retrieval: for each label (tenant, device, ts), the features as of ts, nothing later.

    semantics="event"    the latest window with event_time <= ts: what the device's readings said
                         by ts, however late they reached the hub
    semantics="arrival"  the latest window (by event_time) with event_time <= ts AND
                         available_at <= ts: what the hub actually had at ts, for honest backtests

Both are DuckDB `ASOF LEFT JOIN`s partitioned by (tenant, device). Arrival semantics has two
conditions and ASOF takes one inequality, so the feature rows are first turned into a frontier:
ordered by `visible = greatest(event_time, available_at)`, each row carries the latest window
(by event_time) visible by then, and the label joins ASOF on `visible`.

Labels are never dropped: a label before a device's first window, of an unknown device, or with
a null ts gets null features. The output keeps the labels' order and every label column, then
adds `feature_window_start`, `feature_event_time`, `feature_available_at` (of the window used,
null when none) and one float64 column per feature.

Labels: a pyarrow Table with `tenant`, `device` (strings) and `ts_us` (int64 µs, or a
timestamp column), plus any other columns; or a list of (tenant, device, ts_us) tuples.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from .definitions import FeatureView
from .errors import InvalidFeatureViewError, UnknownFeatureError
from .offline import feature_schema
from .registry import FeatureRegistry

__all__ = ["SEMANTICS", "point_in_time"]

SEMANTICS = ("event", "arrival")
_ADDED = ("feature_window_start", "feature_event_time", "feature_available_at")
_ROW = "__label_row"


def point_in_time(
    data_dir: Path,
    view: FeatureView,
    labels: pa.Table | Sequence[tuple[str, str, int]],
    *,
    semantics: str = "event",
    as_of_run: str | None = None,
    as_of_lake_version: int | None = None,
) -> pa.Table:
    """Each label row with the view's features as of its ts; see the module docstring."""
    if semantics not in SEMANTICS:
        raise InvalidFeatureViewError(f"Retrieval semantics {semantics!r} is not one of {list(SEMANTICS)!r}.")
    if as_of_run is not None and as_of_lake_version is not None:
        raise InvalidFeatureViewError(
            f"Retrieval got as_of_run {as_of_run!r} and as_of_lake_version {as_of_lake_version!r}; give one."
        )
    labels = _labels(labels, view)
    features = _snapshot(Path(data_dir), view, as_of_run, as_of_lake_version)
    names = view.feature_names
    picked = ", ".join(f"f.{_quote(n)}" for n in names)
    label_cols = [c for c in labels.column_names if c not in (_ROW, "__ts")]
    from_labels = ", ".join(f"l.{_quote(c)}" for c in label_cols)
    from_matched = ", ".join(f"m.{_quote(c)}" for c in label_cols)
    if semantics == "event":
        sql = f"""
            SELECT {from_labels}, f.window_start AS feature_window_start, f.event_time AS feature_event_time,
                   f.available_at AS feature_available_at, {picked}
            FROM labels l ASOF LEFT JOIN features f
              ON l.tenant = f.tenant AND l.device = f.device AND l.__ts >= f.event_time
            ORDER BY l.{_ROW}
        """
    else:
        sql = f"""
            WITH visible AS (
                SELECT tenant, device, greatest(event_time, available_at) AS visible,
                       event_time AS __best
                FROM features
            ), frontier AS (
                -- per visibility instant, the latest window visible by then (RANGE: ties agree)
                SELECT DISTINCT tenant, device, visible,
                       max(__best) OVER (PARTITION BY tenant, device ORDER BY visible
                                       RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __best
                FROM visible
            ), matched AS (
                SELECT l.*, fr.__best
                FROM labels l ASOF LEFT JOIN frontier fr
                  ON l.tenant = fr.tenant AND l.device = fr.device AND l.__ts >= fr.visible
            )
            SELECT {from_matched}, f.window_start AS feature_window_start,
                   f.event_time AS feature_event_time, f.available_at AS feature_available_at, {picked}
            FROM matched m LEFT JOIN features f
              ON m.tenant = f.tenant AND m.device = f.device AND m.__best = f.event_time
            ORDER BY m.{_ROW}
        """
    with duckdb.connect() as con:
        con.register("labels", labels)
        con.register("features", features)
        out = con.sql(sql).to_arrow_table()
    # Pin the label columns' own types (DuckDB hands back large or view types for some).
    return out.cast(pa.schema(
        [labels.schema.field(c) for c in label_cols]
        + [pa.field(c, pa.int64()) for c in _ADDED]
        + [pa.field(n, pa.float64()) for n in names]
    ))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _labels(labels: pa.Table | Sequence[tuple[str, str, int]], view: FeatureView) -> pa.Table:
    if not isinstance(labels, pa.Table):
        rows = list(labels)
        for row in rows:
            if not (isinstance(row, tuple) and len(row) == 3):
                raise InvalidFeatureViewError(f"Label row {row!r} is not a (tenant, device, ts_us) tuple.")
        labels = pa.table({
            "tenant": pa.array([r[0] for r in rows], pa.string()),
            "device": pa.array([r[1] for r in rows], pa.string()),
            "ts_us": pa.array([r[2] for r in rows], pa.int64()),
        })
    missing = [c for c in ("tenant", "device", "ts_us") if c not in labels.column_names]
    if missing:
        raise InvalidFeatureViewError(
            f"Label table has columns {labels.column_names!r}; it lacks {missing!r}."
        )
    clash = sorted(set(labels.column_names) & {*view.feature_names, *_ADDED, _ROW, "__ts", "__best"})
    if clash:
        raise InvalidFeatureViewError(f"Label table columns {clash!r} clash with the columns retrieval adds.")
    ts = labels.column("ts_us")
    if pa.types.is_timestamp(ts.type):
        ts = ts.cast(pa.timestamp("us", tz=ts.type.tz)).cast(pa.int64())
    elif pa.types.is_integer(ts.type):
        ts = ts.cast(pa.int64())
    else:
        raise InvalidFeatureViewError(f"Label column ts_us has type {ts.type}; it must be int64 µs or a timestamp.")
    for c in ("tenant", "device"):
        if not pa.types.is_string(labels.column(c).type):
            raise InvalidFeatureViewError(f"Label column {c!r} has type {labels.column(c).type}; it must be string.")
    return labels.append_column(_ROW, pa.array(range(labels.num_rows), pa.int64())).append_column("__ts", ts)


def _snapshot(data_dir: Path, view: FeatureView, as_of_run: str | None,
              as_of_lake_version: int | None = None) -> pa.Table:
    """The view as of a run: per window, the row of the latest run up to it that computed it.

    As of a lake version V: only runs that read the lake at a version <= V count, and per window
    the run that read the newest lake version wins (ties: the later run). So a run materialized
    today from an old lake version (a backfill) never hides what a run from a newer version saw."""
    with FeatureRegistry(data_dir) as registry:
        runs = registry.runs(view.name, view.version)
        if as_of_run is not None:
            at = next((r for r in runs if r.run_id == as_of_run), None)
            if at is None:
                raise UnknownFeatureError(
                    f"Materialization run {as_of_run!r} is not a run of feature view {view.name!r}"
                    f" version {view.version}."
                )
            runs = [r for r in runs if r.seq <= at.seq]
        elif as_of_lake_version is not None:
            if isinstance(as_of_lake_version, bool) or not isinstance(as_of_lake_version, int) or as_of_lake_version < 0:
                raise InvalidFeatureViewError(
                    f"as_of_lake_version is {as_of_lake_version!r}; it must be an int >= 0."
                )
            runs = sorted((r for r in runs if r.lake_version is not None and r.lake_version <= as_of_lake_version),
                          key=lambda r: (r.lake_version, r.seq))
    schema = feature_schema(view)
    if not runs:
        return schema.empty_table()
    if len(runs) == 1:  # one run cannot overlap itself: no per-window dedupe (2/3 of a 1M-row retrieval)
        return pq.read_table(runs[0].path / "part-0.parquet", columns=schema.names).cast(schema)
    files = pa.table({
        "filename": [str(r.path / "part-0.parquet") for r in runs],
        "run_rank": pa.array(range(len(runs)), pa.int64()),  # later in `runs` wins
    })
    with duckdb.connect() as con:
        con.register("runs", files)
        got = con.sql(
            f"""
            SELECT {", ".join(f'p."{c}"' for c in schema.names)}
            FROM read_parquet(?, filename = true) p JOIN runs USING (filename)
            QUALIFY row_number() OVER (
                PARTITION BY p.tenant, p.device, p.window_start ORDER BY runs.run_rank DESC) = 1
            """,
            params=[files.column("filename").to_pylist()],
        ).to_arrow_table()
    return got.cast(schema)
