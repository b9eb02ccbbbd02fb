"""NATS JetStream uplink: publish with `Nats-Msg-Id`, wait for the PubAck."""

from __future__ import annotations

import asyncio
import logging

import nats
import nats.errors
import nats.js.errors

from protocol import Topic

from ..backoff import Backoff
from ..config import UplinkConfig
from ..errors import UplinkError
from .base import tls_context

log = logging.getLogger(__name__)


class NatsUplink:
    name = "nats"

    def __init__(self, settings: UplinkConfig, *, client_name: str) -> None:
        self._s = settings
        self._client_name = client_name
        self._nc: nats.NATS | None = None
        self._js = None
        self._up = asyncio.Event()
        self._closing = False
        self.failures = 0

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def wait_connected(self, timeout: float) -> bool:
        if self.connected:
            return True
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            return False
        return self.connected

    async def _on_disconnect(self) -> None:
        self._up.clear()
        if not self._closing:
            log.warning("uplink nats: disconnected from %s", self._s.url)

    async def _on_reconnect(self) -> None:
        self._up.set()
        log.info("uplink nats: reconnected to %s", self._s.url)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("uplink nats: %s", exc)

    async def run(self) -> None:
        backoff = Backoff(self._s.backoff)
        try:
            me = asyncio.current_task()
            while True:
                if me is not None and me.cancelling():  # nats-py can swallow a cancellation
                    raise asyncio.CancelledError
                closed = asyncio.Event()

                async def on_closed() -> None:
                    closed.set()

                try:
                    nc = await nats.connect(
                        self._s.url,
                        name=self._client_name,
                        user=self._s.username,
                        password=self._s.password,
                        tls=tls_context(self._s.tls),
                        connect_timeout=max(1.0, self._s.ack_timeout.total_seconds()),
                        allow_reconnect=True,
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=self._s.backoff.initial.total_seconds(),
                        disconnected_cb=self._on_disconnect,
                        reconnected_cb=self._on_reconnect,
                        error_cb=self._on_error,
                        closed_cb=on_closed,
                    )
                except (OSError, nats.errors.Error, TimeoutError) as exc:
                    delay = backoff.next_delay()
                    log.warning("uplink nats: cannot connect to %s (%s); next try in %.1fs", self._s.url, exc, delay)
                    await asyncio.sleep(delay)
                    continue
                backoff.reset()
                self._nc, self._js = nc, nc.jetstream(timeout=self._s.ack_timeout.total_seconds())
                self._up.set()
                log.info("uplink nats: connected to %s", self._s.url)
                # nats-py reconnects by itself; we only start over if it gives up and closes.
                await closed.wait()
                self._up.clear()
        finally:
            await self.close()

    async def publish(self, topic: Topic, payload: bytes, *, msg_id: str) -> None:
        if not self.connected or self._js is None:
            raise UplinkError(f"Not connected to {self._s.url}.")
        try:
            ack = await self._js.publish(
                topic.subject, payload, timeout=self._s.ack_timeout.total_seconds(), headers={"Nats-Msg-Id": msg_id}
            )
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            self.failures += 1
            raise UplinkError(f"JetStream did not acknowledge {msg_id} on {topic.subject}: {type(exc).__name__} {exc}") from exc
        if ack.stream is None:
            self.failures += 1
            raise UplinkError(f"JetStream answered {msg_id} without a stream.")

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        self._closing = True
        self._up.clear()
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), timeout=5)
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.debug("uplink nats: close: %s", exc)
