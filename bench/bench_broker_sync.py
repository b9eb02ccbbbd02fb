"""What `sync_interval: always` costs: JetStream publish rate with fsync per message vs nats-server's default.

Run: python bench/bench_broker_sync.py [--messages 5000] [--size 2048] [--publishers 64] [--rounds 3]
[--dir PATH]. Prints one JSON line per figure, each the median over the rounds. The store must sit on the disk the hub will use: on tmpfs an
fsync costs nothing and the ratio says nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.js.api import StorageType

from hub.broker import EmbeddedNats, EmbeddedNatsSettings

_WARMUP = 200


@dataclass(frozen=True)
class Run:
    msgs_per_s: float
    p50_ack_ms: float
    p99_ack_ms: float


async def publish_all(url: str, *, messages: int, size: int, publishers: int) -> Run:
    """Publish `messages` from `publishers` tasks, each awaiting its PubAck before the next."""
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name="BENCH", subjects=["bench.>"], storage=StorageType.FILE)
        payload = b"\x5a" * size
        for _ in range(_WARMUP):
            await js.publish("bench.warmup", payload, timeout=10)
        latencies: list[float] = []
        remaining = messages

        async def publisher() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                sent = time.perf_counter()
                await js.publish("bench.data", payload, timeout=10)
                latencies.append(time.perf_counter() - sent)

        started = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(publishers)))
        elapsed = time.perf_counter() - started
        stored = (await js.stream_info("BENCH")).state.messages
        if stored != messages + _WARMUP:
            raise RuntimeError(f"Stream BENCH holds {stored} messages, expected {messages + _WARMUP}.")
    finally:
        await nc.close()
    cuts = statistics.quantiles(latencies, n=100)
    return Run(messages / elapsed, cuts[49] * 1e3, cuts[98] * 1e3)


async def measure(root: Path, *, sync_always: bool, messages: int, size: int, publishers: int) -> Run:
    settings = EmbeddedNatsSettings(
        store_dir=root / ("sync-always" if sync_always else "default-sync") / "store",
        mqtt_port=None,
        sync_always=sync_always,
    )
    async with EmbeddedNats(settings) as server:
        return await publish_all(server.url, messages=messages, size=size, publishers=publishers)


def _median(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.msgs_per_s for r in runs),
        statistics.median(r.p50_ack_ms for r in runs),
        statistics.median(r.p99_ack_ms for r in runs),
    )


def figure(name: str, value: float, reference: str, reference_value: float) -> str:
    return json.dumps(
        {
            "figure": name,
            "value": round(value, 2),
            "reference": reference,
            "reference_value": round(reference_value, 2),
            "ratio": round(value / reference_value, 3),
        }
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--publishers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="runs per setting; medians are printed")
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go (default: a temp dir)")
    args = parser.parse_args()
    shape = {"messages": args.messages, "size": args.size, "publishers": args.publishers}
    runs: dict[bool, list[Run]] = {False: [], True: []}
    # Alternate the two settings so drift in the machine (page cache, other load) hits both.
    for round_no in range(args.rounds):
        for sync_always in (False, True):
            with tempfile.TemporaryDirectory(dir=args.dir, prefix=f"bench-broker-sync-{round_no}-") as tmp:
                runs[sync_always].append(await measure(Path(tmp), sync_always=sync_always, **shape))
    default, always = _median(runs[False]), _median(runs[True])
    print(figure("jetstream_publish_sync_always_msgs_per_s", always.msgs_per_s,
                 "jetstream_publish_default_sync", default.msgs_per_s))
    print(figure("jetstream_publish_sync_always_p50_ack_ms", always.p50_ack_ms,
                 "jetstream_publish_default_sync_p50_ack_ms", default.p50_ack_ms))
    print(figure("jetstream_publish_sync_always_p99_ack_ms", always.p99_ack_ms,
                 "jetstream_publish_default_sync_p99_ack_ms", default.p99_ack_ms))


if __name__ == "__main__":
    asyncio.run(main())
