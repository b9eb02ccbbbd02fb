"""A full disk under the agent's buffer: the when_full policy applies, the agent keeps running,
and everything it kept reaches the hub once the broker is back."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import agent_config, device_counters, hub_config, ledger, running_hub, start_agent, stored
from tests.servers import await_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 32 MiB tmpfs: a real filesystem that really fills up."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to fill a disk for real: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_agent_survives_a_full_disk_and_loses_only_what_it_counts(tmp_path, small_disk, nats_server):
    nats_server.stop()  # an outage: the backlog grows until the disk is full
    # Something else on the device (logs, say) has taken most of the disk: 18 MiB free is
    # the 16 MiB reserve the agent keeps for SQLite's WAL plus ~2 MiB of room for readings.
    ballast = small_disk / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * (14 * 2**20))
    cfg = agent_config(
        small_disk / "agent.toml", device="full", url=nats_server.url,
        buffer={"max_bytes": "64MiB", "when_full": "drop_oldest",
                "synchronous": "normal", "batch_max_readings": 2000, "seal_interval": "50ms"},
        inputs=[{"type": "simulated", "realtime": False, "max_ticks": 600_000, "period": "1ms",
                 "start_us": 1_700_000_000_000_000}],
        health_interval="500ms",
    )
    proc = start_agent(cfg, until_drained=True)
    db = small_disk / "full.db"
    try:
        await await_until(lambda: device_counters(db).get("full.disk", 0) > 0
                          and device_counters(db).get("dropped.drop_oldest", 0) > 0,
                          timeout=60, interval=0.25, what="the disk to fill and drop_oldest to start")
        assert proc.p.poll() is None, proc.tail()  # still running on a full disk
        await await_until(lambda: "input sim finished" in proc.tail(20000) or proc.p.poll() is not None,
                          timeout=90, interval=0.25, what="the input to finish on the full disk")
        await asyncio.to_thread(nats_server.start)
        async with running_hub(hub_config(tmp_path / "hub", nats_url=nats_server.url)):
            assert await asyncio.to_thread(proc.wait, 120) == 0, proc.tail()
            c = device_counters(db)
            kept = c["appended.telemetry"] - c.get("evicted.telemetry", 0)
            await await_until(lambda: stored(tmp_path / "hub")["distinct"] == kept, timeout=60,
                              what=f"the hub to store the {kept} readings the device kept")
            assert stored(tmp_path / "hub")["duplicate_rows"] == 0
            # every generated reading is accounted for: kept, evicted, or refused on a full disk
            assert c["appended.telemetry"] + c.get("refused.telemetry", 0) == 2_400_000
            assert 0 < kept < 2_400_000, c  # the disk really filled, and something was kept
            assert c.get("dropped.oversize", 0) == 0
            (led,) = ledger(tmp_path / "hub", "t1", "full")
            assert led.missing == c.get("dropped_batches", 0)  # every gap is a batch the device says it dropped
            assert "Traceback" not in proc.tail(200_000)
    finally:
        if proc.p.poll() is None:
            proc.kill()


async def test_hub_keeps_running_on_a_full_disk_and_stores_everything_once_there_is_room(tmp_path, small_disk, nats_server):
    from agent.config import load_config
    from agent.daemon import Agent

    hub_dir = small_disk / "hub"
    async with running_hub(hub_config(hub_dir, nats_url=nats_server.url)) as hub:
        ballast = small_disk / "ballast"
        with open(ballast, "wb") as f:  # fill the hub's disk to the last byte
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        cfg = agent_config(tmp_path / "a.toml", device="onto-full", url=nats_server.url, inputs=[
            {"type": "simulated", "realtime": False, "max_ticks": 10_000, "period": "10ms",
             "start_us": 1_700_000_000_000_000}])
        # the broker takes everything (its store is elsewhere); the hub cannot write it yet
        await asyncio.wait_for(Agent(load_config(cfg)).run(asyncio.Event(), until_drained=True), timeout=60)
        await await_until(lambda: hub.pipeline.stats.storage_errors > 0, timeout=30, what="a storage error")
        assert stored(hub_dir)["rows"] == 0
        ballast.unlink()  # the operator frees space
        await await_until(lambda: stored(hub_dir)["distinct"] == 40_000, timeout=60,
                          what="the hub to store everything once there is room")
        assert stored(hub_dir)["duplicate_rows"] == 0
        with sqlite3.connect(f"file:{hub_dir / 'meta.db'}?mode=ro", uri=True) as db:
            assert db.execute("SELECT count(*) FROM lake_pending").fetchone()[0] == 0  # no commit left half-done
