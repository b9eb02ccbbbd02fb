"""A task that does one round of work every `tick_s` until `stop`: the hub's background loops.

A round that raises is counted (`stats.errors`, `stats.last_error`) and logged, and the next
round runs as usual: the loops keep their state in the database, so a round that died halfway is
simply done again. Cancellation passes through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` unless `stop` is set first; True when it was."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
        return True
    except TimeoutError:
        return stop.is_set()


async def run_ticks(round_: Callable[[], Awaitable[None]], stop: asyncio.Event, *, tick_s: float, stats: Any,
                    log: logging.Logger, what: str) -> Any:
    """Call `round_` every `tick_s` until `stop`; `stats` needs `ticks`, `errors`, `last_error`."""
    while not stop.is_set():
        try:
            await round_()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the supervisor of the rounds: count, log, tick again
            stats.errors += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("%s: tick failed (%d so far)", what, stats.errors)
        stats.ticks += 1
        if await wait_or_stop(stop, tick_s):
            break
    return stats
