"""Two hub processes share one durable pull consumer and one data_dir: each batch stored once."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request
from pathlib import Path

import nats
import pytest

from agent.config import load_config
from agent.daemon import Agent
from hub.broker import EmbeddedNats
from hub.storage import metadata as meta
from tests.integration.harness import Proc, agent_config, ledger, start_hub_process, stored, write_toml
from tests.servers import await_until

pytestmark = pytest.mark.integration

TENANT = "t1"
AGENTS = 4
TICKS = 12_500  # x 4 channels x 4 agents = 200,000 readings
CHANNELS = 4
START_US = 1_700_000_000_000_000
STREAM, DURABLE = "EL", "ingest"  # hub.config defaults: broker.stream.name, ingest.durable
WAIT_S = 30.0


def _get(url: str) -> dict:
    # An empty ProxyHandler: an http_proxy in the environment must not see a loopback request.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return json.load(response)


def _write_lock(data_dir: Path) -> sqlite3.Connection:
    """Take the metadata write lock every hub commit needs (hub/storage/store.py)."""
    db = meta.connect(data_dir / "meta.db")
    db.execute("BEGIN IMMEDIATE")
    return db


def _release(db: sqlite3.Connection) -> None:
    db.execute("ROLLBACK")
    db.close()


def _stored_batches(data_dir: Path) -> int:
    db = meta.connect(data_dir / "meta.db")
    try:
        return db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    finally:
        db.close()


async def _run_agent(config: Path) -> dict[str, int]:
    agent = Agent(load_config(config))
    await agent.run(asyncio.Event(), until_drained=True)
    assert agent.final_stats is not None and agent.final_stats.pending_readings == 0
    return dict(agent.final_stats.counters)


async def test_two_hub_processes_share_the_consumer_and_store_each_batch_once(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    data_dir = tmp_path / "hub"
    ingest = {"fetch_batch": 1, "fetch_timeout": "200ms", "ack_wait": "10s"}
    one_worker = write_toml(tmp_path / "hub-1w.toml", {"log_level": "warning", "ingest": ingest})
    two_workers = write_toml(tmp_path / "hub-2w.toml", {"log_level": "warning", "ingest": {**ingest, "workers": 2}})
    procs: list[Proc] = []
    nc = await nats.connect(nats_server.url, connect_timeout=5, allow_reconnect=False)
    lock = None
    try:
        # The first process runs two workers and serves the HTTP API, whose /stats counts what
        # *this* process stored; the second is an ingest-only worker (--no-api), as extra
        # workers are deployed.
        primary, info = await asyncio.to_thread(
            start_hub_process, data_dir, nats_url=nats_server.url, config=two_workers, api=True)
        procs.append(primary)
        extra, _ = await asyncio.to_thread(start_hub_process, data_dir, nats_url=nats_server.url, config=one_worker)
        procs.append(extra)
        js = nc.jetstream(timeout=10)

        # Both processes must take part, and that must not be left to chance: who wins the
        # shared SQLite write lock after a commit is up to SQLite's busy-wait backoff, which can
        # starve one process. So the test holds that lock while the first batches arrive: each
        # worker fetches one batch (fetch_batch = 1), then waits for the lock still holding it
        # unacknowledged. Three batches pending at once means all three workers hold one, and
        # the primary runs only two of them.
        lock = await asyncio.to_thread(_write_lock, data_dir)
        configs = [
            agent_config(tmp_path / f"w{i}.toml", device=f"w{i}", url=nats_server.url, tenant=TENANT,
                         inputs=[{"type": "simulated", "realtime": False, "max_ticks": TICKS, "start_us": START_US,
                                  "period": "10ms"}],
                         buffer={"batch_max_readings": 1000})
            for i in range(AGENTS)
        ]
        agents = asyncio.gather(*(_run_agent(c) for c in configs))

        async def all_workers_hold_one() -> bool:
            pending = (await js.consumer_info(STREAM, DURABLE)).num_ack_pending
            assert pending <= 3, f"{pending} deliveries pending, with three workers fetching one at a time"
            return pending == 3

        await await_until(all_workers_hold_one, timeout=WAIT_S, interval=0.05,
                          what="each of the three workers to hold a batch")
        await asyncio.to_thread(_release, lock)
        lock = None

        finals = await asyncio.wait_for(agents, timeout=WAIT_S)
        expected = AGENTS * TICKS * CHANNELS
        assert sum(f["sent.telemetry"] for f in finals) == expected
        sent_batches = sum(f["sent.batches"] for f in finals)  # telemetry and health

        await await_until(lambda: _stored_batches(data_dir) >= sent_batches, timeout=WAIT_S,
                          what=f"the hubs to store {sent_batches} batches")
        for p in procs:
            assert p.p.poll() is None, f"a hub process exited:\n{p.tail()}"
        # The primary's own count: it stored some, and not all, so the --no-api worker stored the rest.
        worker = _get(f"{info['api_url']}/stats")["worker"]
        assert 0 < worker["stored_batches"] < sent_batches, (worker, sent_batches)
        assert worker["dead_letters"] == {} and worker["storage_errors"] == 0, worker
        consumer = await js.consumer_info(STREAM, DURABLE)
        assert consumer.num_ack_pending == 0 and consumer.num_pending == 0
    finally:
        if lock is not None:
            await asyncio.to_thread(_release, lock)
        await nc.close()
        codes = [p.terminate(timeout=15) for p in procs]
    assert codes == [0, 0], "\n".join(p.tail() for p in procs)

    assert _stored_batches(data_dir) == sent_batches
    assert stored(data_dir) == {"rows": expected, "distinct": expected, "duplicate_rows": 0}
    for i, final in enumerate(finals):
        [stream] = ledger(data_dir, TENANT, f"w{i}")
        assert stream.gaps == [] and stream.hwm == stream.batches == final["sent.batches"], (i, stream, final)
        assert stream.readings - final.get("sent.health", 0) == TICKS * CHANNELS
