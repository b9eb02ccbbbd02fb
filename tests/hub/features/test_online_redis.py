"""The Redis online store: the SQLite store's checks, run on both, identical answers, clear errors when down.

A real redis-server (Debian's) on a free port, one per module, emptied before each test; the
tests skip where it is not installed, except on CI, which installs it (.ci/run).
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import redis

from hub.config import FeaturesConfig, HubConfig, load_config
from hub.errors import ConfigError
from hub.features import (
    FeatureService,
    FeatureView,
    InvalidFeatureViewError,
    OnlineBackend,
    OnlineStore,
    UnknownFeatureError,
    materialize,
)
from hub.features.online_redis import OnlineStoreUnavailableError, RedisOnlineStore
from protocol.features import Aggregate, FeatureSpec
from tests.hub.features.test_offline_store import HOUR, SPEC, T0, VIEW, W, temp, write_lake
from tests.hub.features.test_online_store import rows
from tests.servers import RedisServer, free_port, redis_server_available


def _need_redis_server() -> None:
    if redis_server_available() is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed, and CI must run every integration test.")
        pytest.skip("redis-server is not installed; .ci/run installs it (apt-get install redis-server)")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server on a free port for the module."""
    _need_redis_server()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The module's server, emptied."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop and restart."""
    _need_redis_server()
    with RedisServer(tmp_path / "redis") as server:
        yield server


def open_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> OnlineBackend:
    if kind == "sqlite":
        return OnlineStore(tmp_path / "online.db")
    return RedisOnlineStore(request.getfixturevalue("redis_url"))


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineBackend]:
    """Each backend in turn: the same checks must hold for both."""
    s = open_store(request.param, tmp_path, request)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def both(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[OnlineStore, RedisOnlineStore]]:
    sqlite, red = open_store("sqlite", tmp_path, request), open_store("redis", tmp_path, request)
    try:
        yield sqlite, red
    finally:
        sqlite.close()
        red.close()


# --- the SQLite store's behaviour, on both --------------------------------------------------
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


# --- Redis and SQLite agree -----------------------------------------------------------------
def test_sqlite_and_redis_give_identical_answers_on_the_same_updates(both):
    sqlite, red = both
    rng = random.Random(20261126)
    devices = [f"m{i}" for i in range(8)]
    for step in range(25):
        batch = []
        for _ in range(rng.randint(0, 6)):
            window = rng.randint(0, 9)
            # Arrival: on time, or late by up to 2 h; ties on purpose (few distinct values).
            arrival = T0 + (window + 1) * W + rng.choice([0, 0, W, HOUR, 2 * HOUR])
            batch.append((rng.choice(devices), window, arrival, round(rng.uniform(-50, 50), 3)))
        table = rows(*batch)
        run_id = rng.choice([None, f"run-{step}"])
        assert sqlite.update(VIEW, table, run_id=run_id, now_us=step) == red.update(
            VIEW, table, run_id=run_id, now_us=step), f"step {step}: {batch}"
    entities = [("acme", d) for d in [*devices, "never"]] + [("other", "m1")]
    assert sqlite.get_many(VIEW, entities) == red.get_many(VIEW, entities)
    assert [sqlite.get(VIEW, t, d) for t, d in entities] == [red.get(VIEW, t, d) for t, d in entities]
    assert sqlite.entities(VIEW) == red.entities(VIEW) > 0


def test_concurrent_writers_to_one_entity_leave_the_newest(redis_url):
    """The compare-and-set is atomic: whatever the interleaving, the newest vector stays."""
    updates = [rows(("m1", w, T0 + (w + 1) * W + a, float(w * 10 + a))) for w in range(8) for a in range(3)]
    random.Random(7).shuffle(updates)
    stores = [RedisOnlineStore(redis_url) for _ in range(4)]
    try:
        errors: list[BaseException] = []

        def write(s: RedisOnlineStore, mine: list) -> None:
            try:
                for t in mine:
                    s.update(VIEW, t)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(s, updates[i::4])) for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == [] and not any(t.is_alive() for t in threads)
        m1 = stores[0].get(VIEW, "acme", "m1")
        assert (m1["event_time"], m1["available_at"], m1["features"]["temp.mean"]) == (
            T0 + 8 * W, T0 + 8 * W + 2, 72.0)
    finally:
        for s in stores:
            s.close()


# --- Redis only -----------------------------------------------------------------------------
def test_keys_hold_view_version_tenant_and_device_and_colons_cannot_collide(redis_url):
    with RedisOnlineStore(redis_url) as store:
        a = rows(("b:c", 0, T0 + W, 1.0)).set_column(0, "tenant", pa.array(["a"]))
        b = rows(("c", 0, T0 + W, 2.0)).set_column(0, "tenant", pa.array(["a:b"]))
        assert store.update(VIEW, a)["updated"] == 1 and store.update(VIEW, b)["updated"] == 1
        assert store.get(VIEW, "a", "b:c")["features"]["temp.mean"] == 1.0
        assert store.get(VIEW, "a:b", "c")["features"]["temp.mean"] == 2.0
        assert store.key(VIEW, "a:b", "c") == f"edgeloop:online:machine_temp:{VIEW.version}:a%3Ab:c"
        client = redis.Redis.from_url(redis_url)
        try:
            assert sorted(client.keys("*")) == sorted(
                k.encode() for k in (store.key(VIEW, "a", "b:c"), store.key(VIEW, "a:b", "c")))
        finally:
            client.close()


def _assert_unavailable(call, url_in_message: str, *, within: float) -> None:
    started = time.monotonic()
    with pytest.raises(OnlineStoreUnavailableError, match=f"Redis online store at {url_in_message} is unreachable"):
        call()
    assert time.monotonic() - started < within


def test_a_redis_that_is_down_raises_a_clear_error_naming_the_url(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with RedisOnlineStore(url, timeout=0.5) as store:  # opening does not connect: the hub starts anyway
        _assert_unavailable(lambda: store.get(VIEW, "acme", "m1"), url, within=3)
        _assert_unavailable(lambda: store.get_many(VIEW, [("acme", "m1")]), url, within=3)
        _assert_unavailable(lambda: store.update(VIEW, rows(("m1", 0, T0 + W, 1.0))), url, within=3)
        _assert_unavailable(store.ping, url, within=3)
    with RedisOnlineStore(url.replace("//", "//:s3cret@"), timeout=0.5) as store:
        with pytest.raises(OnlineStoreUnavailableError) as err:
            store.get(VIEW, "acme", "m1")
        assert "s3cret" not in str(err.value) and ":***@127.0.0.1" in str(err.value)


def test_a_redis_that_never_answers_times_out_instead_of_hanging():
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        with RedisOnlineStore(url, timeout=0.2) as store:
            _assert_unavailable(lambda: store.get(VIEW, "acme", "m1"), url, within=2)
            _assert_unavailable(lambda: store.update(VIEW, rows(("m1", 0, T0 + W, 1.0))), url, within=2)


def test_the_store_recovers_when_redis_comes_back(own_redis):
    with RedisOnlineStore(own_redis.url, timeout=0.5) as store:
        store.update(VIEW, rows(("m1", 0, T0 + W, 1.0)))
        assert store.get(VIEW, "acme", "m1")["features"]["temp.mean"] == 1.0
        own_redis.stop()
        _assert_unavailable(lambda: store.get(VIEW, "acme", "m1"), own_redis.url, within=3)
        own_redis.start()  # same port, empty (no persistence): the runs would rebuild it
        assert store.get(VIEW, "acme", "m1") is None
        assert store.update(VIEW, rows(("m1", 0, T0 + W, 1.0)))["updated"] == 1  # the script is loaded again


def test_bad_urls_are_refused_naming_them():
    for bad in ("http://127.0.0.1:6379", "127.0.0.1:6379", "sqlite"):
        with pytest.raises(InvalidFeatureViewError, match=f"URL '{bad}' is not a redis:// or rediss:// URL"):
            RedisOnlineStore(bad)
    with pytest.raises(InvalidFeatureViewError, match="timeout 0 must be"):
        RedisOnlineStore("redis://127.0.0.1:1/0", timeout=0)


# --- FeatureService.open and [features] -----------------------------------------------------
def test_the_service_opens_the_configured_online_store(tmp_path, redis_url):
    for choice in (None, "sqlite"):
        service = FeatureService.open(tmp_path, choice)
        try:
            assert isinstance(service.online, OnlineStore)
        finally:
            service.close()
    service = FeatureService.open(tmp_path, redis_url)
    try:
        assert isinstance(service.online, RedisOnlineStore) and isinstance(service.online, OnlineBackend)
        assert service.online.update(VIEW, rows(("m1", 0, T0 + W, 1.0)))["updated"] == 1
        assert service.online.get(VIEW, "acme", "m1")["features"]["temp.mean"] == 1.0
    finally:
        service.close()
    for bad in ("postgres://db/features", "redis", "memory", "", "redis://"):
        with pytest.raises(InvalidFeatureViewError, match=f"Online store '{bad}' is not supported"):
            FeatureService.open(tmp_path, bad)
    with pytest.raises(InvalidFeatureViewError) as err:
        FeatureService.open(tmp_path, "mysql://u:pw@db/x")
    assert "pw" not in str(err.value) and "u:***@db" in str(err.value)


def test_the_features_config_defaults_to_sqlite_and_refuses_other_stores(tmp_path):
    assert HubConfig().features == FeaturesConfig(online="sqlite")
    path = tmp_path / "hub.toml"
    path.write_text('[features]\nonline = "redis://127.0.0.1:6379/2"\n')
    assert load_config(path).features.online == "redis://127.0.0.1:6379/2"
    path.write_text('[features]\nonline = "memcached://x"\n')
    with pytest.raises(ConfigError, match=r"features\.online: 'memcached://x': must be \"sqlite\" or a redis://"):
        load_config(path)
    path.write_text('[features]\nonlin = "sqlite"\n')
    with pytest.raises(ConfigError, match=r"features\.onlin: unknown key"):
        load_config(path)
