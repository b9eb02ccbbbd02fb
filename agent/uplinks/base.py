"""The uplink contract: how sealed batches reach a broker.

Who calls it: the agent's Sender, from the event loop. `run()` is the connection supervisor,
started once as a task: it connects, and reconnects with jittered backoff, until cancelled.
`publish()` returns only after the broker acknowledged the batch (JetStream PubAck, MQTT
PUBACK); any failure raises UplinkError and the batch stays in the buffer to be sent again.
A repeat is harmless: the hub drops repeats by (device, epoch, seq).
"""

from __future__ import annotations

import ssl
from typing import Protocol

from protocol import Topic

from ..config import TlsConfig


class Uplink(Protocol):
    name: str

    @property
    def connected(self) -> bool: ...

    async def wait_connected(self, timeout: float) -> bool: ...

    async def run(self) -> None: ...

    async def publish(self, topic: Topic, payload: bytes, *, msg_id: str) -> None: ...


def tls_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    if tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    if tls.cert:
        ctx.load_cert_chain(str(tls.cert), str(tls.key) if tls.key else None)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
