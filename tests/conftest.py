"""Fixtures that start real brokers on free ports for one test and stop them after it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.broker import EmbeddedNats, EmbeddedNatsSettings
from tests.servers import Mosquitto, mosquitto_available


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """An embedded nats-server with JetStream and MQTT, its store and log under tmp_path/nats."""
    with EmbeddedNats(EmbeddedNatsSettings(store_dir=tmp_path / "nats" / "store")) as server:
        yield server


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto on a free port; skipped where it is not installed, except on CI."""
    if mosquitto_available() is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed, and CI must run every integration test.")
        pytest.skip("mosquitto is not installed; .ci/run installs it")
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker
