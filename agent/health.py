"""Health readings: the agent's own state, sent on the health lane like any other readings."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from protocol import Readings

from .buffer import BufferStats

_THERMAL = Path("/sys/class/thermal")


def cpu_temperature_c() -> float | None:
    """SoC temperature where the kernel exposes it (Raspberry Pi, Jetson); None elsewhere."""
    try:
        zones = sorted(_THERMAL.glob("thermal_zone*/temp"))
    except OSError:
        return None
    for zone in zones:
        try:
            return int(zone.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
    return None


class HealthProbe:
    """Collects one health snapshot as readings. Channels are documented in docs/protocol.md."""

    def __init__(
        self,
        *,
        disk_path: Path,
        uplink_state: Callable[[], dict[str, float]],
        profile: str | None = None,
        extra: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        """`extra` adds channels of other parts (inference figures: `InferencePipeline.health`),
        called once per snapshot from the event loop, so it must be cheap and must not block."""
        self._disk_path = disk_path
        self._profile = profile
        self._uplink_state = uplink_state
        self._extra = extra
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)  # first call primes the counter
        self._started = time.monotonic()

    def snapshot(self, stats: BufferStats, *, now_us: int | None = None) -> Readings:
        now_us = now_us if now_us is not None else time.time_ns() // 1000
        values: dict[str, float] = {
            "buffer.readings": stats.pending_readings,
            "buffer.batches": stats.pending_batches,
            "buffer.bytes": stats.bytes_used,
            "buffer.max_bytes": stats.max_bytes,
            "buffer.oldest_unsent_s": (now_us - stats.oldest_unsent_us) / 1e6 if stats.oldest_unsent_us else 0.0,
            "seq.next": stats.next_seq,
            "epoch": stats.epoch,
            "agent.uptime_s": round(time.monotonic() - self._started, 3),
            "cpu.percent": self._proc.cpu_percent(None),
            "mem.rss_bytes": self._proc.memory_info().rss,
            "mem.available_bytes": psutil.virtual_memory().available,
        }
        try:
            values["disk.free_bytes"] = psutil.disk_usage(str(self._disk_path)).free
        except OSError:
            pass
        if self._profile:
            values[f"info.profile.{self._profile}"] = 1.0  # a label as a channel, like Prometheus' *_info
        temp = cpu_temperature_c()
        if temp is not None:
            values["temp.cpu_c"] = temp
        for name, count in stats.counters.items():
            values[name] = count  # dropped.<reason>, dropped_batches, sent.*, appended.*, dead_letters.*
        for name, value in self._uplink_state().items():
            values[f"uplink.{name}"] = value
        if self._extra is not None:
            values.update(self._extra())  # inference.*, shadow.*, info.model.*
        names = sorted(values)
        return Readings.from_rows((n, now_us, float(values[n])) for n in names)
