"""Fixtures shared by the feature store's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.features import FeatureService


@pytest.fixture
def service(tmp_path: Path) -> Iterator[FeatureService]:
    """The hub's feature service (registry, online store) over an empty data dir."""
    s = FeatureService.open(tmp_path)
    try:
        yield s
    finally:
        s.close()
