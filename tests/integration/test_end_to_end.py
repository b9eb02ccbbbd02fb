"""Agent → broker → hub → lake, three ways: every reading stored exactly once, values intact."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from agent.config import load_config
from agent.daemon import Agent
from hub.broker import EmbeddedNats
from hub.storage import metadata as meta
from hub.storage.lake import Lake
from hub.storage.query import query_telemetry
from simulators.signals import device_model
from tests.integration.harness import agent_config, hub_config, ledger, running_hub, stored
from tests.servers import Mosquitto, await_until, wait_until

pytestmark = pytest.mark.integration

TENANT = "t1"
TICKS = 2000
START_US = 1_700_000_000_000_000
PERIOD_US = 10_000  # "10ms"
CHANNELS = 4  # the default device model: temperature, humidity, vibration_rms, power_w
BATCH = 400  # readings per sealed batch: 20 telemetry batches, so the ledger has something to check
WAIT_S = 20.0


_BUFFER = {"batch_max_readings": BATCH}


def _inputs() -> list[dict]:
    return [{"type": "simulated", "realtime": False, "max_ticks": TICKS, "start_us": START_US, "period": "10ms"}]


async def _run_agent(config: Path) -> Agent:
    """Run an in-process agent over its finite input until every reading is acknowledged."""
    agent = Agent(load_config(config))
    await asyncio.wait_for(agent.run(asyncio.Event(), until_drained=True), timeout=WAIT_S)
    stats = agent.final_stats
    assert stats is not None and stats.pending_readings == 0, f"the agent ended with {stats}"
    assert stats.counters.get("appended.telemetry") == TICKS * CHANNELS
    assert stats.counters.get("sent.telemetry") == TICKS * CHANNELS
    return agent


def _devices(data_dir: Path) -> dict[str, dict]:
    db = meta.connect(data_dir / "meta.db")
    try:
        return {d["device"]: d for d in meta.devices(db, TENANT)}
    finally:
        db.close()


def _first_received_us(data_dir: Path, device: str) -> int:
    db = meta.connect(data_dir / "meta.db")
    try:
        return db.execute("SELECT MIN(received_us) FROM batches WHERE tenant = ? AND device = ?",
                          (TENANT, device)).fetchone()[0]
    finally:
        db.close()


async def _assert_stored_once(data_dir: Path, device: str) -> None:
    expected = TICKS * CHANNELS
    # The agent is done when the broker acknowledged; the hub may still be committing.
    await await_until(lambda: stored(data_dir)["distinct"] >= expected, timeout=WAIT_S,
                      what=f"{expected} readings of {device} in the lake")
    # Its last health report (sent on shutdown) is the last batch it sent; wait for it too.
    await await_until(lambda: (_devices(data_dir).get(device) or {}).get("last_health"), timeout=WAIT_S,
                      what=f"a health report from {device}")

    counts = stored(data_dir)
    assert counts == {"rows": expected, "distinct": expected, "duplicate_rows": 0}

    [stream] = ledger(data_dir, TENANT, device)
    assert stream.gaps == [] and stream.missing == 0
    assert stream.duplicates == 0
    assert stream.hwm == stream.batches  # seq 1..hwm, each stored once
    assert stream.batches >= expected // BATCH  # telemetry batches, plus health batches

    dev = _devices(data_dir)[device]
    assert dev["first_seen_us"] == _first_received_us(data_dir, device)  # registered on first contact
    assert dev["first_seen_us"] <= dev["last_seen_us"]
    assert dev["missing_batches"] == 0
    health = dev["last_health"]
    assert "buffer.readings" in health
    # The final report is taken after the inputs finished: everything was appended by then.
    assert health["appended.telemetry"] == expected

    # Values round-trip bit for bit: regenerate the device's signal and compare one channel.
    model = device_model(device, seed_base=0, start_us=START_US, period_us=PERIOD_US)
    frame = model.frame(0, TICKS)
    ci = frame.channels.index("temperature")
    want_ts = frame.ts_us[frame.channel == ci]
    want_v = frame.value[frame.channel == ci]
    rows = query_telemetry(Lake(data_dir / "lake"), tenant=TENANT, device=device, channel="temperature",
                           limit=TICKS + 10)
    assert len(rows) == TICKS
    got_ts = np.array([r["ts_us"] for r in rows], np.int64)
    got_v = np.array([r["value"] for r in rows], np.float64)
    np.testing.assert_array_equal(got_ts, want_ts)
    assert np.array_equal(got_v, want_v), "stored temperature values differ from the signal model's"


async def test_nats_uplink_to_embedded_broker(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    data_dir = tmp_path / "hub"
    cfg = agent_config(tmp_path / "e2e-nats.toml", device="e2e-nats", url=nats_server.url,
                       kind="nats", tenant=TENANT, inputs=_inputs(), buffer=_BUFFER)
    async with running_hub(hub_config(data_dir, nats_url=nats_server.url)):
        await _run_agent(cfg)
        await _assert_stored_once(data_dir, "e2e-nats")


async def test_mqtt_uplink_to_embedded_mqtt_listener(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    # MQTT in, JetStream out: the embedded server maps el/t1/<device>/telemetry to the subject
    # el.t1.<device>.telemetry, which the hub's stream captures.
    assert nats_server.mqtt_url is not None
    data_dir = tmp_path / "hub"
    cfg = agent_config(tmp_path / "e2e-mqtt.toml", device="e2e-mqtt", url=nats_server.mqtt_url,
                       kind="mqtt", tenant=TENANT, inputs=_inputs(), buffer=_BUFFER)
    async with running_hub(hub_config(data_dir, nats_url=nats_server.url)):
        await _run_agent(cfg)
        await _assert_stored_once(data_dir, "e2e-mqtt")


async def test_mqtt_uplink_to_mosquitto(tmp_path: Path, nats_server: EmbeddedNats, mosquitto: Mosquitto) -> None:
    data_dir = tmp_path / "hub"
    cfg = agent_config(tmp_path / "e2e-mosq.toml", device="e2e-mosq", url=mosquitto.url,
                       kind="mqtt", tenant=TENANT, inputs=_inputs(), buffer=_BUFFER)
    async with running_hub(hub_config(data_dir, nats_url=nats_server.url, mqtt={"url": mosquitto.url})):
        # The hub is "ready" before its MQTT source has subscribed, and Mosquitto keeps nothing
        # for a session that does not exist yet: wait for the SUBACK in Mosquitto's own log.
        await asyncio.to_thread(
            wait_until,
            lambda: mosquitto.log_path.exists()
            and "Sending SUBACK to edgeloop-hub-ingest" in mosquitto.log_path.read_text(errors="replace"),
            timeout=WAIT_S, what="the hub's MQTT source to subscribe on Mosquitto",
        )
        await _run_agent(cfg)
        await _assert_stored_once(data_dir, "e2e-mosq")
