"""End to end: one agent → embedded broker (NATS uplink) → one hub worker → lake, sustained readings/s.

Run: python bench/bench_e2e.py [--ticks 250000] [--period 1ms] [--mode both|inprocess|subprocess]

The agent runs a simulated, non-realtime input (`--ticks` ticks × 4 channels) with its default
buffer (SQLite WAL, synchronous=full, 5000-reading batches) and NATS uplink. The clock runs from
the agent's start until the hub's ledger (meta.db) holds every telemetry reading; the lake is then
counted with DuckDB to check nothing is missing or stored twice. Modes:

  inprocess   agent and hub share this process and its event loop (they contend for one GIL)
  subprocess  `python -m agent --config FILE --until-drained`, timed from spawn (interpreter
              start and imports included; `first_stored_s` says how long before data flowed)

Reference: the same readings pre-encoded with encode_batch into 5000-reading envelopes (with
the agent's msg ids) and published with nats-py to a separate embedded nats-server with the
hub's settings (sync_interval always, same stream), the faster of 32 concurrent publishers
awaiting PubAcks (the agent's max_in_flight) and publish_async with 32 pending.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import tomllib
from pathlib import Path

from figures import emit, note
import rig

from agent.config import AgentConfig
from protocol import Kind, Topic, encode_batch, msg_id, parse_duration
from simulators.signals import device_model

GOAL = 100_000
START_US = 1_750_000_000_000_000
TENANT, DEVICE = "bench", "dev-1"
BATCH = 5000


def reference_messages(ticks: int, period_us: int) -> tuple[list[rig.Message], int]:
    """The agent's readings as 5000-reading envelopes, and how many readings they hold."""
    model = device_model(DEVICE, start_us=START_US, period_us=period_us)
    per = BATCH // len(model.channels)
    subject = Topic(TENANT, DEVICE, Kind.TELEMETRY).subject
    out = []
    for seq, first in enumerate(range(0, ticks, per), start=1):
        r = model.frame(first, min(per, ticks - first))
        payload = encode_batch(r, tenant=TENANT, device=DEVICE, kind=Kind.TELEMETRY, epoch=1, seq=seq)
        out.append(rig.Message(subject, msg_id(TENANT, DEVICE, 1, seq), payload))
    return out, ticks * len(model.channels)


def config_text(tmp: Path, url: str, ticks: int, period: str) -> str:
    return rig.agent_toml(buffer_path=tmp / "agent" / "buffer.db", url=url, max_ticks=ticks, period=period,
                          start_us=START_US, tenant=TENANT, device=DEVICE)


async def run_inprocess(tmp: Path, ticks: int, period: str, n: int, timeout: float) -> dict:
    data_dir = tmp / "hub"
    async with rig.running_hub(data_dir) as hub:
        config = AgentConfig.model_validate(tomllib.loads(config_text(tmp, hub.state.nats_url, ticks, period)))
        started, done = await rig.agent_until_stored(config, data_dir, n, timeout=timeout)
        counts = await rig.lake_summary(hub)
        hub_stats = hub.pipeline.stats
    return {"seconds": done - started, "counts": counts, "hub_batches": hub_stats.stored_batches}


async def run_subprocess(tmp: Path, ticks: int, period: str, n: int, timeout: float) -> dict:
    data_dir = tmp / "hub"
    async with rig.running_hub(data_dir) as hub:
        cfg = tmp / "agent.toml"
        cfg.write_text(config_text(tmp, hub.state.nats_url, ticks, period))
        started = time.perf_counter()
        proc = rig.AgentProcess(cfg, until_drained=True, log_path=tmp / "agent.log")
        try:
            first = await rig.wait_stored(data_dir, 1, timeout=timeout, alive=proc)
            done = await rig.wait_stored(data_dir, n, timeout=timeout, alive=proc)
            code = await proc.wait(timeout=30)
            if code != 0:
                raise RuntimeError(f"The agent exited with {code}:\n{proc.log_tail()}")
        finally:
            proc.stop()
        counts = await rig.lake_summary(hub)
        hub_stats = hub.pipeline.stats
    return {"seconds": done - started, "first_stored_s": first - started,
            "readings_per_s_after_first_stored": n / (done - first), "counts": counts,
            "hub_batches": hub_stats.stored_batches, "agent_pid": proc.pid}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ticks", type=int, default=250_000)
    p.add_argument("--period", default="1ms")
    p.add_argument("--mode", choices=("both", "inprocess", "subprocess"), default="both")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the hub to store everything")
    p.add_argument("--dir", type=Path, default=None, help="where stores go (default: a temp dir)")
    args = p.parse_args()
    period_us = int(parse_duration(args.period).total_seconds() * 1e6)
    modes = ("inprocess", "subprocess") if args.mode == "both" else (args.mode,)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-e2e-") as tmp_name:
        tmp = Path(tmp_name)
        messages, n = reference_messages(args.ticks, period_us)
        ref, raw_times = await rig.best_raw_publish(messages, tmp)
        ref_rate = n / ref.seconds
        note(f"reference: {n} readings in {len(messages)} envelopes published in {ref.seconds:.2f}s ({ref.method})")
        for mode in modes:
            run = run_inprocess if mode == "inprocess" else run_subprocess
            result = await run(tmp / mode, args.ticks, args.period, n, args.timeout)
            counts = result.pop("counts")
            if counts["rows"] != n or counts["duplicate_rows"]:
                raise RuntimeError(f"The lake holds {counts} telemetry rows; expected {n} distinct.")
            rate = n / result["seconds"]
            note(f"{mode}: {n} readings stored in {result['seconds']:.2f}s")
            emit(f"e2e_readings_per_s[agent={mode}]", rate, "readings/s",
                 reference="raw_jetstream_publish_readings_per_s", reference_value=ref_rate,
                 goal=f">= {GOAL} readings/s", meets_goal=rate >= GOAL,
                 readings=n, seconds=result.pop("seconds"), agent=mode,
                 reference_method=ref.method, reference_envelopes=len(messages), **raw_times,
                 lake_rows=counts["rows"], lake_duplicate_rows=counts["duplicate_rows"],
                 lake_files=counts["files"],
                 hub_workers=1, period=args.period, **result)


if __name__ == "__main__":
    asyncio.run(main())
