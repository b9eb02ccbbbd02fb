"""Broker outage windows: stop a broker at given offsets and start it again, on a schedule."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


class Stoppable(Protocol):
    def stop(self) -> None: ...

    def start(self) -> None: ...


@dataclass(frozen=True)
class Outage:
    at_s: float  # seconds after the schedule starts
    for_s: float

    def __post_init__(self) -> None:
        if self.at_s < 0 or self.for_s <= 0:
            raise ValueError(f"Outage at {self.at_s!r}s for {self.for_s!r}s: both must be positive.")

    @classmethod
    def parse(cls, text: str) -> "Outage":
        """'10:5' = at 10 s, for 5 s."""
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*", text)
        if not m:
            raise ValueError(f"Outage {text!r} is not START:DURATION in seconds, like 10:5.")
        return cls(float(m.group(1)), float(m.group(2)))


async def run_outages(broker: Stoppable, outages: list[Outage], *, on_change=None) -> None:
    """Stop and restart `broker` for each window, in order; returns after the last one."""
    t0 = time.monotonic()
    for o in sorted(outages, key=lambda o: o.at_s):
        await asyncio.sleep(max(0.0, t0 + o.at_s - time.monotonic()))
        log.warning("outage: stopping the broker for %.1fs", o.for_s)
        await asyncio.to_thread(broker.stop)
        if on_change:
            on_change(False)
        try:
            await asyncio.sleep(o.for_s)
        finally:
            await asyncio.to_thread(broker.start)
            if on_change:
                on_change(True)
            log.warning("outage: broker is back")
