"""The rollout controller: one task that ticks every rollout forward every `tick_s` seconds.

Who runs it: the hub's supervising task group, beside the HTTP API. A tick reads the twins and
writes control.db, so it runs in a worker thread, never on the event loop. A failing tick is
counted and logged and the next one runs as usual: the state is in the database, so a tick
that died halfway is simply done again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..ticker import run_ticks

if TYPE_CHECKING:
    from ..twin import TwinStore
    from .machine import Rollouts

log = logging.getLogger(__name__)


@dataclass
class ControllerStats:
    ticks: int = 0
    errors: int = 0
    transitions: int = 0
    last_error: str | None = None
    recent: list[dict] = field(default_factory=list)  # the last transitions, newest last (bounded)


async def run_controller(rollouts: "Rollouts", twins: "TwinStore", stop: asyncio.Event, *, tick_s: float,
                         stats: ControllerStats | None = None) -> ControllerStats:
    """Tick until `stop` is set; returns the counters (also updated in place when given)."""
    stats = stats if stats is not None else ControllerStats()

    async def round_() -> None:
        moved = await asyncio.to_thread(rollouts.tick, twins)
        stats.transitions += len(moved)
        stats.recent = (stats.recent + moved)[-50:]

    return await run_ticks(round_, stop, tick_s=tick_s, stats=stats, log=log, what="rollouts")
