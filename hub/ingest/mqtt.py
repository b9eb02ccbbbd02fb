"""MQTT source: ingest from an external MQTT 3.1.1 broker (Mosquitto) with a persistent session.

paho-mqtt runs its network loop in a thread; deliveries cross to the event loop with
`call_soon_threadsafe`. `manual_ack` holds each PUBACK until the batch is committed, and the
persistent session (clean_session=False) makes the broker keep — and redeliver — what the
hub has not acknowledged while it was down.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import paho.mqtt.client as paho

from ..config import IngestConfig, MqttSourceConfig
from .pipeline import Delivery, Pipeline

log = logging.getLogger(__name__)


class MqttSource:
    def __init__(self, settings: MqttSourceConfig, ingest: IngestConfig) -> None:
        self._s = settings
        self._ingest = ingest
        self.connected = asyncio.Event()

    async def run(self, pipeline: Pipeline) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue()
        u = urlsplit(self._s.url)
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=self._s.client_id, clean_session=False,
            protocol=paho.MQTTv311, manual_ack=True,
        )
        client.reconnect_delay_set(min_delay=1, max_delay=30)

        def on_connect(c, userdata, flags, reason, props):
            if not reason.is_failure:
                c.subscribe(self._s.topic_filter, qos=1)
            log.info("ingest mqtt: connect to %s: %s", self._s.url, reason)

        def on_subscribe(c, userdata, mid, reasons, props):
            # SUBACK: from now on the broker keeps this session's messages, even while we are away
            if reasons and not reasons[0].is_failure:
                loop.call_soon_threadsafe(self.connected.set)

        def on_disconnect(c, userdata, flags, reason, props):
            loop.call_soon_threadsafe(self.connected.clear)
            log.warning("ingest mqtt: disconnected from %s: %s", self._s.url, reason)

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_disconnect = on_disconnect
        client.on_message = lambda c, userdata, msg: loop.call_soon_threadsafe(queue.put_nowait, msg)
        client.connect_async(u.hostname or "127.0.0.1", u.port or 1883, keepalive=30)
        client.loop_start()
        try:
            while True:
                first = await queue.get()
                msgs = [first]
                while len(msgs) < self._ingest.fetch_batch and not queue.empty():
                    msgs.append(queue.get_nowait())
                await pipeline.process([self._delivery(client, m) for m in msgs])
        finally:
            client.disconnect()
            client.loop_stop()

    @staticmethod
    def _delivery(client: paho.Client, m: paho.MQTTMessage) -> Delivery:
        async def ack() -> None:
            if m.qos > 0:
                client.ack(m.mid, m.qos)

        return Delivery(m.topic, bytes(m.payload), ack, None, mqtt=True, ref="")
