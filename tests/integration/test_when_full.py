"""The agent buffer's `when_full` policies, with the broker down while a sensor keeps producing.

Each test fills a small buffer while the uplink's broker is down, checks the policy
from the agent's own counters, then starts the broker and the hub, lets the agent drain, and
checks what reached the lake against those counters: every reading generated is either stored
once or counted as dropped on the device, and the hub shows the device's drop counters.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import nats
import numpy as np
import pytest

from agent.config import load_config
from agent.daemon import Agent
from hub.api.app import device_report
from hub.broker import EmbeddedNats
from hub.ingest.jetstream import ensure_streams
from hub.storage import metadata as meta
from hub.storage.lake import Lake
from hub.storage.query import query_telemetry
from protocol import Kind, decode_header
from simulators.signals import device_model
from tests.integration.harness import agent_config, device_counters, hub_config, ledger, running_hub, stored
from tests.servers import await_until

pytestmark = pytest.mark.integration

TENANT = "t1"
CHANNELS = 4  # the default device model
ROW_OVERHEAD = 32  # agent/buffer.py counts this per stored row on top of its blob
WAIT_S = 20.0

# Lossy policies: a real-time sensor, 4000 readings/s for 3 s, into 16 KiB.
LOSSY_MAX_BYTES = 16 * 1024
LOSSY_TICKS = 3000
LOSSY_PERIOD_US = 1000
LOSSY_SETTINGS = {
    # Sealed batches compress to ~1-2 bytes a reading: sealing every 50 ms, the cap is reached
    # after ~1.5 s with sealed (numbered) batches in the buffer to evict or downsample.
    "drop_oldest": {"seal_interval": "50ms", "emit_interval": "20ms"},
    "downsample_oldest": {"seal_interval": "50ms", "emit_interval": "20ms"},
    # Nothing sealed until shutdown: the buffer stays full of raw readings, with less room left
    # than one 5 ms append (~450 bytes) when the shutdown health report arrives, every run.
    "drop_newest": {"seal_interval": "1h", "emit_interval": "5ms"},
}
HEALTH_SLACK = 2048  # a health report's size, rounded up: it may overdraw a full buffer

# block: an as-fast-as-possible input appends 2048 readings (36,956 bytes) at a time. 40 KiB
# holds one such chunk plus a few sealed batches: the input is held back within seconds.
# (Not real time on purpose: a real-time input catching up after being held back appends
# more than 40 KiB at once, which the buffer refuses as `dropped.oversize`.)
BLOCK_MAX_BYTES = 40 * 1024
BLOCK_TICKS = 2048
BLOCK_START_US = 1_700_000_000_000_000
BLOCK_PERIOD_US = 10_000
BLOCK_APPEND_TICKS = 2048 // CHANNELS  # agent/inputs/simulated.py: ticks per append when not real time


def _buffer_bytes(db: Path) -> int:
    """What the buffer counts against max_bytes, from its committed state (WAL: readable while it runs)."""
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(
            f"SELECT (SELECT COALESCE(SUM(length(data)) + COUNT(*) * {ROW_OVERHEAD}, 0) FROM pending)"
            f" + (SELECT COALESCE(SUM(length(payload)) + COUNT(*) * {ROW_OVERHEAD}, 0) FROM batches)"
        ).fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet
        return 0
    finally:
        con.close()


def _checkpoint(db: Path) -> tuple[int, int] | None:
    """The simulated input's (start_us, next_tick), committed with each append."""
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute("SELECT value FROM checkpoints WHERE source = 'sim'").fetchone()
    except sqlite3.OperationalError:  # schema not created yet
        return None
    finally:
        con.close()
    if row is None:
        return None
    start_us, tick = (int(x) for x in row[0].split(":"))
    return start_us, tick


def _hub_device(data_dir: Path, device: str) -> dict | None:
    db = meta.connect(data_dir / "meta.db")
    try:
        return device_report(db, TENANT, device)
    finally:
        db.close()


def _drops(counters: dict) -> dict[str, float]:
    return {k: float(v) for k, v in counters.items() if k.startswith("dropped")}


