"""The embedded nats-server and the Mosquitto test helper, driven by real clients."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import paho.mqtt.client as mqtt
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType
from paho.mqtt.reasoncodes import ReasonCode

from hub.broker import (
    BrokerBinaryNotFoundError,
    BrokerStartError,
    EmbeddedNats,
    EmbeddedNatsSettings,
    render_config,
)
from tests.servers import Mosquitto, await_until, free_port, wait_until

WAIT_S = 5.0


@asynccontextmanager
async def connected(server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(server.url, connect_timeout=WAIT_S, allow_reconnect=False)
    try:
        yield nc
    finally:
        await nc.close()


async def add_stream(nc: NatsClient, name: str, subjects: list[str]) -> None:
    await nc.jetstream().add_stream(name=name, subjects=subjects, storage=StorageType.FILE)


async def stored(server: EmbeddedNats, stream: str) -> int:
    async with connected(server) as nc:
        info = await nc.jetstream().stream_info(stream)
        return info.state.messages


class MqttSession:
    """A paho client on its network thread, with its callbacks turned into events."""

    def __init__(self, port: int, client_id: str, *, clean_session: bool = True) -> None:
        self.port = port
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.received: list[mqtt.MQTTMessage] = []
        self.got_message = threading.Event()
        self.connack: ReasonCode | None = None
        self.session_present: bool | None = None
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def __enter__(self) -> MqttSession:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self.connected.wait(WAIT_S) or self.connack is None or self.connack.is_failure:
            self.client.loop_stop()
            raise AssertionError(f"no successful CONNACK from port {self.port}: {self.connack}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(WAIT_S), f"no SUBACK for {topic}"

    def publish_qos1(self, topic: str, payload: bytes) -> None:
        """Publish and return once the broker's PUBACK has arrived."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: object) -> None:
        # No assert here: paho's thread would swallow it; __enter__ checks the reason code.
        self.connack = reason
        self.session_present = flags.session_present
        self.connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                      reasons: list[ReasonCode], properties: object) -> None:
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.received.append(message)
        self.got_message.set()


def test_config_renders_sync_always_and_mqtt(tmp_path: Path) -> None:
    settings = EmbeddedNatsSettings(store_dir=tmp_path / "s", port=1, mqtt_port=2, http_port=3)
    text = render_config(settings)
    assert "sync_interval: always" in text
    assert 'listen: "127.0.0.1:2"' in text
    off = render_config(EmbeddedNatsSettings(
        store_dir=tmp_path / "s", port=1, mqtt_port=None, http_port=3, sync_always=False))
    assert "sync_interval" not in off and "mqtt" not in off


def test_settings_reject_a_bad_port_by_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="70000"):
        EmbeddedNatsSettings(store_dir=tmp_path, port=70000)


def test_missing_binary_names_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    broker = EmbeddedNats(EmbeddedNatsSettings(store_dir=tmp_path / "s"))
    with pytest.raises(BrokerBinaryNotFoundError, match=str(tmp_path / "bin" / "nats-server")):
        broker.start()
    assert not broker.running


def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="timed out after 0.05s waiting for the flag"):
        wait_until(lambda: False, timeout=0.05, what="the flag")


async def test_await_until_returns_what_an_async_predicate_found() -> None:
    calls: list[int] = []

    async def third_call() -> str | None:
        calls.append(1)
        return "found" if len(calls) == 3 else None

    assert await await_until(third_call, timeout=WAIT_S, interval=0, what="the third call") == "found"


@pytest.mark.integration
async def test_async_context_manager_stops_the_server(tmp_path: Path) -> None:
    broker = EmbeddedNats(EmbeddedNatsSettings(store_dir=tmp_path / "s", mqtt_port=None))
    with pytest.raises(ZeroDivisionError):
        async with broker:
            assert broker.running and broker.mqtt_url is None
            1 / 0
    assert not broker.running and broker.pid is None


@pytest.mark.integration
async def test_jetstream_publish_is_acked(nats_server: EmbeddedNats) -> None:
    assert nats_server.running and nats_server.url.startswith("nats://127.0.0.1:")
    async with connected(nats_server) as nc:
        await add_stream(nc, "T", ["t.>"])
        ack = await nc.jetstream().publish("t.one", b"hello", timeout=WAIT_S)
    assert (ack.stream, ack.seq) == ("T", 1)


