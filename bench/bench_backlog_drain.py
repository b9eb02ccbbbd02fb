"""Backlog drain: the hub stores a 10-minute outage's readings (600k at 1000 readings/s) after it ends.

Run: python bench/bench_backlog_drain.py [--outage 10m] [--rate 1000] [--mode both|inprocess|subprocess]

The outage is replayed into the agent's buffer, with the agent's own config, as the running agent
would have written it with no broker reachable: the simulated input's appends every 100 ms
(with its checkpoint) and the sealer's pass every 250 ms, on a clock that runs through the
outage's 10 minutes (so batches are as old, as many and as big as a real outage leaves them:
sealed every `seal_interval`, ~1000 readings each). The buffer file is then copied for each mode.

Then the hub is started (its start is reported, not timed) and the agent with that buffer; the
clock runs from the agent's start until the hub's ledger holds every reading. The input's
checkpoint says it has already produced its `max_ticks`, so only the backlog flows.

Reference: publishing the very same envelopes (read from the buffer, with the agent's msg ids)
to a separate embedded nats-server with the hub's settings; see rig.best_raw_publish.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import tomllib
from pathlib import Path

from figures import emit, note
import rig

from agent.buffer import Buffer
from agent.config import AgentConfig
from protocol import Topic, msg_id, parse_duration
from simulators.signals import device_model

GOAL_S = 10.0
TENANT, DEVICE = "bench", "dev-1"
APPEND_EVERY_US = 100_000  # SimulatedInputConfig.emit_interval's default
SEAL_EVERY_US = 250_000  # the agent's seal loop wakes every min(seal_interval, 0.25 s)


def agent_config(buffer_path: Path, url: str, *, ticks: int, period: str, start_us: int) -> tuple[str, AgentConfig]:
    text = rig.agent_toml(buffer_path=buffer_path, url=url, max_ticks=ticks, period=period, start_us=start_us,
                          realtime=True, tenant=TENANT, device=DEVICE)
    return text, AgentConfig.model_validate(tomllib.loads(text))


def fill(config: AgentConfig, *, ticks: int, period_us: int, start_us: int) -> tuple[int, list[rig.Message]]:
    """Replay the outage into the buffer; returns readings stored and its sealed envelopes."""
    now = {"us": start_us}
    buf = Buffer(config.buffer, tenant=TENANT, device=DEVICE, clock_us=lambda: now["us"])
    try:
        model = device_model(DEVICE, start_us=start_us, period_us=period_us)
        per_append = max(1, APPEND_EVERY_US // period_us)
        next_seal = start_us + SEAL_EVERY_US
        for first in range(0, ticks, per_append):
            n = min(per_append, ticks - first)
            now["us"] = model.ts_us_of(first + n)  # the input appends when its last tick is due
            buf.append(model.frame(first, n), checkpoint=(config.inputs[0].name, f"{start_us}:{first + n}"))
            if now["us"] >= next_seal:
                buf.seal()
                next_seal += SEAL_EVERY_US
        now["us"] += int(config.buffer.seal_interval.total_seconds() * 1e6)
        buf.seal()
        stats = buf.stats()
        batches = buf.next_batches(1_000_000)
    finally:
        buf.close()
    if stats.pending_readings != sum(b.n for b in batches):
        raise RuntimeError(f"{stats.pending_readings} readings buffered, but only {sum(b.n for b in batches)} sealed.")
    messages = [rig.Message(Topic(TENANT, DEVICE, b.kind).subject, msg_id(TENANT, DEVICE, stats.epoch, b.seq),
                            b.payload) for b in batches]
    return stats.pending_readings, messages


async def drain(mode: str, tmp: Path, source_db: Path, n: int, args, *, start_us: int) -> dict:
    data_dir = tmp / "hub"
    buffer_path = tmp / "agent" / "buffer.db"
    buffer_path.parent.mkdir(parents=True)
    shutil.copyfile(source_db, buffer_path)
    hub_started = time.perf_counter()
    async with rig.running_hub(data_dir) as hub:
        hub_ready_s = time.perf_counter() - hub_started
        text, config = agent_config(buffer_path, hub.state.nats_url, ticks=args.ticks, period=args.period,
                                    start_us=start_us)
        extra: dict = {}
        if mode == "inprocess":
            started, done = await rig.agent_until_stored(config, data_dir, n, timeout=args.timeout)
        else:
            cfg = tmp / "agent.toml"
            cfg.write_text(text)
            started = time.perf_counter()
            proc = rig.AgentProcess(cfg, until_drained=True, log_path=tmp / "agent.log")
            try:
                first = await rig.wait_stored(data_dir, 1, timeout=args.timeout, alive=proc)
                done = await rig.wait_stored(data_dir, n, timeout=args.timeout, alive=proc)
                code = await proc.wait(timeout=30)
                if code != 0:
                    raise RuntimeError(f"The agent exited with {code}:\n{proc.log_tail()}")
            finally:
                proc.stop()
            extra = {"first_stored_s": first - started, "agent_pid": proc.pid}
        counts = await rig.lake_summary(hub)
    if counts["rows"] != n or counts["duplicate_rows"]:
        raise RuntimeError(f"The lake holds {counts} telemetry rows; expected {n} distinct.")
    return {"seconds": done - started, "hub_ready_s": hub_ready_s, "lake_rows": counts["rows"],
            "lake_duplicate_rows": counts["duplicate_rows"], "lake_files": counts["files"], **extra}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outage", default="10m")
    p.add_argument("--rate", type=int, default=1000, help="readings/s during the outage (4 channels)")
    p.add_argument("--mode", choices=("both", "inprocess", "subprocess"), default="both")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--dir", type=Path, default=None, help="where stores go (default: a temp dir)")
    args = p.parse_args()
    outage_s = parse_duration(args.outage).total_seconds()
    period_us = 4 * 1_000_000 // args.rate
    args.period = f"{period_us}us"
    args.ticks = int(outage_s * 1e6 // period_us)
    start_us = time.time_ns() // 1000 - int(outage_s * 1e6)  # the outage ended just now
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-backlog-") as tmp_name:
        tmp = Path(tmp_name)
        source_db = tmp / "outage" / "buffer.db"
        _, config = agent_config(source_db, "nats://127.0.0.1:4222", ticks=args.ticks, period=args.period,
                                 start_us=start_us)
        t0 = time.perf_counter()
        n, messages = fill(config, ticks=args.ticks, period_us=period_us, start_us=start_us)
        note(f"outage replayed: {n} readings in {len(messages)} batches, "
             f"{sum(len(m.payload) for m in messages)} bytes, in {time.perf_counter() - t0:.1f}s")
        ref, raw_times = await rig.best_raw_publish(messages, tmp)
        note(f"reference: {len(messages)} envelopes published in {ref.seconds:.3f}s ({ref.method})")
        modes = ("inprocess", "subprocess") if args.mode == "both" else (args.mode,)
        for mode in modes:
            result = await drain(mode, tmp / mode, source_db, n, args, start_us=start_us)
            seconds = result.pop("seconds")
            note(f"{mode}: {n} readings drained in {seconds:.2f}s")
            emit(f"backlog_drain_s[outage={args.outage},agent={mode}]", seconds, "s",
                 reference="raw_jetstream_publish_s", reference_value=ref.seconds,
                 goal=f"<= {GOAL_S} s", meets_goal=seconds <= GOAL_S,
                 readings=n, readings_per_s=n / seconds, batches=len(messages),
                 bytes=sum(len(m.payload) for m in messages), agent=mode,
                 reference_method=ref.method, **raw_times, **result)


if __name__ == "__main__":
    asyncio.run(main())