def _thinned(db: Path, period_us: int) -> bool:
    """Whether the buffer holds a sealed batch with fewer readings than the ticks it spans."""
    if not db.exists():
        return False
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        payloads = [p for (p,) in con.execute("SELECT payload FROM batches WHERE lane = ?", (Kind.TELEMETRY.lane,))]
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()
    for payload in payloads:
        h, _, _ = decode_header(payload, max_payload=len(payload))
        if h.count < ((h.t_end_us - h.t_start_us) // period_us + 1) * CHANNELS:
            return True
    return False


async def _watch_fill(agent: Agent, db: Path, *, timeout: float, period_us: int) -> tuple[int, bool]:
    """Sample the buffer until the input has finished: the largest size seen, and whether a
    sealed batch was ever seen downsampled."""
    peak, thinned = 0, False
    deadline = time.monotonic() + timeout
    while "sim" not in agent.state.inputs_done:
        peak = max(peak, _buffer_bytes(db))
        thinned = thinned or _thinned(db, period_us)
        assert time.monotonic() < deadline, f"the input did not finish within {timeout}s"
        await asyncio.sleep(0.02)
    return max(peak, _buffer_bytes(db)), thinned


async def _streams_then_outage(nats_server: EmbeddedNats, data_dir: Path) -> None:
    """The hub's streams exist (as after any earlier hub run), then the broker goes down.

    They persist in the broker's store, so the agent's first publishes after the restart land
    even before the hub is back.
    """
    nc = await nats.connect(nats_server.url, connect_timeout=5, allow_reconnect=False)
    try:
        await ensure_streams(nc.jetstream(timeout=10), hub_config(data_dir, nats_url=nats_server.url).broker.stream)
    finally:
        await nc.close()
    await asyncio.to_thread(nats_server.stop)


async def _drain(agent: Agent, task: asyncio.Task, nats_server: EmbeddedNats, data_dir: Path, device: str) -> dict:
    """Start the broker and a hub, wait until the agent drained and the hub stored all it sent."""
    await asyncio.to_thread(nats_server.start)
    async with running_hub(hub_config(data_dir, nats_url=nats_server.url)):
        await asyncio.wait_for(asyncio.shield(task), timeout=WAIT_S)
        assert agent.final_stats is not None and agent.final_stats.pending_readings == 0
        final = dict(agent.final_stats.counters)

        def hub_has_all() -> bool:
            streams = ledger(data_dir, TENANT, device)
            return bool(streams) and sum(s.batches for s in streams) >= final.get("sent.batches", 0)

        # Every batch the broker acknowledged reaches the ledger once (the last is the final
        # health report, sent when the agent shut down).
        await await_until(hub_has_all, timeout=WAIT_S, what=f"the hub to record all batches {device} sent")
    return final


def _lossy_agent(tmp_path: Path, nats_url: str, policy: str, *, settings: dict, ticks: int) -> tuple[Agent, Path]:
    device = f"wf-{policy.replace('_', '-')}"
    cfg = agent_config(
        tmp_path / f"{device}.toml", device=device, url=nats_url, tenant=TENANT,
        inputs=[{"type": "simulated", "realtime": True, "max_ticks": ticks, "period": "1ms",
                 "emit_interval": settings["emit_interval"]}],
        buffer={"max_bytes": LOSSY_MAX_BYTES, "when_full": policy, "seal_interval": settings["seal_interval"]},
        # Health only at start and at shutdown: the shutdown report is the one that must carry
        # the device's final drop counters to the hub.
        health_interval="1h",
    )
    return Agent(load_config(cfg)), tmp_path / f"{device}.db"


def _assert_values_are_the_signal(
    data_dir: Path, device: str, *, start_us: int, period_us: int, limit: int
) -> np.ndarray:
    """Every stored reading is one the sensor produced, bit for bit; returns the stored ticks of 'temperature'."""
    rows = query_telemetry(Lake(data_dir / "lake"), tenant=TENANT, device=device, limit=limit + 1)
    assert rows, "nothing stored"
    model = device_model(device, seed_base=0, start_us=start_us, period_us=period_us)
    ts = np.array([r["ts_us"] for r in rows], np.int64)
    assert np.all((ts - start_us) % period_us == 0), "a stored timestamp is not on the sensor's tick grid"
    ticks = (ts - start_us) // period_us
    frame = model.frame(0, int(ticks.max()) + 1)
    col = np.array([frame.channels.index(r["channel"]) for r in rows])
    want = frame.value[ticks * CHANNELS + col]
    got = np.array([r["value"] for r in rows], np.float64)
    assert np.array_equal(got, want), "a stored value differs from what the sensor produced"
    return np.sort(ticks[col == frame.channels.index("temperature")])


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest", "downsample_oldest"])
async def test_lossy_policy_counts_every_drop_and_the_hub_shows_them(
    tmp_path: Path, nats_server: EmbeddedNats, policy: str
) -> None:
    generated = LOSSY_TICKS * CHANNELS
    data_dir = tmp_path / "hub"
    await _streams_then_outage(nats_server, data_dir)
    agent, db = _lossy_agent(tmp_path, nats_server.url, policy, settings=LOSSY_SETTINGS[policy], ticks=LOSSY_TICKS)
    device = agent.config.device.id
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop, until_drained=True))
    try:
        peak, thinned = await _watch_fill(agent, db, timeout=WAIT_S, period_us=LOSSY_PERIOD_US)
        # The cap is checked before every insert; only the shutdown health report may overdraw
        # it (docs/operations.md), by one small append.
        assert peak <= LOSSY_MAX_BYTES + HEALTH_SLACK, f"the buffer held {peak} bytes; its cap is {LOSSY_MAX_BYTES}"
        c = device_counters(db)
        if policy == "drop_newest":
            assert c.get("dropped.drop_newest", 0) > 0, c
            assert "dropped.drop_oldest" not in c and "dropped_batches" not in c, c
            assert c["appended.telemetry"] < generated
        else:
            assert c.get(f"dropped.{policy}", 0) > 0, c
            assert c.get("dropped_batches", 0) > 0, f"no sealed batch was evicted: {c}"
        if policy == "downsample_oldest":
            # Halving the oldest batch's resolution is tried before evicting it.
            assert thinned, "no sealed batch was ever seen downsampled"
        start_us, next_tick = _checkpoint(db) or (0, 0)
        assert next_tick == LOSSY_TICKS

        final = await _drain(agent, task, nats_server, data_dir, device)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=WAIT_S)

    # Every reading generated entered the buffer or was refused at the door, counted ...
    appended = final["appended.telemetry"]
    refused = final.get("refused.telemetry", 0)
    assert appended + refused == generated, final
    # ... and of those that entered, every one is stored once or was evicted, counted.
    evicted = final.get("evicted.telemetry", 0)
    counts = stored(data_dir)
    assert counts["rows"] == counts["distinct"] == appended - evicted, (counts, final)
    oversize = final.get("dropped.oversize", 0)  # a catch-up append bigger than the whole buffer
    if policy == "drop_newest":
        assert evicted == 0 and final["dropped.drop_newest"] + oversize == refused, final
    else:
        assert refused == oversize, final
        # Only telemetry went: eviction takes the lowest lane first.
        assert final[f"dropped.{policy}"] == evicted, final
        assert final[f"dropped.{policy}"] + oversize == generated - counts["distinct"], final

    [stream] = ledger(data_dir, TENANT, device)
    assert stream.duplicates == 0
    # Every sealed batch the buffer evicted had a seq: it shows as a gap that never fills.
    assert stream.missing == final.get("dropped_batches", 0), (stream, final)
    assert (stream.gaps == []) == (policy == "drop_newest"), stream

    # The device's own counters, from its shutdown health report, beside the ledger. (Whether
    # they are exact after an evicting report is test_the_shutdown_report_counts_its_own_eviction.)
    report = _hub_device(data_dir, device)
    assert report is not None
    assert report["device_drops"].get(f"dropped.{policy}", 0) > 0, report["device_drops"]
    if policy == "drop_newest":
        assert report["device_drops"] == _drops(final)

    _assert_values_are_the_signal(data_dir, device, start_us=start_us, period_us=LOSSY_PERIOD_US, limit=generated)


