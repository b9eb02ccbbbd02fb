"""`simulated` input: a virtual sensor set from simulators.signals, resumable to the tick."""

from __future__ import annotations

import asyncio
import time

from simulators.faults import clock_skew, hold, shift
from simulators.signals import device_model

from ..config import SimulatedInputConfig
from .base import Sink


class SimulatedInput:
    def __init__(self, settings: SimulatedInputConfig, *, device: str) -> None:
        self.name = settings.name
        self._s = settings
        self._device = device
        self.ticks = 0

    async def run(self, sink: Sink) -> None:
        s = self._s
        period_us = max(1, int(s.period.total_seconds() * 1e6))
        saved = await sink.checkpoint(self.name)
        if saved:
            start_us, next_tick = (int(x) for x in saved.split(":"))
        else:
            start_us, next_tick = (s.start_us if s.start_us is not None else time.time_ns() // 1000), 0
        model = device_model(self._device, seed_base=s.seed_base, start_us=start_us, period_us=period_us, wear_rate=s.wear_rate)
        per_append = max(1, 2048 // max(1, len(model.channels)))
        held = {f.channel: _value_at(model, f.channel, f.from_us) for f in s.stuck}
        while s.max_ticks is None or next_tick < s.max_ticks:
            if s.realtime:
                due = (time.time_ns() // 1000 - start_us) // period_us + 1
            else:
                due = next_tick + per_append
            if s.max_ticks is not None:
                due = min(due, s.max_ticks)
            n = min(due - next_tick, per_append)  # catching up: several appends, never one huge one
            if n > 0:
                readings = model.frame(next_tick, n)
                for d in s.drift:
                    readings = shift(readings, d.channel, from_us=d.from_us, offset=d.offset, scale=d.scale)
                for f in s.stuck:
                    readings = hold(readings, f.channel, from_us=f.from_us, value=held[f.channel])
                if s.clock_skew_ms:
                    readings = clock_skew(readings, s.clock_skew_ms * 1000)
                next_tick += n
                await sink.append(readings, checkpoint=(self.name, f"{start_us}:{next_tick}"))
                self.ticks = next_tick
            if s.realtime and next_tick >= due:
                # Behind (after a restart): catch up without sleeping, as a logging sensor would.
                await asyncio.sleep(s.emit_interval.total_seconds())


def _value_at(model, channel: str, at_us: int) -> float:
    """What `channel` read at the last tick before `at_us` (the value a sensor freezes at)."""
    if channel not in model.channel_names:
        raise ValueError(f"stuck channel {channel!r} is not one of the simulated channels {list(model.channel_names)!r}.")
    tick = max(0, model.tick_at(at_us) - 1)
    frame = model.frame(tick, 1)
    return float(frame.value[frame.channel == frame.channels.index(channel)][0])
