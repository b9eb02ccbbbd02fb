"""Ingest: decode → validate → drop repeats → store → ack; bad input to the dead-letter stream.

Sources (JetStream pull consumer, MQTT subscription) hand the pipeline `Delivery` objects and
never ack themselves: a delivery is acked only after its batch is committed (or after it was
dead-lettered), so a crash anywhere means redelivery, and the store drops the repeat.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from deltalake.exceptions import DeltaError

from protocol import Batch, DecodeError, InvalidTopicError, Topic, decode_batch

from ..config import IngestConfig
from ..storage.store import CommitResult, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    subject: str  # as received: a NATS subject, or an MQTT topic when `mqtt` is true
    data: bytes
    ack: Callable[[], Awaitable[None]]
    nak: Callable[[float], Awaitable[None]] | None = None
    mqtt: bool = False
    ref: str = ""  # the source's id for this delivery (stream seq, MQTT mid), for the DLQ


class DeadLetterSink(Protocol):
    async def send(self, delivery: Delivery, *, reason: str, error: str) -> None: ...


@dataclass
class IngestStats:
    received: int = 0
    stored_batches: int = 0
    stored_readings: int = 0
    duplicate_batches: int = 0
    dead_letters: Counter = field(default_factory=Counter)
    storage_errors: int = 0
    deferred_batches: int = 0
    last_commit_s: float = 0.0


class Pipeline:
    def __init__(self, store: Store, dlq: DeadLetterSink, settings: IngestConfig) -> None:
        self._store = store
        self._dlq = dlq
        self._s = settings
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.stats = IngestStats()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _decode(self, d: Delivery) -> Batch:
        topic = Topic.parse_mqtt(d.subject) if d.mqtt else Topic.parse_subject(d.subject)
        return decode_batch(d.data, topic=topic, max_payload=self._s.max_payload, max_raw=self._s.max_raw)

    async def process(self, deliveries: list[Delivery]) -> None:
        self.stats.received += len(deliveries)
        good: list[tuple[Delivery, Batch]] = []
        for d in deliveries:
            try:
                good.append((d, self._decode(d)))
            except InvalidTopicError as exc:
                await self._dead_letter(d, "invalid_topic", str(exc))
            except DecodeError as exc:
                await self._dead_letter(d, exc.reason, str(exc))
        if good:
            await self._store_and_ack(good)

    async def _store_and_ack(self, good: list[tuple[Delivery, Batch]]) -> None:
        t0 = time.perf_counter()
        result = await self._commit(good)
        if result is None:
            return
        self.stats.last_commit_s = time.perf_counter() - t0
        self.stats.stored_batches += result.stored_batches
        self.stats.stored_readings += result.stored_readings
        self.stats.duplicate_batches += result.duplicate_batches
        deferred = set(result.deferred)
        for i, (d, _) in enumerate(good):
            if i not in deferred:
                await d.ack()
        if deferred:
            # Another hub process has these batches in flight: whichever way its commit ends, a
            # redelivery is then a repeat (acked) or stored afresh. Never ack them here.
            self.stats.deferred_batches += len(deferred)
            again = [good[i] for i in sorted(deferred)]
            if all(d.nak is not None for d, _ in again):
                for d, _ in again:
                    await d.nak(1.0)
            else:  # MQTT has no nak: try those again shortly, in this task
                await asyncio.sleep(0.5)
                await self._store_and_ack(again)

    async def _commit(self, good: list[tuple[Delivery, Batch]]) -> CommitResult | None:
        """Store, or on a storage failure (disk full, I/O error) keep the process running:
        JetStream deliveries are nak'ed for redelivery; MQTT has no nak (the broker redelivers
        only on reconnect), so those are retried here, with backoff, until they commit."""
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            try:
                return await loop.run_in_executor(self._pool, self._store.commit, [b for _, b in good])
            except (OSError, sqlite3.Error, DeltaError) as exc:
                self.stats.storage_errors += 1
                if all(d.nak is not None for d, _ in good):
                    log.error("ingest: storing %d batches failed (%s); they will be redelivered", len(good), exc)
                    for d, _ in good:
                        await d.nak(2.0)
                    return None
                log.error("ingest: storing %d batches failed (%s); retrying in %.1fs", len(good), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _dead_letter(self, d: Delivery, reason: str, error: str) -> None:
        log.warning("ingest: dead-lettered %s (%d bytes): %s: %s", d.subject, len(d.data), reason, error)
        await self._dlq.send(d, reason=reason, error=error)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._pool, lambda: self._store.dead_letter(reason=reason, error=error, subject=d.subject, size=len(d.data))
        )
        self.stats.dead_letters[reason] += 1
        await d.ack()