@pytest.mark.parametrize("policy", ["drop_oldest", "downsample_oldest"])
async def test_the_shutdown_report_counts_its_own_eviction(
    tmp_path: Path, nats_server: EmbeddedNats, policy: str
) -> None:
    """The last health report must carry the device's final drop counters, even when storing
    that report is what evicts data: else the hub undercounts what the device dropped, and a
    gap its counters do not explain reads as data lost in transit (hub/storage/metadata.py)."""
    data_dir = tmp_path / "hub"
    await _streams_then_outage(nats_server, data_dir)
    # Nothing sealed until shutdown, and appends smaller than a health report: at the end the
    # buffer is full of raw readings with less room left than the report needs, every run.
    agent, db = _lossy_agent(tmp_path, nats_server.url, policy,
                             settings={"seal_interval": "1h", "emit_interval": "5ms"}, ticks=1000)
    device = agent.config.device.id
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop, until_drained=True))
    try:
        await _watch_fill(agent, db, timeout=WAIT_S, period_us=LOSSY_PERIOD_US)
        assert device_counters(db).get(f"dropped.{policy}", 0) > 0
        final = await _drain(agent, task, nats_server, data_dir, device)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=WAIT_S)
    report = _hub_device(data_dir, device)
    assert report is not None
    assert report["device_drops"] == _drops(final), (
        f"the hub shows drop counters {report['device_drops']}; the device counted {_drops(final)}"
    )


