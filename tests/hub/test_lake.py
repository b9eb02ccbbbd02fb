"""The Delta lake (hub/storage/lake.py): late rows in their dates, time travel, erasure, compaction,
the change feed, the import of a pre-Delta lake, and two processes appending at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hub.storage.lake import LEGACY_DIR, SCHEMA, Lake

ROOT = Path(__file__).resolve().parents[2]
DAY_US = 86_400_000_000
T0 = 1_700_000_000_000_000 // DAY_US * DAY_US  # midnight UTC, 2023-11-14


def rows(device: str, start_us: int, n: int, *, seq: int = 1, tenant: str = "t1") -> pa.Table:
    ts = start_us + np.arange(n, dtype=np.int64) * 1_000_000
    return pa.Table.from_arrays([
        pa.array([tenant] * n), pa.array([device] * n), pa.array(["telemetry"] * n), pa.array(["temp"] * n),
        pa.array(ts, pa.timestamp("us", tz="UTC")), pa.array(np.arange(n, dtype=np.float64)),
        pa.array(np.ones(n, np.int64)), pa.array(np.full(n, seq, np.int64)),
        pa.array(np.full(n, start_us, np.int64), pa.timestamp("us", tz="UTC")),
    ], schema=SCHEMA)


def keys(table: pa.Table) -> list[tuple]:
    return sorted(zip(*(table.column(c).to_pylist() for c in ("device", "seq", "ts"))))


def count(lake: Lake, version: int | None = None, where: str = "") -> int:
    with duckdb.connect() as con:
        return con.execute(f"SELECT count(*) FROM {lake.duckdb_source(version)} {where}").fetchone()[0]


def test_late_rows_land_in_their_date_and_time_travel_predates_them(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    v1 = lake.append(rows("d1", T0, 100), writer_id="w", txn_version=1)
    v2 = lake.append(rows("d1", T0 - 2 * DAY_US, 50, seq=2), writer_id="w", txn_version=2)  # a 2-day backlog
    assert v2 == v1 + 1 and lake.committed_txn("w") == 2
    parts = sorted(p.name for p in lake.path.iterdir() if p.name.startswith("date="))
    assert parts == ["date=2023-11-12", "date=2023-11-14"]
    assert count(lake, v1) == 100 and count(lake) == 150
    assert count(lake, where="WHERE date = DATE '2023-11-12'") == 50  # the hive partition column
    assert lake.read(v1).num_rows == 100 and lake.read().num_rows == 150


def test_delete_device_erases_latest_and_time_travel_keeps_it_until_vacuum(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.append(rows("keep", T0, 100))
    before = lake.append(rows("erase", T0, 100))
    lake.delete_device("t1", "erase")
    assert count(lake) == 100 and count(lake, where="WHERE device = 'erase'") == 0
    assert count(lake, before, "WHERE device = 'erase'") == 100  # the past version still has them
    removed = lake.vacuum(retention_hours=0)
    assert removed  # the files that held the erased rows are gone from disk
    assert count(lake) == 100


def test_compact_merges_small_files_and_keeps_every_row(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    for v in range(12):
        lake.append(rows("d1", T0 + v * 10**9, 200, seq=v), writer_id="w", txn_version=v)
    before = lake.read()
    assert len(lake.files()) == 12
    lake.compact()
    assert len(lake.files()) == 1
    assert keys(lake.read()) == keys(before)
    assert lake.committed_txn("w") == 11  # compaction keeps the writers' txn records


def test_changes_list_each_append_once_and_skip_compaction_and_deletes(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    created = lake.version()
    a = lake.append(rows("d1", T0, 10))
    b = lake.append(rows("d1", T0 - DAY_US, 20, seq=2))  # two dates: one file each
    lake.compact()
    lake.delete_device("t1", "nobody")
    c = lake.append(rows("d2", T0, 5))
    got = lake.changes(created)
    assert [(ch.version, ch.rows, len(ch.files)) for ch in got] == [(a, 10, 1), (b, 20, 1), (c, 5, 1)]
    assert [ch.version for ch in lake.changes(b)] == [c]
    assert lake.changes(c) == []
    assert sum(pq.read_metadata(f).num_rows for ch in got for f in ch.files) == 35


def test_a_pre_delta_parquet_lake_is_moved_aside_and_imported(tmp_path: Path) -> None:
    old = tmp_path / "telemetry" / "date=2023-11-14"
    old.mkdir(parents=True)
    legacy = rows("d1", T0, 30).cast(SCHEMA.set(6, pa.field("epoch", pa.uint32())).set(7, pa.field("seq", pa.uint64())))
    pq.write_table(legacy, old / "part-1.parquet")
    lake = Lake(tmp_path)
    lake.prepare()
    assert lake.exists() and (tmp_path / LEGACY_DIR / "date=2023-11-14" / "part-1.parquet").exists()
    assert keys(lake.read()) == keys(rows("d1", T0, 30))
    lake.prepare()  # idempotent
    assert lake.read().num_rows == 30


CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from test_lake import rows, T0
    from hub.storage.lake import Lake
    lake = Lake({root_dir!r})
    w = sys.argv[1]
    for v in range({n}):
        lake.append(rows(w, T0 + v * 10**9, 500, seq=v), writer_id=w, txn_version=v)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: see the note on reads in hub/storage/lake.py
""")


def test_two_processes_appending_at_once_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.prepare()
    n = 15
    code = CHILD.format(root=str(ROOT), tests=str(Path(__file__).parent), root_dir=str(tmp_path), n=n)
    procs = [subprocess.Popen([sys.executable, "-c", code, w], stderr=subprocess.PIPE) for w in ("wa", "wb")]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()[-2000:]
    got = lake.read()
    assert got.num_rows == 2 * n * 500
    assert len(set(keys(got))) == got.num_rows
    assert lake.version() == 2 * n  # create + one commit per append, none lost
    assert lake.committed_txn("wa") == n - 1 and lake.committed_txn("wb") == n - 1
