"""Lake upkeep: compaction of small files and vacuum of unreferenced ones, by one process per data dir.

Every ingest commit adds at least one small Parquet file per date it touches; a day of fetches is
thousands of them, and DuckDB's scan cost grows with the file count. `maintain` compacts when the
latest version holds `compact_min_files` or more files (a new version: same rows, few large
files; concurrent appends are unaffected, Delta's commit check lets them through), then vacuums
files that no version younger than `vacuum_retention` references. That also deletes the data
files a crashed commit wrote but never committed (see store.py).

Several hub processes share a data dir; the one that holds `<lake>/maintenance.lock` (an flock,
released when it dies) does the upkeep, the others skip it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import timedelta
from typing import Any

from .lake import Lake
from ..ticker import wait_or_stop
from .store import try_lock

log = logging.getLogger("edgeloop.hub.maintenance")


def maintain(lake: Lake, *, compact_min_files: int, vacuum_retention: timedelta) -> dict[str, Any]:
    """One round: compact if due, then vacuum. Returns what it did."""
    t0 = time.perf_counter()
    files = len(lake.files())
    out: dict[str, Any] = {"files_before": files, "compacted": False, "vacuumed": 0}
    if files >= compact_min_files:
        metrics = lake.compact()
        out.update(compacted=True, files_added=metrics.get("numFilesAdded"),
                   files_removed=metrics.get("numFilesRemoved"))
    hours = int(vacuum_retention.total_seconds() // 3600)
    out["vacuumed"] = len(lake.vacuum(retention_hours=hours)) if lake.exists() else 0
    out["files_after"] = len(lake.files())
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


async def run_maintenance(lake: Lake, stop: asyncio.Event, *, interval: timedelta, compact_min_files: int,
                          vacuum_retention: timedelta) -> None:
    """Every `interval`, while this process holds the maintenance lock, run `maintain`."""
    fd: int | None = None
    try:
        while not await wait_or_stop(stop, interval.total_seconds()):
            if fd is None:
                fd = try_lock(lake.root / "maintenance.lock")
                if fd is None:
                    continue  # another hub process does the upkeep
            try:
                done = await asyncio.to_thread(maintain, lake, compact_min_files=compact_min_files,
                                               vacuum_retention=vacuum_retention)
            except Exception as exc:  # noqa: BLE001 - upkeep failing must not stop ingest; try next round
                log.error("lake maintenance failed (%s: %s); next try in %s", type(exc).__name__, exc, interval)
                continue
            if done["compacted"] or done["vacuumed"]:
                log.info("lake maintenance: %s", done)
    finally:
        if fd is not None:
            os.close(fd)