async def test_block_holds_the_input_back_and_loses_nothing(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    device = "wf-block"
    generated = BLOCK_TICKS * CHANNELS
    data_dir = tmp_path / "hub"
    db = tmp_path / f"{device}.db"
    append_bytes = len(device_model(device, start_us=BLOCK_START_US, period_us=BLOCK_PERIOD_US)
                       .frame(0, BLOCK_APPEND_TICKS).to_bytes()) + ROW_OVERHEAD
    await _streams_then_outage(nats_server, data_dir)
    cfg = agent_config(
        tmp_path / f"{device}.toml", device=device, url=nats_server.url, tenant=TENANT,
        inputs=[{"type": "simulated", "realtime": False, "max_ticks": BLOCK_TICKS, "start_us": BLOCK_START_US,
                 "period": "10ms"}],
        buffer={"max_bytes": BLOCK_MAX_BYTES, "when_full": "block"},
        health_interval="1h",
    )
    agent = Agent(load_config(cfg))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop, until_drained=True))
    try:
        # Held back: the checkpoint has not moved for a while (longer than the seal interval and
        # the buffer's 1 s re-check of a blocked append), short of the input's end.
        peak = 0
        seen: tuple[tuple[int, int] | None, float] = (None, time.monotonic())

        def held_back() -> bool:
            nonlocal peak, seen
            peak = max(peak, _buffer_bytes(db))
            cp, since = seen
            now_cp = _checkpoint(db)
            if now_cp != cp:
                seen = (now_cp, time.monotonic())
                return False
            return now_cp is not None and time.monotonic() - since >= 2.5

        await await_until(held_back, timeout=WAIT_S, interval=0.05, what="the input to be held back")
        (_, tick), _ = seen
        assert 0 < tick < BLOCK_TICKS
        assert agent.inputs[0].ticks == tick  # what the input produced is what the buffer took
        assert "sim" not in agent.state.inputs_done
        c = device_counters(db)
        assert _drops(c) == {}, c
        assert c["appended.telemetry"] == tick * CHANNELS
        used = _buffer_bytes(db)
        assert used + append_bytes > BLOCK_MAX_BYTES, f"{used} bytes used: the next append would have fit"
        assert peak <= BLOCK_MAX_BYTES + HEALTH_SLACK

        final = await _drain(agent, task, nats_server, data_dir, device)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=WAIT_S)

    assert "sim" in agent.state.inputs_done
    assert _drops(final) == {}, final
    assert final["appended.telemetry"] == final["sent.telemetry"] == generated
    assert stored(data_dir) == {"rows": generated, "distinct": generated, "duplicate_rows": 0}
    [stream] = ledger(data_dir, TENANT, device)
    assert stream.gaps == [] and stream.duplicates == 0 and stream.hwm == stream.batches
    report = _hub_device(data_dir, device)
    assert report is not None and report["device_drops"] == {}
    assert report["last_health"]["appended.telemetry"] == generated
    ticks = _assert_values_are_the_signal(data_dir, device, start_us=BLOCK_START_US, period_us=BLOCK_PERIOD_US,
                                          limit=generated)
    assert np.array_equal(ticks, np.arange(BLOCK_TICKS))
