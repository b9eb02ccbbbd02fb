"""The sender: moves sealed batches from the buffer to the uplink, deletes them on ack.

Up to `max_in_flight` publishes run at once. A batch stays in `in_flight` until its deletion
is committed, so it is never fetched twice while a publish is pending; a failed publish puts
it back and the sender waits a jittered backoff before trying again. Live batches are fetched
before the backlog (the buffer orders them), and the backlog may be rate-limited so a drain
after an outage never starves live data on a thin link.
"""

from __future__ import annotations

import asyncio
import logging
import time

from protocol import Kind, Topic, msg_id

from .asyncbuffer import AsyncBuffer
from .backoff import Backoff
from .config import AgentConfig
from .errors import UplinkError
from .uplinks import Uplink

log = logging.getLogger(__name__)


class Sender:
    def __init__(self, buffer: AsyncBuffer, uplink: Uplink, config: AgentConfig) -> None:
        self._buffer = buffer
        self._uplink = uplink
        self._cfg = config
        dev = config.device
        self._topics = {k: Topic(dev.tenant, dev.id, k) for k in Kind}
        self._wake = asyncio.Event()
        self._acked: list[int] = []
        self._ack_ready = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._backoff = Backoff(config.uplink.backoff)
        self._retry_at = 0.0
        self._next_backlog_at = 0.0
        self.published = 0
        self.failures = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        # A restart after a crash: whatever was in flight is unknown, so send it again (the hub
        # drops repeats) rather than leave it marked in flight for ever.
        self._buffer.in_flight.clear()
        self._acked.clear()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._ack_loop(), name="sender-acks")
                tg.create_task(self._send_loop(), name="sender-send")
        finally:
            for t in self._tasks:
                t.cancel()

    async def _send_loop(self) -> None:
        cap = self._cfg.uplink.max_in_flight
        poll = min(0.5, max(0.05, self._cfg.buffer.seal_interval.total_seconds() / 2))
        rate = self._cfg.uplink.backlog_batches_per_s
        live_us = int(self._cfg.buffer.live_window.total_seconds() * 1e6)
        while True:
            self._wake.clear()
            now = time.monotonic()
            free = cap - len(self._buffer.in_flight)
            if now < self._retry_at or free <= 0 or not self._uplink.connected:
                if not self._uplink.connected:
                    await self._uplink.wait_connected(poll)
                await self._sleep_or_wake(min(poll, max(0.0, self._retry_at - now)) or poll)
                continue
            batches = await self._buffer.next_batches(free)
            wall_us = time.time_ns() // 1000
            for b in batches:
                if rate and b.created_us < wall_us - live_us:
                    if time.monotonic() < self._next_backlog_at:
                        break
                    self._next_backlog_at = time.monotonic() + 1.0 / rate
                self._buffer.in_flight.add(b.seq)
                task = asyncio.create_task(self._publish(b.seq, b.kind, b.payload), name=f"publish-{b.seq}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if not batches or len(batches) < free:
                await self._sleep_or_wake(poll)

    async def _sleep_or_wake(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def _publish(self, seq: int, kind: Kind, payload: bytes) -> None:
        dev = self._cfg.device
        try:
            await self._uplink.publish(
                self._topics[kind], payload, msg_id=msg_id(dev.tenant, dev.id, self._buffer.epoch, seq)
            )
        except UplinkError as exc:
            self.failures += 1
            self._buffer.in_flight.discard(seq)
            delay = self._backoff.next_delay()
            self._retry_at = max(self._retry_at, time.monotonic() + delay)
            log.warning("sender: batch %d not acknowledged (%s); retrying in %.2fs", seq, exc, delay)
            self._wake.set()  # let the loop sleep exactly the backoff, not a whole poll
            return
        self._backoff.reset()
        self.published += 1
        self._acked.append(seq)
        self._ack_ready.set()

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_ready.wait()
            self._ack_ready.clear()
            seqs, self._acked = self._acked, []
            if seqs:
                await self._buffer.ack(seqs)
                self._buffer.in_flight.difference_update(seqs)
                self._wake.set()

    @property
    def idle(self) -> bool:
        return not self._buffer.in_flight and not self._acked
