"""A device refuses what it cannot verify, keeps serving the model it had, and tells the hub why.

A real hub (registry, signing keys, twin, HTTP API serving artifacts with Range) and one device
running the agent's ModelManager with its InferencePipeline on onnxruntime. Each bad model gets
to the device the way it would in the field: through the twin's desired state and the hub's
artifact download.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.config import InferenceConfig, ModelsConfig
from agent.inference import InferencePipeline
from agent.models.manager import ModelManager
from protocol.twin import Desired, Variant
from simulators.model_faults import V1, build_candidate

from .harness import hub_config, running_hub

pytestmark = pytest.mark.integration

MODEL = "condition"
SAMPLES = np.array(json.loads((V1 / "manifest.json").read_text())["self_test"]["inputs"], dtype=np.float32)


@pytest.fixture
async def rig(tmp_path: Path):
    async with running_hub(hub_config(tmp_path / "hub", api=True)) as hub:
        key = hub.registry.keys.export_public(tmp_path / "key-a.pem")
        hub.registry.register(V1, version="1.0.0")  # every variant: the device picks onnx:int8
        hub.registry.sign(MODEL, "1.0.0")
        hub.registry.promote(MODEL, "1.0.0")
        async with httpx.AsyncClient() as client:
            yield hub, client, key, tmp_path


def _device(hub, client, tmp: Path, *keys: Path) -> ModelManager:
    cfg = ModelsConfig(dir=tmp / "device", trusted_keys=keys, hub_url=hub.state.api_url, poll_interval="100ms")
    return ModelManager(cfg, InferenceConfig(), InferencePipeline(), tenant="t", device="d1",
                        tags={"hardware": "rpi4"}, client=client)


async def _serving(dev: ModelManager) -> str:
    """The version that answers a prediction right now (not just what the slot says)."""
    starts = np.arange(len(SAMPLES), dtype=np.int64) * 60_000_000
    readings = dev.pipeline.predict(starts, SAMPLES)
    assert readings is not None and len(readings) > 0
    report, _ = dev.pipeline.report()
    return report.version


async def _new_candidate(hub, tmp: Path, version: str) -> None:
    hub.registry.register(build_candidate(tmp / version, "good", version=version), version=version)
    hub.registry.sign(MODEL, version)
    hub.registry.promote(MODEL, version)


def _reported_to_hub(hub, device: str = "d1") -> dict:
    return hub.twins.get("t", device)["reported"]


async def _install_champion(dev: ModelManager) -> None:
    await dev.start()
    await dev.round()
    assert dev.slots.active.manifest.version == "1.0.0"
    assert dev.slots.active.manifest.runtime.model == "model.int8.onnx"
    assert await _serving(dev) == "1.0.0"


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
async def test_damaged_artifact_on_the_hub_is_refused_and_the_champion_keeps_serving(rig, damage: str) -> None:
    hub, client, key, tmp = rig
    dev = _device(hub, client, tmp, key)
    await _install_champion(dev)
    await _new_candidate(hub, tmp, "1.1.0")
    stored = hub.registry.artifact_path(MODEL, "1.1.0", "model.fp32.onnx")
    data = bytearray(stored.read_bytes())
    if damage == "tampered":
        data[len(data) // 2] ^= 0xFF  # same size, another sha256
    else:
        del data[len(data) // 2:]  # the hub's copy lost its tail
    stored.write_bytes(bytes(data))
    await dev.round()
    assert dev.slots.active.manifest.version == "1.0.0"
    assert await _serving(dev) == "1.0.0"
    failure = dev.reported().failure
    assert (failure.reason, failure.version) == (damage, "1.1.0"), failure
    await dev.round()  # the next exchange carries the refusal to the hub
    assert _reported_to_hub(hub)["failure"]["reason"] == damage
    downloads = dev.counters.get("downloads", 0)
    await dev.round()
    assert dev.counters.get("downloads", 0) == downloads  # refused for what it is: not fetched again
    await dev.close()


async def test_model_signed_by_an_untrusted_key_is_refused_before_download_then_trusted_after_rotation(rig) -> None:
    hub, client, key_a, tmp = rig
    dev = _device(hub, client, tmp, key_a)
    await _install_champion(dev)
    new_id = hub.registry.keys.rotate()
    key_b = hub.registry.keys.export_public(tmp / "key-b.pem", new_id)
    await _new_candidate(hub, tmp, "1.1.0")  # signed with key B only
    downloads = dev.counters.get("downloads", 0)
    await dev.round()
    assert dev.slots.active.manifest.version == "1.0.0" and await _serving(dev) == "1.0.0"
    assert dev.reported().failure.reason == "untrusted_key"
    assert dev.counters.get("downloads", 0) == downloads  # nothing fetched for an unverifiable model
    await dev.round()
    assert _reported_to_hub(hub)["failure"]["reason"] == "untrusted_key"
    await dev.close()
    # The operator distributes key B (rotation): the same device, restarted, trusts both.
    dev2 = _device(hub, client, tmp, key_a, key_b)
    await dev2.start()
    assert await _serving(dev2) == "1.0.0"  # what was installed serves from the first moment
    await _new_candidate(hub, tmp, "1.2.0")
    await dev2.round()
    assert dev2.slots.active.manifest.version == "1.2.0" and await _serving(dev2) == "1.2.0"
    assert dev2.slots.previous.manifest.version == "1.0.0"
    assert dev2.reported().failure is None
    await dev2.close()


async def test_manifest_changed_after_signing_is_refused(rig) -> None:
    hub, client, key, tmp = rig
    dev = _device(hub, client, tmp, key)
    await _install_champion(dev)
    await _new_candidate(hub, tmp, "1.1.0")
    desired = hub.twins.exchange("t", "d1", dev.reported())
    v = desired.model.variants[0]
    forged_manifest = dataclasses.replace(v.manifest, classes=("normal", "bearing_wear", "everything_is_fine"))
    forged = dataclasses.replace(desired, model=dataclasses.replace(desired.model, variants=(Variant(forged_manifest, v.signature),)))
    await dev.reconcile(Desired.from_json(json.dumps(forged.to_dict())))
    assert dev.slots.active.manifest.version == "1.0.0" and await _serving(dev) == "1.0.0"
    assert dev.reported().failure.reason == "tampered"
    assert dev.counters.get("downloads", 0) == 1  # only the champion's
    await dev.close()


async def test_interrupted_download_resumes_and_installs(rig, monkeypatch) -> None:
    hub, client, key, tmp = rig
    dev = _device(hub, client, tmp, key)
    await _install_champion(dev)
    await _new_candidate(hub, tmp, "1.1.0")
    # A partial file left by a cut connection: the device asks for the rest with Range.
    desired = hub.twins.exchange("t", "d1", dev.reported())
    m = [v.manifest for v in desired.model.variants if v.manifest.runtime.model == "model.int8.onnx"]
    m = m[0] if m else desired.model.variants[0].manifest
    art = m.artifacts[0]
    staged = tmp / "device" / "staging" / m.digest[:16]
    staged.mkdir(parents=True)
    src = hub.registry.artifact_path(MODEL, "1.1.0", art.name).read_bytes()
    (staged / f"{art.name}.part").write_bytes(src[: len(src) // 3])
    await dev.round()
    assert dev.slots.active.manifest.version == "1.1.0" and await _serving(dev) == "1.1.0"
    await dev.close()


async def test_device_health_gate_rolls_a_slow_model_back_by_itself(rig) -> None:
    hub, client, key, tmp = rig
    cfg = ModelsConfig(dir=tmp / "device", trusted_keys=(key,), hub_url=hub.state.api_url,
                       gate={"windows": 12, "max_p95_ms": 2.0})
    dev = ModelManager(cfg, InferenceConfig(), InferencePipeline(), tenant="t", device="d1", tags={}, client=client)
    await _install_champion(dev)
    hub.registry.register(build_candidate(tmp / "slow", "slow", version="1.1.0"), version="1.1.0")
    hub.registry.sign(MODEL, "1.1.0")
    hub.registry.promote(MODEL, "1.1.0")
    await dev.round()
    assert dev.slots.active.manifest.version == "1.1.0"  # installed: it loads and passes its self-test
    for _ in range(2):  # its first 12 windows, ~13 ms a call for this drill model, against 2 ms allowed
        assert await _serving(dev) == "1.1.0"
    await dev.round()  # the gate is judged before the exchange
    assert dev.slots.active.manifest.version == "1.0.0" and await _serving(dev) == "1.0.0"
    failure = dev.reported().failure
    assert (failure.reason, failure.version) == ("health_gate", "1.1.0"), failure
    assert "p95" in failure.message
    await dev.round()  # still desired by the hub, but refused for what it is: not installed again
    assert dev.slots.active.manifest.version == "1.0.0"
    assert _reported_to_hub(hub)["failure"]["reason"] == "health_gate"
    await dev.close()


async def test_active_model_that_no_longer_loads_at_boot_is_rolled_back_from(rig) -> None:
    hub, client, key, tmp = rig
    dev = _device(hub, client, tmp, key)
    await _install_champion(dev)
    await _new_candidate(hub, tmp, "1.1.0")
    await dev.round()
    assert dev.slots.active.manifest.version == "1.1.0"
    path = dev.slots.active.model_path
    await dev.close()
    path.write_bytes(b"the SD card ate this file")  # what a device may find after a bad power cut
    dev2 = _device(hub, client, tmp, key)
    await dev2.start()
    assert dev2.slots.active.manifest.version == "1.0.0" and await _serving(dev2) == "1.0.0"
    assert dev2.reported().failure.reason == "load_failed"
    await dev2.close()
