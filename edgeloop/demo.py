"""`edgeloop demo`: embedded broker + hub + a simulated fleet, a live table, one JSON summary."""

from __future__ import annotations

import asyncio
import tempfile
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from hub.config import HubConfig
from hub.service import Hub
from hub.storage.query import lake_counts
from simulators.fleet import DeviceView, Fleet, FleetSpec
from simulators.outages import Outage, run_outages


def _table(views: list[DeviceView], *, stored: int, elapsed: float, rate: float, shown: int = 20) -> Table:
    t = Table(title=f"edgeloop demo — {elapsed:5.1f}s — hub stored {stored:,} readings ({rate:,.0f}/s)")
    for col in ("device", "uplink", "link", "generated", "sent", "buffered", "dropped"):
        t.add_column(col, justify="right" if col not in ("device", "uplink", "link") else "left")
    for v in views[:shown]:
        t.add_row(v.device, v.uplink, "up" if v.connected else "[red]down[/red]", f"{v.generated:,}",
                  f"{v.sent:,}", f"{v.buffered:,}", f"{v.dropped:,}")
    if len(views) > shown:
        t.add_row(f"… {len(views) - shown} more", "", "", "", "", "", "")
    return t


async def run_demo(
    *, devices: int, duration: float, live: bool, data_dir: Path | None = None, mqtt_share: float = 0.25,
    period_ms: int = 100, console: Console | None = None, outages: list[Outage] = (),
) -> dict:
    holder = tempfile.TemporaryDirectory(prefix="edgeloop-demo-") if data_dir is None else nullcontext(str(data_dir))
    with holder as root:
        root = Path(root)
        hub = Hub(HubConfig.model_validate({
            "data_dir": str(root / "hub"),
            "broker": {"embedded": {"port": 0, "mqtt_port": 0, "http_port": 0}},
            "api": {"port": 0},
        }))
        hub_stop, fleet_stop = asyncio.Event(), asyncio.Event()
        hub_task = asyncio.create_task(hub.run(hub_stop), name="hub")
        try:
            await asyncio.wait_for(_ready(hub, hub_task), timeout=60)
            fleet = Fleet(FleetSpec(
                devices=devices, data_dir=root / "agents", nats_url=hub.state.nats_url,
                mqtt_url=hub.state.mqtt_url, mqtt_share=mqtt_share, period=timedelta(milliseconds=period_ms),
            ))
            t0 = time.monotonic()
            fleet_task = asyncio.create_task(fleet.run(fleet_stop), name="fleet")
            outage_task = asyncio.create_task(run_outages(hub.broker, list(outages))) if outages else None
            view = Live(console=console, refresh_per_second=4) if live else nullcontext()
            with view:
                while (elapsed := time.monotonic() - t0) < duration and not fleet_task.done():
                    stored = hub.pipeline.stats.stored_readings if hub.pipeline else 0
                    if live:
                        view.update(_table(await fleet.views(), stored=stored, elapsed=elapsed,
                                           rate=stored / max(elapsed, 1e-6)))
                    await asyncio.sleep(0.25)
                if outage_task is not None:
                    await outage_task  # the broker is back before the fleet drains
                fleet_stop.set()
                await fleet_task
                views = await fleet.views()
                sent = sum(v.sent for v in views)
                deadline = time.monotonic() + 30
                counts = lake_counts(hub.store.lake)
                while counts["distinct"] < sent and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    counts = lake_counts(hub.store.lake)
                if live:
                    view.update(_table(views, stored=counts["distinct"], elapsed=time.monotonic() - t0,
                                       rate=counts["distinct"] / max(time.monotonic() - t0, 1e-6)))
            stats = hub.pipeline.stats
            generated = sum(v.generated for v in views)
            dropped = sum(v.dropped for v in views)
            buffered = sum(v.buffered for v in views)
            return {
                "devices": devices,
                "duration_s": round(time.monotonic() - t0, 2),
                "uplinks": {u: sum(1 for v in views if v.uplink == u) for u in ("nats", "mqtt")},
                "generated": generated,
                "sent": sent,
                "stored": counts["distinct"],
                "duplicates": counts["duplicate_rows"],
                "duplicate_batches_dropped": stats.duplicate_batches,
                "lost": max(0, sent - counts["distinct"]),
                "dropped_on_device": dropped,
                "still_buffered": buffered,
                "dead_letters": sum(stats.dead_letters.values()),
                "readings_per_s": round(counts["distinct"] / max(time.monotonic() - t0, 1e-6), 1),
            }
        finally:
            hub_stop.set()
            await hub_task


async def _ready(hub: Hub, task: asyncio.Task) -> None:
    while not hub.state.ready.is_set():
        if task.done():
            await task  # raises why the hub could not start
        await asyncio.sleep(0.05)
