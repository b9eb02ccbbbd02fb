"""The pipeline worker: one task that starts due schedules and executes pending runs, every `tick_s`.

Who runs it: the hub's supervising task group, beside the rollout controller. Runs execute in a
worker thread (steps train models and read Parquet), one at a time, oldest first. A failing
tick is counted and logged and the next one runs as usual: runs and schedules are in the
database. Hazard: a step in progress is not interrupted by `stop` (a thread cannot be
cancelled); the task returns when the step ends. A hub killed mid-step leaves the run
`running`: call `PipelineRunner.recover()` at start, then resume it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..ticker import run_ticks

if TYPE_CHECKING:
    from .runner import PipelineRunner

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    ticks: int = 0
    scheduled: int = 0  # runs started by schedules
    executed: int = 0  # calls of `run` on pending runs
    errors: int = 0
    last_error: str | None = None


async def run_worker(runner: "PipelineRunner", stop: asyncio.Event, *, tick_s: float,
                     stats: WorkerStats | None = None) -> WorkerStats:
    """Tick until `stop` is set; returns the counters (also updated in place when given)."""
    stats = stats if stats is not None else WorkerStats()

    async def round_() -> None:
        stats.scheduled += len(await asyncio.to_thread(runner.run_due))
        for run_id in await asyncio.to_thread(runner.pending):
            if stop.is_set():
                break
            await asyncio.to_thread(runner.run, run_id)
            stats.executed += 1

    return await run_ticks(round_, stop, tick_s=tick_s, stats=stats, log=log, what="pipelines")
