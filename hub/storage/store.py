"""Exactly-once storage: a batch's readings reach the Delta lake once, and its ledger entry with them.

Each hub process holds a writer slot (`writer_id`, an flock'ed file under `<data_dir>/writers`,
released by the kernel when the process dies, reused by the next process that starts). A commit
runs in three steps:

    1. BEGIN IMMEDIATE (the metadata write lock, shared by every hub process)
         drop repeats (the ledger) ─ count them; defer batches another live writer has pending
         txn = this writer's last txn + 1; record the rest as pending(writer_id, txn)
       COMMIT
    2. Lake.append(rows, writer_id, txn): data files and the Delta app transaction in one commit
    3. BEGIN IMMEDIATE: record batches + ledger + health, delete the pending rows; COMMIT
       then the caller acks the broker

Recovery resolves a dead writer's pending rows: `committed_txn(writer_id) >= txn` means step 2
happened, so the batches are recorded as stored (and their redelivery is a repeat); otherwise
the rows are dropped and the broker's redelivery stores them afresh. Data files a crash left
before a Delta commit are referenced by no version; `Lake.vacuum` deletes them. Every process
recovers the free slots at start, and a commit that meets a batch pending under a slot whose
owner died recovers that slot on the spot, so nothing waits for a restart.

Appends from several processes run concurrently (Delta's optimistic commit); the SQLite lock
covers only steps 1 and 3.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protocol import Batch, Kind

from . import metadata as meta
from .lake import Lake, batches_to_table

log = logging.getLogger("edgeloop.hub.store")


@dataclass(frozen=True)
class CommitResult:
    stored_batches: int
    stored_readings: int
    duplicate_batches: int
    # Indices (into the committed list) of batches another live writer has in flight: neither
    # stored nor repeats; the caller must not ack them (the broker redelivers them).
    deferred: tuple[int, ...] = field(default=())


class WriterSlot:
    """An exclusive, durable writer id: `hub-w<n>`, held by an flock on `<dir>/w<n>.lock`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        n = 0
        while True:
            fd = try_lock(self.directory / f"w{n}.lock")
            if fd is not None:
                self._fd: int | None = fd
                self.writer_id = f"hub-w{n}"
                return
            n += 1

    def owner_alive(self, writer_id: str) -> bool:
        """Whether another process (or another slot in this one) holds writer_id's lock now."""
        if writer_id == self.writer_id:
            return False
        if not writer_id.startswith("hub-w"):
            return False  # not a slot (the legacy import): nobody holds it
        fd = try_lock(self.directory / f"w{writer_id[5:]}.lock")
        if fd is None:
            return True
        os.close(fd)
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def try_lock(path: Path) -> int | None:
    """An exclusive flock on `path` (created if missing), or None when another holder has it.
    The kernel releases it when the process dies; close the fd to release it before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.db = meta.connect(self.data_dir / "meta.db")
        self.lake = Lake(self.data_dir / "lake")
        self.db.execute("BEGIN IMMEDIATE")  # one process at a time creates or imports the table
        try:
            self.lake.prepare()
        finally:
            self.db.execute("COMMIT")
        self.slot = WriterSlot(self.data_dir / "writers")
        self.writer_id = self.slot.writer_id
        self.recover()

    def close(self) -> None:
        self.db.close()
        self.slot.release()

    # --- recovery ------------------------------------------------------------------------------
    def recover(self) -> tuple[int, int]:
        """Resolve the pending rows of every writer whose owner is gone (this one's included).
        Returns (batches recorded as stored, batches dropped for redelivery)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            stored = dropped = 0
            for (writer_id,) in self.db.execute("SELECT DISTINCT writer_id FROM lake_pending").fetchall():
                if not self.slot.owner_alive(writer_id):
                    s, d = self._resolve(writer_id)
                    stored, dropped = stored + s, dropped + d
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        if stored or dropped:
            log.warning("store: recovered pending batches: %d were in the lake (recorded), %d were not"
                        " (left for redelivery)", stored, dropped)
        return stored, dropped

    def _resolve(self, writer_id: str) -> tuple[int, int]:
        """Inside a transaction: finish or drop writer_id's pending rows by the Delta log."""
        committed = self.lake.committed_txn(writer_id)
        committed = -1 if committed is None else committed
        rows = self.db.execute(
            "SELECT tenant, device, epoch, seq, kind, count, t_start_us, t_end_us, received_us, health, txn"
            " FROM lake_pending WHERE writer_id = ? ORDER BY txn, tenant, device, epoch, seq",
            (writer_id,),
        ).fetchall()
        stored = 0
        for tenant, device, epoch, seq, kind, count_, t0, t1, received, health, txn in rows:
            if txn <= committed:
                self._record(tenant, device, epoch, seq, kind, count_, t0, t1, received,
                             json.loads(health) if health else None)
                stored += 1
        self.db.execute("DELETE FROM lake_pending WHERE writer_id = ?", (writer_id,))
        meta.count(self.db, "ingest.recovered_batches", stored)
        return stored, len(rows) - stored

    # --- the commit ----------------------------------------------------------------------------
    def commit(self, batches: Sequence[Batch], *, received_us: int | None = None) -> CommitResult:
        received_us = received_us if received_us is not None else time.time_ns() // 1000
        db = self.db
        fresh: list[Batch] = []
        repeats: list[Batch] = []
        deferred: list[int] = []
        # Step 1: decide, and claim the fresh batches as pending under a new txn.
        db.execute("BEGIN IMMEDIATE")
        try:
            keys: set[tuple] = set()
            for i, b in enumerate(batches):
                h = b.header
                key = (h.tenant, h.device, h.epoch, h.seq)
                if key in keys or meta.seen(db, tenant=h.tenant, device=h.device, epoch=h.epoch, seq=h.seq):
                    repeats.append(b)
                    continue
                owner = db.execute(
                    "SELECT writer_id FROM lake_pending WHERE tenant = ? AND device = ? AND epoch = ? AND seq = ?",
                    key,
                ).fetchone()
                if owner is not None:
                    if self.slot.owner_alive(owner[0]):
                        deferred.append(i)
                        continue
                    self._resolve(owner[0])  # its owner died mid-commit: settle that first
                    if meta.seen(db, tenant=h.tenant, device=h.device, epoch=h.epoch, seq=h.seq):
                        repeats.append(b)
                        continue
                keys.add(key)
                fresh.append(b)
            txn = None
            if fresh:
                row = db.execute("SELECT last_txn FROM lake_writers WHERE writer_id = ?", (self.writer_id,)).fetchone()
                txn = (row[0] if row else 0) + 1
                db.execute(
                    "INSERT INTO lake_writers VALUES (?, ?) ON CONFLICT(writer_id) DO UPDATE SET last_txn = ?",
                    (self.writer_id, txn, txn),
                )
                db.executemany(
                    "INSERT INTO lake_pending VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(b.header.tenant, b.header.device, b.header.epoch, b.header.seq, self.writer_id, txn,
                      b.header.kind.value, b.header.count, b.header.t_start_us, b.header.t_end_us, received_us,
                      json.dumps(_latest(b)) if b.header.kind is Kind.HEALTH else None) for b in fresh],
                )
            else:
                self._count_repeats(repeats)
            meta.count(db, "ingest.deferred_batches", len(deferred))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if not fresh:
            return CommitResult(0, 0, len(repeats), tuple(deferred))

        # Step 2: the rows and the txn, in one Delta commit.
        try:
            self.lake.append(batches_to_table(fresh, received_us=received_us),
                             writer_id=self.writer_id, txn_version=txn)
        except BaseException as exc:
            if not self._append_landed(txn):
                self._drop_pending(txn)
                raise
            log.warning("store: the lake append raised %r after its commit landed; recording it", exc)

        # Step 3: record what is now in the lake; the caller acks after this.
        db.execute("BEGIN IMMEDIATE")
        try:
            for b in fresh:
                h = b.header
                self._record(h.tenant, h.device, h.epoch, h.seq, h.kind.value, h.count, h.t_start_us,
                             h.t_end_us, received_us, _latest(b) if h.kind is Kind.HEALTH else None)
            db.execute("DELETE FROM lake_pending WHERE writer_id = ? AND txn = ?", (self.writer_id, txn))
            self._count_repeats(repeats)
            readings = sum(b.header.count for b in fresh)
            meta.count(db, "ingest.stored_batches", len(fresh))
            meta.count(db, "ingest.stored_readings", readings)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise  # the pending rows stay: recovery records them (the append landed)
        return CommitResult(len(fresh), readings, len(repeats), tuple(deferred))

    def _append_landed(self, txn: int) -> bool:
        try:
            done = self.lake.committed_txn(self.writer_id)
        except Exception:  # the log cannot be read either: treat as not landed, redelivery decides
            return False
        return done is not None and done >= txn

    def _drop_pending(self, txn: int) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM lake_pending WHERE writer_id = ? AND txn = ?", (self.writer_id, txn))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _record(self, tenant: str, device: str, epoch: int, seq: int, kind: str, count_: int, t_start_us: int,
                t_end_us: int, received_us: int, health: dict[str, float] | None) -> None:
        meta.record_batch(
            self.db, tenant=tenant, device=device, epoch=epoch, seq=seq, kind=kind, count_=count_,
            t_start_us=t_start_us, t_end_us=t_end_us, received_us=received_us,
        )
        if health is not None:
            meta.record_health(self.db, tenant=tenant, device=device, ts_us=t_end_us, values=health)

    def _count_repeats(self, repeats: Sequence[Batch]) -> None:
        for b in repeats:
            meta.record_duplicate(self.db, tenant=b.header.tenant, device=b.header.device, epoch=b.header.epoch)

    def dead_letter(self, *, reason: str, error: str, subject: str, size: int) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(
                "INSERT INTO dead_letters (at_us, reason, error, subject, size) VALUES (?, ?, ?, ?, ?)",
                (time.time_ns() // 1000, reason, error[:2000], subject[:500], size),
            )
            meta.count(self.db, f"ingest.dead_letters.{reason}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise


def _latest(batch: Batch) -> dict[str, float]:
    r = batch.readings
    out: dict[str, float] = {}
    order = np.argsort(r.ts_us, kind="stable")
    for i in order:
        out[r.channels[r.channel[i]]] = float(r.value[i])
    return out
