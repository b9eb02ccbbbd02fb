"""A fleet of virtual devices for model rollouts: the agent's real model manager, fed labelled windows.

Each virtual device runs the agent's own `ModelManager` (twin exchange over HTTP, resumable
download, signature and artifact checks, two slots on disk, self-test, switch, rollback) and
its own `InferencePipeline` on the real onnxruntime; only the sensors are replaced: instead of
live readings, each tick predicts a batch of feature windows drawn from the recipe's labelled
simulator data (`models.condition.data`), so what devices report (class mix, latency, errors)
is what their models really did. Hundreds fit in one process; the buffer and the uplink are left
out because rollouts do not touch them (the agent daemon test covers the whole device).

Devices can be taken offline (no exchange, no inference) and brought back, to drill devices
that miss a rollout.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from agent.config import GateConfig, InferenceConfig, ModelsConfig
from agent.inference.pipeline import InferencePipeline
from agent.models.manager import ModelManager

log = logging.getLogger(__name__)


def fleet_windows(seed: int = 0, *, devices_per_class: int = 4, segments: int = 2) -> np.ndarray:
    """Labelled windows of the three classes, as float32 [n, 14] (the recipe's data generator)."""
    from models.condition.data import Split, make_dataset

    return make_dataset(seed, Split("test", devices_per_class, segments)).features.astype(np.float32)


@dataclass
class VirtualDevice:
    name: str
    tags: dict[str, str]
    manager: ModelManager
    pipeline: InferencePipeline
    windows: np.ndarray
    online: bool = True
    cursor: int = 0
    ticks: int = 0
    errors: int = 0  # rounds that raised (logged); the device keeps going, like the daemon's supervisor

    def next_batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = (self.cursor + np.arange(n)) % len(self.windows)
        self.cursor += n
        starts = (np.arange(self.ticks * n, (self.ticks + 1) * n, dtype=np.int64)) * 60_000_000
        self.ticks += 1
        return starts, self.windows[idx]


@dataclass
class ModelFleet:
    root: Path
    hub_url: str
    trusted_keys: tuple[Path, ...]
    size: int = 50
    tenant: str = "sim"
    seed: int = 0
    batch: int = 8  # windows per device per tick
    poll_interval_s: float = 0.2  # the device's own, until the hub's answer says otherwise
    tags: Callable[[int], dict[str, str]] = lambda i: {"hardware": "rpi4" if i % 2 else "rpi5", "site": f"s{i % 3}"}
    gate: GateConfig = field(default_factory=GateConfig)
    devices: list[VirtualDevice] = field(default_factory=list)

    async def start(self, client: httpx.AsyncClient | None = None) -> None:
        """Make the devices and serve what their slots hold. With `client` None each device has its
        own HTTP client, as real devices do (one shared pool of hundreds of connections costs
        httpcore O(connections) per request: bench/bench_rollout.py measured it)."""
        windows = fleet_windows(self.seed)
        rng = np.random.default_rng(self.seed)
        for i in range(self.size):
            name = f"dev-{i:04d}"
            cfg = ModelsConfig(dir=self.root / name, trusted_keys=self.trusted_keys, hub_url=self.hub_url,
                               poll_interval=f"{round(self.poll_interval_s * 1000)}ms", request_timeout="10s", gate=self.gate)
            pipeline = InferencePipeline()
            manager = ModelManager(cfg, InferenceConfig(), pipeline, tenant=self.tenant, device=name,
                                   tags=self.tags(i), client=client)
            await manager.start()
            self.devices.append(VirtualDevice(name, self.tags(i), manager, pipeline, windows[rng.permutation(len(windows))]))

    async def tick(self) -> None:
        """One round for every online device: infer a batch with whatever runs, then exchange and reconcile."""
        await asyncio.gather(*(self._tick(d) for d in self.devices if d.online))

    async def _tick(self, d: VirtualDevice) -> None:
        try:
            if d.pipeline.spec is not None:
                starts, x = d.next_batch(self.batch)
                await asyncio.to_thread(d.pipeline.predict, starts, x)
            await d.manager.round()
        except Exception:  # one device's bug must not stop the drill; counted and logged like the daemon does
            d.errors += 1
            log.exception("virtual device %s: round failed", d.name)

    async def run(self, stop: asyncio.Event, *, interval_s: float | None = None) -> None:
        interval = self.poll_interval_s if interval_s is None else interval_s
        while not stop.is_set():
            await self.tick()
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass

    def set_online(self, names: Iterable[str], online: bool) -> None:
        wanted = set(names)
        for d in self.devices:
            if d.name in wanted:
                d.online = online

    def versions(self) -> Counter[str | None]:
        """How many devices run each version (from their slots on disk)."""
        out: Counter[str | None] = Counter()
        for d in self.devices:
            active = d.manager.slots.active
            out[None if active is None else active.manifest.version] += 1
        return out

    async def close(self) -> None:
        for d in self.devices:
            await d.manager.close()
