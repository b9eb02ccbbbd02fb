"""StreamState: the stream processor's durable state in one SQLite file (WAL, synchronous=FULL).

Tables (all written by `write`, in ONE transaction per checkpoint):

    meta    (name PK, value JSON)        config (window and lateness parameters), position (the
                                         caller's opaque input position), counters, channels (the
                                         processor's channel-name registry, append-only)
    keys    (id PK, key JSON UNIQUE,     one row per key: event-time high mark, watermark (NULL:
             max_ts, watermark,          none yet), processing time last seen (NULL: never told),
             last_seen_us, rows_in,      per-key counters
             too_late)
    fired   (key_id, start_us, revision) windows fired and still updatable (end > watermark -
                                         allowed_lateness); deleted when they close
    chunks  (key_id, pane, seq,          raw rows of open panes, appended per checkpoint: each
             ts, channel, value)         checkpoint inserts only the rows that arrived since the
                                         last one, as little-endian int64 / uint16 / float64 BLOBs;
                                         a pane's chunks concatenated in seq order are its rows in
                                         arrival order; deleted when the pane can no longer change

A pane is `slide_us` of event time (for tumbling windows, the window itself): raw rows are kept per
pane so that a row of a sliding window is stored once, not once per window containing it.

Nothing here knows the window semantics; hub/streaming/engine.py decides what to write.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["StreamState", "Snapshot"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE,
    max_ts INTEGER, watermark INTEGER, last_seen_us INTEGER,
    rows_in INTEGER NOT NULL, too_late INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fired (
    key_id INTEGER NOT NULL, start_us INTEGER NOT NULL, revision INTEGER NOT NULL,
    PRIMARY KEY (key_id, start_us)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    key_id INTEGER NOT NULL, pane INTEGER NOT NULL, seq INTEGER NOT NULL,
    ts BLOB NOT NULL, channel BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (key_id, pane, seq));
"""

KeyRow = tuple[int, str, "int | None", "int | None", "int | None", int, int]
ChunkRow = tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Snapshot:
    """Everything `load` read: the state as of the last checkpoint."""

    config: dict[str, Any] | None
    position: int | None
    counters: dict[str, int]
    channels: list[str]
    keys: list[KeyRow]  # (id, key JSON, max_ts, watermark, last_seen_us, rows_in, too_late)
    fired: list[tuple[int, int, int]]  # (key_id, start_us, revision)
    chunks: Iterator[ChunkRow]  # (key_id, pane, seq, ts, channel, value), ordered by key_id, pane, seq


class StreamState:
    """One SQLite file holding a stream processor's state. Not thread-safe: one processor owns it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def load(self) -> Snapshot:
        meta = {name: json.loads(value) for name, value in self._db.execute("SELECT name, value FROM meta")}
        keys = [tuple(r) for r in self._db.execute(
            "SELECT id, key, max_ts, watermark, last_seen_us, rows_in, too_late FROM keys ORDER BY id")]
        fired = [tuple(r) for r in self._db.execute("SELECT key_id, start_us, revision FROM fired ORDER BY key_id, start_us")]
        return Snapshot(
            config=meta.get("config"),
            position=meta.get("position"),
            counters=dict(meta.get("counters", {})),
            channels=list(meta.get("channels", [])),
            keys=keys,  # type: ignore[arg-type]
            fired=fired,  # type: ignore[arg-type]
            chunks=self._chunks(),
        )

    def _chunks(self) -> Iterator[ChunkRow]:
        cur = self._db.execute("SELECT key_id, pane, seq, ts, channel, value FROM chunks ORDER BY key_id, pane, seq")
        for key_id, pane, seq, ts, ch, val in cur:
            yield (key_id, pane, seq, np.frombuffer(ts, "<i8").astype(np.int64),
                   np.frombuffer(ch, "<u2").astype(np.uint16), np.frombuffer(val, "<f8").astype(np.float64))

    def write(
        self,
        *,
        meta: dict[str, Any],
        keys: Iterable[KeyRow],
        fired_upserts: Iterable[tuple[int, int, int]],
        fired_deletes: Iterable[tuple[int, int]],
        pane_deletes: Iterable[tuple[int, int]],
        chunk_inserts: Iterable[tuple[int, int, int, bytes, bytes, bytes]],
    ) -> None:
        """Apply one checkpoint's changes atomically: all of them, or (on any error) none.

        `chunk_inserts` are (key_id, pane, seq, ts, channel, value) with the columns already as
        little-endian int64 / uint16 / float64 bytes, as `load` reads them back."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO keys (id, key, max_ts, watermark, last_seen_us, rows_in, too_late) VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT (id) DO UPDATE SET max_ts=excluded.max_ts, watermark=excluded.watermark, "
                "last_seen_us=excluded.last_seen_us, rows_in=excluded.rows_in, too_late=excluded.too_late",
                keys,
            )
            db.executemany("DELETE FROM fired WHERE key_id=? AND start_us=?", fired_deletes)
            db.executemany("INSERT OR REPLACE INTO fired (key_id, start_us, revision) VALUES (?,?,?)", fired_upserts)
            db.executemany("DELETE FROM chunks WHERE key_id=? AND pane=?", pane_deletes)
            db.executemany("INSERT INTO chunks (key_id, pane, seq, ts, channel, value) VALUES (?,?,?,?,?,?)", chunk_inserts)
            db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value=excluded.value",
                ((name, json.dumps(value, separators=(",", ":"))) for name, value in meta.items()),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
