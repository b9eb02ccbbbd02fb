"""The Delta Lake prototype (hub/storage/delta.py): idempotent appends, late rows, time travel,
erasure, and two processes appending at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import deltalake  # noqa: E402,F401  (the hub extra installs it; a missing one is a failure, not a skip)

from hub.storage.delta import DeltaLake  # noqa: E402
from hub.storage.lake import SCHEMA  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DAY_US = 86_400_000_000
T0 = 1_700_000_000_000_000 // DAY_US * DAY_US  # midnight UTC, 2023-11-14


def rows(device: str, start_us: int, n: int, *, seq: int = 1, tenant: str = "t1") -> pa.Table:
    ts = start_us + np.arange(n, dtype=np.int64) * 1_000_000
    return pa.Table.from_arrays([
        pa.array([tenant] * n), pa.array([device] * n), pa.array(["telemetry"] * n), pa.array(["temp"] * n),
        pa.array(ts, pa.timestamp("us", tz="UTC")), pa.array(np.arange(n, dtype=np.float64)),
        pa.array(np.ones(n, np.uint32)), pa.array(np.full(n, seq, np.uint64)),
        pa.array(np.full(n, start_us, np.int64), pa.timestamp("us", tz="UTC")),
    ], schema=SCHEMA)


def keys(table: pa.Table) -> list[tuple]:
    return sorted(zip(*(table.column(c).to_pylist() for c in ("device", "seq", "ts"))))


def test_reappending_a_committed_txn_version_is_a_noop(tmp_path: Path) -> None:
    lake = DeltaLake(tmp_path / "t")
    batch = rows("d1", T0, 100)
    assert lake.append(batch, writer_id="w1", txn_version=1)
    assert not lake.append(batch, writer_id="w1", txn_version=1)  # a redelivery after a crash
    assert not lake.append(batch, writer_id="w1", txn_version=0)  # older than the last committed
    assert lake.append(batch, writer_id="w2", txn_version=1)  # another writer's counter
    assert lake.committed_txn("w1") == 1 and lake.committed_txn("w2") == 1
    assert lake.read().num_rows == 200


def test_late_rows_land_in_their_date_and_time_travel_predates_them(tmp_path: Path) -> None:
    lake = DeltaLake(tmp_path / "t")
    lake.append(rows("d1", T0 + 2 * DAY_US + 3600 * 10**6, 50), writer_id="w", txn_version=1)
    before = lake.version()
    lake.append(rows("d1", T0 + 23 * 3600 * 10**6, 7200, seq=2), writer_id="w", txn_version=2)  # 2 h, 2 days late
    dates = sorted(p.name for p in (tmp_path / "t").glob("date=*"))
    assert dates == ["date=2023-11-14", "date=2023-11-15", "date=2023-11-16"]
    with duckdb.connect() as con:
        by_day = con.execute(
            f"SELECT date, count(*), min(ts) >= date, max(ts) < date + 1 FROM {lake.duckdb_source()} "
            "GROUP BY date ORDER BY date").fetchall()
    assert [(str(d), n, lo, hi) for d, n, lo, hi in by_day] == [
        ("2023-11-14", 3600, True, True), ("2023-11-15", 3600, True, True), ("2023-11-16", 50, True, True)]
    assert lake.read(before).num_rows == 50
    assert set(lake.read(before).column("seq").to_pylist()) == {1}
    assert lake.read().num_rows == 7250


def test_delete_device_erases_latest_and_time_travel_keeps_it_until_vacuum(tmp_path: Path) -> None:
    lake = DeltaLake(tmp_path / "t")
    lake.append(rows("d1", T0, 100), writer_id="w", txn_version=1)
    lake.append(rows("d2", T0, 100), writer_id="w", txn_version=2)
    lake.append(rows("o'd", T0, 10), writer_id="w", txn_version=3)  # a quote in the name
    before = lake.version()
    assert lake.delete_device("t1", "d1")["num_deleted_rows"] == 100
    assert lake.delete_device("t1", "o'd")["num_deleted_rows"] == 10
    assert set(lake.read().column("device").to_pylist()) == {"d2"}
    assert lake.read(before).column("device").to_pylist().count("d1") == 100
    lake.vacuum(retention_hours=0)
    assert set(lake.read().column("device").to_pylist()) == {"d2"}
    with pytest.raises(Exception):  # the files version `before` named are gone
        lake.read(before)


def test_compact_merges_small_files_and_keeps_every_row(tmp_path: Path) -> None:
    lake = DeltaLake(tmp_path / "t")
    for i in range(12):
        lake.append(rows("d1", T0 + i * 1000 * 10**6, 1000, seq=i), writer_id="w", txn_version=i)
    before = keys(lake.read())
    assert len(lake.files()) == 12
    metrics = lake.compact()
    assert metrics["numFilesRemoved"] == 12 and len(lake.files()) == 1
    assert keys(lake.read()) == before
    assert lake.committed_txn("w") == 11  # compaction keeps the app transactions


CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from test_delta import rows, T0
    from hub.storage.delta import DeltaLake
    lake = DeltaLake({table!r})
    w = sys.argv[1]
    for v in range({n}):
        assert lake.append(rows(w, T0 + v * 10**9, 500, seq=v), writer_id=w, txn_version=v)
    assert not lake.append(rows(w, T0, 500, seq=0), writer_id=w, txn_version={n} - 1)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: see the note on reads in hub/storage/delta.py
""")


def test_two_processes_appending_at_once_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    lake = DeltaLake(tmp_path / "t")
    lake.create()
    n = 15
    code = CHILD.format(root=str(ROOT), tests=str(Path(__file__).parent), table=lake.uri, n=n)
    procs = [subprocess.Popen([sys.executable, "-c", code, w], stderr=subprocess.PIPE) for w in ("wa", "wb")]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()[-2000:]
    got = lake.read()
    assert got.num_rows == 2 * n * 500
    assert len(set(keys(got))) == got.num_rows
    assert lake.version() == 2 * n  # create + one commit per append, none lost
    assert lake.committed_txn("wa") == n - 1 and lake.committed_txn("wb") == n - 1
