"""The agent daemon: one supervising task group of inputs, sealer, sender, health and uplink."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from protocol import Kind

from .asyncbuffer import AsyncBuffer
from .backoff import Backoff
from .buffer import BufferStats
from .config import AgentConfig, BackoffConfig
from .errors import AgentError, BufferFullError
from .health import HealthProbe
from .inference import InferencePipeline, InferenceTap
from .inputs import Input, make_input
from .sender import Sender
from .uplinks import Uplink, make_uplink

log = logging.getLogger(__name__)


@dataclass
class AgentState:
    """What the daemon exposes to whoever runs it (CLI live view, fleet runner, tests)."""

    inputs_done: set[str] = field(default_factory=set)
    errors: dict[str, int] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Agent:
    def __init__(self, config: AgentConfig, *, uplink: Uplink | None = None) -> None:
        self.config = config
        dev = config.device
        self.buffer = AsyncBuffer(config.buffer, tenant=dev.tenant, device=dev.id)
        self.uplink = uplink or make_uplink(config.uplink, tenant=dev.tenant, device=dev.id)
        self.inputs: list[Input] = [make_input(i, device=dev) for i in config.inputs]
        self.sender = Sender(self.buffer, self.uplink, config)
        # Inputs write through the tap: the buffer first (durability), then feature windows.
        self.pipeline = InferencePipeline(send_features=config.inference.send_features)
        self.tap = InferenceTap(self.buffer, self.pipeline, max_queued_windows=config.inference.queue_windows)
        self.models = None
        if config.models is not None:
            from .models.manager import ModelManager  # httpx, cryptography: only for devices with models

            tags = dict(dev.tags)
            if dev.profile and "profile" not in tags:
                tags["profile"] = dev.profile
            self.models = ModelManager(config.models, config.inference, self.pipeline, tenant=dev.tenant,
                                       device=dev.id, tags=tags, config_version=config.config_version)
        self.state = AgentState()
        self.final_stats: BufferStats | None = None  # the buffer's last stats, kept after close

    # --- supervised tasks -----------------------------------------------------------------
    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a task until it returns; a crash (disk full, a bug) is counted, logged and
        restarted with backoff, so one failing part never stops the daemon."""
        backoff = Backoff(BackoffConfig())
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the supervisor: count, log, restart
                self.state.errors[name] = self.state.errors.get(name, 0) + 1
                delay = backoff.next_delay()
                log.exception("%s failed (%s); restarting in %.1fs", name, exc, delay)
                await asyncio.sleep(delay)

    async def _run_input(self, inp: Input) -> None:
        await self._supervise(f"input:{inp.name}", lambda: inp.run(self.tap))
        self.state.inputs_done.add(inp.name)
        log.info("input %s finished", inp.name)

    async def _seal_loop(self) -> None:
        interval = self.config.buffer.seal_interval.total_seconds()
        while True:
            await asyncio.sleep(min(interval, 0.25))
            if await self.buffer.seal():
                self.sender.wake()

    async def _health_loop(self, probe: HealthProbe) -> None:
        while True:
            await self._report_health(probe)
            await asyncio.sleep(self.config.health.interval.total_seconds())

    async def _report_health(self, probe: HealthProbe) -> None:
        await self.buffer.report(probe.snapshot, kind=Kind.HEALTH)

    def _inference_health(self) -> dict[str, float]:
        values = self.pipeline.health()
        if self.models is not None:
            values.update(self.models.health())
        return values

    def _uplink_state(self) -> dict[str, float]:
        return {
            "connected": float(self.uplink.connected),
            "published": float(self.sender.published),
            "failures": float(self.sender.failures),
            "in_flight": float(len(self.buffer.in_flight)),
        }

    # --- lifecycle ------------------------------------------------------------------------
    async def drained(self) -> bool:
        stats = await self.buffer.stats()
        return stats.pending_readings == 0 and self.sender.idle

    async def run(self, stop: asyncio.Event, *, until_drained: bool = False) -> None:
        """Run until `stop` is set (SIGTERM) — or, with `until_drained`, until every input has
        finished and every reading is acknowledged. Then send a last health report, seal, send
        what the grace period allows, and close; what is left stays buffered for the next start."""
        await self.buffer.open()
        if self.models is not None:
            try:
                await self.models.start()  # serve the installed model from the first reading on
            except (AgentError, OSError) as exc:  # readings come first; the models task tries again
                log.error("models: the installed model could not be started: %s", exc)
        disk = self.config.health.disk_path or Path(self.config.buffer.path).parent
        probe = HealthProbe(disk_path=disk, uplink_state=self._uplink_state, profile=self.config.device.profile,
                            extra=self._inference_health)
        try:
            async with asyncio.TaskGroup() as tg:
                core = [
                    tg.create_task(self._supervise(name, fn), name=name)
                    for name, fn in (("uplink", self.uplink.run), ("sender", self.sender.run), ("sealer", self._seal_loop))
                ]
                health = tg.create_task(self._supervise("health", lambda: self._health_loop(probe)), name="health")
                inference = tg.create_task(self._supervise("inference", self.tap.run), name="inference")
                models = None
                if self.models is not None:
                    models = tg.create_task(self._supervise("models", self.models.run), name="models")
                inputs = [tg.create_task(self._run_input(i), name=f"input:{i.name}") for i in self.inputs]
                self.state.ready.set()
                await _first(stop.wait(), *([asyncio.gather(*inputs)] if until_drained else []))
                for t in (*inputs, health):
                    t.cancel()
                await self.tap.flush()  # predict the windows the inputs closed, so they are sent too
                for t in (inference, *([models] if models else [])):
                    t.cancel()
                try:
                    await self._report_health(probe)
                except (sqlite3.Error, BufferFullError) as exc:  # a full disk must not stop the final flush
                    log.warning("shutdown: last health report not stored: %s", exc)
                await self._flush(stop if until_drained else None)
                for t in core:
                    t.cancel()
        finally:
            try:
                self.final_stats = await self.buffer.stats()
            finally:
                await self.buffer.close()
                if self.models is not None:
                    await self.models.close()

    async def _flush(self, stop: asyncio.Event | None) -> None:
        """Seal everything and wait for acks: until drained and `stop` when given, else the grace."""
        grace = self.config.shutdown_grace.total_seconds()
        deadline = time.monotonic() + grace
        await self.buffer.seal(force=True)
        self.sender.wake()
        while not await self.drained():
            # not connected: keep waiting (a reconnect may be one backoff away), within the grace
            if stop is None and time.monotonic() >= deadline:
                break
            if stop is not None and stop.is_set():
                break
            await asyncio.sleep(0.05)
        stats = await self.buffer.stats()
        if stats.pending_readings:
            log.info("shutdown: %d readings stay buffered for the next start", stats.pending_readings)


async def _first(*aws) -> None:
    """Wait until the first of several awaitables finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
