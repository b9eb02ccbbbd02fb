"""A fleet for the closed loop: simulated sensors that drift or break, the agent's real model path.

Each device is the agent minus its buffer and uplink: `simulators.signals.device_model` readings
(the `simulated` input's), drills from `simulators.faults` (`shift`: the world changed, `hold`: the
sensor froze), the agent's `FeatureWindower` and `InferencePipeline` on what its `ModelManager`
installed (twin exchange with the hub over HTTP, signatures, slots, self-test, rollback). Each
step advances every device by the same stretch of event time, publishes its telemetry and its
predictions to the hub's JetStream as numbered batches (the wire format any device sends), then
exchanges its twin once, so a rollout reaches it between steps.

Time is simulated: a step of ten minutes of readings takes a fraction of a second, so a test can
walk a fleet through hours of drift, detection, retraining and rollout in seconds. Steps are
deterministic (the signals are counter-based; drills are pure functions of time).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from agent.config import GateConfig, InferenceConfig, ModelsConfig
from agent.inference.pipeline import InferencePipeline
from agent.inference.windows import FeatureWindower
from agent.models.manager import ModelManager
from protocol import Kind, Readings, encode_batch
from protocol.topic import Topic

from .faults import hold, shift
from .signals import SignalModel, device_model

log = logging.getLogger(__name__)

PERIOD_US = 1_000_000  # one reading a second, as the condition model's recipe


@dataclass(frozen=True)
class Drift:
    """From `from_us` on, `channel` reads value * scale + offset (simulators.faults.shift)."""

    channel: str
    from_us: int
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class Stuck:
    """From `from_us` on, `channel` repeats what it read just before (simulators.faults.hold)."""

    channel: str
    from_us: int


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    tags: dict[str, str]
    drifts: tuple[Drift, ...] = ()
    stuck: tuple[Stuck, ...] = ()
    wear_rate: float = 0.0


@dataclass
class _Device:
    spec: DeviceSpec
    model: SignalModel
    manager: ModelManager
    pipeline: InferencePipeline
    windower: FeatureWindower | None = None
    tick: int = 0
    seq: int = 0
    held: dict[str, float] = field(default_factory=dict)
    predicted: int = 0


@dataclass
class DriftFleet:
    root: Path
    hub_url: str
    trusted_keys: tuple[Path, ...]
    devices: Sequence[DeviceSpec]
    start_us: int
    tenant: str = "sim"
    epoch: int = 1
    _devices: list[_Device] = field(default_factory=list)
    _client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=10.0, trust_env=False)
        for spec in self.devices:
            cfg = ModelsConfig(dir=self.root / spec.name, trusted_keys=self.trusted_keys, hub_url=self.hub_url,
                               poll_interval="100ms", request_timeout="10s", gate=GateConfig())
            pipeline = InferencePipeline()
            manager = ModelManager(cfg, InferenceConfig(), pipeline, tenant=self.tenant, device=spec.name,
                                   tags=spec.tags, client=self._client)
            await manager.start()
            model = device_model(spec.name, start_us=self.start_us, period_us=PERIOD_US, wear_rate=spec.wear_rate)
            held = {}
            for s in spec.stuck:
                tick = max(0, model.tick_at(s.from_us) - 1)
                frame = model.frame(tick, 1)
                held[s.channel] = float(frame.value[frame.channel == frame.channels.index(s.channel)][0])
            self._devices.append(_Device(spec, model, manager, pipeline, held=held))

    async def close(self) -> None:
        for d in self._devices:
            await d.manager.close()
        if self._client is not None:
            await self._client.aclose()

    def versions(self) -> dict[str, str | None]:
        """Per device, the model version it serves."""
        out = {}
        for d in self._devices:
            active = d.manager.slots.active
            out[d.spec.name] = None if active is None else active.manifest.version
        return out

    def readings(self, d: _Device, ticks: int) -> Readings:
        r = d.model.frame(d.tick, ticks)
        for s in d.spec.drifts:
            r = shift(r, s.channel, from_us=s.from_us, offset=s.offset, scale=s.scale)
        for s in d.spec.stuck:
            r = hold(r, s.channel, from_us=s.from_us, value=d.held[s.channel])
        return r

    async def step(self, js, ticks: int) -> dict[str, int]:
        """Every device: `ticks` more readings, their closed windows predicted, both published;
        then one twin exchange. Returns {"batches", "readings", "predictions"} published."""
        sent = {"batches": 0, "readings": 0, "predictions": 0}
        for d in self._devices:
            readings = self.readings(d, ticks)
            d.tick += ticks
            batches = [(Kind.TELEMETRY, readings)]
            spec = d.pipeline.spec
            if spec is not None:
                if d.windower is None or d.windower.spec != spec:
                    d.windower = FeatureWindower(spec, dtype=np.float64)
                starts, features = d.windower.feed(readings)
                if len(starts):
                    predicted = await asyncio.to_thread(d.pipeline.predict, starts, features, spec=spec)
                    if predicted is not None:
                        batches.append((Kind.PREDICTION, predicted))
                        d.predicted += len(starts)
                        sent["predictions"] += len(starts)
            for kind, r in batches:
                d.seq += 1
                data = encode_batch(r, tenant=self.tenant, device=d.spec.name, kind=kind, epoch=self.epoch, seq=d.seq)
                await js.publish(Topic(self.tenant, d.spec.name, kind).subject, data)
                sent["batches"] += 1
                sent["readings"] += len(r)
        await self.exchange()
        return sent

    async def exchange(self) -> None:
        """One twin exchange per device (installs what the hub wants them to run)."""
        await asyncio.gather(*(self._round(d) for d in self._devices))

    async def _round(self, d: _Device) -> None:
        try:
            await d.manager.round()
        except Exception:  # noqa: BLE001 - a device's failed exchange is retried next step, like the daemon's
            log.exception("drift fleet: %s: twin exchange failed", d.spec.name)
