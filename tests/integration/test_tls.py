"""The MQTT uplink over TLS to Mosquitto: verified against the fleet's CA, refused without it."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config import load_config
from agent.daemon import Agent
from tests.integration.harness import agent_config, device_counters, hub_config, running_hub, stored
from tests.servers import Mosquitto, await_until, mosquitto_available

pytestmark = pytest.mark.integration


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(d: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key)."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = _cert(f"{name} CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("127.0.0.1", key, ca_name, ca_key, ca=False)
    paths = (d / "ca.pem", d / "server.pem", d / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


@pytest.fixture
def tls_mosquitto(tmp_path):
    if mosquitto_available() is None:
        if __import__("os").environ.get("CI"):
            pytest.fail("mosquitto is not installed, and CI must run every integration test.")
        pytest.skip("mosquitto is not installed; .ci/run installs it")
    with Mosquitto(tmp_path / "mosquitto", tls=make_pki(tmp_path / "pki", "fleet")) as broker:
        yield broker


async def test_mqtt_uplink_over_tls(tmp_path, nats_server, tls_mosquitto):
    hub_dir = tmp_path / "hub"
    async with running_hub(hub_config(hub_dir, nats_url=nats_server.url, mqtt={"url": tls_mosquitto.url})):
        cfg = agent_config(tmp_path / "a.toml", device="secure", kind="mqtt", url=tls_mosquitto.tls_url,
                           uplink={"tls": {"ca": str(tls_mosquitto.tls[0])}})
        await asyncio.wait_for(Agent(load_config(cfg)).run(asyncio.Event(), until_drained=True), timeout=60)
        await await_until(lambda: stored(hub_dir)["distinct"] == 8000, timeout=30, what="8000 readings over TLS")


# paho-mqtt 2.2 does not close its socket when the TLS handshake fails; the garbage collector
# does (hence a ResourceWarning, not a leak). That is paho's, not ours: ignore it here only.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_mqtt_uplink_refuses_a_server_it_cannot_verify(tmp_path, tls_mosquitto):
    other_ca = make_pki(tmp_path / "other", "someone else")[0]
    cfg = agent_config(tmp_path / "a.toml", device="wary", kind="mqtt", url=tls_mosquitto.tls_url,
                       uplink={"tls": {"ca": str(other_ca)}})
    agent = Agent(load_config(cfg))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await await_until(lambda: device_counters(tmp_path / "wary.db").get("appended.telemetry", 0) == 8000,
                          timeout=30, what="the input to finish")
        assert not await agent.uplink.wait_connected(1.0)
        assert device_counters(tmp_path / "wary.db").get("sent.telemetry", 0) == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        gc.collect()  # finalize paho's unclosed sockets here, where the filter above applies
