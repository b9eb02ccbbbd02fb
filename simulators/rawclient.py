"""A raw client that publishes what no real agent would: malformed, oversized, wrong payloads."""

from __future__ import annotations

import nats

from .faults import malformed_payloads


async def publish_malformed(nats_url: str, *, count: int, tenant: str = "sim", device: str = "rogue", seed: int = 0) -> int:
    """Publish `count` bad payloads to a device's telemetry subject; returns how many were sent."""
    payloads = malformed_payloads(seed)
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        for i in range(count):
            _, data = payloads[i % len(payloads)]
            await js.publish(f"el.{tenant}.{device}.telemetry", data)
    finally:
        await nc.close()
    return count
