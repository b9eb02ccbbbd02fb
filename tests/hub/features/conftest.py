"""Fixtures shared by the feature store's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hub.features import FeatureService, OnlineBackend, OnlineStore
from tests.servers import RedisServer, redis_server_available


@pytest.fixture
def service(tmp_path: Path) -> Iterator[FeatureService]:
    """The hub's feature service (registry, online store) over an empty data dir."""
    s = FeatureService.open(tmp_path)
    try:
        yield s
    finally:
        s.close()


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


def open_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> OnlineBackend:
    if kind == "sqlite":
        return OnlineStore(tmp_path / "online.db")
    from hub.features.online_redis import RedisOnlineStore

    return RedisOnlineStore(request.getfixturevalue("redis_url"))


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineBackend]:
    """Each backend in turn: the same checks must hold for both."""
    s = open_store(request.param, tmp_path, request)
    try:
        yield s
    finally:
        s.close()
