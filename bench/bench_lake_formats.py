"""Lake formats: Delta Lake (deltalake) beside the Parquet + SQLite-manifest lake and raw pyarrow.

Run: python bench/bench_lake_formats.py [--quick] [--appends 200] [--devices 50] [--seed 1] [--dir PATH]

One set of generated telemetry appends (hub.storage.lake.SCHEMA; each append is one hub fetch of
1-5 device batches, 2,000-20,000 rows in all; one in ten is a backlog from 3-50 hours earlier) is
written by every side; tables are built before the clock starts except where a side's own
conversion is part of its path (the lake and Delta paths both time batches_to_table).

  (a) append rate: write_deltalake(append, partition_by=date) and the prototype's idempotent
      append (hub/storage/delta.py), beside the Parquet lake's stage + publish, the full
      Store.commit (ledger + manifest, one SQLite transaction) and, the reference, a raw
      pyarrow.parquet.write_table of the same rows (zstd everywhere, one file per date and append).
  (b) two writer processes appending to one Delta table at once: rows present exactly once,
      commit retries (commitInfo.operationMetrics.num_retries) counted from the log.
  (c) time travel: reading the version half-way through beside reading the latest.
  (d) erasure: DeltaTable.delete of one device beside rewriting by hand every lake file holding it.
  (e) compaction: optimize.compact; DuckDB query time over the table's files before and after.
      DuckDB's delta extension cannot be installed offline, so DuckDB reads
      read_parquet([DeltaTable.file_uris()], hive_partitioning=true); a delta-rs table has no
      deletion vectors, so the file list is the version's complete content.
  (f) exactly-once: re-committing appends whose app transaction (writer_id, version) is already
      in the log, with write_deltalake alone and through the prototype's check.

Stores go under --dir (default: a temp dir on the same disk as /tmp; on tmpfs fsync is free).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from figures import ROOT, emit, note

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from hub.storage.delta import ZSTD, DeltaLake, with_date
from hub.storage.lake import Lake, batches_to_table
from hub.storage.store import Store
from protocol import Batch, BatchHeader, Kind, Readings

TENANT = "bench"
CHANNELS = ("temp", "humidity", "vib_x", "vib_y")
START_US = 1_750_000_000_000_000
RECEIVED_US = START_US + 10 * 86_400_000_000
CONTEXT = "context: issue 4 sets no goal for this figure"


def make_appends(n: int, devices: int, seed: int) -> list[list[Batch]]:
    """n fetches of 1-5 device batches, 2,000-20,000 readings each fetch; 10% are late backlogs."""
    rng = np.random.default_rng(seed)
    clock = {d: START_US for d in range(devices)}
    seq = {d: 0 for d in range(devices)}
    appends = []
    for _ in range(n):
        total = int(rng.integers(2_000, 20_001))
        k = int(rng.integers(1, 6))
        sizes = np.full(k, total // k)
        sizes[0] += total - sizes.sum()
        fetch = []
        for size in sizes:
            d = int(rng.integers(devices))
            ticks = int(size) // len(CHANNELS)
            late = rng.random() < 0.1
            t0 = clock[d] - int(rng.integers(3, 51)) * 3_600_000_000 if late else clock[d]
            ts = t0 + np.repeat(np.arange(ticks, dtype=np.int64) * 10_000_000, len(CHANNELS))
            if not late:
                clock[d] = int(ts[-1]) + 10_000_000
            seq[d] += 1
            n_r = ticks * len(CHANNELS)
            readings = Readings(CHANNELS, np.tile(np.arange(len(CHANNELS), dtype=np.uint16), ticks), ts,
                                rng.normal(20.0, 5.0, n_r))
            header = BatchHeader(TENANT, f"dev-{d:03d}", Kind.TELEMETRY, 1, seq[d], int(ts.min()), int(ts.max()), n_r)
            fetch.append(Batch(header, readings))
        appends.append(fetch)
    return appends


def rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds else float("inf")


def run_raw(root: Path, tables: list[pa.Table]) -> float:
    """The reference: pyarrow.parquet.write_table, one file per date per append, no manifest."""
    started = time.perf_counter()
    for i, t in enumerate(tables):
        days = t.column("ts").cast(pa.int64()).to_numpy() // 86_400_000_000
        for day in np.unique(days):
            folder = root / f"date={int(day)}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(t.filter(pa.array(days == day)), folder / f"part-{i}.parquet", compression="zstd")
    return time.perf_counter() - started


def run_lake(root: Path, appends: list[list[Batch]]) -> float:
    lake = Lake(root)
    started = time.perf_counter()
    for fetch in appends:
        lake.publish(lake.stage(batches_to_table(fetch, received_us=RECEIVED_US)))
    return time.perf_counter() - started


def run_store(root: Path, appends: list[list[Batch]]) -> float:
    store = Store(root)
    try:
        started = time.perf_counter()
        for fetch in appends:
            store.commit(fetch, received_us=RECEIVED_US)
        return time.perf_counter() - started
    finally:
        store.close()


def run_delta_raw(uri: str, appends: list[list[Batch]]) -> float:
    started = time.perf_counter()
    for fetch in appends:
        write_deltalake(uri, with_date(batches_to_table(fetch, received_us=RECEIVED_US)), mode="append",
                        partition_by=["date"], writer_properties=ZSTD)
    return time.perf_counter() - started


def run_delta_proto(lake: DeltaLake, appends: list[list[Batch]], writer_id: str = "w0") -> float:
    started = time.perf_counter()
    for v, fetch in enumerate(appends):
        if not lake.append(batches_to_table(fetch, received_us=RECEIVED_US), writer_id=writer_id, txn_version=v):
            raise RuntimeError(f"txn {v} was skipped")
    return time.perf_counter() - started


def duck_count(con: duckdb.DuckDBPyConnection, source: str) -> tuple[int, int]:
    return con.execute(f"SELECT count(*), count(DISTINCT (device, seq, channel, ts)) FROM {source}").fetchone()


QUERY = ("SELECT device, date, avg(value), max(value) FROM {src} WHERE channel = 'vib_x' "
         "GROUP BY device, date ORDER BY device, date")


def time_query(source: str, repeats: int) -> float:
    times = []
    with duckdb.connect() as con:
        for _ in range(repeats):
            started = time.perf_counter()
            con.execute(QUERY.format(src=source)).fetchall()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


CHILD = textwrap.dedent("""
    import os, pickle, sys, time
    sys.path.insert(0, {root!r})
    from hub.storage.delta import DeltaLake
    tables = pickle.load(open(sys.argv[2], "rb"))
    lake = DeltaLake({uri!r})
    t0 = time.perf_counter()
    for v, t in enumerate(tables):
        assert lake.append(t, writer_id=sys.argv[1], txn_version=v)
    print(time.perf_counter() - t0, flush=True)
    os._exit(0)  # skip interpreter teardown (see hub/storage/delta.py on exit-time aborts)
