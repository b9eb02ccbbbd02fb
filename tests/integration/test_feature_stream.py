"""The streaming path in a running hub: an agent's readings reach the online store as windows close,
equal to what `materialize` computes from the lake for the same windows."""

from __future__ import annotations

import asyncio

import pyarrow.parquet as pq
import pytest

from agent.config import load_config
from agent.daemon import Agent
from hub.broker import EmbeddedNats
from hub.features import materialize
from tests.integration.harness import agent_config, hub_config, running_hub
from tests.servers import await_until

pytestmark = pytest.mark.integration

MINUTE_US = 60_000_000
START_US = 1_700_000_040_000_000 // MINUTE_US * MINUTE_US  # a window boundary
TICKS = 600  # ten minutes at 1 Hz: ten one-minute windows


async def test_agent_readings_reach_the_online_store_through_the_stream(tmp_path, nats_server: EmbeddedNats):
    config = hub_config(tmp_path / "hub", nats_url=nats_server.url,
                        features={"stream_interval": "100ms", "idle_timeout": "1s"})
    async with running_hub(config) as hub:
        view = hub.features.registry.get("condition").view
        cfg = agent_config(tmp_path / "a.toml", device="pump-7", url=nats_server.url, inputs=[
            {"type": "simulated", "realtime": False, "max_ticks": TICKS, "period": "1s", "start_us": START_US}])
        await asyncio.wait_for(Agent(load_config(cfg)).run(asyncio.Event(), until_drained=True), timeout=60)
        last_end = START_US + TICKS // 60 * MINUTE_US

        def closed() -> dict | None:
            got = hub.features.online.get(view, "t1", "pump-7")
            return got if got is not None and got["event_time"] == last_end else None

        # The last window closes by the idle rule, a second after the device went quiet.
        online = await await_until(closed, timeout=30, interval=0.05, what="the last window in the online store")
        assert online["run_id"] is None  # written by the stream, not by a materialization

    run = await asyncio.to_thread(materialize, tmp_path / "hub", view)
    rows = pq.read_table(f"{run['path']}/part-0.parquet").to_pylist()
    (row,) = [r for r in rows if r["device"] == "pump-7" and r["event_time"] == last_end]
    assert {n: row[n] for n in view.feature_names} == online["features"]  # bit for bit: one code path
    assert run["rows_written"] == TICKS // 60
