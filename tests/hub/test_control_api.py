"""The control plane's HTTP API, served in process through httpx's ASGI transport."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI

from hub.api.control import router
from hub.rollouts import Rollouts
from hub.twin import TwinStore
from protocol.twin import Desired

from .test_twin import FakeClock, FakeRegistry, report


@pytest.fixture
def stores(tmp_path):
    clock, registry = FakeClock(), FakeRegistry().add("condition", "1.0.0").add("condition", "1.1.0")
    registry.promote("condition", "1.0.0")
    rollouts = Rollouts(tmp_path, registry, clock=clock)
    twins = TwinStore(tmp_path, registry, rollouts, clock=clock)
    yield twins, rollouts
    twins.close()
    rollouts.close()


@pytest.fixture
async def client(stores):
    app = FastAPI()
    app.include_router(router(*stores))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as c:
        yield c


async def test_the_exchange_round_trips_the_wire_format(client):
    body = json.dumps(report(tags={"site": "north"}).to_dict())
    r = await client.post("/v1/twin/acme/d1", content=body)
    assert r.status_code == 200, r.text
    desired = Desired.from_json(r.content)
    assert (desired.model.name, desired.model.version, desired.shadow) == ("condition", "1.0.0", None)
    assert desired.model.variants[0].manifest.version == "1.0.0"
    twin = (await client.get("/v1/twin/acme/d1")).json()
    assert twin["tags"] == {"site": "north"} and twin["desired"]["version"] == "1.0.0"
    assert [t["device"] for t in (await client.get("/v1/twin")).json()] == ["d1"]


@pytest.mark.parametrize("body, named", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"twin_version": 1, "tags": {}, "colour": "red"}), "colour"),
    (json.dumps({"twin_version": 1, "tags": {"site": 5}}), "tags.site"),
    (json.dumps({"twin_version": 2, "tags": {}}), "twin_version"),
])
async def test_a_bad_report_is_422_naming_the_field_and_counted(client, body, named):
    r = await client.post("/v1/twin/acme/d1", content=body)
    assert r.status_code == 422 and named in r.json()["detail"]
    assert (await client.get("/v1/control/stats")).json()["bad_reports"] == 1


async def test_bad_ids_and_unknown_twins(client):
    r = await client.post("/v1/twin/acme/bad%20id", content=json.dumps(report().to_dict()))
    assert r.status_code == 422 and "'bad id'" in r.json()["detail"]
    r = await client.get("/v1/twin/acme/ghost")
    assert r.status_code == 404 and "acme/ghost" in r.json()["detail"]


async def test_desired_rules(client):
    r = await client.put("/v1/twin/desired", json={"scope": "fleet", "model": {"name": "condition", "version": "1.1.0"},
                                                   "config_version": "c2"})
    assert r.status_code == 200, r.text
    desired = Desired.from_json((await client.post("/v1/twin/acme/d1", content=json.dumps(report().to_dict()))).content)
    assert (desired.model.version, desired.config_version) == ("1.1.0", "c2")
    assert [x["scope"] for x in (await client.get("/v1/twin/desired")).json()] == ["fleet"]
    for body, named in [({"scope": "fleet", "model": {"name": "condition", "version": "4.0"}}, "4.0"),
                        ({"scope": "moon"}, "'moon'"), ({"scope": "fleet", "colour": 1}, "'colour'"),
                        ({"scope": "fleet", "model": "condition"}, "'condition'"), ([1], "[1]")]:
        r = await client.put("/v1/twin/desired", json=body)
        assert r.status_code == 422 and named in r.json()["detail"], r.text


async def test_rollouts_over_http(client, stores):
    twins, rollouts = stores
    for i in range(4):
        await client.post(f"/v1/twin/acme/d{i}", content=json.dumps(report().to_dict()))
    plan = {"model": "condition", "version": "1.1.0", "stages": [{"percent": 50, "bake_s": 0}, {"percent": 100}]}
    r = await client.post("/v1/rollouts", json=plan)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert r.json()["state"] == "pending"
    rollouts.tick(twins)
    assert (await client.get(f"/v1/rollouts/{rid}")).json()["state"] == "canary"
    assert (await client.post(f"/v1/rollouts/{rid}/pause")).json()["state"] == "paused"
    assert (await client.post(f"/v1/rollouts/{rid}/resume")).json()["state"] == "canary"
    r = await client.post(f"/v1/rollouts/{rid}/abort", json={"reason": "no reason at all"})
    assert (r.json()["state"], r.json()["reason"]) == ("halted", "no reason at all")
    r = await client.post(f"/v1/rollouts/{rid}/pause")
    assert r.status_code == 409 and "halted" in r.json()["detail"]
    assert [x["id"] for x in (await client.get("/v1/rollouts")).json()] == [rid]
    assert (await client.get("/v1/rollouts/nope")).status_code == 404
    r = await client.post("/v1/rollouts", json={**plan, "stages": [{"percent": 50}]})
    assert r.status_code == 422 and "stages[0].percent = 50" in r.json()["detail"]
