"""Agent and hub as real processes: SIGTERM flushes and exits 0; the hub stops its broker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import paho.mqtt.client as paho
import psutil
import pytest

from hub.storage.query import query_telemetry
from tests.integration.harness import (
    REPO, agent_config, device_counters, hub_config, running_hub, start_agent, stored, write_toml,
)
from tests.servers import await_until, wait_until

pytestmark = pytest.mark.integration


async def test_sigterm_flushes_everything_and_exits_zero(tmp_path, nats_server):
    async with running_hub(hub_config(tmp_path / "hub", nats_url=nats_server.url)):
        cfg = agent_config(tmp_path / "a.toml", device="term", url=nats_server.url, inputs=[
            {"type": "simulated", "realtime": True, "period": "5ms", "emit_interval": "50ms"}])
        proc = start_agent(cfg)
        db = tmp_path / "term.db"
        await await_until(lambda: device_counters(db).get("sent.telemetry", 0) > 400, timeout=30,
                          what="the agent to send")
        rc = proc.terminate()
        assert rc == 0, proc.tail()
        counters = device_counters(db)
        generated = counters["appended.telemetry"]
        assert counters["sent.telemetry"] == generated  # the grace period was enough to send it all
        await await_until(lambda: stored(tmp_path / "hub")["distinct"] == generated, timeout=30,
                          what="the hub to store what the agent generated")
        assert stored(tmp_path / "hub")["duplicate_rows"] == 0


async def test_mqtt_input_reads_local_sensors(tmp_path, nats_server, mosquitto):
    """Sensors publish JSON on a local Mosquitto; the agent's mqtt input forwards them to the hub."""
    hub_dir = tmp_path / "hub"
    async with running_hub(hub_config(hub_dir, nats_url=nats_server.url)) as hub:
        cfg = agent_config(tmp_path / "a.toml", device="gw", url=nats_server.url, inputs=[
            {"type": "mqtt", "url": mosquitto.url, "topics": ["sensors/#"], "append_interval": "50ms"}])
        proc = start_agent(cfg)
        db = tmp_path / "gw.db"
        sensor = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="sensor", protocol=paho.MQTTv311)
        sensor.connect("127.0.0.1", mosquitto.port)
        sensor.loop_start()
        try:
            # Nothing tells a publisher that a subscriber is there: probe until one probe arrives.
            probes = 0

            def subscribed() -> bool:
                nonlocal probes
                probes += 1
                sensor.publish("sensors/probe", json.dumps({"value": probes}), qos=1).wait_for_publish(timeout=10)
                return device_counters(db).get("appended.telemetry", 0) > 0

            await await_until(subscribed, timeout=30, interval=0.1, what="the agent's mqtt input to subscribe")
            t0 = 1_700_000_000_000_000
            for i in range(50):
                sensor.publish("sensors/temperature", json.dumps({"value": 20 + i / 10, "ts_us": t0 + i}), qos=1).wait_for_publish(timeout=10)
                sensor.publish("sensors/line3", json.dumps({"ts_us": t0 + i, "pressure": 1.5}), qos=1).wait_for_publish(timeout=10)
            sensor.publish("sensors/humidity", b"not json", qos=1).wait_for_publish(timeout=10)
            await await_until(lambda: device_counters(db).get("dead_letters.mqtt", 0) == 1, timeout=30,
                              what="the bad payload to be dead-lettered on the device")
        finally:
            sensor.loop_stop()
            sensor.disconnect()
            assert proc.terminate() == 0, proc.tail()

        def rows(channel: str) -> list[dict]:
            return query_telemetry(hub.store.lake, device="gw", channel=channel, limit=1000)

        await await_until(lambda: len(rows("temperature")) == 50 and len(rows("pressure")) == 50, timeout=30,
                          what="the hub to store the sensors' readings")
        assert [r["value"] for r in rows("temperature")] == [20 + i / 10 for i in range(50)]
        assert stored(hub_dir)["duplicate_rows"] == 0


def test_hub_sigterm_stops_its_embedded_broker(tmp_path):
    # free ports, not the defaults (4222, 1883, 8222), which a system broker may hold
    cfg = write_toml(tmp_path / "hub.toml", {"broker": {"embedded": {"port": 0, "mqtt_port": 0, "http_port": 0}}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeloop", "hub", "serve", "--config", str(cfg), "--data-dir", str(tmp_path / "hub"),
         "--api-port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        seen = []
        for line in proc.stdout:  # log lines come first; the ready line is JSON
            seen.append(line)
            if line.startswith('{"event": "ready"'):
                break
        else:
            pytest.fail("hub did not start:\n" + "".join(seen))
        info = json.loads(line)
        children = [c for c in psutil.Process(proc.pid).children(recursive=True) if "nats-server" in c.name()]
        assert len(children) == 1 and info["nats_url"].startswith("nats://")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        wait_until(lambda: not children[0].is_running() or children[0].status() == psutil.STATUS_ZOMBIE,
                   timeout=10, what="nats-server to stop")
    finally:
        leftovers = [c for c in psutil.Process(proc.pid).children(recursive=True)] if proc.poll() is None else []
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for child in leftovers:  # never leave a broker behind when the test fails
            if child.is_running():
                child.kill()
        proc.stdout.close()


def _start_hub(tmp_path):
    cfg = write_toml(tmp_path / "hub.toml", {"broker": {"embedded": {"port": 0, "mqtt_port": 0, "http_port": 0}}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeloop", "hub", "serve", "--config", str(cfg), "--data-dir", str(tmp_path / "hub"),
         "--no-api"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    for line in proc.stdout:
        if line.startswith('{"event": "ready"'):
            brokers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "nats-server" in c.name()]
            return proc, brokers[0]
    proc.wait(timeout=10)
    pytest.fail(f"hub exited with {proc.returncode} before it was ready")


def test_a_hub_killed_with_sigkill_does_not_block_the_next_start(tmp_path):
    first, orphan = _start_hub(tmp_path)
    first.kill()
    first.wait(timeout=10)
    first.stdout.close()
    assert orphan.is_running()  # SIGKILL gave the hub no chance to stop its broker
    second, broker = _start_hub(tmp_path)
    try:
        wait_until(lambda: not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE, timeout=15,
                   what="the orphaned nats-server to be stopped")
        assert broker.pid != orphan.pid
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(timeout=10)
        second.stdout.close()
        for b in (orphan, broker):
            if b.is_running() and b.status() != psutil.STATUS_ZOMBIE:
                b.kill()
