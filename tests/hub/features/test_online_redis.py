"""The Redis online store: the SQLite store's checks, run on both, identical answers, clear errors when down.

A real redis-server (Debian's) on a free port, one per module, emptied before each test; the
tests skip where it is not installed, except on CI, which installs it (.ci/run).
"""

from __future__ import annotations

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
from hub.features import FeatureService, InvalidFeatureViewError, OnlineBackend, OnlineStore
from hub.features.online_redis import OnlineStoreUnavailableError, RedisOnlineStore
from tests.hub.features.test_offline_store import HOUR, T0, VIEW, W
from tests.hub.features.test_online_store import rows
from tests.hub.features.conftest import _need_redis_server, open_store
from tests.servers import RedisServer, free_port


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop and restart."""
    _need_redis_server()
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def both(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[OnlineStore, RedisOnlineStore]]:
    sqlite, red = open_store("sqlite", tmp_path, request), open_store("redis", tmp_path, request)
    try:
        yield sqlite, red
    finally:
        sqlite.close()
        red.close()


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
