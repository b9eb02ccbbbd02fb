"""Point-in-time retrieval and online gets of the feature store, beside DuckDB and raw SQLite.

Run: python bench/bench_features.py [--quick] [--devices 1000] [--windows 1000] [--labels 100000] [--gets 10000]

Figures, each beside a reference from the same run:

* `point_in_time[event]`, `point_in_time[arrival]`: labels/s of `hub.features.point_in_time`
  over one materialized run of 1M feature rows (1,000 devices x 1,000 one-minute windows, 8
  float64 features) for 100k labels, beside a hand-written DuckDB `ASOF LEFT JOIN` straight on
  the run's Parquet file (goal: >= 0.5x its speed). Both answers must be identical (same window
  for every label, same feature values, in label order), and the labels before a device's first
  visible window must come back with null features, counted, never dropped; the counts are
  checked against numpy. Median of `--repeats` timed runs each, ours and the reference alternating.
* `online_get_p99`: one device's vector through `OnlineStore.get` (a dict by feature name),
  p99 over `--gets` calls, beside a raw SQLite primary-key SELECT of the same row on its own
  connection (goal: within 5x); `online_get_p50` for context.

The data is synthetic and written as a materialized run the way hub/features/offline.py writes
one (feature_schema, zstd Parquet under view_dir/run=<id>/part-0.parquet, recorded in the
registry), so `point_in_time` reads it as it would a real run. Devices start at random offsets
(up to 100 windows), so some labels come before a device's first window. Windows arrive 1-5 s
after they end, except in 3 backlogs per device that arrive together hours late and drain in
order, 1 ms apart.

Why the arrival reference is exact here: a single-inequality ASOF on
greatest(event_time, available_at) gives the latest visible window only when available_at never
decreases with event_time on a device (FIFO backlog drain, as generated). Retrieval does not
assume that (it builds a frontier first, see retrieval.py); the reference is the practical speed
limit on data where both are right.

Measured here (2 shared cores, default sizes, ~12 s in all; --quick ~2 s): answers identical,
~4.4% of labels null in both; point_in_time ~0.49x the reference for event semantics and
~0.36x for arrival, so the 0.5x goal is not met. Most of ours (~0.65 of ~0.93 s) is
retrieval.py's `_snapshot`: it composes runs with a `QUALIFY row_number()` over every feature
row and hands the 1M rows to Arrow before the ASOF join, even for a single run; the arrival
frontier's window function adds the rest. Skipping the dedupe when the runs cannot overlap, or
doing it inside the ASOF query, is the fix (retrieval.py, not this file). Online get: p99 ~2x
the raw lookup (goal met): the rest is the lock and building the dict.

Feast is not installed and is not measured (it is not a dependency; installing it is out of
scope here): every figure says so in its `feast` field.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from figures import emit, note

from hub.features import FeatureRegistry, FeatureView, OnlineStore, feature_schema, point_in_time, view_dir
from protocol.features import Aggregate, FeatureSpec

S = 1_000_000
W = 60 * S
T0 = 1_700_006_400_000_000  # 2023-11-15T00:00:00Z
SPEC = FeatureSpec(window_us=W, channels=("temp", "vib"),
                   aggregates=(Aggregate.MEAN, Aggregate.STD, Aggregate.MIN, Aggregate.MAX), min_samples=1)
VIEW = FeatureView("bench_features", SPEC, owner="bench", description="Synthetic rows for bench_features.py.")
FEAST = "measured in bench/bench_feast.py (Feast runs in its own venv)"
MAX_OFFSET = 100  # windows: a device's first window starts this many windows after T0 at most
BACKLOGS = 3  # per device
BACKLOG_WINDOWS = 30  # each backlog holds up to this many windows


def synthetic_run(data_dir: Path, *, devices: int, windows: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    """Write and record one run of VIEW; returns the table and each device's first event_time."""
    rng = np.random.default_rng(seed)
    offset = rng.integers(0, MAX_OFFSET, devices)
    k = offset[:, None] + np.arange(windows)[None, :]  # window index per (device, window)
    start = T0 + k * W
    event = start + W
    available = event + rng.integers(1 * S, 5 * S, (devices, windows))
    for _ in range(BACKLOGS):
        a = rng.integers(0, max(1, windows - BACKLOG_WINDOWS), devices)
        n = rng.integers(1, BACKLOG_WINDOWS + 1, devices)
        late = rng.integers(1, 6, devices) * 3600 * S
        for d in range(devices):
            hi = min(windows, a[d] + n[d])
            # The device comes back `late` after its last buffered window; the backlog drains in order.
            available[d, a[d]:hi] = event[d, hi - 1] + late[d] + np.arange(hi - a[d]) * 1000
    # Live windows sent after a backlog still arrive after it (FIFO): arrival never goes back;
    # + 1 µs per window makes it strictly increasing, so the reference's ASOF has no ties to break.
    available = np.maximum.accumulate(available, axis=1) + np.arange(windows)[None, :]

    names = [f"d{i:05d}" for i in range(devices)]
    rows = devices * windows
    schema = feature_schema(VIEW)
    cols: dict[str, pa.Array] = {
        "tenant": pa.array(np.full(rows, "acme", dtype=object), pa.string()),
        "device": pa.array(np.repeat(np.array(names, dtype=object), windows), pa.string()),
        "window_start": pa.array(start.ravel()),
        "event_time": pa.array(event.ravel()),
        "available_at": pa.array(available.ravel()),
        "materialized_at": pa.array(np.full(rows, T0 + 10_000 * W)),
    }
    for name in VIEW.feature_names:
        cols[name] = pa.array(rng.normal(size=rows))
    table = pa.Table.from_pydict(cols, schema=schema)

    run_id = f"{T0 + 10_000 * W:017d}-bench000"
    with FeatureRegistry(data_dir) as registry:
        registry.register(VIEW, now_us=T0)
        final = view_dir(data_dir, VIEW) / f"run={run_id}"
        final.mkdir(parents=True)
        with open(final / "part-0.parquet", "wb") as f:
            pq.write_table(table, f, compression="zstd")
        registry.record_run(VIEW, run_id=run_id, materialized_us=T0 + 10_000 * W, since_us=None, until_us=None,
                            rows_read=0, rows_written=rows, path=final, files=())
    first_visible = np.maximum(event[:, 0], available[:, 0])
    return table, np.stack([event[:, 0], first_visible])


