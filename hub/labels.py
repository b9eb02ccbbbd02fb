"""Labels: what really happened to a device at a time (maintenance findings, inspections), for
training datasets and for judging a deployed model (concept drift).

    LabelStore(data_dir)                   table `labels` in <data_dir>/control.db
    add(rows, source=...)                  (tenant, device, ts_us, label) rows; a repeat is ignored
    table(devices=None, since_us=None, until_us=None) → pyarrow (tenant, device, ts_us, label)

A label is a class name of the model it judges (for the condition model: normal, bearing_wear,
sensor_fault); the store keeps any non-empty string and the retraining pipeline refuses names its
model does not know. A label belongs to a point in time: retrieval joins it with the features
as of that time (hub/features/retrieval.py), never later ones.

The same (tenant, device, ts_us) labelled twice keeps the first label and counts the conflict
(`conflicts` in `stats()`) when the second differs: a correction is a new label at a new time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa

from . import control_db

__all__ = ["InvalidLabelError", "LabelStore"]

_TABLE = """
CREATE TABLE IF NOT EXISTS labels (
    tenant TEXT NOT NULL, device TEXT NOT NULL, ts_us INTEGER NOT NULL, label TEXT NOT NULL,
    source TEXT NOT NULL, added_us INTEGER NOT NULL,
    PRIMARY KEY (tenant, device, ts_us)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS label_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
SCHEMA = pa.schema([("tenant", pa.string()), ("device", pa.string()), ("ts_us", pa.int64()), ("label", pa.string())])


class InvalidLabelError(ValueError):
    """A label row that cannot be stored; the message names the row and the bad value."""


class LabelStore:
    def __init__(self, data_dir: Path) -> None:
        self.db = control_db.connect(Path(data_dir) / control_db.FILENAME)
        self.db.executescript(_TABLE)

    def close(self) -> None:
        self.db.close()

    def add(self, rows: Iterable[Mapping[str, object]], *, source: str = "api", now_us: int | None = None) -> dict:
        """Store label rows; returns {"added", "repeats", "conflicts"}. All or nothing: a bad row
        refuses the whole call, naming it."""
        checked = [_check(i, r) for i, r in enumerate(rows)]
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        added = repeats = conflicts = 0
        with control_db.immediate(self.db):
            for tenant, device, ts_us, label in checked:
                have = self.db.execute(
                    "SELECT label FROM labels WHERE tenant = ? AND device = ? AND ts_us = ?", (tenant, device, ts_us)
                ).fetchone()
                if have is None:
                    self.db.execute("INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?)",
                                    (tenant, device, ts_us, label, source, now_us))
                    added += 1
                elif have[0] == label:
                    repeats += 1
                else:
                    conflicts += 1
            if conflicts:
                self.db.execute("INSERT INTO label_counters VALUES ('conflicts', ?) ON CONFLICT(name)"
                                " DO UPDATE SET value = value + excluded.value", (conflicts,))
        return {"added": added, "repeats": repeats, "conflicts": conflicts}

    def table(self, devices: Sequence[tuple[str, str]] | None = None, *, since_us: int | None = None,
              until_us: int | None = None) -> pa.Table:
        """Labels (oldest first), of `devices` when given, with since_us <= ts_us < until_us."""
        where, params = [], []
        if since_us is not None:
            where.append("ts_us >= ?")
            params.append(since_us)
        if until_us is not None:
            where.append("ts_us < ?")
            params.append(until_us)
        sql = "SELECT tenant, device, ts_us, label FROM labels" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.db.execute(sql + " ORDER BY ts_us, tenant, device", params).fetchall()
        if devices is not None:
            wanted = set(devices)
            rows = [r for r in rows if (r[0], r[1]) in wanted]
        cols = list(zip(*rows)) if rows else [[], [], [], []]
        return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(cols, SCHEMA)], schema=SCHEMA)

    def stats(self) -> dict[str, int]:
        labels = self.db.execute("SELECT count(*) FROM labels").fetchone()[0]
        counters = dict(self.db.execute("SELECT name, value FROM label_counters"))
        return {"labels": labels, "conflicts": counters.get("conflicts", 0)}


def _check(i: int, row: Mapping[str, object]) -> tuple[str, str, int, str]:
    if not isinstance(row, Mapping):
        raise InvalidLabelError(f"Label row {i} is {row!r}; it must be an object with tenant, device, ts_us, label.")
    out = []
    for key in ("tenant", "device", "label"):
        v = row.get(key)
        if not isinstance(v, str) or not v.strip():
            raise InvalidLabelError(f"Label row {i} has {key} {v!r}; it must be a non-empty string.")
        out.append(v)
    ts = row.get("ts_us")
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise InvalidLabelError(f"Label row {i} has ts_us {ts!r}; it must be an int of µs since the epoch.")
    return out[0], out[1], ts, out[2]
