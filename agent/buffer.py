"""The agent's SQLite (WAL) buffer: readings in, sealed numbered batches out, deleted on ack.

Life of a reading:

    append() ──▶ pending (uncompressed chunk, one row per append, in the input's transaction
                 together with the input's checkpoint)
    seal()   ──▶ batches (encoded + zstd envelope with the next seq; chunk rows deleted in the
                 same transaction, so a reading is in exactly one place at every instant)
    ack()    ──▶ gone (only after the broker acknowledged the batch)

Nothing is kept in memory that is not also on disk, so SIGKILL or a power cut (with
`synchronous = full`) loses nothing that append() returned for. The byte cap counts chunk and
batch bytes; what happens when it is reached is `when_full`. Every drop is counted by reason
in `counters`, which health messages carry to the hub.

Not thread-safe: one thread owns a Buffer (AsyncBuffer runs it on a single worker thread).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocol import Kind, Readings, decode_batch, encode_batch

from .config import BufferConfig, WhenFull
from .errors import BufferError_, BufferFullError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT, lane INTEGER NOT NULL, n INTEGER NOT NULL,
    created_us INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS pending_lane ON pending (lane, id);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY, lane INTEGER NOT NULL, n INTEGER NOT NULL,
    created_us INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS batches_lane ON batches (lane, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (source TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at_us INTEGER NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, data BLOB);
"""
_LANE_KIND = {k.lane: k for k in Kind}
_LANE_LAYOUT = 2  # meta.lanes: 1 = alert, health, telemetry; 2 = alert, health, prediction, telemetry
# Kinds that may overdraw the cap under block and drop_newest: the device's own reports.
# Predictions get none: the overdraft exists so that a full buffer cannot silence the device's
# reports about itself, and a prediction is derived data the hub can recompute from telemetry.
_OVERDRAFT_KINDS = frozenset({Kind.ALERT, Kind.HEALTH})
_ROW_OVERHEAD = 32
_PRIORITY_OVERDRAFT = 2**20  # bytes health/alerts may exceed the cap under block and drop_newest
_WAL_LIMIT = 4 * 2**20  # bytes of WAL kept after a checkpoint; disk_reserve must exceed it  # per-row bytes SQLite spends beyond the blob; keeps tiny appends honest


@dataclass(frozen=True)
class SealedBatch:
    seq: int
    kind: Kind
    n: int
    created_us: int
    payload: bytes


@dataclass(frozen=True)
class AppendResult:
    accepted: int
    dropped: int = 0


@dataclass(frozen=True)
class BufferStats:
    pending_readings: int
    pending_batches: int
    bytes_used: int
    max_bytes: int
    oldest_unsent_us: int | None
    next_seq: int
    epoch: int
    counters: dict[str, int]


def _now_us() -> int:
    return time.time_ns() // 1000