def make_labels(*, devices: int, windows: int, labels: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed + 1)
    device = rng.integers(0, devices, labels)
    ts = T0 + rng.integers(0, (MAX_OFFSET + windows + 60) * W, labels)
    return pa.table({
        "label_id": pa.array(np.arange(labels)),
        "tenant": pa.array(np.full(labels, "acme", dtype=object), pa.string()),
        "device": pa.array([f"d{i:05d}" for i in device], pa.string()),
        "ts_us": pa.array(ts),
    })


def reference_sql(path: Path, semantics: str) -> str:
    names = ", ".join(f'f."{n}"' for n in VIEW.feature_names)
    key = "f.event_time" if semantics == "event" else "f.visible"
    return f"""
        SELECT l.label_id, l.tenant, l.device, l.ts_us, f.window_start AS feature_window_start,
               f.event_time AS feature_event_time, f.available_at AS feature_available_at, {names}
        FROM labels l ASOF LEFT JOIN (
            SELECT *, greatest(event_time, available_at) AS visible FROM read_parquet('{path}')
        ) f ON l.tenant = f.tenant AND l.device = f.device AND l.ts_us >= {key}
        ORDER BY l.label_id
    """


def reference(path: Path, labels: pa.Table, semantics: str) -> pa.Table:
    with duckdb.connect() as con:
        con.register("labels", labels)
        return con.sql(reference_sql(path, semantics)).to_arrow_table()


def retrieval(args: argparse.Namespace, data_dir: Path, path: Path, firsts: np.ndarray) -> None:
    labels = make_labels(devices=args.devices, windows=args.windows, labels=args.labels, seed=args.seed)
    device_idx = np.array([int(d[1:]) for d in labels.column("device").to_pylist()])
    ts = labels.column("ts_us").to_numpy()
    compare = ["label_id", "feature_window_start", "feature_event_time", "feature_available_at",
               *VIEW.feature_names]
    for i, semantics in enumerate(("event", "arrival")):
        ours_s, ref_s = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            ours = point_in_time(data_dir, VIEW, labels, semantics=semantics)
            ours_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref = reference(path, labels, semantics)
            ref_s.append(time.perf_counter() - t)
        a = ours.select(compare)
        b = ref.select(compare).cast(a.schema)
        identical = a.num_rows == labels.num_rows and a.equals(b)
        nulls = ours.column("feature_event_time").null_count
        expected_nulls = int((ts < firsts[i][device_idx]).sum())
        if not identical or nulls != expected_nulls or ref.column("feature_event_time").null_count != nulls:
            raise SystemExit(f"point_in_time[{semantics}] differs from the reference: identical={identical}, "
                             f"nulls {nulls} (reference {ref.column('feature_event_time').null_count}, "
                             f"numpy {expected_nulls})")
        ours_rate = labels.num_rows / statistics.median(ours_s)
        ref_rate = labels.num_rows / statistics.median(ref_s)
        emit(f"point_in_time[{semantics}]", ours_rate, "labels/s",
             reference="hand-written DuckDB ASOF LEFT JOIN on the run's Parquet", reference_value=ref_rate,
             goal=">= 0.5x the reference", meets_goal=ours_rate >= 0.5 * ref_rate,
             feature_rows=args.devices * args.windows, labels=labels.num_rows, devices=args.devices,
             seconds=statistics.median(ours_s), reference_seconds=statistics.median(ref_s),
             identical_to_reference=identical, labels_returned=a.num_rows, null_feature_labels=nulls,
             feast=FEAST)


