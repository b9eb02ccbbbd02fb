"""A simulated fleet: N real agents (real SQLite buffers, real uplinks) with virtual sensors."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from agent.config import AgentConfig
from agent.daemon import Agent


@dataclass(frozen=True, kw_only=True)
class FleetSpec:
    devices: int
    data_dir: Path
    nats_url: str | None = None
    mqtt_url: str | None = None
    mqtt_share: float = 0.25  # fraction of devices on MQTT when both URLs are given
    tenant: str = "demo"
    period: timedelta = timedelta(milliseconds=100)
    max_bytes: int = 64 * 2**20
    when_full: str = "drop_oldest"
    health_interval: timedelta = timedelta(seconds=2)
    skewed_devices: int = 0  # this many devices get a clock off by `skew_ms`
    skew_ms: int = 90_000
    wear_devices: int = 0  # this many devices show bearing wear
    seed: int = 0
    profile: str | None = None
    # Models: the agent's [models] section without `dir` (each device gets its own), or None.
    models: dict | None = None
    # Sensors start this long before now (aligned to a minute) and catch up at once, so the
    # first feature windows close as soon as the fleet starts rather than a minute later.
    backfill: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError(f"A fleet needs at least one device, not {self.devices!r}.")
        if not (self.nats_url or self.mqtt_url):
            raise ValueError("A fleet needs a nats_url or an mqtt_url to send to.")
        if not 0.0 <= self.mqtt_share <= 1.0:
            raise ValueError(f"mqtt_share {self.mqtt_share!r} must be between 0 and 1.")


@dataclass
class DeviceView:
    device: str
    uplink: str
    connected: bool
    buffered: int
    generated: int
    sent: int
    dropped: int
    model: str | None = None  # the version the device serves (None: no model, or models off)
    predicted: int = 0  # windows predicted by that model


@dataclass
class Fleet:
    spec: FleetSpec
    agents: list[Agent] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.spec.seed)
        s = self.spec
        n_mqtt = 0 if not s.mqtt_url else (s.devices if not s.nats_url else round(s.devices * s.mqtt_share))
        mqtt_ids = set(rng.sample(range(s.devices), n_mqtt))
        skewed = set(rng.sample(range(s.devices), min(s.skewed_devices, s.devices)))
        worn = set(rng.sample(range(s.devices), min(s.wear_devices, s.devices)))
        start_us = None
        if s.backfill > timedelta(0):
            minute = 60_000_000
            start_us = (time.time_ns() // 1000 - int(s.backfill.total_seconds() * 1e6)) // minute * minute
        for i in range(s.devices):
            dev = f"dev-{i:04d}"
            on_mqtt = i in mqtt_ids
            data = {
                "device": {"tenant": s.tenant, "id": dev, **({"profile": s.profile} if s.profile else {})},
                "buffer": {"path": str(s.data_dir / f"{dev}.db"), "max_bytes": s.max_bytes, "when_full": s.when_full},
                "uplink": {"kind": "mqtt" if on_mqtt else "nats", "url": s.mqtt_url if on_mqtt else s.nats_url},
                "health": {"interval": s.health_interval.total_seconds()},
                "inputs": [{
                    "type": "simulated", "period": s.period.total_seconds(), "seed_base": s.seed,
                    "clock_skew_ms": s.skew_ms if i in skewed else 0, "wear_rate": 2.0 if i in worn else 0.0,
                    **({"start_us": start_us} if start_us is not None else {}),
                }],
            }
            if s.models is not None:
                data["models"] = {"dir": str(s.data_dir / f"{dev}-models"), **s.models}
            self.agents.append(Agent(AgentConfig.model_validate(data)))

    async def install_models(self) -> None:
        """Give every device its model before its sensors start (one twin exchange each), so the
        backfilled windows are predicted too; the agents' own model tasks take over from there."""
        managers = [a.models for a in self.agents if a.models is not None]
        for m in managers:
            await m.start()
        await asyncio.gather(*(m.round() for m in managers))

    async def run(self, stop: asyncio.Event, *, until_drained: bool = False) -> None:
        async with asyncio.TaskGroup() as tg:
            for a in self.agents:
                tg.create_task(a.run(stop, until_drained=until_drained), name=f"agent:{a.config.device.id}")

    async def views(self) -> list[DeviceView]:
        out = []
        for a in self.agents:
            st = a.final_stats
            if st is None:
                try:
                    st = await a.buffer.stats()
                except (AssertionError, RuntimeError):  # not open yet
                    continue
            c = st.counters
            report, _ = a.pipeline.report()
            out.append(DeviceView(
                device=a.config.device.id, uplink=a.uplink.name, connected=a.uplink.connected,
                buffered=st.pending_readings, generated=c.get("appended.telemetry", 0),
                sent=c.get("sent.telemetry", 0),
                dropped=sum(v for k, v in c.items() if k.startswith("dropped.")),
                model=_serving(a, report),
                predicted=0 if report is None else report.windows,
            ))
        return out


def _serving(agent: Agent, report) -> str | None:
    """The version the device serves; after it stopped, the one its active slot holds."""
    if report is not None:
        return report.version
    if agent.models is None:
        return None
    active = agent.models.slots.active
    return None if active is None else active.manifest.version
