"""MQTT 3.1.1 uplink (aiomqtt over paho-mqtt 2.x): QoS 1, returns on PUBACK, bounded in-flight."""

from __future__ import annotations

import asyncio
import logging
import traceback
from urllib.parse import urlsplit

import aiomqtt

from protocol import Topic

from ..backoff import Backoff
from ..config import UplinkConfig
from ..errors import UplinkError
from .base import tls_context

log = logging.getLogger(__name__)


class MqttUplink:
    name = "mqtt"

    def __init__(self, settings: UplinkConfig, *, client_id: str) -> None:
        self._s = settings
        self._client_id = client_id
        u = urlsplit(settings.url)
        self._host = u.hostname or "127.0.0.1"
        self._tls = u.scheme == "mqtts" or settings.tls is not None
        self._port = u.port or (8883 if self._tls else 1883)
        self._client: aiomqtt.Client | None = None
        self._up = asyncio.Event()
        self.failures = 0

    @property
    def connected(self) -> bool:
        return self._client is not None and self._up.is_set()

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            return False
        return self.connected

    async def run(self) -> None:
        backoff = Backoff(self._s.backoff)
        while True:
            try:
                async with aiomqtt.Client(
                    self._host,
                    self._port,
                    identifier=self._client_id,
                    protocol=aiomqtt.ProtocolVersion.V311,
                    clean_session=True,  # the buffer, not the broker session, owns retries
                    username=self._s.username,
                    password=self._s.password,
                    tls_context=tls_context(self._s.tls) if self._tls else None,
                    max_inflight_messages=self._s.max_in_flight,
                    timeout=self._s.ack_timeout.total_seconds(),
                    keepalive=30,
                ) as client:
                    # aiomqtt warns past 10 pending calls; our bound is max_in_flight, by design.
                    client.pending_calls_threshold = self._s.max_in_flight + 10
                    self._client = client
                    self._up.set()
                    backoff.reset()
                    log.info("uplink mqtt: connected to %s", self._s.url)
                    async for _ in client.messages:  # returns only by raising on disconnect
                        pass
            except aiomqtt.MqttError as exc:
                self._up.clear()
                self._client = None
                _release_frames(exc)
                delay = backoff.next_delay()
                log.warning("uplink mqtt: %s: %s; next try in %.1fs", self._s.url, exc, delay)
                await asyncio.sleep(delay)
            finally:
                self._up.clear()
                self._client = None

    async def publish(self, topic: Topic, payload: bytes, *, msg_id: str) -> None:
        client = self._client
        if client is None or not self._up.is_set():
            raise UplinkError(f"Not connected to {self._s.url}.")
        try:
            await client.publish(topic.mqtt, payload, qos=1, timeout=self._s.ack_timeout.total_seconds())
        except (aiomqtt.MqttError, TimeoutError) as exc:
            self.failures += 1
            raise UplinkError(f"No PUBACK for {msg_id} on {topic.mqtt}: {exc}") from exc

    async def close(self) -> None:
        self._up.clear()



def _release_frames(exc: BaseException) -> None:
    """paho-mqtt 2.2 leaves the socket of a failed TLS handshake to the traceback's frames;
    clearing them frees the socket now rather than whenever the exception is collected."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