def online(args: argparse.Namespace, data_dir: Path, run_id: str) -> None:
    path = data_dir / "online_features.db"
    with OnlineStore(path) as store:
        t = time.perf_counter()
        loaded = store.update_from_run(data_dir, VIEW, run_id)
        note(f"online store loaded from the run in {time.perf_counter() - t:.2f} s: {loaded}")
        device = f"d{args.devices // 2:05d}"
        raw = sqlite3.connect(path, isolation_level=None)
        sql = ("SELECT vector, window_start, event_time, available_at, updated_at, run_id FROM online_features"
               " WHERE view = ? AND version = ? AND tenant = ? AND device = ?")
        key = (VIEW.name, VIEW.version, "acme", device)
        want = store.get(VIEW, "acme", device)
        row = raw.execute(sql, key).fetchone()
        assert want is not None and row is not None and row[2] == want["event_time"]
        samples: dict[str, list[int]] = {"ours": [], "raw": []}
        for _ in range(1000):  # warm-up: statement cache, pages
            store.get(VIEW, "acme", device)
            raw.execute(sql, key).fetchone()
        rounds = 10
        for _ in range(rounds):  # alternate in rounds so drift hits both alike
            for _ in range(args.gets // rounds):
                t0 = time.perf_counter_ns()
                store.get(VIEW, "acme", device)
                samples["ours"].append(time.perf_counter_ns() - t0)
            for _ in range(args.gets // rounds):
                t0 = time.perf_counter_ns()
                raw.execute(sql, key).fetchone()
                samples["raw"].append(time.perf_counter_ns() - t0)
        raw.close()
    (ours50, ours99), (raw50, raw99) = (np.percentile(np.array(samples[k]) / 1e3, [50, 99]) for k in ("ours", "raw"))
    common = {"gets": len(samples["ours"]), "features": len(VIEW.feature_names), "entities": loaded["entities"],
              "feast": FEAST}
    emit("online_get_p99", ours99, "µs", reference="raw SQLite primary-key SELECT of the same row",
         reference_value=raw99, goal="p99 within 5x of the reference", meets_goal=bool(ours99 <= 5 * raw99),
         **common)
    emit("online_get_p50", ours50, "µs", reference="raw SQLite primary-key SELECT of the same row",
         reference_value=raw50, goal="context only", meets_goal=None, **common)
    redis_online(args, data_dir, run_id, device, raw50=raw50, raw99=raw99)


def redis_online(args: argparse.Namespace, data_dir: Path, run_id: str, device: str, *,
                 raw50: float, raw99: float) -> None:
    """The same gets through RedisOnlineStore against a local redis-server (when installed)."""
    from tests.servers import RedisServer, redis_server_available

    if redis_server_available() is None:
        note("redis-server is not installed: no Redis online-store figures in this run.")
        return
    from hub.features.online_redis import RedisOnlineStore

    server = RedisServer(data_dir / "redis")
    (data_dir / "redis").mkdir()
    server.start()
    try:
        store = RedisOnlineStore(server.url)
        try:
            store.update_from_run(data_dir, VIEW, run_id)
            for _ in range(1000):
                store.get(VIEW, "acme", device)
            took = []
            for _ in range(args.gets):
                t0 = time.perf_counter_ns()
                store.get(VIEW, "acme", device)
                took.append(time.perf_counter_ns() - t0)
        finally:
            store.close()
    finally:
        server.stop()
    p50, p99 = np.percentile(np.array(took) / 1e3, [50, 99])
    emit("online_get_redis_p99", p99, "µs", reference="raw SQLite primary-key SELECT of the same row (loopback"
         " Redis pays a network round trip the in-process SQLite does not)", reference_value=raw99,
         goal="context: Redis is the option for several hub hosts", meets_goal=None, p50=p50, raw_p50=raw50,
         gets=len(took))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="100k feature rows x 10k labels, 2,000 gets")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--windows", type=int, default=1000, help="feature rows per device")
    p.add_argument("--labels", type=int, default=100_000)
    p.add_argument("--gets", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.devices, args.windows, args.labels, args.gets = 200, 500, 10_000, 2000
    with tempfile.TemporaryDirectory(prefix="bench_features-") as d:
        data_dir = Path(d)
        t = time.perf_counter()
        _, firsts = synthetic_run(data_dir, devices=args.devices, windows=args.windows, seed=args.seed)
        with FeatureRegistry(data_dir) as registry:
            (run,) = registry.runs(VIEW.name, VIEW.version)
        note(f"{args.devices * args.windows:,} feature rows written as run {run.run_id} in "
             f"{time.perf_counter() - t:.1f} s")
        retrieval(args, data_dir, run.path / "part-0.parquet", firsts)
        online(args, data_dir, run.run_id)


if __name__ == "__main__":
    main()
