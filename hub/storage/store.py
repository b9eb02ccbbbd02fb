"""Exactly-once storage: a batch's rows and its ledger entry commit together, or neither does.

    BEGIN IMMEDIATE (the metadata write lock; serializes hub workers, across processes too)
      drop batches already recorded (repeats) ─ count them
      stage Parquet tmp files for the rest (fsync)
      record batches + ledger + manifest rows
    COMMIT
    rename tmp files into place; then the caller acks the broker

A crash before COMMIT leaves tmp files the manifest does not name: recovery deletes them and
the broker redelivers. A crash after COMMIT leaves named tmp files: recovery renames them,
and the redelivered batches are recognised as repeats.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocol import Batch, Kind

from . import metadata as meta
from .lake import Lake, batches_to_table


@dataclass(frozen=True)
class CommitResult:
    stored_batches: int
    stored_readings: int
    duplicate_batches: int


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.db = meta.connect(self.data_dir / "meta.db")
        self.lake = Lake(self.data_dir / "lake")
        self.recover()

    def recover(self) -> tuple[int, int]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            committed = {r[0] for r in self.db.execute("SELECT path FROM lake_files")}
            result = self.lake.recover(committed)
        finally:
            self.db.execute("COMMIT")
        return result

    def close(self) -> None:
        self.db.close()

    def commit(self, batches: Sequence[Batch], *, received_us: int | None = None) -> CommitResult:
        received_us = received_us if received_us is not None else time.time_ns() // 1000
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            fresh: list[Batch] = []
            repeats: list[Batch] = []
            keys: set[tuple] = set()
            for b in batches:
                h = b.header
                key = (h.tenant, h.device, h.epoch, h.seq)
                if key in keys or meta.seen(db, tenant=h.tenant, device=h.device, epoch=h.epoch, seq=h.seq):
                    repeats.append(b)
                else:
                    keys.add(key)
                    fresh.append(b)
            staged = self.lake.stage(batches_to_table(fresh, received_us=received_us))
            for b in fresh:
                h = b.header
                meta.record_batch(
                    db, tenant=h.tenant, device=h.device, epoch=h.epoch, seq=h.seq, kind=h.kind.value,
                    count_=h.count, t_start_us=h.t_start_us, t_end_us=h.t_end_us, received_us=received_us,
                )
                if h.kind is Kind.HEALTH:
                    meta.record_health(db, tenant=h.tenant, device=h.device, ts_us=h.t_end_us,
                                       values=_latest(b))
            for b in repeats:  # after the fresh ones: a repeat within this fetch has its ledger row now
                meta.record_duplicate(db, tenant=b.header.tenant, device=b.header.device, epoch=b.header.epoch)
            for s in staged:
                db.execute("INSERT INTO lake_files VALUES (?, ?, ?)", (str(s.path), s.rows, received_us))
            readings = sum(b.header.count for b in fresh)
            meta.count(db, "ingest.stored_batches", len(fresh))
            meta.count(db, "ingest.stored_readings", readings)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            for s in locals().get("staged", []):
                s.tmp.unlink(missing_ok=True)
            raise
        self.lake.publish(staged)
        return CommitResult(len(fresh), readings, len(repeats))

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