""")


def concurrent(base: Path, tables: list[pa.Table]) -> dict:
    import pickle

    lake = DeltaLake(base / "delta-concurrent")
    lake.create()
    halves = [tables[0::2], tables[1::2]]
    files = []
    for i, half in enumerate(halves):
        files.append(base / f"half{i}.pkl")
        with open(files[-1], "wb") as f:
            pickle.dump(half, f)
    code = CHILD.format(root=str(ROOT), uri=lake.uri)
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code, f"w{i}", str(files[i])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    errors = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        if p.returncode != 0:
            errors.append(err.decode()[-500:])
    elapsed = time.perf_counter() - started
    history = lake.table().history()
    retries = sum(int((h.get("operationMetrics") or {}).get("num_retries", 0)) for h in history)
    retried = sum(1 for h in history if int((h.get("operationMetrics") or {}).get("num_retries", 0)) > 0)
    with duckdb.connect() as con:
        rows, distinct = duck_count(con, lake.duckdb_source())
    return {"seconds": elapsed, "rows": rows, "distinct": distinct, "errors": errors, "retries": retries,
            "retried_commits": retried, "commits": lake.version(),
            "txn": [lake.committed_txn("w0"), lake.committed_txn("w1")],
            "expected_txn": [len(halves[0]) - 1, len(halves[1]) - 1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="40 appends, 20 devices, 1 query repeat")
    p.add_argument("--appends", type=int, default=200)
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.appends, args.devices = 40, 20
    repeats = 1 if args.quick else 3
    base = Path(tempfile.mkdtemp(prefix="bench-lake-", dir=args.dir))
    try:
        _run(args, base, repeats)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # deltalake 1.6.6 can abort at interpreter exit (delta-rs #2184); results are out


def _run(args: argparse.Namespace, base: Path, repeats: int) -> None:
    note(f"generating {args.appends} appends over {args.devices} devices")
    appends = make_appends(args.appends, args.devices, args.seed)
    tables = [batches_to_table(f, received_us=RECEIVED_US) for f in appends]
    rows = sum(t.num_rows for t in tables)
    note(f"{rows} rows; stores under {base}")

    # (a) append rate
    t_raw = run_raw(base / "raw", tables)
    t_lake = run_lake(base / "lake", appends)
    t_store = run_store(base / "store", appends)
    t_delta = run_delta_raw(str(base / "delta-raw"), appends)
    proto = DeltaLake(base / "delta")
    t_proto = run_delta_proto(proto, appends)
    ref = rate(rows, t_raw)
    ref_name = "pyarrow.parquet.write_table, same rows, zstd, one file per date and append (rows/s)"
    common = {"appends": args.appends, "rows": rows}
    emit("delta append rate: write_deltalake(append, partition_by=date)", rate(rows, t_delta), "rows/s",
         reference=ref_name, reference_value=ref, goal=CONTEXT, meets_goal=None, **common)
    emit("delta append rate: prototype append (txn check + app transaction)", rate(rows, t_proto), "rows/s",
         reference=ref_name, reference_value=ref, goal=CONTEXT, meets_goal=None,
         ms_per_append=1000 * t_proto / args.appends, **common)
    emit("parquet lake append rate: batches_to_table + Lake.stage + publish (fsync)", rate(rows, t_lake), "rows/s",
         reference=ref_name, reference_value=ref, goal=CONTEXT, meets_goal=None, **common)
    emit("parquet lake append rate: full Store.commit (ledger + manifest, exactly-once)", rate(rows, t_store),
         "rows/s", reference=ref_name, reference_value=ref, goal=CONTEXT, meets_goal=None,
         ms_per_append=1000 * t_store / args.appends, **common)
    files_delta = len(proto.files())
    files_lake = sum(1 for _ in (base / "lake").glob("telemetry/date=*/*.parquet"))
    note(f"files: delta {files_delta}, parquet lake {files_lake}, versions {proto.version()}")

    # (b) two writer processes at once
    note("two writer processes appending to one Delta table")
    c = concurrent(base, tables)
    ok = c["rows"] == rows and c["distinct"] == rows and not c["errors"] and c["txn"] == c["expected_txn"] \
        and c["commits"] == args.appends
    emit("delta: two processes appending at once (rows/s, both together)", rate(rows, c["seconds"]), "rows/s",
         reference="one process, prototype append, same rows (rows/s)", reference_value=rate(rows, t_proto),
         goal="every row present exactly once, every commit in the log, no error", meets_goal=ok,
         rows_expected=rows, rows_found=c["rows"], distinct_found=c["distinct"], commits=c["commits"],
         commit_retries=c["retries"], retried_commits=c["retried_commits"], errors=len(c["errors"]),
         includes="two interpreter starts and the imports")

    # (c) time travel
    latest = proto.version()
    mid = latest // 2
    t_mid, t_latest = [], []
    for _ in range(repeats):
        s = time.perf_counter()
        n_mid = proto.read(mid).num_rows
        t_mid.append(time.perf_counter() - s)
        s = time.perf_counter()
        n_latest = proto.read().num_rows
        t_latest.append(time.perf_counter() - s)
    emit("delta time travel: read as of the version half-way (load log + read)", statistics.median(t_mid) * 1000,
         "ms", reference="read latest version, same path (ms)", reference_value=statistics.median(t_latest) * 1000,
         goal=CONTEXT, meets_goal=None, version=mid, latest=latest, rows_at_version=n_mid, rows_latest=n_latest,
         per_row_ratio=(statistics.median(t_mid) / max(n_mid, 1)) / (statistics.median(t_latest) / n_latest))

    # (f) exactly-once through app transactions (before delete/compact change the table)
    redo = min(10, args.appends)
    before = proto.read().num_rows
    s = time.perf_counter()
    skipped = sum(not proto.append(tables[v], writer_id="w0", txn_version=v) for v in range(args.appends - redo,
                                                                                           args.appends))
    t_skip = time.perf_counter() - s
    after_proto = proto.read().num_rows
    dup = DeltaLake(base / "delta-dup")  # write_deltalake alone, each txn committed, then redelivered
    for round_ in range(2):
        if round_ == 1:
            rows_first = dup.read().num_rows
        for v in range(redo):
            props = CommitProperties(app_transactions=[Transaction(app_id="w0", version=v)])
            write_deltalake(dup.uri, with_date(tables[v]), mode="append", partition_by=["date"],
                            writer_properties=ZSTD, commit_properties=props)
    dup_raw = dup.read().num_rows - rows_first
    emit("delta exactly-once: rows added by re-appending committed txns through the prototype",
         after_proto - before, "rows", reference="rows added when write_deltalake alone re-commits the same "
         f"{redo} committed (app_id, version) txns", reference_value=dup_raw,
         goal="0 rows added: a committed (writer_id, txn_version) is detected and skipped",
         meets_goal=(after_proto == before and skipped == redo), redelivered=redo, skipped=skipped,
         ms_per_skipped_append=1000 * t_skip / redo)

    # (e) compaction + DuckDB query, before and after (delete later, so both see the same rows)
    lake_src = f"read_parquet('{base}/lake/telemetry/date=*/*.parquet', hive_partitioning = true)"
    q_lake = time_query(lake_src, repeats)
    files_before = len(proto.files())
    q_before = time_query(proto.duckdb_source(), repeats)
    s = time.perf_counter()
    metrics = proto.compact()
    t_compact = time.perf_counter() - s
    files_after = len(proto.files())
    q_after = time_query(proto.duckdb_source(), repeats)
    with duckdb.connect() as con:
        n_after, d_after = duck_count(con, proto.duckdb_source())
    emit("delta DuckDB query after optimize.compact", q_after * 1000, "ms",
         reference="same query, same table before compaction (ms)", reference_value=q_before * 1000,
         goal=CONTEXT, meets_goal=None, files_before=files_before, files_after=files_after,
         compact_s=t_compact, partitions=metrics.get("partitionsOptimized"), rows_after=n_after,
         rows_unchanged=(n_after == n_latest == d_after), reader="duckdb read_parquet over DeltaTable.file_uris()")
    emit("parquet lake DuckDB query (glob, never compacted)", q_lake * 1000, "ms",
         reference="same query, Delta table before compaction (ms)", reference_value=q_before * 1000,
         goal=CONTEXT, meets_goal=None, files=files_lake)

    # (d) erasure of one device
    victim = "dev-000"
    s = time.perf_counter()
    m = proto.delete_device(TENANT, victim)
    t_del = time.perf_counter() - s
    s = time.perf_counter()
    rewritten = 0
    for f in (base / "lake").glob("telemetry/date=*/*.parquet"):
        t = pq.read_table(f)
        keep = t.filter(pc.not_equal(t.column("device"), victim))
        if keep.num_rows != t.num_rows:
            pq.write_table(keep, f.with_suffix(".rewrite"), compression="zstd")
            os.replace(f.with_suffix(".rewrite"), f)
            rewritten += 1
    t_hand = time.perf_counter() - s
    still = proto.read(latest).column("device").to_pylist().count(victim)
    emit("delta erasure: DeltaTable.delete of one device (after compaction)", t_del * 1000, "ms",
         reference="parquet lake: read every file, rewrite those holding the device (no atomicity, ms)",
         reference_value=t_hand * 1000, goal=CONTEXT, meets_goal=None, deleted_rows=m.get("num_deleted_rows"),
         files_rewritten_delta=m.get("num_added_files"), files_rewritten_lake=rewritten,
         rows_still_in_time_travel=still)


if __name__ == "__main__":
    main()
