"""The online store: the latest feature vector per (view, version, tenant, device), for serving.

    OnlineStore(path)                         SQLite (WAL), one table keyed by the entity
    update(view, table)                       feature rows (offline.feature_schema) → newer vectors only
    update_from_run(data_dir, view, run_id)   the same, from a committed materialization run
    get(view, tenant, device)                 {"features": {name: value}, times ...} or None
    get_many(view, [(tenant, device), ...])   one answer per entity, in order, None where unknown

Which vector wins. A stored vector is replaced only by one with a later `event_time`, or the
same `event_time` and a later `available_at` (the same window recomputed once more of its
readings arrived). So a late backlog, or a range-limited run over old windows, never
overwrites a newer vector, and replaying a run changes nothing.

The vector is a BLOB of little-endian float64 in `view.feature_names` order; the view's version
fixes that order (it hashes the spec), which is why the version is part of the key. Times are
µs: `window_start`, `event_time` (the window's end), `available_at` (when the hub had all of
its readings), `updated_at` (when this store last wrote the row), plus the `run_id` it came from
(null for rows fed by `update` directly, the streaming path's way in).

`OnlineBackend` is the contract both stores implement; the Redis one is online_redis.py (hash per
entity key, the newer-wins rule as a Lua compare-and-set on event_time); `FeatureService`
takes any `OnlineBackend`.

Hazard: one connection shared by threads (FastAPI's threadpool), so every use holds `_lock`.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from .definitions import FeatureView
from .errors import InvalidFeatureViewError, UnknownFeatureError
from .offline import feature_schema
from .registry import FeatureRegistry

__all__ = ["OnlineBackend", "OnlineStore"]

_TABLE = """
CREATE TABLE IF NOT EXISTS online_features (
    view TEXT NOT NULL,
    version TEXT NOT NULL,
    tenant TEXT NOT NULL,
    device TEXT NOT NULL,
    vector BLOB NOT NULL,
    window_start INTEGER NOT NULL,
    event_time INTEGER NOT NULL,
    available_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    run_id TEXT,
    PRIMARY KEY (view, version, tenant, device)
) WITHOUT ROWID;
"""
_UPSERT = """
INSERT INTO online_features AS s
    (view, version, tenant, device, vector, window_start, event_time, available_at, updated_at, run_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (view, version, tenant, device) DO UPDATE SET
    vector = excluded.vector, window_start = excluded.window_start, event_time = excluded.event_time,
    available_at = excluded.available_at, updated_at = excluded.updated_at, run_id = excluded.run_id
WHERE excluded.event_time > s.event_time
   OR (excluded.event_time = s.event_time AND excluded.available_at > s.available_at)
"""
_GET = (
    "SELECT vector, window_start, event_time, available_at, updated_at, run_id FROM online_features"
    " WHERE view = ? AND version = ? AND tenant = ? AND device = ?"
)


def newest_rows(view: FeatureView, table: pa.Table) -> list[tuple]:
    """Per entity, the newest row of `table` (by event_time, then available_at) as
    (tenant, device, window_start, event_time, available_at, *features): what a store writes."""
    missing = [c for c in feature_schema(view).names if c not in table.column_names]
    if missing:
        raise InvalidFeatureViewError(
            f"Feature rows for view {view.name!r} lack columns {missing!r}; they must follow feature_schema(view)."
        )
    cols = ", ".join(f'"{c}"' for c in ("tenant", "device", "window_start", "event_time", "available_at",
                                         *view.feature_names))
    with duckdb.connect() as con:
        con.register("rows", table)
        return con.sql(
            f"SELECT {cols} FROM rows QUALIFY row_number() OVER ("
            " PARTITION BY tenant, device ORDER BY event_time DESC, available_at DESC) = 1"
        ).fetchall()


def run_table(data_dir: Path, view: FeatureView, run_id: str) -> pa.Table:
    """The feature rows of a committed run of `view`; UnknownFeatureError when it is another view's."""
    with FeatureRegistry(data_dir) as registry:
        run = registry.run(run_id)
    if (run.name, run.version) != (view.name, view.version):
        raise UnknownFeatureError(
            f"Materialization run {run_id!r} is of view {run.name!r} version {run.version},"
            f" not of {view.name!r} version {view.version}."
        )
    return pq.read_table(run.path / "part-0.parquet")


@runtime_checkable
class OnlineBackend(Protocol):
    """What serving and materialization need from an online store (SQLite here; Redis would fit)."""

    def update(self, view: FeatureView, table: pa.Table, *, run_id: str | None = None,
               now_us: int | None = None) -> dict[str, int]: ...

    def update_from_run(self, data_dir: Path, view: FeatureView, run_id: str, *,
                        now_us: int | None = None) -> dict[str, int]: ...

    def get(self, view: FeatureView, tenant: str, device: str) -> dict | None: ...

    def get_many(self, view: FeatureView, entities: Iterable[tuple[str, str]]) -> list[dict | None]: ...

    def close(self) -> None: ...


class OnlineStore:
    """The latest feature vector per entity in one SQLite file; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a crash may lose the last updates, never corrupt; they are rebuilt from the runs.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_TABLE)
        self._lock = threading.Lock()
        self._unpack: dict[int, struct.Struct] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "OnlineStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes -------------------------------------------------------------------------------
    def update(self, view: FeatureView, table: pa.Table, *, run_id: str | None = None,
               now_us: int | None = None) -> dict[str, int]:
        """Keep, per entity, the newest row of `table` if it is newer than the stored vector.

        Returns {"rows": rows given, "entities": entities in them, "updated": vectors written}.
        """
        names = view.feature_names
        latest = newest_rows(view, table)
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        pack = struct.Struct(f"<{len(names)}d").pack
        params = [
            (view.name, view.version, r[0], r[1], pack(*r[5:]), r[2], r[3], r[4], now_us, run_id) for r in latest
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.executemany(_UPSERT, params)
                updated = max(cur.rowcount, 0)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return {"rows": table.num_rows, "entities": len(latest), "updated": updated}

    def update_from_run(self, data_dir: Path, view: FeatureView, run_id: str, *,
                        now_us: int | None = None) -> dict[str, int]:
        """`update` from a committed run of `view` (its Parquet snapshot under data_dir/features)."""
        return self.update(view, run_table(data_dir, view, run_id), run_id=run_id, now_us=now_us)

    # --- reads --------------------------------------------------------------------------------
    def get(self, view: FeatureView, tenant: str, device: str) -> dict | None:
        """The latest vector of one entity, or None if this store has none for the view version."""
        with self._lock:
            row = self._db.execute(_GET, (view.name, view.version, tenant, device)).fetchone()
        return None if row is None else self._answer(view, tenant, device, row)

    def get_many(self, view: FeatureView, entities: Iterable[tuple[str, str]]) -> list[dict | None]:
        """`get` for each (tenant, device), in order, read in one transaction (one consistent view)."""
        keys = list(entities)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rows = [self._db.execute(_GET, (view.name, view.version, t, d)).fetchone() for t, d in keys]
            finally:
                self._db.execute("COMMIT")
        return [None if r is None else self._answer(view, t, d, r) for (t, d), r in zip(keys, rows)]

    def entities(self, view: FeatureView) -> int:
        """How many entities have a vector for this view version."""
        with self._lock:
            (n,) = self._db.execute(
                "SELECT count(*) FROM online_features WHERE view = ? AND version = ?", (view.name, view.version)
            ).fetchone()
        return int(n)

    def _answer(self, view: FeatureView, tenant: str, device: str, row: Sequence) -> dict:
        names = view.feature_names
        unpack = self._unpack.get(len(names))
        if unpack is None:
            unpack = self._unpack.setdefault(len(names), struct.Struct(f"<{len(names)}d"))
        return {
            "name": view.name, "version": view.version, "tenant": tenant, "device": device,
            "features": dict(zip(names, unpack.unpack(row[0]))),
            "window_start": row[1], "event_time": row[2], "available_at": row[3],
            "updated_at": row[4], "run_id": row[5],
        }
