"""The operator's view: the HTTP API through the `edgeloop` CLI, and the demo's JSON summary."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from agent.config import load_config
from agent.daemon import Agent
from tests.integration.harness import REPO, agent_config, hub_config, running_hub

pytestmark = pytest.mark.integration


async def cli(*args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "edgeloop", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


async def test_devices_and_telemetry_through_the_api(tmp_path, nats_server):
    async with running_hub(hub_config(tmp_path / "hub", nats_url=nats_server.url, api=True)) as hub:
        cfg = agent_config(tmp_path / "a.toml", device="pump-7", url=nats_server.url, profile="rpi4", inputs=[
            {"type": "simulated", "realtime": False, "max_ticks": 500, "period": "1s", "start_us": 1_700_000_000_000_000}])
        await Agent(load_config(cfg)).run(asyncio.Event(), until_drained=True)
        api = hub.state.api_url

        listed = await cli("devices", "list", "--hub", api, "--json")
        assert listed.returncode == 0, listed.stderr
        (dev,) = json.loads(listed.stdout)
        assert (dev["tenant"], dev["device"], dev["profile"], dev["missing_batches"]) == ("t1", "pump-7", "rpi4", 0)
        assert dev["readings"] >= 2000

        shown = await cli("devices", "show", "t1/pump-7", "--hub", api, "--json")
        report = json.loads(shown.stdout)
        assert report["ledger"][0]["gaps"] == [] and report["ledger"][0]["hwm"] >= 1
        table = await cli("devices", "show", "t1/pump-7", "--hub", api)
        assert "loss ledger" in table.stdout and "drop counters" in table.stdout

        rows = json.loads((await cli("telemetry", "query", "--device", "t1/pump-7", "--channel", "temperature",
                                     "--since", "2023-11-14T22:13:20", "--limit", "1000", "--hub", api, "--json")).stdout)
        assert len(rows) == 500 and all(r["channel"] == "temperature" for r in rows)
        assert rows[0]["ts_us"] == 1_700_000_000_000_000

        missing = await cli("devices", "show", "t1/nobody", "--hub", api)
        assert missing.returncode == 4 and "never been seen" in missing.stderr


def test_demo_json_summary_shows_nothing_lost_across_an_outage(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "edgeloop", "demo", "--devices", "4", "--duration", "5", "--json", "--period-ms", "20",
         "--data-dir", str(tmp_path), "--outage", "1:2"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["uplinks"] == {"nats": 3, "mqtt": 1}
    assert summary["sent"] > 0 and summary["sent"] == summary["generated"] == summary["stored"]
    assert summary["lost"] == 0 and summary["duplicates"] == 0 and summary["still_buffered"] == 0
    # With models (the default): every device got the model through the twin before its sensors
    # started, predicted its backfilled windows (3 minutes: at least 2 whole windows each), and a
    # staged rollout began mid-demo without refusals.
    assert set(summary["models"]) <= {"1.0.0", "1.1.0"} and sum(summary["models"].values()) == 4
    assert summary["predictions_stored"] >= 4 * 2
    assert summary["online_vectors"] == 4  # the streaming path closed their backfilled windows
    assert summary["rollout"]["version"] == "1.1.0" and summary["rollout"]["state"] in ("canary", "stage", "complete")
