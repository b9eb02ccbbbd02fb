"""The offline store: point-in-time retrieval without leaks, late backlogs, snapshots, lineage.

Data is crafted and written into a temporary lake with the lake's own writer
(`hub.storage.lake.Lake.append`, SCHEMA columns), so every `received` is chosen.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from hub.features import (
    FeatureConflictError,
    FeatureRegistry,
    FeatureView,
    InvalidFeatureViewError,
    UnknownFeatureError,
    materialize,
    point_in_time,
)
from hub.storage.lake import SCHEMA, Lake
from models.condition.data import SPEC as CONDITION_SPEC
from protocol import Readings
from protocol.features import Aggregate, FeatureSpec, window_features

S = 1_000_000
W = 60 * S
HOUR = 3600 * S
T0 = 1_700_006_400_000_000  # 2023-11-15T00:00:00Z, a window and day boundary
SPEC = FeatureSpec(window_us=W, channels=("temp",), aggregates=(Aggregate.MEAN, Aggregate.MAX), min_samples=1)
VIEW = FeatureView("machine_temp", SPEC, owner="condition-team", description="Temperature per minute.")


def write_lake(data_dir: Path, rows: list[tuple[str, str, str, int, float, int]]) -> int:
    """Append readings (tenant, device, channel, ts_us, value, received_us) to the lake; its new version."""
    cols = list(zip(*rows))
    table = pa.Table.from_arrays([
        pa.array(cols[0], pa.string()),
        pa.array(cols[1], pa.string()),
        pa.array(["telemetry"] * len(rows), pa.string()),
        pa.array(cols[2], pa.string()),
        pa.array(cols[3], pa.int64()).cast(SCHEMA.field("ts").type),
        pa.array(cols[4], pa.float64()),
        pa.array([0] * len(rows), pa.int64()),
        pa.array(range(len(rows)), pa.int64()),
        pa.array(cols[5], pa.int64()).cast(SCHEMA.field("received").type),
    ], schema=SCHEMA)
    lake = Lake(data_dir / "lake")
    return lake.append(table)


def temp(device: str, at_s: int, value: float, *, received_us: int | None = None) -> tuple:
    ts = T0 + at_s * S
    return ("acme", device, "temp", ts, value, ts + S if received_us is None else received_us)


def column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


# --- point in time ---------------------------------------------------------------------------
def test_a_naive_join_on_the_containing_window_leaks_the_future_and_point_in_time_does_not(tmp_path):
    # Window 0 is calm; window 1 holds a spike at 110 s, after the label at 90 s.
    write_lake(tmp_path, [temp("m1", 10, 10.0), temp("m1", 20, 12.0), temp("m1", 70, 11.0), temp("m1", 110, 100.0)])
    materialize(tmp_path, VIEW)
    label_ts = T0 + 90 * S

    with duckdb.connect() as con:
        naive = con.execute(
            f"SELECT \"temp.max\" FROM read_parquet('{tmp_path}/features/**/*.parquet')"
            " WHERE device = 'm1' AND window_start <= ? AND ? < event_time",
            [label_ts, label_ts],
        ).fetchall()
    assert naive == [(100.0,)]  # the spike 20 s after the label: a leak

    got = point_in_time(tmp_path, VIEW, [("acme", "m1", label_ts)])
    assert column(got, "temp.max") == [12.0]
    assert column(got, "temp.mean") == [11.0]
    assert column(got, "feature_event_time") == [T0 + W]
    # At the instant window 1 ends it is complete: event_time is exclusive, so it counts.
    at_end = point_in_time(tmp_path, VIEW, [("acme", "m1", T0 + 2 * W - 1), ("acme", "m1", T0 + 2 * W)])
    assert column(at_end, "temp.max") == [12.0, 100.0]


def backlog_lake(tmp_path: Path) -> int:
    """Windows 0, 1 (and 3 on m1) arrive a second after each reading; window 2 arrives 3 hours late."""
    late = T0 + 3 * HOUR
    rows = [temp("m1", 200, 4.0)]
    for device in ("m1", "m2"):
        rows += [
            temp(device, 10, 1.0), temp(device, 70, 2.0),
            temp(device, 130, 30.0, received_us=late), temp(device, 150, 31.0, received_us=late),
        ]
    write_lake(tmp_path, rows)
    return late


def test_arrival_semantics_leaves_out_a_late_window_until_it_arrived(tmp_path):
    late = backlog_lake(tmp_path)
    materialize(tmp_path, VIEW)
    labels = [
        ("acme", "m1", T0 + 190 * S),  # window 2 is over but its readings are not in yet
        ("acme", "m1", T0 + HOUR),  # window 3 arrived in time; window 2 still missing
        ("acme", "m1", late - 1),
        ("acme", "m1", late),
    ]
    event = point_in_time(tmp_path, VIEW, labels, semantics="event")
    assert column(event, "temp.max") == [31.0, 4.0, 4.0, 4.0]
    arrival = point_in_time(tmp_path, VIEW, labels, semantics="arrival")
    assert column(arrival, "temp.max") == [2.0, 4.0, 4.0, 4.0]
    assert column(arrival, "feature_event_time") == [T0 + 2 * W, T0 + 4 * W, T0 + 4 * W, T0 + 4 * W]

    # On m2, without window 3, the late window is what arrival semantics sees from `late` on, not before.
    before = [("acme", "m2", T0 + 3 * W), ("acme", "m2", late - 1), ("acme", "m2", late)]
    got = point_in_time(tmp_path, VIEW, before, semantics="arrival")
    assert column(got, "temp.max") == [2.0, 2.0, 31.0]
    assert column(got, "feature_available_at") == [T0 + 71 * S, T0 + 71 * S, late]


def test_a_late_backlog_appears_in_the_next_materialization_and_not_in_the_earlier_snapshot(tmp_path):
    write_lake(tmp_path, [temp("m1", 10, 1.0), temp("m1", 70, 2.0)])
    first = materialize(tmp_path, VIEW, now_us=T0 + HOUR)
    late = T0 + 3 * HOUR
    write_lake(tmp_path, [temp("m1", 130, 30.0, received_us=late), temp("m1", 150, 31.0, received_us=late)])
    second = materialize(tmp_path, VIEW, now_us=late + HOUR)
    assert (first["rows_written"], second["rows_written"]) == (2, 3)

    labels = [("acme", "m1", T0 + 4 * HOUR)]
    old = point_in_time(tmp_path, VIEW, labels, as_of_run=first["run_id"])
    assert column(old, "temp.max") == [2.0]
    assert column(old, "feature_event_time") == [T0 + 2 * W]
    new = point_in_time(tmp_path, VIEW, labels)
    assert column(new, "temp.max") == [31.0]
    assert column(new, "feature_available_at") == [late]
    assert point_in_time(tmp_path, VIEW, labels, as_of_run=second["run_id"]) == new
    # The older snapshot's files are untouched by the later run.
    assert Path(first["path"]).is_dir() and Path(first["path"]) != Path(second["path"])

    with pytest.raises(UnknownFeatureError, match="'no-such-run'"):
        point_in_time(tmp_path, VIEW, labels, as_of_run="no-such-run")


def test_time_travel_by_lake_version_sees_a_late_backlog_only_from_the_version_it_arrived_in(tmp_path):
    live = write_lake(tmp_path, [temp("m1", 10, 1.0), temp("m1", 70, 2.0), temp("m1", 250, 5.0)])
    first = materialize(tmp_path, VIEW, now_us=T0 + HOUR)
    late = T0 + 3 * HOUR  # windows 2 and 3 arrive hours late, in a later lake version
    backlog = write_lake(tmp_path, [temp("m1", 130, 30.0, received_us=late), temp("m1", 190, 31.0, received_us=late)])
    second = materialize(tmp_path, VIEW, now_us=late + HOUR)
    assert (first["lake_version"], second["lake_version"]) == (live, backlog) and backlog > live

    labels = [("acme", "m1", T0 + 3 * W + 1), ("acme", "m1", T0 + 5 * HOUR)]
    before = point_in_time(tmp_path, VIEW, labels, as_of_lake_version=live)
    after = point_in_time(tmp_path, VIEW, labels, as_of_lake_version=backlog)
    assert column(before, "feature_event_time") == [T0 + 2 * W, T0 + 5 * W]
    assert column(before, "temp.max") == [2.0, 5.0]  # no sign of the backlog as of the version before it
    assert column(after, "feature_event_time") == [T0 + 3 * W, T0 + 5 * W]
    assert column(after, "temp.max") == [30.0, 5.0]

    # Materializing today from the old lake version (a backfill) reads the lake as it was then,
    # and does not hide the backlog from retrieval as of the newer version.
    backfill = materialize(tmp_path, VIEW, now_us=late + 2 * HOUR, lake_version=live)
    assert (backfill["lake_version"], backfill["rows_written"]) == (live, first["rows_written"])
    assert point_in_time(tmp_path, VIEW, labels, as_of_lake_version=backlog) == after
    assert point_in_time(tmp_path, VIEW, labels, as_of_lake_version=live) == before
    assert point_in_time(tmp_path, VIEW, labels, as_of_lake_version=live - 1).column("temp.max").null_count == 2

    with pytest.raises(InvalidFeatureViewError, match="lake_version is 99"):
        materialize(tmp_path, VIEW, lake_version=99)
    with pytest.raises(InvalidFeatureViewError, match="give one"):
        point_in_time(tmp_path, VIEW, labels, as_of_run=first["run_id"], as_of_lake_version=live)


def test_a_run_limited_to_a_range_refreshes_only_its_windows(tmp_path):
    write_lake(tmp_path, [temp("m1", 10, 1.0), temp("m1", 70, 2.0)])
    materialize(tmp_path, VIEW)
    write_lake(tmp_path, [temp("m1", 75, 50.0, received_us=T0 + HOUR)])
    # 61 s is widened to the window start at 60 s: window 1 is recomputed from all its readings.
    run = materialize(tmp_path, VIEW, since_us=T0 + 61 * S, until_us=T0 + 2 * W)
    assert (run["since_us"], run["until_us"], run["rows_written"]) == (T0 + W, T0 + 2 * W, 1)
    got = point_in_time(tmp_path, VIEW, [("acme", "m1", T0 + W), ("acme", "m1", T0 + 2 * W)])
    assert column(got, "temp.max") == [1.0, 50.0]
    assert column(got, "feature_available_at") == [T0 + 11 * S, T0 + HOUR]


def test_labels_before_the_first_window_or_of_unknown_devices_are_kept_with_null_features(tmp_path):
    write_lake(tmp_path, [temp("m1", 10, 1.0), temp("m2", 70, 2.0)])
    materialize(tmp_path, VIEW)
    labels = pa.table({
        "tenant": ["acme", "acme", "acme", "acme", "acme"],
        "device": ["m2", "m1", "ghost", "m1", "m2"],
        "ts_us": pa.array([T0 + HOUR, T0 + 30 * S, T0 + HOUR, T0 + HOUR, T0 + W], pa.int64()).cast(
            pa.timestamp("us", tz="UTC")),
        "label": ["worn", "ok", "ok", "ok", "worn"],
    })
    for semantics in ("event", "arrival"):
        got = point_in_time(tmp_path, VIEW, labels, semantics=semantics)
        assert got.num_rows == 5
        assert got.select(["tenant", "device", "ts_us", "label"]) == labels  # order and types kept
        assert column(got, "temp.max") == [2.0, None, None, 1.0, None]
        assert column(got, "feature_window_start") == [T0 + W, None, None, T0, None]

    no_time = pa.table({"tenant": ["acme"], "device": ["m1"], "ts_us": pa.array([None], pa.int64())})
    unknown_time = point_in_time(tmp_path, VIEW, no_time)
    assert column(unknown_time, "temp.mean") == [None]


def test_retrieval_rejects_malformed_labels_naming_the_bad_value(tmp_path):
    with pytest.raises(InvalidFeatureViewError, match="'ts_us'"):
        point_in_time(tmp_path, VIEW, pa.table({"tenant": ["a"], "device": ["b"], "ts": [1]}))
    with pytest.raises(InvalidFeatureViewError, match="'temp.max'"):
        point_in_time(tmp_path, VIEW, pa.table({"tenant": ["a"], "device": ["b"], "ts_us": [1], "temp.max": [1.0]}))
    with pytest.raises(InvalidFeatureViewError, match="'asof'"):
        point_in_time(tmp_path, VIEW, [("a", "b", 1)], semantics="asof")
    # No materialization yet: every label is kept, with null features.
    assert column(point_in_time(tmp_path, VIEW, [("a", "b", 1)]), "temp.mean") == [None]


# --- one feature code path -------------------------------------------------------------------
def test_materialized_features_equal_window_features_on_the_same_readings_bit_for_bit(tmp_path):
    rng = np.random.default_rng(7)
    rows, direct = [], {}
    for device in ("m1", "m2"):
        ts = T0 + np.arange(0, 6 * 60) * S + rng.integers(0, S, 6 * 60)  # 6 minutes, jittered
        vib = rng.normal(1.2, 0.3, len(ts))
        tmp = rng.normal(40.0, 2.0, len(ts))
        vib[17] = np.nan  # not a sample, on either side
        tmp[200:] = tmp[200:] + np.cumsum(rng.normal(0, 0.1, len(ts) - 200))
        keep = slice(None, 320)  # the last window is too thin (min_samples=30) and is left out
        for channel, values in (("vibration_rms", vib[keep]), ("temperature", tmp[keep])):
            rows += [("acme", device, channel, int(t), float(v), int(t) + 5 * S) for t, v in zip(ts[keep], values)]
        direct[device] = window_features(
            Readings.from_columns(("vibration_rms", "temperature"), ts[keep], np.stack([vib, tmp], 1)[keep]),
            CONDITION_SPEC,
        )
    rows.append(("acme", "m1", "cpu.percent", T0, 3.0, T0))  # a channel outside the spec: ignored
    rng.shuffle(rows)  # row order never matters
    write_lake(tmp_path, rows)
    view = FeatureView("condition", CONDITION_SPEC, owner="condition-team")
    materialize(tmp_path, view)

    with FeatureRegistry(tmp_path) as registry:
        (run,) = registry.runs(view.name, view.version)
    stored = pq.read_table(run.path / "part-0.parquet")
    for device, (names, matrix, ends) in direct.items():
        mine = stored.filter(pc.equal(stored.column("device"), device)).sort_by("event_time")
        assert len(ends) == 5
        assert column(mine, "event_time") == ends.tolist()
        got = np.stack([mine.column(n).to_numpy() for n in names], axis=1)
        # Tolerance: none. The same float64 bits, compared as integers.
        assert got.dtype == matrix.dtype == np.float64
        assert np.array_equal(got.view(np.int64), matrix.view(np.int64))


# --- registry --------------------------------------------------------------------------------
def test_registry_keeps_versions_history_and_lineage(tmp_path):
    with FeatureRegistry(tmp_path) as registry:
        first = registry.register(VIEW, now_us=1)
        assert registry.register(VIEW, now_us=2) == first  # idempotent per version
        wider = FeatureView(VIEW.name, FeatureSpec(window_us=2 * W, channels=("temp",)), VIEW.owner, VIEW.description)
        assert wider.version != VIEW.version
        registry.register(wider, now_us=3)
        registry.register(FeatureView("other", SPEC, owner="someone"), now_us=4)

        assert [r.version for r in registry.history(VIEW.name)] == [VIEW.version, wider.version]
        assert registry.get(VIEW.name).view == wider
        assert registry.get(VIEW.name, VIEW.version).view == VIEW
        assert [(r.view.name, r.version) for r in registry.list()] == [
            ("machine_temp", wider.version), ("other", SPEC.version),
        ]
        with pytest.raises(FeatureConflictError, match="'someone else'"):
            registry.register(FeatureView(VIEW.name, SPEC, owner="someone else", description=VIEW.description))
        with pytest.raises(UnknownFeatureError, match="'nope'"):
            registry.get("nope")
        with pytest.raises(UnknownFeatureError, match="'nope'"):
            registry.history("nope")
        assert registry.lineage(VIEW.name, VIEW.version)["runs"] == []

    write_lake(tmp_path, [temp("m1", 10, 1.0), temp("m1", 70, 2.0)])
    write_lake(tmp_path, [temp("m1", 86_400 + 10, 3.0), ("acme", "m1", "humidity", T0, 50.0, T0)])
    run = materialize(tmp_path, VIEW)
    with FeatureRegistry(tmp_path) as registry:
        lineage = registry.lineage(VIEW.name, VIEW.version)
    assert lineage["source"] == {"lake": "telemetry", "kind": "telemetry", "channels": ["temp"]}
    (recorded,) = lineage["runs"]
    assert recorded["run_id"] == run["run_id"]
    assert recorded["partitions"] == ["date=2023-11-15", "date=2023-11-16"]
    assert (recorded["rows_read"], recorded["rows_written"]) == (3, 3)
    assert sorted(f["rows"] for f in recorded["files"]) == [1, 2]  # humidity is not read
    assert all(Path(f["file"]).is_file() for f in recorded["files"])


def test_a_feature_view_names_its_bad_value():
    with pytest.raises(InvalidFeatureViewError, match="'Bad/Name'"):
        FeatureView("Bad/Name", SPEC, owner="x")
    with pytest.raises(InvalidFeatureViewError, match="'metrics'"):
        FeatureView("ok", SPEC, owner="x", source="metrics")
    with pytest.raises(InvalidFeatureViewError, match="owner ''"):
        FeatureView("ok", SPEC, owner="")
    assert VIEW.version == SPEC.version and VIEW.entity == ("tenant", "device")


def test_compute_features_gives_the_rows_materialize_writes_without_recording_a_run(tmp_path):
    from hub.features.offline import compute_features

    write_lake(tmp_path, [temp("m1", 10, 1.0), temp("m1", 70, 2.0), temp("m2", 130, 3.0)])
    got = compute_features(tmp_path, VIEW, since_us=T0 + W, now_us=T0 + HOUR)
    run = materialize(tmp_path, VIEW, since_us=T0 + W, now_us=T0 + HOUR)
    assert got == pq.read_table(Path(run["path"]) / "part-0.parquet")
    assert column(got, "window_start") == [T0 + W, T0 + 2 * W]
    with FeatureRegistry(tmp_path) as registry:
        assert len(registry.runs(VIEW.name, VIEW.version)) == 1  # only materialize's
