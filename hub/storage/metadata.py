"""Hub metadata in SQLite: devices, the seq ledger (high-water marks, gaps), lake manifest, DLQ log.

The loss ledger, per (tenant, device, epoch):

  hwm         the highest seq stored
  gaps        seq ranges below hwm not (yet) stored; a gap that fills later counts as a late fill
  duplicates  batches that arrived again after they were stored (dropped, never stored twice)

A gap that never fills is a loss the operator can see, next to the device's own drop counters
(`dropped.*` from its last health report): a gap with matching `dropped_batches` was dropped on
the device by its `when_full` policy; one without was lost in between.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    tenant TEXT NOT NULL, device TEXT NOT NULL, profile TEXT,
    first_seen_us INTEGER NOT NULL, last_seen_us INTEGER NOT NULL,
    last_health_us INTEGER, last_health TEXT,
    PRIMARY KEY (tenant, device));
CREATE TABLE IF NOT EXISTS streams (
    tenant TEXT NOT NULL, device TEXT NOT NULL, epoch INTEGER NOT NULL,
    hwm INTEGER NOT NULL DEFAULT 0, batches INTEGER NOT NULL DEFAULT 0,
    readings INTEGER NOT NULL DEFAULT 0, late_fills INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0, first_seen_us INTEGER NOT NULL, last_seen_us INTEGER NOT NULL,
    PRIMARY KEY (tenant, device, epoch));
CREATE TABLE IF NOT EXISTS batches (
    tenant TEXT NOT NULL, device TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL, count INTEGER NOT NULL, t_start_us INTEGER NOT NULL, t_end_us INTEGER NOT NULL,
    received_us INTEGER NOT NULL,
    PRIMARY KEY (tenant, device, epoch, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gaps (
    tenant TEXT NOT NULL, device TEXT NOT NULL, epoch INTEGER NOT NULL,
    first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, opened_us INTEGER NOT NULL,
    PRIMARY KEY (tenant, device, epoch, first_seq));
CREATE TABLE IF NOT EXISTS lake_writers (writer_id TEXT PRIMARY KEY, last_txn INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lake_pending (
    tenant TEXT NOT NULL, device TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    writer_id TEXT NOT NULL, txn INTEGER NOT NULL, kind TEXT NOT NULL, count INTEGER NOT NULL,
    t_start_us INTEGER NOT NULL, t_end_us INTEGER NOT NULL, received_us INTEGER NOT NULL, health TEXT,
    PRIMARY KEY (tenant, device, epoch, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lake_pending_by_writer ON lake_pending (writer_id, txn);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at_us INTEGER NOT NULL, reason TEXT NOT NULL,
    error TEXT NOT NULL, subject TEXT NOT NULL, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class StreamLedger:
    epoch: int
    hwm: int
    batches: int
    readings: int
    late_fills: int
    duplicates: int
    gaps: list[tuple[int, int]]

    @property
    def missing(self) -> int:
        return sum(b - a + 1 for a, b in self.gaps)


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=60000")  # several hub workers share this file
    db.executescript(_SCHEMA)
    return db


def connect_readonly(path: Path) -> sqlite3.Connection:
    """For readers (the HTTP API): no schema work, no write lock, never blocks ingest."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
    db.execute("PRAGMA busy_timeout=30000")
    return db


def count(db: sqlite3.Connection, name: str, delta: int = 1) -> None:
    if delta:
        db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?", (name, delta, delta)
        )


def record_batch(db: sqlite3.Connection, *, tenant: str, device: str, epoch: int, seq: int, kind: str,
                 count_: int, t_start_us: int, t_end_us: int, received_us: int) -> None:
    """Record a new (not duplicate) batch and update the device's ledger. Inside a transaction."""
    db.execute(
        "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (tenant, device, epoch, seq, kind, count_, t_start_us, t_end_us, received_us),
    )
    db.execute(
        "INSERT INTO devices (tenant, device, first_seen_us, last_seen_us) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET last_seen_us = MAX(last_seen_us, excluded.last_seen_us)",
        (tenant, device, received_us, received_us),
    )
    row = db.execute(
        "SELECT hwm FROM streams WHERE tenant = ? AND device = ? AND epoch = ?", (tenant, device, epoch)
    ).fetchone()
    hwm = row[0] if row else 0
    if row is None:
        db.execute(
            "INSERT INTO streams (tenant, device, epoch, first_seen_us, last_seen_us) VALUES (?, ?, ?, ?, ?)",
            (tenant, device, epoch, received_us, received_us),
        )
    key = (tenant, device, epoch)
    late = 0
    if seq > hwm + 1:
        db.execute("INSERT INTO gaps VALUES (?, ?, ?, ?, ?, ?)", (*key, hwm + 1, seq - 1, received_us))
    elif seq <= hwm:
        gap = db.execute(
            "SELECT first_seq, last_seq, opened_us FROM gaps WHERE tenant = ? AND device = ? AND epoch = ?"
            " AND first_seq <= ? AND last_seq >= ?",
            (*key, seq, seq),
        ).fetchone()
        if gap is not None:
            first, last, opened = gap
            db.execute("DELETE FROM gaps WHERE tenant = ? AND device = ? AND epoch = ? AND first_seq = ?", (*key, first))
            if first < seq:
                db.execute("INSERT INTO gaps VALUES (?, ?, ?, ?, ?, ?)", (*key, first, seq - 1, opened))
            if seq < last:
                db.execute("INSERT INTO gaps VALUES (?, ?, ?, ?, ?, ?)", (*key, seq + 1, last, opened))
            late = 1
    db.execute(
        "UPDATE streams SET hwm = MAX(hwm, ?), batches = batches + 1, readings = readings + ?,"
        " late_fills = late_fills + ?, last_seen_us = ? WHERE tenant = ? AND device = ? AND epoch = ?",
        (seq, count_, late, received_us, *key),
    )


