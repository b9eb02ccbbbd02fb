"""The alerts' HTTP routes (/v1/alerts), mounted by hub/api/app.py when the hub has `alerts`.

    GET  /v1/alerts               alerts, the most recently active first (?state=&tenant=&device=&limit=),
                                  with the count per state of all alerts and the rate limit's suppressed
                                  counters of the devices asked for
    GET  /v1/alerts/{id}          one alert
    POST /v1/alerts/{id}/ack      open → acked, body {"by": "who"}
    POST /v1/alerts/{id}/resolve  open | acked → resolved, body {"by": "who"}

Alert errors become HTTP errors with the store's sentence as `detail`: 404 unknown id, 409 a
transition the alert's state does not allow, 422 a bad filter or name. Routes are sync, so FastAPI
runs them in its threadpool and SQLite stays off the event loop; the store serializes its own calls.

`on_change(event)` is called with the AlertEvent of every ack and resolve, after it committed, from
the threadpool's thread: the hub hands it to its AlertPublisher with `loop.call_soon_threadsafe`. It
must not raise (the change is committed either way) nor block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from ..alerts import AlertError, AlertEvent, AlertStore
from ..alerts.store import MAX_LIMIT

T = TypeVar("T")


class ByBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=200)  # who: an operator's name or email, or a system's


def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    except AlertError as exc:
        raise HTTPException(exc.status, str(exc)) from exc


def router(store: AlertStore, *, on_change: Callable[[AlertEvent], None] | None = None) -> APIRouter:
    r = APIRouter(tags=["alerts"])

    def changed(event: AlertEvent) -> dict:
        if on_change is not None:
            on_change(event)
        return {"event": str(event.event), "at": event.at, "alert": event.alert.to_dict()}

    @r.get("/v1/alerts")
    def list_alerts(
        state: str | None = None, tenant: str | None = None, device: str | None = None,
        limit: int = Query(100, ge=1, le=MAX_LIMIT),
    ) -> dict:
        alerts = _call(store.list, state, device, tenant=tenant, limit=limit)
        return {"alerts": [a.to_dict() for a in alerts], "counts": store.stats(),
                "suppressed": store.list_suppressed(device, tenant=tenant)}

    @r.get("/v1/alerts/{alert_id}")
    def show(alert_id: int) -> dict:
        return _call(store.get, alert_id).to_dict()

    @r.post("/v1/alerts/{alert_id}/ack")
    def ack(alert_id: int, body: ByBody) -> dict:
        return changed(_call(store.ack, alert_id, body.by))

    @r.post("/v1/alerts/{alert_id}/resolve")
    def resolve(alert_id: int, body: ByBody) -> dict:
        return changed(_call(store.resolve, alert_id, body.by))

    return r
