"""Two hub processes share one durable pull consumer and one data_dir: each batch stored once."""

from __future__ import annotations

import asyncio
import json
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
    # Small fetches, so neither process can take the whole backlog in one pull.
    hub_toml = write_toml(tmp_path / "hub.toml", {
        "log_level": "warning",
        "ingest": {"fetch_batch": 2, "fetch_timeout": "200ms", "ack_wait": "10s"},
    })
    two_workers = write_toml(tmp_path / "hub-2w.toml", {
        "log_level": "warning",
        "ingest": {"fetch_batch": 2, "fetch_timeout": "200ms", "ack_wait": "10s", "workers": 2},
    })
    # The first process serves the HTTP API (its /stats counts what *this* process stored); the
    # second is an ingest-only worker (--no-api), as extra workers are deployed.
    procs: list[Proc] = []
    try:
        primary, info = await asyncio.to_thread(
            start_hub_process, data_dir, nats_url=nats_server.url, config=hub_toml, api=True)
        procs.append(primary)
        extra, _ = await asyncio.to_thread(start_hub_process, data_dir, nats_url=nats_server.url, config=hub_toml)
        procs.append(extra)
        api = info["api_url"]

        configs = [
            agent_config(tmp_path / f"w{i}.toml", device=f"w{i}", url=nats_server.url, tenant=TENANT,
                         inputs=[{"type": "simulated", "realtime": False, "max_ticks": TICKS, "start_us": START_US,
                                  "period": "10ms"}],
                         buffer={"batch_max_readings": 1000})
            for i in range(AGENTS)
        ]
        finals = await asyncio.wait_for(asyncio.gather(*(_run_agent(c) for c in configs)), timeout=WAIT_S)
        expected = AGENTS * TICKS * CHANNELS
        assert sum(f["sent.telemetry"] for f in finals) == expected
        sent_batches = sum(f["sent.batches"] for f in finals)  # telemetry and health

        await await_until(lambda: _stored_batches(data_dir) >= sent_batches, timeout=WAIT_S,
                          what=f"the hubs to store {sent_batches} batches")
        for p in procs:
            assert p.p.poll() is None, f"a hub process exited:\n{p.tail()}"

        # Did both processes work? The primary's own count of what it stored is strictly between
        # nothing and everything, so the --no-api worker stored the rest.
        worker = _get(f"{api}/stats")["worker"]
        print("DBG", worker["stored_batches"], sent_batches)
        assert 0 < worker["stored_batches"] < sent_batches, worker
        assert worker["dead_letters"] == {} and worker["storage_errors"] == 0, worker
    finally:
        codes = [p.terminate(timeout=15) for p in procs]
    assert codes == [0, 0], "\n".join(p.tail() for p in procs)

    assert _stored_batches(data_dir) == sent_batches
    assert stored(data_dir) == {"rows": expected, "distinct": expected, "duplicate_rows": 0}
    for i, final in enumerate(finals):
        [stream] = ledger(data_dir, TENANT, f"w{i}")
        assert stream.gaps == [] and stream.hwm == stream.batches == final["sent.batches"], (i, stream, final)
        assert stream.readings - final.get("sent.health", 0) == TICKS * CHANNELS