@pytest.mark.integration
@pytest.mark.chaos
async def test_restart_keeps_port_store_and_messages(nats_server: EmbeddedNats) -> None:
    url, pid = nats_server.url, nats_server.pid
    async with connected(nats_server) as nc:
        await add_stream(nc, "T", ["t.>"])
        for i in range(10):
            await nc.jetstream().publish("t.x", str(i).encode(), timeout=WAIT_S)

    await asyncio.to_thread(nats_server.restart)

    assert nats_server.url == url and nats_server.pid != pid
    async with connected(nats_server) as nc:
        js = nc.jetstream()
        assert (await js.stream_info("T")).state.messages == 10
        assert (await js.get_msg("T", 10)).data == b"9"


@pytest.mark.integration
def test_running_server_fsyncs_every_message(nats_server: EmbeddedNats) -> None:
    # SIGKILL (below) cannot tell fsync from a plain write(): the page cache outlives the
    # process. The server's own report of its config is what shows fsync-before-ack is on.
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(f"{nats_server.monitor_url}/varz", timeout=WAIT_S) as response:
        varz = json.load(response)
    assert varz["jetstream"]["config"]["sync_always"] is True
    assert varz["mqtt"]["port"] == nats_server.mqtt_port


@pytest.mark.integration
@pytest.mark.chaos
async def test_acked_messages_survive_sigkill(nats_server: EmbeddedNats) -> None:
    async with connected(nats_server) as nc:
        await add_stream(nc, "T", ["t.>"])
        js = nc.jetstream()
        acks = await asyncio.gather(
            *(js.publish("t.x", i.to_bytes(4, "big"), timeout=WAIT_S) for i in range(200))
        )
        # Killed mid-connection, the server neither flushes nor closes its stores; start() must
        # recover every acked message from what is on disk.
        await asyncio.to_thread(nats_server.kill)
    assert not nats_server.running and len(acks) == 200

    await asyncio.to_thread(nats_server.start)

    assert await stored(nats_server, "T") == 200


@pytest.mark.integration
async def test_mqtt_qos1_publish_lands_in_jetstream(nats_server: EmbeddedNats) -> None:
    async with connected(nats_server) as nc:
        await add_stream(nc, "EL", ["el.>"])

        def publish() -> None:
            with MqttSession(nats_server.mqtt_port, "d1") as session:
                session.publish_qos1("el/t1/d1/telemetry", b"reading")

        await asyncio.to_thread(publish)

        js = nc.jetstream()

        async def landed() -> bool:
            return (await js.stream_info("EL")).state.messages == 1

        await await_until(landed, timeout=WAIT_S, what="the MQTT publish in stream EL")
        msg = await js.get_msg("EL", 1)
    assert (msg.subject, msg.data) == ("el.t1.d1.telemetry", b"reading")


@pytest.mark.integration
def test_start_error_names_the_exit_and_carries_the_log(tmp_path: Path) -> None:
    taken = free_port()
    holder = EmbeddedNats(EmbeddedNatsSettings(store_dir=tmp_path / "a" / "s", port=taken, mqtt_port=None))
    clash = EmbeddedNats(EmbeddedNatsSettings(store_dir=tmp_path / "b" / "s", port=taken, mqtt_port=None))
    with holder, pytest.raises(BrokerStartError, match="exited with code") as caught:
        clash.start()
    assert str(taken) in caught.value.log_tail
    assert not clash.running


@pytest.mark.integration
def test_mosquitto_qos1_round_trip(mosquitto: Mosquitto) -> None:
    with MqttSession(mosquitto.port, "hub") as session:
        session.subscribe("el/#")
        session.publish_qos1("el/t1/d1/telemetry", b"reading")
        assert session.got_message.wait(WAIT_S), "the QoS1 message never came back"
    message = session.received[0]
    assert (message.topic, message.payload, message.qos) == ("el/t1/d1/telemetry", b"reading", 1)


@pytest.mark.integration
@pytest.mark.chaos
def test_mosquitto_queues_for_a_persistent_session_across_restart(mosquitto: Mosquitto) -> None:
    with MqttSession(mosquitto.port, "hub", clean_session=False) as hub:
        hub.subscribe("el/#")
    with MqttSession(mosquitto.port, "d1") as device:
        device.publish_qos1("el/t1/d1/telemetry", b"while the hub was away")

    port = mosquitto.port
    mosquitto.restart()

    assert mosquitto.port == port
    with MqttSession(mosquitto.port, "hub", clean_session=False) as hub:
        assert hub.got_message.wait(WAIT_S), "the queued message was not delivered after restart"
        assert hub.session_present
    assert hub.received[0].payload == b"while the hub was away"
