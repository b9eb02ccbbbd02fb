"""JetStream plumbing: the telemetry and dead-letter streams, the durable pull consumer source."""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType
from nats.js.api import StreamConfig as JsStreamConfig

from protocol import subject_filter

from ..config import IngestConfig, StreamConfig
from .pipeline import Delivery, Pipeline

log = logging.getLogger(__name__)
DLQ_PREFIX = "dlq"


async def ensure_streams(js, s: StreamConfig) -> None:
    """Create or update the telemetry stream (`el.>`) and the dead-letter stream (`dlq.>`)."""
    wanted = [
        JsStreamConfig(
            name=s.name, subjects=[subject_filter()], storage=StorageType.FILE, retention=RetentionPolicy.LIMITS,
            max_age=s.max_age.total_seconds(), max_bytes=s.max_bytes, discard=DiscardPolicy.OLD,
            duplicate_window=s.duplicate_window.total_seconds(), num_replicas=s.replicas,
        ),
        JsStreamConfig(
            name=s.dlq_name, subjects=[f"{DLQ_PREFIX}.>"], storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS, max_age=s.dlq_max_age.total_seconds(), num_replicas=s.replicas,
            duplicate_window=s.duplicate_window.total_seconds(),
        ),
    ]
    for cfg in wanted:
        try:
            await js.stream_info(cfg.name)
            await js.update_stream(cfg)
        except nats.js.errors.NotFoundError:
            await js.add_stream(cfg)


class JetStreamDeadLetters:
    """Poison messages go to `dlq.<reason>` with the reason, error and original subject as headers."""

    def __init__(self, js) -> None:
        self._js = js

    async def send(self, delivery: Delivery, *, reason: str, error: str) -> None:
        headers = {"El-Reason": reason, "El-Error": error[:1000], "El-Subject": delivery.subject}
        if delivery.ref:
            headers["Nats-Msg-Id"] = f"dlq:{delivery.ref}"  # a redelivered poison message is stored once
        await self._js.publish(f"{DLQ_PREFIX}.{reason}", delivery.data, headers=headers, timeout=10)


class JetStreamSource:
    """Fetches from the shared durable pull consumer; several workers may run it at once."""

    def __init__(self, js, *, stream: str, settings: IngestConfig, name: str = "worker") -> None:
        self._js = js
        self._stream = stream
        self._s = settings
        self.name = name

    async def run(self, pipeline: Pipeline) -> None:
        s = self._s
        sub = await self._js.pull_subscribe(
            subject_filter(), durable=s.durable, stream=self._stream,
            config=ConsumerConfig(
                durable_name=s.durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                ack_wait=s.ack_wait.total_seconds(), max_ack_pending=max(1000, 4 * s.fetch_batch),
                max_deliver=-1,
            ),
        )
        timeout = s.fetch_timeout.total_seconds()
        me = asyncio.current_task()
        while True:
            # nats-py 2.16 can swallow a cancellation that lands inside a request (fetch and
            # pull_subscribe are requests); honour it here or the hub never stops.
            if me is not None and me.cancelling():
                raise asyncio.CancelledError
            try:
                msgs = await sub.fetch(s.fetch_batch, timeout=timeout)
            except TimeoutError:  # nothing to fetch; nats-py raises both its own and asyncio's
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
                log.warning("ingest %s: %s; retrying", self.name, exc)
                await asyncio.sleep(timeout)
                continue
            await pipeline.process([
                Delivery(m.subject, m.data, m.ack, m.nak, ref=str(m.metadata.sequence.stream)) for m in msgs
            ])
