"""Training datasets: content-hashed versions, lineage to view and runs, kept null labels, tamper checks."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from hub.features import (
    DatasetIntegrityError,
    FeatureRegistry,
    InvalidFeatureViewError,
    UnknownFeatureError,
    build_dataset,
    get_dataset,
    list_datasets,
    load_dataset,
    materialize,
)
from tests.hub.features.test_offline_store import HOUR, S, T0, VIEW, W, temp, write_lake


def labels(*rows: tuple[str, int, object]) -> pa.Table:
    """(device, ts_us, label) rows of tenant acme, with an extra column the dataset must keep."""
    return pa.table({
        "tenant": pa.array(["acme"] * len(rows), pa.string()),
        "device": pa.array([r[0] for r in rows], pa.string()),
        "ts_us": pa.array([r[1] for r in rows], pa.int64()),
        "label": pa.array([r[2] for r in rows]),
        "ticket": pa.array([f"T-{i}" for i in range(len(rows))], pa.string()),
    })


LABELS = labels(
    ("m1", T0 + 90 * S, "ok"),  # window 0 only: the spike at 110 s is after it
    ("m1", T0 + HOUR, "worn"),  # window 2 is over but arrives 3 hours late
    ("m1", T0 - 1, "ok"),  # before the first window: null features, kept
    ("ghost", T0 + HOUR, "ok"),  # unknown device: null features, kept
)


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    write_lake(tmp_path, [
        temp("m1", 10, 10.0), temp("m1", 20, 12.0), temp("m1", 70, 11.0), temp("m1", 110, 100.0),
        temp("m1", 130, 30.0, received_us=T0 + 3 * HOUR),
    ])
    with FeatureRegistry(tmp_path) as registry:
        registry.register(VIEW, now_us=T0)
    return tmp_path


def test_same_inputs_give_the_same_version_and_one_row(lake):
    run = materialize(lake, VIEW)["run_id"]
    first = build_dataset(lake, VIEW, LABELS, name="wear", label_source="maintenance:2023-11", now_us=1)
    again = build_dataset(lake, VIEW, LABELS, name="wear", label_source="maintenance:2023-11", now_us=2)
    assert again == first
    assert len(first["version"]) == 16 and first["created_at_us"] == 1
    assert first["path"] == str(lake / "datasets" / "wear" / first["version"] / "data.parquet")
    assert [(d["name"], d["version"]) for d in list_datasets(lake)] == [("wear", first["version"])]
    assert "lineage" not in list_datasets(lake)[0]
    # Naming the run the default picked is the same dataset.
    assert build_dataset(lake, VIEW, LABELS, name="wear", label_source="maintenance:2023-11",
                         as_of_run=run)["version"] == first["version"]

    # Any input that changes the content or lineage changes the version.
    other = [
        build_dataset(lake, VIEW, LABELS, name="wear", semantics="event", label_source="maintenance:2023-11"),
        build_dataset(lake, VIEW, LABELS, name="wear", label_source="maintenance:2023-12"),
        build_dataset(lake, VIEW, LABELS.slice(0, 3), name="wear", label_source="maintenance:2023-11"),
    ]
    assert len({d["version"] for d in other} | {first["version"]}) == 4
    assert len(list_datasets(lake, "wear")) == 4 and list_datasets(lake, "other") == []


def test_lineage_names_the_view_version_and_the_runs_used(lake):
    first = materialize(lake, VIEW)["run_id"]
    second = materialize(lake, VIEW, since_us=T0 + W)["run_id"]
    latest = build_dataset(lake, VIEW, LABELS, name="wear", label_source="tickets.csv")
    pinned = build_dataset(lake, VIEW, LABELS, name="wear", as_of_run=first, label_source="tickets.csv")

    assert (latest["view"], latest["view_version"]) == (VIEW.name, VIEW.version)
    assert latest["run_ids"] == [first, second] and pinned["run_ids"] == [first]
    assert latest["version"] != pinned["version"]
    got = get_dataset(lake, "wear", latest["version"])
    assert got == latest
    lineage = got["lineage"]
    assert lineage["view"] == {"name": VIEW.name, "version": VIEW.version, "source": VIEW.source_lineage()}
    assert (lineage["semantics"], lineage["as_of_run"], lineage["label_source"]) == ("arrival", second, "tickets.csv")
    assert [r["run_id"] for r in lineage["runs"]] == [first, second]
    assert lineage["runs"][0]["partitions"] == ["date=2023-11-15"]
    assert lineage["columns"][:5] == ["tenant", "device", "ts_us", "label", "ticket"]

    with pytest.raises(UnknownFeatureError, match="'nope'"):
        build_dataset(lake, VIEW, LABELS, name="wear", as_of_run="nope")
    with pytest.raises(UnknownFeatureError, match="'wear' version 'ffff'"):
        get_dataset(lake, "wear", "ffff")


def test_labels_with_null_features_are_kept_and_counted(lake):
    materialize(lake, VIEW)
    d = build_dataset(lake, VIEW, LABELS, name="wear")
    assert (d["label_rows"], d["null_feature_rows"], d["semantics"]) == (4, 2, "arrival")
    table = load_dataset(lake, "wear", d["version"])
    assert table.num_rows == 4
    assert table.column("label").to_pylist() == ["ok", "worn", "ok", "ok"]
    assert table.column("ticket").to_pylist() == ["T-0", "T-1", "T-2", "T-3"]
    # Arrival semantics: at T0 + 1 h the hub had windows 0 and 1 only.
    assert table.column("temp.max").to_pylist() == [12.0, 100.0, None, None]


def test_a_changed_file_is_an_error_naming_it(lake):
    materialize(lake, VIEW)
    d = build_dataset(lake, VIEW, LABELS, name="wear")
    path = Path(d["path"])
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(DatasetIntegrityError, match=str(path)):
        load_dataset(lake, "wear", d["version"])
    # Rebuilding the same inputs restores the file under the same version.
    assert build_dataset(lake, VIEW, LABELS, name="wear")["version"] == d["version"]
    assert load_dataset(lake, "wear", d["version"]).num_rows == 4
    path.unlink()
    with pytest.raises(DatasetIntegrityError, match="no file"):
        load_dataset(lake, "wear", d["version"])


def test_bad_inputs_are_refused(lake):
    with pytest.raises(InvalidFeatureViewError, match="no materialization run"):
        build_dataset(lake, VIEW, LABELS, name="wear")
    materialize(lake, VIEW)
    with pytest.raises(InvalidFeatureViewError, match="'label' column"):
        build_dataset(lake, VIEW, LABELS.drop_columns(["label"]), name="wear")
    with pytest.raises(InvalidFeatureViewError, match="name '../x'"):
        build_dataset(lake, VIEW, LABELS, name="../x")
    with pytest.raises(InvalidFeatureViewError, match="'asof'"):
        build_dataset(lake, VIEW, LABELS, name="wear", semantics="asof")
    assert list_datasets(lake) == []