def seen(db: sqlite3.Connection, *, tenant: str, device: str, epoch: int, seq: int) -> bool:
    return db.execute(
        "SELECT 1 FROM batches WHERE tenant = ? AND device = ? AND epoch = ? AND seq = ?", (tenant, device, epoch, seq)
    ).fetchone() is not None


def record_duplicate(db: sqlite3.Connection, *, tenant: str, device: str, epoch: int) -> None:
    db.execute(
        "UPDATE streams SET duplicates = duplicates + 1 WHERE tenant = ? AND device = ? AND epoch = ?",
        (tenant, device, epoch),
    )
    count(db, "ingest.duplicate_batches")


def record_health(db: sqlite3.Connection, *, tenant: str, device: str, ts_us: int, values: dict[str, float]) -> None:
    """Keep the newest health snapshot per device; `info.profile.<name>` names its profile."""
    profile = next((k.split(".", 2)[2] for k in values if k.startswith("info.profile.")), None)
    db.execute(
        "UPDATE devices SET last_health_us = ?, last_health = ?, profile = COALESCE(?, profile)"
        " WHERE tenant = ? AND device = ? AND (last_health_us IS NULL OR last_health_us <= ?)",
        (ts_us, json.dumps(values, sort_keys=True), profile, tenant, device, ts_us),
    )


def ledger(db: sqlite3.Connection, tenant: str, device: str) -> list[StreamLedger]:
    out = []
    for epoch, hwm, batches, readings, late, dups in db.execute(
        "SELECT epoch, hwm, batches, readings, late_fills, duplicates FROM streams"
        " WHERE tenant = ? AND device = ? ORDER BY first_seen_us",
        (tenant, device),
    ):
        gaps = db.execute(
            "SELECT first_seq, last_seq FROM gaps WHERE tenant = ? AND device = ? AND epoch = ? ORDER BY first_seq",
            (tenant, device, epoch),
        ).fetchall()
        out.append(StreamLedger(epoch, hwm, batches, readings, late, dups, [tuple(g) for g in gaps]))
    return out


def devices(db: sqlite3.Connection, tenant: str | None = None) -> list[dict]:
    q = (
        "SELECT d.tenant, d.device, d.profile, d.first_seen_us, d.last_seen_us, d.last_health_us, d.last_health,"
        " COALESCE(SUM(s.readings), 0), COALESCE(SUM(s.batches), 0), COALESCE(SUM(s.duplicates), 0),"
        " (SELECT COALESCE(SUM(g.last_seq - g.first_seq + 1), 0) FROM gaps g"
        "   WHERE g.tenant = d.tenant AND g.device = d.device)"
        " FROM devices d LEFT JOIN streams s ON s.tenant = d.tenant AND s.device = d.device"
        + (" WHERE d.tenant = ?" if tenant else "")
        + " GROUP BY d.tenant, d.device ORDER BY d.tenant, d.device"
    )
    rows = db.execute(q, (tenant,) if tenant else ()).fetchall()
    keys = ("tenant", "device", "profile", "first_seen_us", "last_seen_us", "last_health_us", "last_health",
            "readings", "batches", "duplicates", "missing_batches")
    out = []
    for r in rows:
        d = dict(zip(keys, r))
        d["last_health"] = json.loads(d["last_health"]) if d["last_health"] else None
        out.append(d)
    return out


def counters(db: sqlite3.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT name, value FROM counters"))


def dead_letters(db: sqlite3.Connection, limit: int = 100) -> list[dict]:
    rows = db.execute(
        "SELECT at_us, reason, error, subject, size FROM dead_letters ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    return [dict(zip(("at_us", "reason", "error", "subject", "size"), r)) for r in rows]
