"""/v1/alerts served by uvicorn on 127.0.0.1: list with filters and counters, ack and resolve, their errors.

(Not starlette's TestClient: with this httpx it warns, and warnings are errors here.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from hub.alerts import AlertEvent, AlertStore, EventType, RateLimit
from hub.api.alerts import router
from tests.hub.alerts.series import T0
from tests.hub.alerts.test_store import HOUR, S, finding
from tests.hub.test_models_api import ServedApp


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AlertStore]:
    with AlertStore(tmp_path / "alerts.db", rate_limit=RateLimit(max_new=2, interval_us=HOUR)) as s:
        yield s


@pytest.fixture
def changes() -> list[AlertEvent]:
    return []


@pytest.fixture
def client(store, changes) -> Iterator[httpx.Client]:
    app = FastAPI()
    app.include_router(router(store, on_change=changes.append))
    with ServedApp(app) as served, httpx.Client(base_url=served.url, timeout=10) as c:
        yield c


def test_list_shows_alerts_counts_and_suppressed_findings(client, store):
    a = store.raise_(finding("temp"), T0).alert
    b = store.raise_(finding("vib"), T0 + S).alert
    assert store.raise_(finding("rpm"), T0 + 2 * S) is None  # over the rate limit of 2 per hour
    c = store.raise_(finding("temp", device="m2", tenant="other"), T0 + 3 * S).alert

    got = client.get("/v1/alerts").json()
    assert [x["id"] for x in got["alerts"]] == [c.id, b.id, a.id]
    assert got["alerts"][-1] == a.to_dict()
    assert got["counts"] == {"open": 3, "acked": 0, "resolved": 0, "suppressed": 1}
    assert got["suppressed"] == [{"tenant": "acme", "device": "m1", "count": 1, "last_at": T0 + 2 * S,
                                  "last_channel": "rpm", "last_kind": "robust_z"}]
    assert [x["id"] for x in client.get("/v1/alerts", params={"device": "m2"}).json()["alerts"]] == [c.id]
    only_acme_m2 = client.get("/v1/alerts", params={"tenant": "acme", "device": "m2"}).json()
    assert (only_acme_m2["alerts"], only_acme_m2["suppressed"]) == ([], [])
    assert len(client.get("/v1/alerts", params={"limit": 1}).json()["alerts"]) == 1
    assert client.get(f"/v1/alerts/{b.id}").json() == b.to_dict()


def test_ack_then_resolve_and_every_change_is_handed_on(client, store, changes):
    a = store.raise_(finding(), T0).alert
    acked = client.post(f"/v1/alerts/{a.id}/ack", json={"by": "ana"})
    assert acked.status_code == 200
    body = acked.json()
    assert (body["event"], body["alert"]["state"], body["alert"]["acked_by"]) == ("acked", "acked", "ana")
    assert [x["id"] for x in client.get("/v1/alerts", params={"state": "acked"}).json()["alerts"]] == [a.id]

    resolved = client.post(f"/v1/alerts/{a.id}/resolve", json={"by": "bob"}).json()
    assert (resolved["event"], resolved["alert"]["state"], resolved["alert"]["resolved_by"]) == (
        "resolved", "resolved", "bob")
    assert [(e.event, e.alert.id) for e in changes] == [(EventType.ACKED, a.id), (EventType.RESOLVED, a.id)]
    assert client.get("/v1/alerts", params={"state": "open"}).json()["alerts"] == []


def test_errors_have_their_status_and_sentence(client, store, changes):
    a = store.raise_(finding(), T0).alert
    client.post(f"/v1/alerts/{a.id}/resolve", json={"by": "bob"})
    r = client.post(f"/v1/alerts/{a.id}/ack", json={"by": "ana"})
    assert r.status_code == 409
    assert r.json()["detail"].startswith(f"Alert {a.id} is resolved, so it cannot be acked: bob resolved it")
    r = client.post(f"/v1/alerts/{a.id}/resolve", json={"by": "ana"})
    assert (r.status_code, r.json()["detail"]) == (
        409, f"Alert {a.id} is resolved, so it cannot be resolved: bob resolved it already.")
    for path in ("/v1/alerts/999/ack", "/v1/alerts/999/resolve"):
        r = client.post(path, json={"by": "ana"})
        assert (r.status_code, r.json()["detail"]) == (404, "There is no alert 999.")
    assert client.get("/v1/alerts/999").status_code == 404
    r = client.get("/v1/alerts", params={"state": "closed"})
    assert (r.status_code, r.json()["detail"]) == (
        422, "Alert state = 'closed' is refused: it must be one of open, acked, resolved.")
    assert client.get("/v1/alerts", params={"limit": 0}).status_code == 422
    assert client.post(f"/v1/alerts/{a.id}/ack", json={}).status_code == 422
    assert client.post(f"/v1/alerts/{a.id}/ack", json={"by": "ana", "note": "x"}).status_code == 422
    assert client.post("/v1/alerts/x/ack", json={"by": "ana"}).status_code == 422
    assert len(changes) == 1  # only the one resolve that happened
