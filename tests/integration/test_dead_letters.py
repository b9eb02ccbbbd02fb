"""Bad payloads from raw clients (NATS and MQTT) end in the dead-letter stream, counted; ingest goes on."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import nats
import nats.errors
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from hub.broker import EmbeddedNats
from hub.service import Hub
from hub.storage import metadata as meta
from protocol import DecodeError, Kind, Readings, Topic, decode_batch, encode_batch
from simulators.faults import malformed_payloads
from simulators.signals import device_model
from tests.integration.harness import hub_config, ledger, running_hub, stored
from tests.servers import await_until

pytestmark = pytest.mark.integration

TENANT = "t1"
DEVICE = "rogue"
MAX_PAYLOAD = 4096  # the hub's ingest.max_payload here; the broker still takes up to 1 MiB
DLQ_STREAM = "EL_DLQ"
WAIT_S = 20.0
START_US = 1_700_000_000_000_000


def _valid(*, device: str = DEVICE, seq: int = 1, tenant: str = TENANT) -> tuple[bytes, int]:
    readings = device_model(device, start_us=START_US, period_us=1_000_000).frame(0, 10)
    return encode_batch(readings, tenant=tenant, device=device, kind=Kind.TELEMETRY, epoch=1, seq=seq), len(readings)


def _oversized() -> bytes:
    """A well-formed envelope over MAX_PAYLOAD: random values do not compress."""
    rng = np.random.default_rng(20240607)
    ts = START_US + np.arange(700, dtype=np.int64) * 1000
    readings = Readings.from_columns(["noise"], ts, rng.standard_normal((700, 1)))
    data = encode_batch(readings, tenant=TENANT, device=DEVICE, kind=Kind.TELEMETRY, epoch=1, seq=99)
    assert MAX_PAYLOAD < len(data) < 1024 * 1024
    return data


class MqttPublisher:
    """A raw paho-mqtt 2.x client: QoS 1 publishes that return once the broker sent PUBACK."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        self._host, self._port = u.hostname or "127.0.0.1", u.port or 1883
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rogue-raw-mqtt",
                                  protocol=mqtt.MQTTv311)
        self._connected = threading.Event()
        self._reason = None
        self.client.on_connect = self._on_connect

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self._reason = reason
        self._connected.set()

    def __enter__(self) -> "MqttPublisher":
        self.client.connect(self._host, self._port)
        self.client.loop_start()
        if not self._connected.wait(WAIT_S) or self._reason is None or self._reason.is_failure:
            self.client.loop_stop()
            raise AssertionError(f"no successful CONNACK from {self._host}:{self._port}: {self._reason}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"


async def _dlq(nats_url: str) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message in the dead-letter stream: (subject, headers, data)."""
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(DLQ_STREAM)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            m = await js.get_msg(DLQ_STREAM, seq)
            out.append((m.subject, dict(m.headers or {}), m.data or b""))
        return out
    finally:
        await nc.close()


def _hub_counters(data_dir: Path) -> dict[str, int]:
    db = meta.connect(data_dir / "meta.db")
    try:
        return meta.counters(db)
    finally:
        db.close()


def _devices(data_dir: Path) -> list[str]:
    db = meta.connect(data_dir / "meta.db")
    try:
        return [f"{d['tenant']}/{d['device']}" for d in meta.devices(db)]
    finally:
        db.close()


async def _await_ingested(hub: Hub, data_dir: Path, *, bad: int, good_readings: int) -> None:
    """Until the valid batch sent last is stored and every bad message was dead-lettered."""
    assert hub.pipeline is not None
    await await_until(
        lambda: stored(data_dir)["distinct"] >= good_readings and sum(hub.pipeline.stats.dead_letters.values()) >= bad,
        timeout=WAIT_S, what=f"{bad} dead letters and {good_readings} stored readings",
    )


def _assert_dead_lettered(
    dlq: list[tuple[str, dict[str, str], bytes]], sent: list[tuple[str, bytes, str]], hub: Hub, data_dir: Path
) -> None:
    """Each (subject, data, reason) sent is in the DLQ once, under dlq.<reason>, and counted."""
    assert len(dlq) == len(sent), f"{len(dlq)} messages in {DLQ_STREAM}; {len(sent)} bad ones were sent"
    remaining = list(dlq)
    for subject, data, reason in sent:
        hits = [m for m in remaining if m[1].get("El-Subject") == subject and m[2] == data]
        assert len(hits) == 1, f"{subject} ({len(data)} bytes, {reason}) is in the DLQ {len(hits)} times"
        dlq_subject, headers, _ = hits[0]
        assert headers.get("El-Reason") == reason, (subject, headers)
        assert dlq_subject == f"dlq.{reason}"
        assert headers.get("El-Error"), headers
        remaining.remove(hits[0])
    want = Counter(reason for _, _, reason in sent)
    assert hub.pipeline is not None and dict(hub.pipeline.stats.dead_letters) == dict(want)
    counters = _hub_counters(data_dir)
    got = {k.removeprefix("ingest.dead_letters."): v for k, v in counters.items()
           if k.startswith("ingest.dead_letters.")}
    assert got == dict(want)


async def test_each_kind_of_bad_payload_is_dead_lettered_and_ingest_goes_on(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    data_dir = tmp_path / "hub"
    valid, n_valid = _valid()
    bad_version = bytearray(valid)
    bad_version[2] = 2  # the version byte, right after the magic
    mqtt_valid, _ = _valid(device="rogue-mqtt")
    # (subject the hub sees, payload, the reason it must give)
    over_nats = [
        (f"el.{TENANT}.{DEVICE}.telemetry", b"this is not an envelope", "malformed"),
        (f"el.{TENANT}.{DEVICE}.telemetry", _oversized(), "oversized"),
        (f"el.{TENANT}.{DEVICE}.telemetry", bytes(bad_version), "unsupported_version"),
        (f"el.{TENANT}.impostor.telemetry", valid, "topic_mismatch"),  # another device's name
        (f"el.t2.{DEVICE}.telemetry", valid, "topic_mismatch"),  # another tenant
        (f"el.{TENANT}.{DEVICE}.health", valid, "topic_mismatch"),  # telemetry on the health topic
        (f"el.{TENANT}.bad.nonsense", valid, "invalid_topic"),  # no such kind
        (f"el.{TENANT}.{DEVICE}.telemetry.extra", valid, "invalid_topic"),  # one level too many
    ]
    over_mqtt = [  # MQTT topic el/a/b/c is NATS subject el.a.b.c; the hub reads it from JetStream
        (f"el/{TENANT}/rogue-mqtt/telemetry", b"\x00\x01 garbage over mqtt", "malformed"),
        (f"el/{TENANT}/impostor/telemetry", mqtt_valid, "topic_mismatch"),
        (f"el/{TENANT}/rogue-mqtt/nonsense", mqtt_valid, "invalid_topic"),
    ]
    assert nats_server.mqtt_url is not None
    async with running_hub(hub_config(data_dir, nats_url=nats_server.url, max_payload=MAX_PAYLOAD)) as hub:
        nc = await nats.connect(nats_server.url, connect_timeout=5, allow_reconnect=False)
        try:
            js = nc.jetstream(timeout=10)
            for subject, data, _ in over_nats:
                await js.publish(subject, data)
            with MqttPublisher(nats_server.mqtt_url) as raw:
                for topic, data, _ in over_mqtt:
                    await asyncio.to_thread(raw.publish, topic, data)
            # A good batch after all of them: ingest did not stop.
            await js.publish(f"el.{TENANT}.{DEVICE}.telemetry", valid, headers={"Nats-Msg-Id": "t1/rogue/1:1"})
        finally:
            await nc.close()
        sent = over_nats + [(t.replace("/", "."), d, r) for t, d, r in over_mqtt]
        await _await_ingested(hub, data_dir, bad=len(sent), good_readings=n_valid)
        _assert_dead_lettered(await _dlq(nats_server.url), sent, hub, data_dir)

    assert stored(data_dir) == {"rows": n_valid, "distinct": n_valid, "duplicate_rows": 0}
    assert _devices(data_dir) == [f"{TENANT}/{DEVICE}"]  # no device registered from a bad payload
    [stream] = ledger(data_dir, TENANT, DEVICE)
    assert (stream.epoch, stream.hwm, stream.batches, stream.gaps) == (1, 1, 1, [])


async def test_every_malformed_payload_is_dead_lettered_none_stored(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    data_dir = tmp_path / "hub"
    # simulators.faults builds its near misses from a real envelope of acme/sim-0001, so on that
    # device's own subject each fails for its own fault, not for the topic.
    subject = Topic("acme", "sim-0001", Kind.TELEMETRY).subject
    payloads = malformed_payloads(seed=11)
    sent: list[tuple[str, bytes, str]] = []
    refused: list[str] = []
    valid, n_valid = _valid()
    async with running_hub(hub_config(data_dir, nats_url=nats_server.url, max_payload=MAX_PAYLOAD)) as hub:
        nc = await nats.connect(nats_server.url, connect_timeout=5, allow_reconnect=False)
        try:
            js = nc.jetstream(timeout=10)
            for label, data in payloads:
                with pytest.raises(DecodeError) as caught:
                    decode_batch(data, topic=Topic.parse_subject(subject), max_payload=MAX_PAYLOAD)
                try:
                    await js.publish(subject, data)
                except nats.errors.MaxPayloadError:
                    # Over the broker's own 1 MiB limit: refused before it reaches any stream.
                    refused.append(label)
                    continue
                sent.append((subject, data, caught.value.reason))
            await js.publish(f"el.{TENANT}.{DEVICE}.telemetry", valid, headers={"Nats-Msg-Id": "t1/rogue/1:1"})
        finally:
            await nc.close()
        await _await_ingested(hub, data_dir, bad=len(sent), good_readings=n_valid)
        _assert_dead_lettered(await _dlq(nats_server.url), sent, hub, data_dir)

    assert refused == ["oversized"]
    assert len(sent) == len(payloads) - 1
    reasons = Counter(r for _, _, r in sent)
    # raw_len_huge is the oversized one that gets through: its decompressed size is over the limit.
    assert set(reasons) == {"malformed", "oversized", "unsupported_version", "unknown_codec", "unknown_dictionary"}
    assert stored(data_dir) == {"rows": n_valid, "distinct": n_valid, "duplicate_rows": 0}
    assert _devices(data_dir) == [f"{TENANT}/{DEVICE}"]
    assert ledger(data_dir, "acme", "sim-0001") == []
