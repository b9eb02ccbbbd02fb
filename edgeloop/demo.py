"""`edgeloop demo`: embedded broker + hub + a simulated fleet, a live table, one JSON summary."""

from __future__ import annotations

import asyncio
from collections import Counter
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
from hub.storage.query import lake_counts, query_telemetry
from simulators.fleet import DeviceView, Fleet, FleetSpec
from simulators.outages import Outage, run_outages


def _table(views: list[DeviceView], *, stored: int, elapsed: float, rate: float, rollout: str = "",
           shown: int = 20) -> Table:
    t = Table(title=f"edgeloop demo — {elapsed:5.1f}s — hub stored {stored:,} readings ({rate:,.0f}/s){rollout}")
    cols = ("device", "uplink", "link", "generated", "sent", "buffered", "dropped", "model", "predicted")
    for col in cols:
        t.add_column(col, justify="right" if col not in ("device", "uplink", "link", "model") else "left")
    for v in views[:shown]:
        t.add_row(v.device, v.uplink, "up" if v.connected else "[red]down[/red]", f"{v.generated:,}",
                  f"{v.sent:,}", f"{v.buffered:,}", f"{v.dropped:,}", v.model or "-", f"{v.predicted:,}")
    if len(views) > shown:
        t.add_row(f"… {len(views) - shown} more", *[""] * (len(cols) - 1))
    return t


MODEL = "condition"
# The rollout the demo runs mid-way: the committed v1 again under a new version (a good model),
# in two stages. A one-minute window closes too rarely for a 30 s demo to judge predictions, so
# `min_reporting` is off and the gate is the install one (download, signature, self-test, load).
DEMO_ROLLOUT = {"model": MODEL, "version": "1.1.0", "stages": [{"percent": 25, "bake_s": 3}, {"percent": 100, "bake_s": 3}],
                "gates": {"min_reporting": None, "max_failures": 0}, "poll_interval_s": 1.0, "deadline_s": 60}


def _register_models(hub: Hub, key_path: Path) -> Path:
    from simulators.model_faults import V1

    for version in ("1.0.0", "1.1.0"):
        hub.registry.register(V1, version=version)
        hub.registry.sign(MODEL, version)
    hub.registry.promote(MODEL, "1.0.0")
    return hub.registry.keys.export_public(key_path)


def _rollout_line(hub: Hub, rid: str | None) -> str:
    if rid is None:
        return ""
    s = hub.rollouts.status(rid, events=False)
    return f" — rollout {s['version']}: {s['state']} (stage {s['stage'] + 1} of {s['stage_count']}, {s['converged']} converged)"


async def run_demo(
    *, devices: int, duration: float, live: bool, data_dir: Path | None = None, mqtt_share: float = 0.25,
    period_ms: int = 100, console: Console | None = None, outages: list[Outage] = (), models: bool = True,
) -> dict:
    holder = tempfile.TemporaryDirectory(prefix="edgeloop-demo-") if data_dir is None else nullcontext(str(data_dir))
    with holder as root:
        root = Path(root)
        hub = Hub(HubConfig.model_validate({
            "data_dir": str(root / "hub"),
            "broker": {"embedded": {"port": 0, "mqtt_port": 0, "http_port": 0}},
            "api": {"port": 0},
            "control": {"poll_interval": "1s", "tick": "200ms"},
        }))
        hub_stop, fleet_stop = asyncio.Event(), asyncio.Event()
        hub_task = asyncio.create_task(hub.run(hub_stop), name="hub")
        try:
            await asyncio.wait_for(_ready(hub, hub_task), timeout=60)
            spec_models = None
            if models:
                key = await asyncio.to_thread(_register_models, hub, root / "fleet-key.pem")
                spec_models = {"trusted_keys": [str(key)], "hub_url": hub.state.api_url, "poll_interval": "1s"}
            fleet = Fleet(FleetSpec(
                devices=devices, data_dir=root / "agents", nats_url=hub.state.nats_url,
                mqtt_url=hub.state.mqtt_url, mqtt_share=mqtt_share, period=timedelta(milliseconds=period_ms),
                models=spec_models, backfill=timedelta(minutes=3) if models else timedelta(0),
            ))
            if models:
                await fleet.install_models()
            rollout_id: str | None = None
            t0 = time.monotonic()
            fleet_task = asyncio.create_task(fleet.run(fleet_stop), name="fleet")
            outage_task = asyncio.create_task(run_outages(hub.broker, list(outages))) if outages else None
            view = Live(console=console, refresh_per_second=4) if live else nullcontext()
            with view:
                while (elapsed := time.monotonic() - t0) < duration and not fleet_task.done():
                    stored = hub.pipeline.stats.stored_readings if hub.pipeline else 0
                    if models and rollout_id is None and elapsed >= duration * 0.3:
                        from hub.rollouts import RolloutPlan

                        rollout_id = hub.rollouts.start(RolloutPlan.from_dict(DEMO_ROLLOUT))["id"]
                    if live:
                        view.update(_table(await fleet.views(), stored=stored, elapsed=elapsed,
                                           rate=stored / max(elapsed, 1e-6), rollout=_rollout_line(hub, rollout_id)))
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
                                       rate=counts["distinct"] / max(time.monotonic() - t0, 1e-6),
                                       rollout=_rollout_line(hub, rollout_id)))
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
                "online_vectors": _online_vectors(hub, fleet.spec.tenant, views),
                **(_model_summary(hub, views, rollout_id) if models else {}),
            }
        finally:
            hub_stop.set()
            await hub_task


def _online_vectors(hub: Hub, tenant: str, views: list[DeviceView]) -> int:
    """Devices with a `condition` vector in the online store: put there by the streaming path."""
    if hub.features is None:
        return 0
    view = hub.features.registry.get("condition").view
    return sum(hub.features.online.get(view, tenant, v.device) is not None for v in views)


def _model_summary(hub: Hub, views: list[DeviceView], rollout_id: str | None) -> dict:
    windows = query_telemetry(hub.store.lake, kind="prediction", channel="pred.class", limit=1_000_000)
    classes = hub.registry.get(MODEL, "1.0.0")["classes"]
    rollout = None if rollout_id is None else hub.rollouts.status(rollout_id, events=False)
    return {
        "models": dict(Counter(v.model or "none" for v in views)),
        "predictions_stored": len(windows),  # one per closed one-minute window per device
        "predicted_classes": dict(Counter(classes[int(r["value"])] for r in windows)),
        "rollout": None if rollout is None else {"version": rollout["version"], "state": rollout["state"],
                                                 "converged": rollout["converged"], "devices": rollout["devices"]},
    }


async def _ready(hub: Hub, task: asyncio.Task) -> None:
    while not hub.state.ready.is_set():
        if task.done():
            await task  # raises why the hub could not start
        await asyncio.sleep(0.05)
