"""The online store: the newest vector per device wins; a late backlog never overwrites it."""

from __future__ import annotations

import sqlite3

import pyarrow as pa
import pytest

from hub.features import (
    FeatureService,
    FeatureView,
    InvalidFeatureViewError,
    OnlineBackend,
    OnlineStore,
    UnknownFeatureError,
    feature_schema,
    materialize,
)
from protocol.features import Aggregate, FeatureSpec
from tests.hub.features.test_offline_store import HOUR, SPEC, T0, VIEW, W, temp, write_lake


def rows(*windows: tuple[str, int, int, float]) -> pa.Table:
    """Feature rows (device, window index, available_at, temp value) of VIEW for tenant acme."""
    schema = feature_schema(VIEW)
    return pa.table({
        "tenant": ["acme"] * len(windows),
        "device": [w[0] for w in windows],
        "window_start": [T0 + w[1] * W for w in windows],
        "event_time": [T0 + (w[1] + 1) * W for w in windows],
        "available_at": [w[2] for w in windows],
        "materialized_at": [0] * len(windows),
        "temp.mean": [w[3] for w in windows],
        "temp.max": [w[3] + 1 for w in windows],
    }, schema=schema)


# --- the store's behaviour: SQLite, and Redis when redis-server is installed (conftest.py) --
def test_the_newest_window_per_device_is_kept(store):
    assert isinstance(store, OnlineBackend)
    got = store.update(VIEW, rows(("m1", 0, T0 + W, 1.0), ("m1", 2, T0 + 3 * W, 3.0), ("m1", 1, T0 + 2 * W, 2.0),
                                  ("m2", 0, T0 + W, 9.0)), now_us=123)
    assert got == {"rows": 4, "entities": 2, "updated": 2}
    assert store.get(VIEW, "acme", "m1") == {
        "name": VIEW.name, "version": VIEW.version, "tenant": "acme", "device": "m1",
        "features": {"temp.mean": 3.0, "temp.max": 4.0},
        "window_start": T0 + 2 * W, "event_time": T0 + 3 * W, "available_at": T0 + 3 * W,
        "updated_at": 123, "run_id": None,
    }
    assert store.get(VIEW, "acme", "m2")["features"] == {"temp.mean": 9.0, "temp.max": 10.0}
    assert store.entities(VIEW) == 2


def test_a_late_backlog_does_not_overwrite_a_newer_vector(store):
    store.update(VIEW, rows(("m1", 5, T0 + 6 * W, 5.0)), now_us=1)
    late = T0 + 3 * HOUR
    got = store.update(VIEW, rows(("m1", 3, late, 30.0), ("m1", 4, late, 40.0)), now_us=2)
    assert got == {"rows": 2, "entities": 1, "updated": 0}
    m1 = store.get(VIEW, "acme", "m1")
    assert (m1["features"]["temp.mean"], m1["event_time"], m1["updated_at"]) == (5.0, T0 + 6 * W, 1)


def test_the_same_window_is_replaced_only_by_a_later_arrival(store):
    store.update(VIEW, rows(("m1", 5, T0 + 6 * W, 5.0)), now_us=1)
    assert store.update(VIEW, rows(("m1", 5, T0 + 6 * W, 7.0)), now_us=2)["updated"] == 0  # a replay
    assert store.update(VIEW, rows(("m1", 5, T0 + 6 * W - 1, 7.0)), now_us=2)["updated"] == 0
    assert store.update(VIEW, rows(("m1", 5, T0 + HOUR, 8.0)), now_us=3)["updated"] == 1  # more readings came
    m1 = store.get(VIEW, "acme", "m1")
    assert (m1["features"]["temp.mean"], m1["available_at"], m1["updated_at"]) == (8.0, T0 + HOUR, 3)


def test_unknown_entities_and_versions_get_none(store):
    store.update(VIEW, rows(("m1", 0, T0 + W, 1.0)))
    assert store.get(VIEW, "acme", "nope") is None
    assert store.get(VIEW, "other", "m1") is None
    assert store.get(FeatureView("other_view", SPEC, owner="x"), "acme", "m1") is None
    # Same name, another spec: another version, so another key.
    respec = FeatureView(VIEW.name, FeatureSpec(window_us=2 * W, channels=("temp",),
                                                aggregates=(Aggregate.MEAN, Aggregate.MAX), min_samples=1), owner="x")
    assert respec.version != VIEW.version and store.get(respec, "acme", "m1") is None
    got = store.get_many(VIEW, [("acme", "nope"), ("acme", "m1")])
    assert got[0] is None and got[1]["features"]["temp.mean"] == 1.0
    assert store.get_many(VIEW, []) == []


def test_rows_without_the_views_columns_are_refused(store):
    with pytest.raises(InvalidFeatureViewError, match=r"lack columns \['temp.max'\]"):
        store.update(VIEW, rows(("m1", 0, T0 + W, 1.0)).drop_columns(["temp.max"]))
    assert store.get(VIEW, "acme", "m1") is None


def test_update_from_runs_keeps_the_newest_across_runs(store, tmp_path):
    write_lake(tmp_path, [temp("m1", 10, 1.0), temp("m1", 70, 2.0), temp("m2", 10, 5.0)])
    first = materialize(tmp_path, VIEW, now_us=T0 + HOUR)
    late = T0 + 3 * HOUR
    write_lake(tmp_path, [temp("m1", 130, 30.0, received_us=late)])
    second = materialize(tmp_path, VIEW, now_us=late + 1)
    assert store.update_from_run(tmp_path, VIEW, second["run_id"], now_us=1) == {
        "rows": 4, "entities": 2, "updated": 2}
    # Replaying the older run afterwards changes nothing: its windows are older.
    assert store.update_from_run(tmp_path, VIEW, first["run_id"], now_us=2)["updated"] == 0
    m1 = store.get(VIEW, "acme", "m1")
    assert (m1["features"]["temp.max"], m1["available_at"], m1["run_id"]) == (30.0, late, second["run_id"])
    with pytest.raises(UnknownFeatureError, match="'nope'"):
        store.update_from_run(tmp_path, VIEW, "nope")
    with pytest.raises(UnknownFeatureError, match="not of 'other_view'"):
        store.update_from_run(tmp_path, FeatureView("other_view", SPEC, owner="x"), first["run_id"])


def test_a_vector_written_without_a_run_forgets_the_previous_run_id(store):
    store.update(VIEW, rows(("m1", 0, T0 + W, 1.0)), run_id="r1", now_us=1)
    assert store.get(VIEW, "acme", "m1")["run_id"] == "r1"
    store.update(VIEW, rows(("m1", 1, T0 + 2 * W, 2.0)), now_us=2)
    assert store.get(VIEW, "acme", "m1")["run_id"] is None


def test_the_table_is_wal_and_keyed_by_entity(tmp_path):
    with OnlineStore(tmp_path / "online.db"):
        pass
    with sqlite3.connect(tmp_path / "online.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        pk = [r[1] for r in con.execute("PRAGMA table_info(online_features)") if r[5]]
    con.close()
    assert pk == ["view", "version", "tenant", "device"]


def test_the_service_opens_and_closes_both_stores(tmp_path):
    service = FeatureService.open(tmp_path)
    try:
        assert isinstance(service.online, OnlineBackend)
        assert service.online.path == tmp_path / "online_features.db"
        assert service.registry.list() == []
    finally:
        service.close()
