"""The streaming path (hub/features/streaming.py): lake appends → closed windows → the online store."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from hub.features import FeatureService, materialize
from hub.features.streaming import FeatureStream
from hub.storage.lake import Lake
from tests.hub.features.test_offline_store import S, T0, VIEW, W, temp, write_lake

MINUTE = 60 * S
HOUR_US = 3600 * S


@pytest.fixture
def service(tmp_path):
    svc = FeatureService.open(tmp_path)
    svc.registry.register(VIEW)
    yield svc
    svc.close()


def open_stream(tmp_path, service) -> FeatureStream:
    return FeatureStream(tmp_path, service, Lake(tmp_path / "lake"), max_out_of_orderness_us=0,
                         allowed_lateness_us=2 * MINUTE, idle_timeout_us=None)


def vector(service, device="m1"):
    got = service.online.get(VIEW, "acme", device)
    return None if got is None else (got["event_time"], got["features"])


def test_windows_reach_the_online_store_as_they_close_equal_to_materialize(tmp_path, service):
    write_lake(tmp_path, [temp("m1", 1, 0.0)])  # before the stream starts: materialize's job, not the stream's
    stream = open_stream(tmp_path, service)
    stream.step(now_us=T0 + 10 * MINUTE)
    assert vector(service) is None
    write_lake(tmp_path, [temp("m1", 10, 1.0), temp("m1", 20, 3.0), temp("m1", 70, 2.0)])
    stream.step(now_us=T0 + 10 * MINUTE)
    # The watermark reached 70 s: window 0 closed; window 1 is still open.
    assert vector(service) == (T0 + W, {"temp.mean": 2.0, "temp.max": 3.0})
    write_lake(tmp_path, [temp("m1", 130, 5.0)])
    stream.step(now_us=T0 + 11 * MINUTE)
    assert vector(service) == (T0 + 2 * W, {"temp.mean": 2.0, "temp.max": 2.0})

    # A late row inside the allowed lateness updates its window (a newer available_at wins).
    write_lake(tmp_path, [temp("m1", 100, 9.0)])
    stream.step(now_us=T0 + 12 * MINUTE)
    assert vector(service) == (T0 + 2 * W, {"temp.mean": 5.5, "temp.max": 9.0})
    assert stream.stats()["updates"] == 1

    # What the stream wrote equals the batch path's row for the same window, bit for bit.
    run = materialize(tmp_path, VIEW, now_us=T0 + HOUR_US)
    online = service.online.get(VIEW, "acme", "m1")
    table = pq.read_table(f"{run['path']}/part-0.parquet").to_pylist()
    (row,) = [r for r in table if r["event_time"] == online["event_time"]]
    assert {k: row[k] for k in VIEW.feature_names} == online["features"]


def test_rows_later_than_the_allowed_lateness_are_counted_and_a_restart_resumes(tmp_path, service):
    stream = open_stream(tmp_path, service)
    stream.step(now_us=T0)
    write_lake(tmp_path, [temp("m1", 10, 1.0), temp("m1", 600, 2.0)])  # watermark 10 min: window 0 closed
    stream.step(now_us=T0 + 11 * MINUTE)
    write_lake(tmp_path, [temp("m1", 20, 7.0)])  # into window 0, 8 minutes after it closed for good
    stream.step(now_us=T0 + 12 * MINUTE)
    views = stream.stats()["views"]
    assert views[VIEW.name]["too_late"] == 1
    before = vector(service)
    stream.close()

    again = open_stream(tmp_path, service)
    again.step(now_us=T0 + 13 * MINUTE)  # nothing new: nothing replayed or counted twice
    assert again.stats()["views"][VIEW.name]["too_late"] == 1 and again.stats()["rows"] == 0
    write_lake(tmp_path, [temp("m1", 700, 4.0)])
    again.step(now_us=T0 + 14 * MINUTE)
    assert before == (T0 + W, {"temp.mean": 1.0, "temp.max": 1.0})  # the too-late 7.0 changed nothing
    assert vector(service) == (T0 + 11 * W, {"temp.mean": 2.0, "temp.max": 2.0})
    again.close()
