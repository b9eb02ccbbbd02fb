"""The hub's HTTP API (FastAPI): devices, their loss ledgers, telemetry, ingest stats, DLQ log."""

from __future__ import annotations

import hmac
import re
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from ..storage import metadata as meta
from ..storage.lake import Lake
from ..storage.query import query_telemetry

if TYPE_CHECKING:
    from ..service import Hub

_DEVICE_EXCHANGE = re.compile(r"/v1/twin/[^/]+/[^/]+")


def device_report(db: sqlite3.Connection, tenant: str, device: str) -> dict | None:
    """One device with its loss ledger and its own drop counters side by side."""
    found = [d for d in meta.devices(db, tenant) if d["device"] == device]
    if not found:
        return None
    d = found[0]
    health = d.get("last_health") or {}
    d["device_drops"] = {k: v for k, v in health.items() if k.startswith("dropped")}
    d["ledger"] = [
        {"epoch": s.epoch, "hwm": s.hwm, "batches": s.batches, "readings": s.readings, "late_fills": s.late_fills,
         "duplicates": s.duplicates, "gaps": s.gaps, "missing_batches": s.missing}
        for s in meta.ledger(db, tenant, device)
    ]
    return d


def create_app(hub: "Hub") -> FastAPI:
    app = FastAPI(title="edgeloop hub", version="0.1.0")
    token = hub.config.api.token
    if token is not None:
        expected = f"Bearer {token}".encode()

        @app.middleware("http")
        async def operators_only(request: Request, call_next):
            # Changes need the operator token; reads and the devices' own twin exchange do not.
            if request.method not in ("GET", "HEAD", "OPTIONS") and not _DEVICE_EXCHANGE.fullmatch(request.url.path):
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    return JSONResponse({"detail": "This change needs the operator token "
                                                   "(Authorization: Bearer …; the CLI reads EDGELOOP_TOKEN)."},
                                        status_code=401)
            return await call_next(request)

    data_dir = hub.config.data_dir
    lake = Lake(data_dir / "lake")

    def db() -> sqlite3.Connection:
        return meta.connect_readonly(data_dir / "meta.db")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "nats_url": hub.state.nats_url, "mqtt_url": hub.state.mqtt_url}

    @app.get("/devices")
    def list_devices(tenant: str | None = None) -> list[dict]:
        with closing(db()) as con:
            return meta.devices(con, tenant)

    @app.get("/devices/{tenant}/{device}")
    def show_device(tenant: str, device: str) -> dict:
        with closing(db()) as con:
            report = device_report(con, tenant, device)
        if report is None:
            raise HTTPException(404, f"Device {tenant}/{device} has never been seen.")
        return report

    @app.get("/telemetry")
    def telemetry(
        tenant: str | None = None, device: str | None = None, channel: str | None = None,
        kind: str = "telemetry", since_us: int | None = None, until_us: int | None = None,
        limit: int = Query(1000, ge=1, le=100_000),
    ) -> list[dict]:
        return query_telemetry(lake, tenant=tenant, device=device, channel=channel, kind=kind,
                               since_us=since_us, until_us=until_us, limit=limit)

    @app.get("/stats")
    def stats() -> dict:
        with closing(db()) as con:
            counters = meta.counters(con)
        live = hub.pipeline.stats if hub.pipeline else None
        return {
            "counters": counters,
            "worker": None if live is None else {
                "received": live.received, "stored_batches": live.stored_batches,
                "stored_readings": live.stored_readings, "duplicate_batches": live.duplicate_batches,
                "dead_letters": dict(live.dead_letters), "storage_errors": live.storage_errors,
            },
        }

    @app.get("/dead-letters")
    def dead_letters(limit: int = Query(100, ge=1, le=10_000)) -> list[dict]:
        with closing(db()) as con:
            return meta.dead_letters(con, limit)

    if getattr(hub, "registry", None) is not None:
        from .models import router as models_router

        app.include_router(models_router(hub.registry))
    if getattr(hub, "twins", None) is not None:
        from .control import router as control_router

        app.include_router(control_router(hub.twins, hub.rollouts))
    if getattr(hub, "features", None) is not None:
        from .features import router as features_router

        app.include_router(features_router(hub.features))
    if getattr(hub, "drift", None) is not None:
        from .drift import router as drift_router

        app.include_router(drift_router(hub.drift))
    if getattr(hub, "pipelines", None) is not None:
        from .pipelines import router as pipelines_router

        app.include_router(pipelines_router(hub.pipelines))
    if getattr(hub, "loop", None) is not None:
        @app.get("/v1/quality")
        def quality() -> dict:
            """The latest closed-loop round's data quality: per device its health score and failing
            checks, and the flagged (quarantined, never deleted) row ranges."""
            return hub.loop.quality_report()

    if getattr(hub, "labels", None) is not None:
        from .labels import router as labels_router

        app.include_router(labels_router(hub.labels))
    if getattr(hub, "alerts", None) is not None:
        from .alerts import router as alerts_router

        app.include_router(alerts_router(hub.alerts, on_change=getattr(hub, "on_alert_change", None)))

    return app
