"""The feature store's HTTP API served for real (uvicorn on a free port) over a temporary lake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from hub.api.features import router
from hub.features import FeatureService, FeatureView
from protocol.features import Aggregate, FeatureSpec
from tests.hub.features.test_offline_store import HOUR, S, T0, VIEW, W, temp, write_lake
from tests.hub.test_models_api import ServedApp


def features_app(service: FeatureService) -> FastAPI:
    app = FastAPI()
    app.include_router(router(service))
    return app


def crafted_lake(data_dir: Path) -> int:
    """m1: calm window 0, a spike at 110 s (window 1), window 2 three hours late; m2: window 0 only."""
    late = T0 + 3 * HOUR
    write_lake(data_dir, [
        temp("m1", 10, 10.0), temp("m1", 20, 12.0), temp("m1", 70, 11.0), temp("m1", 110, 100.0),
        temp("m1", 130, 30.0, received_us=late), temp("m2", 10, 5.0),
    ])
    return late


@pytest.fixture
def hub(service: FeatureService) -> Iterator[httpx.Client]:
    with ServedApp(features_app(service)) as served, httpx.Client(base_url=served.url, timeout=30) as client:
        yield client


def test_materialize_then_online_get_then_point_in_time(hub, service, tmp_path):
    late = crafted_lake(tmp_path)
    service.registry.register(VIEW, now_us=T0)

    r = hub.post(f"/v1/features/{VIEW.name}/materialize")
    assert r.status_code == 200, r.text
    run = r.json()
    assert (run["name"], run["version"], run["rows_read"], run["rows_written"]) == (VIEW.name, VIEW.version, 6, 4)
    assert run["partitions"] == ["date=2023-11-15"]
    assert run["online"] == {"rows": 4, "entities": 2, "updated": 2}

    m1 = hub.get(f"/v1/features/{VIEW.name}/online/acme/m1").json()
    assert m1["features"] == {"temp.mean": 30.0, "temp.max": 30.0}
    assert (m1["event_time"], m1["available_at"], m1["run_id"]) == (T0 + 3 * W, late, run["run_id"])
    r = hub.get(f"/v1/features/{VIEW.name}/online/acme/nope")
    assert r.status_code == 404 and "acme/nope" in r.json()["detail"]

    labels = [
        {"tenant": "acme", "device": "m1", "ts_us": T0 + 90 * S},  # the spike is after it: no leak
        {"tenant": "acme", "device": "m1", "ts_us": T0 + HOUR},  # window 2 is over, not yet arrived
        {"tenant": "acme", "device": "m1", "ts_us": T0 - 1},  # before the first window: nulls, kept
        {"tenant": "acme", "device": "ghost", "ts_us": T0 + HOUR},
    ]
    got = {}
    for semantics in ("event", "arrival"):
        r = hub.post(f"/v1/features/{VIEW.name}/point-in-time", json={"labels": labels, "semantics": semantics})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["version"], body["semantics"], len(body["rows"])) == (VIEW.version, semantics, 4)
        got[semantics] = [row["temp.max"] for row in body["rows"]]
    assert got == {"event": [12.0, 30.0, None, None], "arrival": [12.0, 100.0, None, None]}

    r = hub.post(f"/v1/features/{VIEW.name}/point-in-time",
                 json={"labels": labels[:1], "as_of_run": run["run_id"]})
    assert r.json()["rows"][0]["feature_event_time"] == T0 + W


def test_list_show_and_history_with_lineage(hub, service, tmp_path):
    crafted_lake(tmp_path)
    assert hub.get("/v1/features").json() == []
    service.registry.register(VIEW, now_us=T0)
    wider = FeatureView(VIEW.name, FeatureSpec(window_us=2 * W, channels=("temp",), aggregates=(Aggregate.MEAN,),
                                               min_samples=1), owner="condition-team")
    service.registry.register(wider, now_us=T0 + 1)
    run = hub.post(f"/v1/features/{VIEW.name}/materialize", json={"since_us": T0, "until_us": T0 + 4 * W}).json()
    assert run["version"] == wider.version and run["since_us"] == T0

    listed = hub.get("/v1/features").json()
    assert [(v["name"], v["version"], v["runs"], v["last_run"]) for v in listed] == [
        (VIEW.name, wider.version, 1, run["run_id"])]
    shown = hub.get(f"/v1/features/{VIEW.name}").json()
    assert [h["version"] for h in shown["history"]] == [VIEW.version, wider.version]
    assert shown["features"] == ["temp.mean"] and shown["window_us"] == 2 * W
    lineage = shown["lineage"]
    assert lineage["source"] == {"lake": "telemetry", "kind": "telemetry", "channels": ["temp"]}
    assert [(x["run_id"], x["rows_read"], x["partitions"]) for x in lineage["runs"]] == [
        (run["run_id"], 6, ["date=2023-11-15"])]


def test_errors_name_the_problem(hub, service, tmp_path):
    r = hub.get("/v1/features/nope")
    assert r.status_code == 404 and "'nope'" in r.json()["detail"]
    assert hub.post("/v1/features/nope/materialize").status_code == 404
    service.registry.register(VIEW, now_us=T0)
    r = hub.post(f"/v1/features/{VIEW.name}/point-in-time",
                 json={"labels": [], "semantics": "psychic"})
    assert r.status_code == 422 and "'psychic'" in r.json()["detail"]
    r = hub.post(f"/v1/features/{VIEW.name}/point-in-time",
                 json={"labels": [{"tenant": "acme", "device": "m1", "ts_us": T0}], "as_of_run": "no-such-run"})
    assert r.status_code == 404 and "'no-such-run'" in r.json()["detail"]
    r = hub.post(f"/v1/features/{VIEW.name}/materialize", json={"since_us": T0 + W, "until_us": T0})
    assert r.status_code == 422 and "is empty" in r.json()["detail"]
    r = hub.post(f"/v1/features/{VIEW.name}/point-in-time", json={"labels": [{"tenant": "acme"}]})
    assert r.status_code == 422


def test_consistency_compares_device_sent_features_with_the_latest_run(hub, service, tmp_path):
    from tests.hub.features.test_consistency import crafted

    crafted(tmp_path)
    service.registry.register(VIEW, now_us=T0)
    assert hub.get(f"/v1/features/{VIEW.name}/consistency").json()["windows_compared"] == 0  # nothing materialized
    assert hub.post(f"/v1/features/{VIEW.name}/materialize").status_code == 200
    got = hub.get(f"/v1/features/{VIEW.name}/consistency").json()
    assert (got["windows_compared"], got["windows_matching"], got["mismatch_count"]) == (4, 2, 2)
    assert got["mismatches"][0] == {"tenant": "acme", "device": "m1", "window_start": T0 + W, "feature": "temp.max",
                                    "device_value": 99.5, "hub_value": 100.0, "abs_diff": 0.5}
    m3 = hub.get(f"/v1/features/{VIEW.name}/consistency", params={"tenant": "acme", "device": "m3"}).json()
    assert (m3["windows_compared"], m3["mismatches"], m3["device_only"], m3["hub_only"]) == (1, [], [], [])
    loose = hub.get(f"/v1/features/{VIEW.name}/consistency", params={"device": "m1", "atol": 0.5}).json()
    assert (loose["mismatches"], loose["tolerance"]) == ([], {"rtol": 0.0, "atol": 0.5})
    assert hub.get(f"/v1/features/{VIEW.name}/consistency", params={"rtol": -1}).status_code == 422
    assert hub.get("/v1/features/nope/consistency").status_code == 404
