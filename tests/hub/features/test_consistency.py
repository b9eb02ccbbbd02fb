"""The consistency check on a crafted lake: device-sent feat.* predictions against the hub's materialized features."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from agent.inference.pipeline import feature_channels as device_feature_channels
from hub.features import InvalidFeatureViewError, materialize
from hub.features.consistency import check, feature_channels
from hub.storage.lake import SCHEMA, Lake
from tests.hub.features.test_offline_store import S, T0, VIEW, W, temp, write_lake


def write_predictions(data_dir: Path, rows: list[tuple[str, str, str, int, float]]) -> None:
    """Publish prediction readings (tenant, device, channel, ts_us, value) into the lake."""
    cols = list(zip(*rows))
    table = pa.Table.from_arrays([
        pa.array(cols[0], pa.string()),
        pa.array(cols[1], pa.string()),
        pa.array(["prediction"] * len(rows), pa.string()),
        pa.array(cols[2], pa.string()),
        pa.array(cols[3], pa.int64()).cast(SCHEMA.field("ts").type),
        pa.array(cols[4], pa.float64()),
        pa.array([0] * len(rows), pa.int64()),
        pa.array(range(len(rows)), pa.int64()),
        pa.array([t + 90 * S for t in cols[3]], pa.int64()).cast(SCHEMA.field("received").type),
    ], schema=SCHEMA)
    lake = Lake(data_dir / "lake")
    lake.append(table)


def sent(device: str, window: int, mean: float | None, top: float | None) -> list[tuple]:
    ts = T0 + window * W
    rows = [("acme", device, "pred.class", ts, 1.0)]  # not a feature: never compared
    if mean is not None:
        rows.append(("acme", device, "feat.temp.mean", ts, mean))
    if top is not None:
        rows.append(("acme", device, "feat.temp.max", ts, top))
    return rows


def crafted(data_dir: Path) -> None:
    """Hub windows: m1 w0 (mean 11, max 12), w1 (55.5, 100), w2 (30, 30); m2 w0 (5, 5); m3 w0 (7, 7).
    Device-sent: m1 w0 agrees, w1 max differs, w5 the hub lacks, w2 not sent; m2 w0 lacks max; m3 agrees."""
    write_lake(data_dir, [temp("m1", 10, 10.0), temp("m1", 20, 12.0), temp("m1", 70, 11.0), temp("m1", 110, 100.0),
                          temp("m1", 130, 30.0), temp("m2", 10, 5.0), temp("m3", 10, 7.0)])
    write_predictions(data_dir, [
        *sent("m1", 0, 11.0, 12.0),
        *sent("m1", 1, 55.5, 99.5),  # max differs
        *sent("m1", 5, 1.0, 2.0),  # a window the hub has no readings of
        *sent("m2", 0, 5.0, None),  # max not sent
        *sent("m3", 0, 7.0, 7.0),
    ])
    write_predictions(data_dir, sent("m1", 0, 11.0, 12.0))  # a redelivered batch: the same rows again


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    crafted(tmp_path)
    return tmp_path


def test_mismatches_are_reported_with_both_values_and_one_sided_windows_listed(lake: Path) -> None:
    assert check(lake, VIEW)["windows_compared"] == 0  # not materialized yet: the hub has nothing
    materialize(lake, VIEW)
    got = check(lake, VIEW)
    assert (got["windows_compared"], got["windows_matching"], got["mismatch_count"]) == (4, 2, 2)
    assert got["mismatches"] == [
        {"tenant": "acme", "device": "m1", "window_start": T0 + W, "feature": "temp.max",
         "device_value": 99.5, "hub_value": 100.0, "abs_diff": 0.5},
        {"tenant": "acme", "device": "m2", "window_start": T0, "feature": "temp.max",
         "device_value": None, "hub_value": 5.0, "abs_diff": None},
    ]
    assert got["device_only"] == [{"tenant": "acme", "device": "m1", "window_start": T0 + 5 * W}]
    assert got["hub_only"] == [{"tenant": "acme", "device": "m1", "window_start": T0 + 2 * W}]
    assert got["tolerance"] == {"rtol": 0.0, "atol": 0.0}


def test_filters_and_tolerance(lake: Path) -> None:
    materialize(lake, VIEW)
    m1 = check(lake, VIEW, tenant="acme", device="m1")
    assert (m1["windows_compared"], m1["windows_matching"]) == (2, 1)
    assert [m["device"] for m in m1["mismatches"]] == ["m1"]
    loose = check(lake, VIEW, device="m1", atol=0.5)
    assert (loose["windows_matching"], loose["mismatches"]) == (2, [])
    assert check(lake, VIEW, device="m1", rtol=0.005)["mismatches"] == []  # 0.5 <= 0.005 * 100
    ranged = check(lake, VIEW, device="m1", since_us=T0 + W, until_us=T0 + 3 * W)
    assert (ranged["windows_compared"], ranged["device_only"], len(ranged["hub_only"])) == (1, [], 1)
    with pytest.raises(InvalidFeatureViewError, match="rtol"):
        check(lake, VIEW, rtol=-1.0)


def test_the_hub_reads_feature_channels_by_the_devices_rule() -> None:
    long = "x" * 54
    names = ("vibration_rms.mean", f"{long}.mean", f"{long}.slope")
    assert feature_channels(names) == device_feature_channels(names) == (
        "feat.vibration_rms.mean", f"feat.{long}.mean", "feat.2")