class Buffer:
    def __init__(
        self,
        settings: BufferConfig,
        *,
        tenant: str,
        device: str,
        clock_us: Callable[[], int] = _now_us,
    ) -> None:
        self.settings = settings
        self.tenant = tenant
        self.device = device
        self._clock = clock_us
        path = Path(settings.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={settings.synchronous.value.upper()}")
        # The WAL is reused after each checkpoint but never shrinks by itself: cap what it keeps.
        self._db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
        self._page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        self._db.executescript(_SCHEMA)
        with self._tx():
            fresh = self._db.execute("SELECT 1 FROM meta WHERE key = 'epoch'").fetchone() is None
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('epoch', ?), ('next_seq', 1)", (secrets.randbits(31) + 1,)
            )
            self._migrate_lanes(fresh)
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        self.epoch: int = meta["epoch"]
        self._next_seq: int = meta["next_seq"]
        self._used = self._measure()

    # --- plumbing ---------------------------------------------------------------------------
    def _tx(self):
        buf = self

        class _Tx:
            def __enter__(self_inner):
                buf._db.execute("BEGIN IMMEDIATE")

            def __exit__(self_inner, typ, exc, tb):
                if typ is None:
                    try:
                        buf._db.execute("COMMIT")
                        return False
                    except sqlite3.Error:
                        # COMMIT can fail (disk full) and leave the transaction open
                        buf._rollback()
                        raise
                buf._rollback()
                return False

        return _Tx()

    def _migrate_lanes(self, fresh: bool) -> None:
        """Renumber stored lanes to this build's `Kind.lane`. Inside the opening transaction.

        Lanes are stored as numbers; a buffer written before predictions had a lane holds
        telemetry in lane 2, which is now the prediction lane. Layouts are numbered in
        `meta.lanes`; a file without it is layout 1 (alert 0, health 1, telemetry 2)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'lanes'").fetchone()
        layout = row[0] if row else (_LANE_LAYOUT if fresh else 1)
        if layout > _LANE_LAYOUT:
            raise BufferError_(
                f"The buffer {self._path} uses lane layout {layout}, newer than this agent's {_LANE_LAYOUT}; "
                "run a newer agent or move the file away."
            )
        if layout == 1:
            for table in ("pending", "batches"):
                self._db.execute(f"UPDATE {table} SET lane = ? WHERE lane = 2", (Kind.TELEMETRY.lane,))
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('lanes', ?)", (_LANE_LAYOUT,))

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._used = self._measure()  # in-memory accounting followed the failed transaction

    def _measure(self) -> int:
        return self._db.execute(
            f"SELECT (SELECT COALESCE(SUM(length(data)) + COUNT(*) * {_ROW_OVERHEAD}, 0) FROM pending)"
            f" + (SELECT COALESCE(SUM(length(payload)) + COUNT(*) * {_ROW_OVERHEAD}, 0) FROM batches)"
        ).fetchone()[0]

    def _count(self, name: str, delta: int) -> None:
        if delta:
            self._db.execute(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                (name, delta, delta),
            )

    def close(self) -> None:
        self._db.close()

    @property
    def bytes_used(self) -> int:
        return self._used

    # --- in ---------------------------------------------------------------------------------
    def append(
        self,
        readings: Readings,
        *,
        kind: Kind = Kind.TELEMETRY,
        checkpoint: tuple[str, str] | None = None,
        in_flight: Iterable[int] = (),
        rebuild: Callable[[BufferStats], Readings] | None = None,
    ) -> AppendResult:
        """Store readings (and the input's checkpoint) in one transaction.

        `rebuild`, for health reports, makes the readings again from the buffer's stats after
        room was made. Raises BufferFullError only under `when_full = block`, having stored nothing.
        """
        return self.append_groups([(kind, readings)], checkpoint=checkpoint, in_flight=in_flight, rebuild=rebuild)

    def append_groups(
        self,
        groups: Sequence[tuple[Kind, Readings]],
        *,
        checkpoint: tuple[str, str] | None = None,
        in_flight: Iterable[int] = (),
        rebuild: Callable[[BufferStats], Readings] | None = None,
    ) -> AppendResult:
        """Readings of several kinds (one input chunk) and the checkpoint, in one transaction."""
        in_flight = set(in_flight)
        accepted = dropped = 0
        with self._tx():
            for kind, readings in groups:
                result = self._store(readings, kind, in_flight, rebuild)
                accepted += result.accepted
                dropped += result.dropped
            if checkpoint is not None:
                self._db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?)", checkpoint)
        return AppendResult(accepted, dropped)

    def _store(
        self, readings: Readings, kind: Kind, in_flight: set[int], rebuild: Callable[[BufferStats], Readings] | None
    ) -> AppendResult:
        """Apply the byte cap and store one chunk. Inside a transaction."""
        n = len(readings)
        data = readings.to_bytes() if n else b""
        size = len(data) + _ROW_OVERHEAD if n else 0
        limit = self.limit() if n else self.settings.max_bytes
        dropped = 0
        if n and self._used + size > limit:
            policy = self.settings.when_full
            disk_bound = limit < self.settings.max_bytes
            if disk_bound:
                self._count("full.disk", 1)
            reason = None
            # A full buffer must not silence the device's own reports: health and alerts
            # may overdraw the cap a little under the policies that never evict.
            overdraft = kind in _OVERDRAFT_KINDS and self._used + size <= limit + _PRIORITY_OVERDRAFT
            if size > self.settings.max_bytes:
                reason = "oversize"
            elif overdraft and policy in (WhenFull.BLOCK, WhenFull.DROP_NEWEST):
                pass
            elif policy is WhenFull.BLOCK:
                raise BufferFullError(size, self._used, limit)
            elif policy is WhenFull.DROP_NEWEST:
                reason = "drop_newest"
            else:
                try:
                    self._make_room(size, limit, policy, in_flight)
                except BufferFullError:
                    if not disk_bound:
                        raise
                    reason = "disk_full"  # evicted all it could and the disk is still full
            if reason is not None:
                self._count(f"dropped.{reason}", n)
                self._count(f"refused.{kind.value}", n)
                dropped, n = n, 0
        if n and rebuild is not None:
            # a report about the buffer itself: re-read it now that room was made, so it
            # counts the evictions its own storage caused
            readings = rebuild(self.stats())
            n, data = len(readings), readings.to_bytes()
            size = len(data) + _ROW_OVERHEAD
        if n:
            self._db.execute(
                "INSERT INTO pending (lane, n, created_us, data) VALUES (?, ?, ?, ?)",
                (kind.lane, n, self._clock(), data),
            )
            self._used += size
            self._count(f"appended.{kind.value}", n)
        return AppendResult(n, dropped)

    def limit(self) -> int:
        """The byte cap in force: `max_bytes`, or less when the disk would otherwise fill.

        SQLite needs free disk even to delete (WAL pages), so a full disk would stop the agent
        from draining at all; `disk_reserve` keeps that room, and the when_full policy applies
        as soon as the disk, not the configured cap, is the limit. Pages SQLite freed are reused
        without growing the file, so `used + free - reserve` is what can still be stored."""
        st = os.statvfs(self._path.parent)
        free = st.f_bavail * st.f_frsize
        try:  # the WAL lives inside the reserve: its pages are reused after each checkpoint
            wal = os.path.getsize(f"{self._path}-wal")
        except OSError:
            wal = 0
        # pages freed by deletes stay in the file and are reused before it grows
        freelist = self._db.execute("PRAGMA freelist_count").fetchone()[0] * self._page_size
        room = free + wal + freelist - self.settings.disk_reserve
        return max(0, min(self.settings.max_bytes, self._used + room))

    def _make_room(self, size: int, limit: int, policy: WhenFull, in_flight: set[int]) -> None:
        """Evict or downsample the oldest data, lowest-priority lane first, until `size` fits."""
        while self._used + size > limit:
            victim = self._db.execute(
                "SELECT 'b', seq, lane, n, created_us, length(payload) FROM batches"
                f" WHERE seq NOT IN ({','.join('?' * len(in_flight))})"
                " UNION ALL SELECT 'p', id, lane, n, created_us, length(data) FROM pending"
                " ORDER BY lane DESC, created_us, 2 LIMIT 1",
                tuple(in_flight),
            ).fetchone()
            if victim is None:  # everything left is in flight: nothing more can go
                raise BufferFullError(size, self._used, limit)
            where, key, lane, n, _, nbytes = victim
            if policy is WhenFull.DOWNSAMPLE_OLDEST and n > 1 and self._downsample(where, key):
                continue
            table, col = ("batches", "seq") if where == "b" else ("pending", "id")
            self._db.execute(f"DELETE FROM {table} WHERE {col} = ?", (key,))
            self._used -= nbytes + _ROW_OVERHEAD
            self._count(f"dropped.{policy.value}", n)
            self._count(f"evicted.{_LANE_KIND[lane].value}", n)
            if where == "b":
                self._count("dropped_batches", 1)

    def _downsample(self, where: str, key: int) -> bool:
        """Keep every other reading per channel of one stored chunk or batch. False if no gain."""
        if where == "b":
            payload = self._db.execute("SELECT payload FROM batches WHERE seq = ?", (key,)).fetchone()[0]
            batch = decode_batch(payload, max_payload=len(payload))
            readings, h = batch.readings.canonical(), batch.header
            kind = h.kind
        else:
            data, lane = self._db.execute("SELECT data, lane FROM pending WHERE id = ?", (key,)).fetchone()
            readings = Readings.from_bytes(data).canonical()
            kind = _LANE_KIND[lane]
        # rank within channel: rows are sorted by (channel, ts), so index minus channel start
        starts = np.searchsorted(readings.channel, readings.channel)
        keep = ((np.arange(len(readings)) - starts) % 2) == 0
        kept = readings.take(np.flatnonzero(keep))
        removed = len(readings) - len(kept)
        new = self._encode(kept, h.kind, h.seq) if where == "b" else kept.to_bytes()
        old_len = len(payload) if where == "b" else len(data)
        if removed == 0 or len(new) >= old_len:
            return False
        if where == "b":
            self._db.execute("UPDATE batches SET payload = ?, n = ? WHERE seq = ?", (new, len(kept), key))
        else:
            self._db.execute("UPDATE pending SET data = ?, n = ? WHERE id = ?", (new, len(kept), key))
        self._used += len(new) - old_len
        self._count("dropped.downsample_oldest", removed)
        self._count(f"evicted.{kind.value}", removed)
        return True

    def checkpoint(self, source: str) -> str | None:
        row = self._db.execute("SELECT value FROM checkpoints WHERE source = ?", (source,)).fetchone()
        return row[0] if row else None

    def dead_letter(self, source: str, reason: str, data: bytes | None) -> None:
        with self._tx():
            self._db.execute(
                "INSERT INTO dead_letters (at_us, source, reason, data) VALUES (?, ?, ?, ?)",
                (self._clock(), source, reason, data),
            )
            self._count(f"dead_letters.{source}", 1)

    # --- seal -------------------------------------------------------------------------------
    def _encode(self, readings: Readings, kind: Kind, seq: int) -> bytes:
        return encode_batch(
            readings, tenant=self.tenant, device=self.device, kind=kind, epoch=self.epoch, seq=seq,
            level=self.settings.compression_level,
        )

    def seal(self, *, force: bool = False) -> int:
        """Seal due chunks into numbered batches. Returns how many batches were made."""
        cap = self.settings.batch_max_readings
        due_before = self._clock() - int(self.settings.seal_interval.total_seconds() * 1e6)
        made = 0
        lanes = self._db.execute(
            "SELECT lane, SUM(n), MIN(created_us) FROM pending GROUP BY lane ORDER BY lane"
        ).fetchall()
        for lane, total, oldest in lanes:
            if not (force or total >= cap or oldest <= due_before):
                continue
            with self._tx():
                rows = self._db.execute(
                    "SELECT id, data FROM pending WHERE lane = ? ORDER BY id", (lane,)
                ).fetchall()
                if not rows:
                    continue
                freed = sum(len(d) + _ROW_OVERHEAD for _, d in rows)
                merged = Readings.concat([Readings.from_bytes(d) for _, d in rows])
                kind = _LANE_KIND[lane]
                now = self._clock()
                for lo in range(0, len(merged), cap):
                    part = merged.take(np.arange(lo, min(lo + cap, len(merged))))
                    seq = self._next_seq
                    payload = self._encode(part, kind, seq)
                    self._db.execute(
                        "INSERT INTO batches VALUES (?, ?, ?, ?, ?)", (seq, lane, len(part), now, payload)
                    )
                    self._used += len(payload) + _ROW_OVERHEAD
                    self._next_seq += 1
                    made += 1
                self._db.execute("DELETE FROM pending WHERE lane = ? AND id <= ?", (lane, rows[-1][0]))
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (self._next_seq,))
                self._used -= freed
        return made

    # --- out --------------------------------------------------------------------------------
    def next_batches(self, limit: int, *, exclude: Iterable[int] = ()) -> list[SealedBatch]:
        """Batches to send next: alerts, health, predictions, then telemetry; within a lane live data
        (sealed within `live_window`) goes before the backlog, each in seq order."""
        exclude = list(exclude)
        live_after = self._clock() - int(self.settings.live_window.total_seconds() * 1e6)
        rows = self._db.execute(
            "SELECT seq, lane, n, created_us, payload FROM batches"
            f" WHERE seq NOT IN ({','.join('?' * len(exclude))})"
            " ORDER BY lane, created_us < ?, seq LIMIT ?",
            (*exclude, live_after, limit),
        ).fetchall()
        return [SealedBatch(s, _LANE_KIND[lane], n, c, p) for s, lane, n, c, p in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged batches. Returns how many readings they held."""
        seqs = list(seqs)
        if not seqs:
            return 0
        marks = ",".join("?" * len(seqs))
        total = nbytes = rows = 0
        with self._tx():
            for lane, n, size, count in self._db.execute(
                f"SELECT lane, SUM(n), SUM(length(payload)), COUNT(*) FROM batches WHERE seq IN ({marks}) GROUP BY lane",
                seqs,
            ).fetchall():
                self._count(f"sent.{_LANE_KIND[lane].value}", n)
                total, nbytes, rows = total + n, nbytes + size, rows + count
            self._db.execute(f"DELETE FROM batches WHERE seq IN ({marks})", seqs)
            self._count("sent.batches", rows)
        self._used -= nbytes + rows * _ROW_OVERHEAD
        return total

    def stats(self) -> BufferStats:
        p_n, p_old = self._db.execute("SELECT COALESCE(SUM(n), 0), MIN(created_us) FROM pending").fetchone()
        b_n, b_cnt, b_old = self._db.execute(
            "SELECT COALESCE(SUM(n), 0), COUNT(*), MIN(created_us) FROM batches"
        ).fetchone()
        olds = [x for x in (p_old, b_old) if x is not None]
        return BufferStats(
            pending_readings=p_n + b_n,
            pending_batches=b_cnt,
            bytes_used=self._used,
            max_bytes=self.settings.max_bytes,
            oldest_unsent_us=min(olds) if olds else None,
            next_seq=self._next_seq,
            epoch=self.epoch,
            counters=dict(self._db.execute("SELECT name, value FROM counters")),
        )

    def dead_letters(self, limit: int = 100) -> list[tuple[int, str, str, bytes | None]]:
        return self._db.execute(
            "SELECT at_us, source, reason, data FROM dead_letters ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()

