"""`mqtt` input: subscribe to sensors on a local broker, append what arrives every interval.

The window at risk is one `append_interval`: paho acknowledges QoS 1 deliveries on receipt,
so readings received but not yet appended are lost on SIGKILL (documented in operations.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import urlsplit

import aiomqtt

from ..backoff import Backoff
from ..config import BackoffConfig, MqttInputConfig
from .base import RecordError, Sink, group_rows, parse_record

log = logging.getLogger(__name__)


class MqttInput:
    def __init__(self, settings: MqttInputConfig, *, client_id: str) -> None:
        self.name = settings.name
        self._s = settings
        self._client_id = client_id
        self.received = 0
        self.bad = 0
        self.overflow = 0
        self.subscribed = asyncio.Event()

    async def run(self, sink: Sink) -> None:
        u = urlsplit(self._s.url)
        backoff = Backoff(BackoffConfig())
        pending: list = []
        flusher = asyncio.create_task(self._flush_loop(sink, pending), name=f"input:{self.name}:flush")
        try:
            while True:
                try:
                    async with aiomqtt.Client(
                        u.hostname or "127.0.0.1", u.port or 1883, identifier=self._client_id,
                        protocol=aiomqtt.ProtocolVersion.V311,
                        max_queued_incoming_messages=self._s.queue_max,
                    ) as client:
                        for topic in self._s.topics:
                            await client.subscribe(topic, qos=1)
                        self.subscribed.set()
                        backoff.reset()
                        async for message in client.messages:
                            self.received += 1
                            topic = message.topic.value
                            try:
                                payload = message.payload
                                obj = json.loads(payload if isinstance(payload, (bytes, str)) else str(payload))
                                pending.append(parse_record(obj, default_channel=topic.rsplit("/", 1)[-1]))
                            except (json.JSONDecodeError, UnicodeDecodeError, RecordError) as exc:
                                self.bad += 1
                                raw = payload if isinstance(payload, bytes) else str(payload).encode()
                                await sink.dead_letter(self.name, f"{topic}: {exc}", raw)
                except aiomqtt.MqttError as exc:
                    self.subscribed.clear()
                    delay = backoff.next_delay()
                    log.warning("input %s: %s (%s); next try in %.1fs", self.name, self._s.url, exc, delay)
                    await asyncio.sleep(delay)
        finally:
            flusher.cancel()
            if pending:
                await sink.append_groups(list(group_rows(pending).items()))

    async def _flush_loop(self, sink: Sink, pending: list) -> None:
        while True:
            await asyncio.sleep(self._s.append_interval.total_seconds())
            if pending:
                batch = pending[:]
                del pending[: len(batch)]
                await sink.append_groups(list(group_rows(batch).items()))
