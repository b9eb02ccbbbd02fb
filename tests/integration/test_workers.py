"""Two hub processes share one durable pull consumer and one data_dir: each batch stored once."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request
from pathlib import Path

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
    ingest = {"fetch_batch": 16, "fetch_timeout": "200ms", "ack_wait": "10s"}
    one_worker = write_toml(tmp_path / "hub-1w.toml", {"log_level": "warning", "ingest": ingest})
    two_workers = write_toml(tmp_path / "hub-2w.toml", {"log_level": "warning", "ingest": {**ingest, "workers": 2}})
    procs: list[tuple[Proc, dict]] = []
    lock = None
    agents: asyncio.Future | None = None
    try:
        # Two processes on one data_dir and one durable consumer, the first with two workers.
        # Both serve the HTTP API only so the test can ask each what *it* stored (/stats counts
        # the process's own pipeline); an extra worker would normally run with --no-api.
        for config in (two_workers, one_worker):
            procs.append(await asyncio.to_thread(
                start_hub_process, data_dir, nats_url=nats_server.url, config=config, api=True))
        apis = [info["api_url"] for _, info in procs]

        # Both processes must take part, and that must not be left to chance: who gets the
        # shared SQLite write lock next is up to SQLite's busy-wait backoff, which can starve one
        # process for a whole run. So the test holds that lock while the first batches arrive:
        # a worker that fetched then waits to commit, holding its batches unacknowledged, and
        # the other process's pull requests get the next ones. /stats counts deliveries as
        # they enter the pipeline, before the commit, and reads without the write lock.
        lock = await asyncio.to_thread(_write_lock, data_dir)
        configs = [
            agent_config(tmp_path / f"w{i}.toml", device=f"w{i}", url=nats_server.url, tenant=TENANT,
                         inputs=[{"type": "simulated", "realtime": False, "max_ticks": TICKS, "start_us": START_US,
                                  "period": "10ms"}],
                         buffer={"batch_max_readings": 1000})
            for i in range(AGENTS)
        ]
        agents = asyncio.gather(*(_run_agent(c) for c in configs))
        await await_until(
            lambda: all(_get(f"{api}/stats")["worker"]["received"] > 0 for api in apis),
            timeout=WAIT_S, interval=0.05, what="both hub processes to receive batches",
        )
        await asyncio.to_thread(_release, lock)
        lock = None

        finals = await asyncio.wait_for(agents, timeout=WAIT_S)
        expected = AGENTS * TICKS * CHANNELS
        assert sum(f["sent.telemetry"] for f in finals) == expected
        sent_batches = sum(f["sent.batches"] for f in finals)  # telemetry and health

        await await_until(lambda: _stored_batches(data_dir) >= sent_batches, timeout=WAIT_S,
                          what=f"the hubs to store {sent_batches} batches")
        for proc, _ in procs:
            assert proc.p.poll() is None, f"a hub process exited:\n{proc.tail()}"
        workers = [_get(f"{api}/stats")["worker"] for api in apis]
        assert all(w["stored_batches"] > 0 for w in workers), workers
        assert sum(w["stored_batches"] for w in workers) == sent_batches, workers
        assert sum(w["stored_readings"] for w in workers) == expected + sum(f["sent.health"] for f in finals)
        assert all(w["dead_letters"] == {} and w["storage_errors"] == 0 for w in workers), workers
    finally:
        if lock is not None:
            await asyncio.to_thread(_release, lock)
        if agents is not None and not agents.done():
            agents.cancel()
            await asyncio.gather(agents, return_exceptions=True)
        codes = [proc.terminate(timeout=15) for proc, _ in procs]
    assert codes == [0, 0], "\n".join(proc.tail() for proc, _ in procs)

    assert _stored_batches(data_dir) == sent_batches
    assert stored(data_dir) == {"rows": expected, "distinct": expected, "duplicate_rows": 0}
    for i, final in enumerate(finals):
        [stream] = ledger(data_dir, TENANT, f"w{i}")
        assert stream.gaps == [] and stream.hwm == stream.batches == final["sent.batches"], (i, stream, final)
        assert stream.readings - final.get("sent.health", 0) == TICKS * CHANNELS
