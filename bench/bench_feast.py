"""The feature store beside Feast: point-in-time retrieval, early labels, online gets.

Run: python bench/bench_feast.py [--setup] [--quick] [--sizes 10000,100000,1000000] [--budget 300]
     [--mem-gb GB] [--stores file,duckdb] [--gets 2000] [--repeats 3]

Feast is not a dependency of edgeloop. `--setup` creates bench/.feast-venv (if missing) and
installs bench/feast-requirements.txt into it; Feast's side runs there, as a subprocess of
bench/feast_driver.py reading the same Parquet files. Without that venv this prints one JSON
figure saying Feast is not installed and exits 0.

Data: bench_features.py's generator (`synthetic_run`, `make_labels`), 1,000 one-minute windows per
device, 8 float64 features, devices = feature rows / 1,000, labels = feature rows / 10; devices
start at random offsets, so ~4-5% of labels come before their device's first window.

Figures, each beside a reference from the same run:

* `point_in_time_vs_feast[event]`, one line per size: labels/s of `hub.features.point_in_time`
  (event-time semantics) beside Feast's `get_historical_features(...).to_arrow()` (local provider,
  file offline store, which is Feast's Dask store; TTL 3,650 days so it hides nothing), with the
  hand-written DuckDB `ASOF LEFT JOIN` of bench_features.py in the `duckdb_*` fields.
  `point_in_time_vs_feast_duckdb[event]`: the same beside Feast's DuckDB (ibis) offline store
  (the `feast[duckdb]` extra), which Feast also ships for local use. Ours and the ASOF reference:
  median of `--repeats`, alternating; Feast: one timed call per size and store, in its own process
  (registry applied and modules imported before the clock starts) under a `--budget` (s) and
  `--mem-gb` (RSS; default 90% of MemAvailable at start) cap, killed if it passes either; sizes
  grow until one does not complete, and the line says why in `feast_status`. Every line also
  counts, per label, whether Feast's answer agrees with ours (same 8 feature values).
* `early_labels_vs_feast`, `early_labels_vs_feast_duckdb`: at the largest size each Feast store
  completed, labels returned by ours (all of them; the ones before their device's first window
  with null features) beside rows Feast returned, with counts of labels Feast dropped (and how
  many of those are the early ones) and of agreeing answers.
* `online_get_p99_vs_feast`, `online_get_p50_vs_feast`: one device's vector through
  `OnlineStore.get` beside Feast's `get_online_features(...).to_dict()` on its default SQLite
  online store after `materialize`, `--gets` calls each after 200 warm-up calls, on the largest
  size's data (1,000 devices); a raw SQLite primary-key SELECT of our row in the `raw_sqlite_*`
  fields. Ours and raw alternate in rounds; Feast runs after, in its own process.

Measured here (2 shared cores, 24 GB, no swap; feast 0.67.0, dask 2026.8.0, pandas 2.3.3,
ibis 12; `--setup` ~50 s, venv ~630 MB; a full run ~7 min, --quick ~25 s):

    feature rows x labels   ours      ASOF ref   Feast file (Dask)           Feast DuckDB (ibis)
    10k x 1k (10 dev)       0.057 s   0.050 s    1.2 s                       0.80 s
    100k x 10k (100 dev)    0.102 s   0.100 s    13.1 s, 2.2 GB peak RSS     2.2 s, 1.1 GB
    1M x 100k (1,000 dev)   0.457 s   0.495 s    135.4 s, 20.3 GB peak RSS   21.5 s, 8.0 GB

  (the latest full run, on a quiet machine; under load, earlier runs took Feast's file store 218-236 s
  at 1M and ours 1.6 s.) Feast's file store completed every size, 1M only just: it left-merges
  every label with its device's whole history in memory (100M rows at 1M), peaking at 20.3 GB of
  this machine's 24 GB (with a 12 GB cap it was stopped after 32 s). Ours is ~296x its speed at
  1M and ~47x Feast's DuckDB store.
  Early labels (4,416 of 100k at 1M, before their device's first window): Feast's file store
  DROPS them (95,584 rows back for 100,000 labels, none with null features, every dropped label
  an early one); Feast's DuckDB store keeps them with null features, as ours does. On the labels
  both return, all 95,584 feature vectors are identical to ours for both stores (0 disagree),
  and ours is identical to the ASOF reference. Online get (1,000 devices, 2,000 gets): ours p50
  14 µs / p99 31 µs, raw SQLite 5 / 10 µs, Feast 257 / 520 µs (same vector; materialize 1.8 s).

bench/run_all.py gives this bench 900 s (its default for others is 300 s).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from figures import emit, note
from peer import mem_available_mb, run_driver, setup_venv, size_mb

from bench_features import VIEW, make_labels, reference, synthetic_run
from hub.features import FeatureRegistry, OnlineStore, point_in_time

HERE = Path(__file__).resolve().parent
VENV = HERE / ".feast-venv"
PYTHON = VENV / "bin" / "python"
REQUIREMENTS = HERE / "feast-requirements.txt"
DRIVER = HERE / "feast_driver.py"
WINDOWS = 1000  # feature rows per device, as in bench_features.py
FEAST_NAMES = [n.replace(".", "_") for n in VIEW.feature_names]  # the order feast_driver.FEATURES uses
FEAST_OFFLINE = "Feast get_historical_features(...).to_arrow(), local provider, file (Dask) offline store"
FEAST_ONLINE = "Feast get_online_features(...).to_dict(), default SQLite online store after materialize"
CONTEXT = "context only: no goal is set against Feast"


def setup() -> None:
    setup_venv(VENV, REQUIREMENTS, "Feast")


def driver(command: str, *args: str, budget: float, mem_mb: float) -> tuple[dict | None, str, float]:
    """Run the driver in the Feast venv; (its JSON answer or None, status, peak RSS MB)."""
    return run_driver(PYTHON, DRIVER, command, *args, budget=budget, mem_mb=mem_mb)


def feast_parquet(table: pa.Table, labels: pa.Table, d: Path) -> tuple[Path, Path]:
    """The same rows as Feast reads them: timestamps as timestamp[us, UTC], feature names without dots."""
    ts = pa.timestamp("us", tz="UTC")
    features = pa.table({"device": table.column("device"), "event_timestamp": table.column("event_time").cast(ts),
                         **{f: table.column(n) for f, n in zip(FEAST_NAMES, VIEW.feature_names)}})
    entity = pa.table({"label_id": labels.column("label_id"), "device": labels.column("device"),
                       "event_timestamp": labels.column("ts_us").cast(ts)})
    fpath, lpath = d / "feast_features.parquet", d / "feast_labels.parquet"
    pq.write_table(features, fpath)
    pq.write_table(entity, lpath)
    return fpath, lpath


def compare(ours: pa.Table, feast: pa.Table, early: np.ndarray) -> dict:
    """Per-label agreement between our answer (one row per label, in label order) and Feast's rows."""
    n = ours.num_rows
    ours_vals = np.column_stack([ours.column(c).to_numpy(zero_copy_only=False) for c in VIEW.feature_names])
    ours_null = np.asarray(ours.column(VIEW.feature_names[0]).is_null())
    ids = feast.column("label_id").to_numpy()
    feast_vals = np.column_stack([feast.column(c).to_numpy(zero_copy_only=False) for c in FEAST_NAMES])
    feast_null = np.asarray(feast.column(FEAST_NAMES[0]).is_null())
    returned = np.zeros(n, dtype=np.int64)
    np.add.at(returned, ids, 1)
    both = ~feast_null & ~ours_null[ids]
    same = np.all(feast_vals[both] == ours_vals[ids[both]], axis=1)
    missing = returned == 0
    return {
        "labels_given": n, "feast_rows_returned": int(len(ids)), "feast_labels_returned": int((returned > 0).sum()),
        "feast_duplicate_rows": int((returned[returned > 1] - 1).sum()),
        "feast_null_feature_rows": int(feast_null.sum()),
        "feast_dropped_labels": int(missing.sum()), "feast_dropped_early_labels": int((missing & early).sum()),
        "feast_dropped_other_labels": int((missing & ~early).sum()),
        "early_labels": int(early.sum()), "ours_null_feature_labels": int(ours_null.sum()),
        "agree_same_values": int(same.sum()), "disagree_values": int((~same).sum()),
        "disagree_ours_null_feast_not": int((~feast_null & ours_null[ids]).sum()),
        "disagree_feast_null_ours_not": int((feast_null & ~ours_null[ids]).sum()),
        "agree_both_null": int((feast_null & ours_null[ids]).sum()),
    }


STORES = {  # Feast offline store -> (figure suffix, what the reference is)
    "file": ("", FEAST_OFFLINE),
    "duckdb": ("_duckdb", "Feast get_historical_features(...).to_arrow(), local provider, DuckDB (ibis) offline store"),
}


def retrieval(args: argparse.Namespace, tmp: Path, versions: str) -> tuple[Path, str, int]:
    """Every size; returns the last size's data dir, run id and device count (for the online gets)."""
    failed: dict[str, str] = {}  # offline store -> why a smaller size did not complete
    largest: dict[str, dict] = {}  # offline store -> its largest completed size
    for rows in args.sizes:
        devices = rows // WINDOWS
        data_dir = tmp / f"rows{rows}"
        t = time.perf_counter()
        table, firsts = synthetic_run(data_dir, devices=devices, windows=WINDOWS, seed=args.seed)
        labels = make_labels(devices=devices, windows=WINDOWS, labels=rows // 10, seed=args.seed)
        with FeatureRegistry(data_dir) as registry:
            (run,) = registry.runs(VIEW.name, VIEW.version)
        path = run.path / "part-0.parquet"
        note(f"{rows:,} feature rows ({devices} devices) and {labels.num_rows:,} labels written in "
             f"{time.perf_counter() - t:.1f} s")
        device_idx = np.array([int(d[1:]) for d in labels.column("device").to_pylist()])
        early = labels.column("ts_us").to_numpy() < firsts[0][device_idx]

        ours_s, ref_s = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            ours = point_in_time(data_dir, VIEW, labels, semantics="event")
            ours_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref = reference(path, labels, "event")
            ref_s.append(time.perf_counter() - t)
        cols = ["label_id", "feature_event_time", *VIEW.feature_names]
        identical = ours.num_rows == labels.num_rows and ours.select(cols).equals(
            ref.select(cols).cast(ours.select(cols).schema))
        ours_rate = labels.num_rows / statistics.median(ours_s)
        ref_rate = labels.num_rows / statistics.median(ref_s)
        note(f"{rows:,} rows: ours {statistics.median(ours_s):.2f} s, DuckDB ASOF {statistics.median(ref_s):.2f} s")
        fpath, lpath = feast_parquet(table, labels, data_dir)

        for offline_store in args.stores:
            suffix, what = STORES[offline_store]
            agreement: dict = {}
            feast_s = None
            peak = 0.0
            if offline_store in failed:
                status = f"not tried: a smaller size did not complete ({failed[offline_store]})"
            else:
                out = data_dir / f"feast_out_{offline_store}.parquet"
                note(f"{rows:,} rows: Feast ({offline_store} offline store) get_historical_features, budget "
                     f"{args.budget:.0f} s, RSS cap {args.mem_gb:.1f} GB ...")
                answer, status, peak = driver(
                    "offline", "--features", str(fpath), "--labels", str(lpath), "--offline-store", offline_store,
                    "--repo", str(data_dir / f"feast_repo_{offline_store}"), "--out", str(out),
                    budget=args.budget, mem_mb=args.mem_gb * 1024)
                note(f"{rows:,} rows: Feast ({offline_store}) {status}"
                     + (f" in {answer['seconds']:.2f} s, peak RSS {peak:.0f} MB" if answer else ""))
                if answer is None:
                    failed[offline_store] = f"{rows:,} rows: {status}"
                else:
                    feast_s = answer["seconds"]
                    agreement = compare(ours, pq.read_table(out), early)
                    largest[offline_store] = {"rows": rows, "devices": devices, "ours_rows": ours.num_rows,
                                              **agreement}
            emit(f"point_in_time_vs_feast{suffix}[event]", ours_rate, "labels/s", reference=what,
                 reference_value=labels.num_rows / feast_s if feast_s else None, goal=CONTEXT, meets_goal=None,
                 feature_rows=rows, labels=labels.num_rows, devices=devices,
                 seconds=statistics.median(ours_s), feast_seconds=feast_s, feast_status=status,
                 feast_peak_rss_mb=peak, feast_rss_cap_mb=args.mem_gb * 1024, feast_budget_s=args.budget,
                 duckdb_asof_labels_per_s=ref_rate, duckdb_seconds=statistics.median(ref_s),
                 ours_identical_to_duckdb=identical, repeats=args.repeats, feast_repeats=1, **agreement,
                 feast=versions)
        del table, ours, ref
    for offline_store in args.stores:
        suffix, what = STORES[offline_store]
        goal = "ours returns every label, early ones with null features"
        got = largest.get(offline_store)
        if got is None:
            emit(f"early_labels_vs_feast{suffix}", None, "labels", reference=f"rows Feast returned ({what})",
                 reference_value=None, goal=goal, meets_goal=None,
                 feast_status=f"Feast completed no size: {failed.get(offline_store)}", feast=versions)
            continue
        meets = got["ours_rows"] == got["labels_given"] and got["ours_null_feature_labels"] == got["early_labels"]
        emit(f"early_labels_vs_feast{suffix}", got["ours_rows"], "labels", reference=f"rows Feast returned ({what})",
             reference_value=got["feast_rows_returned"], goal=goal, meets_goal=meets,
             feature_rows=got["rows"], devices=got["devices"],
             **{k: v for k, v in got.items() if k not in ("rows", "devices", "ours_rows")}, feast=versions)
    return data_dir, run.run_id, devices


def online(args: argparse.Namespace, data_dir: Path, run_id: str, devices: int, versions: str) -> None:
    device = f"d{devices // 2:05d}"
    path = data_dir / "online_features.db"
    with OnlineStore(path) as store:
        loaded = store.update_from_run(data_dir, VIEW, run_id)
        raw = sqlite3.connect(path, isolation_level=None)
        sql = ("SELECT vector, window_start, event_time, available_at, updated_at, run_id FROM online_features"
               " WHERE view = ? AND version = ? AND tenant = ? AND device = ?")
        key = (VIEW.name, VIEW.version, "acme", device)
        want = store.get(VIEW, "acme", device)
        assert want is not None and raw.execute(sql, key).fetchone() is not None
        for _ in range(200):  # warm-up, as Feast's side gets
            store.get(VIEW, "acme", device)
            raw.execute(sql, key).fetchone()
        samples: dict[str, list[int]] = {"ours": [], "raw": []}
        rounds = 10
        for _ in range(rounds):
            for _ in range(args.gets // rounds):
                t0 = time.perf_counter_ns()
                store.get(VIEW, "acme", device)
                samples["ours"].append(time.perf_counter_ns() - t0)
            for _ in range(args.gets // rounds):
                t0 = time.perf_counter_ns()
                raw.execute(sql, key).fetchone()
                samples["raw"].append(time.perf_counter_ns() - t0)
        raw.close()
    (o50, o99), (r50, r99) = (np.percentile(np.array(samples[k]) / 1e3, [50, 99]) for k in ("ours", "raw"))
    note(f"online: ours p50 {o50:.0f} µs p99 {o99:.0f} µs; Feast materialize + gets ...")
    fpath = data_dir / "feast_features.parquet"
    answer, status, peak = driver("online", "--features", str(fpath), "--repo", str(data_dir / "feast_online"),
                                  "--device", device, "--gets", str(args.gets),
                                  budget=args.budget, mem_mb=args.mem_gb * 1024)
    note(f"online: Feast {status}")
    vector = [want["features"][n] for n in VIEW.feature_names]
    same = answer is not None and [answer["vector"][f] for f in FEAST_NAMES] == vector
    common = {"gets": len(samples["ours"]), "feast_gets": answer["gets"] if answer else None,
              "features": len(VIEW.feature_names), "entities": loaded["entities"], "device": device,
              "feast_status": status, "feast_materialize_seconds": answer["materialize_seconds"] if answer else None,
              "feast_peak_rss_mb": peak, "same_vector_as_feast": same, "feast": versions}
    emit("online_get_p99_vs_feast", o99, "µs", reference=FEAST_ONLINE,
         reference_value=answer["p99_us"] if answer else None, goal=CONTEXT, meets_goal=None,
         raw_sqlite_us=r99, **common)
    emit("online_get_p50_vs_feast", o50, "µs", reference=FEAST_ONLINE,
         reference_value=answer["p50_us"] if answer else None, goal=CONTEXT, meets_goal=None,
         raw_sqlite_us=r50, **common)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--setup", action="store_true", help=f"create {VENV.name} with Feast if missing, then run")
    p.add_argument("--quick", action="store_true", help="10k feature rows x 1k labels only, 500 gets, 1 repeat")
    p.add_argument("--sizes", default="10000,100000,1000000", help="feature rows, comma-separated, growing")
    p.add_argument("--budget", type=float, default=300.0, help="seconds each Feast subprocess may run")
    p.add_argument("--mem-gb", type=float, default=None,
                   help="RSS (GB) at which a Feast subprocess is stopped; default 90%% of MemAvailable at start")
    p.add_argument("--stores", default="file,duckdb", help="Feast offline stores to time: file (Dask), duckdb")
    p.add_argument("--gets", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.stores = [s for s in args.stores.split(",") if s]
    if set(args.stores) - set(STORES):
        p.error(f"--stores: one of {sorted(STORES)}")
    if args.mem_gb is None:
        args.mem_gb = round(0.9 * mem_available_mb() / 1024, 1)
    if args.quick:
        args.sizes, args.gets, args.repeats = [10_000], 500, 1
    if args.setup:
        setup()
    versions = None
    if PYTHON.exists():
        answer, status, _ = driver("version", budget=120, mem_mb=4096)
        if answer is not None:
            versions = (f"feast {answer['feast']} (dask {answer['dask']}, pandas {answer['pandas']}, "
                        f"pyarrow {answer['pyarrow']}, python {answer['python']})")
        else:
            note(f"{PYTHON} cannot import feast: {status}")
    if versions is None:
        note(f"Feast is not installed in {VENV}: run `python bench/bench_feast.py --setup` to measure it.")
        emit("feast_comparison", None, "", reference="Feast, not installed", reference_value=None,
             goal=CONTEXT, meets_goal=None,
             feast=f"not installed: no {VENV.relative_to(HERE.parent)}; run python bench/bench_feast.py --setup")
        return
    note(f"{versions}; venv {size_mb(VENV):.0f} MB")
    with tempfile.TemporaryDirectory(prefix="bench_feast-") as d:
        data_dir, run_id, devices = retrieval(args, Path(d), versions)
        online(args, data_dir, run_id, devices, versions)


if __name__ == "__main__":
    main()
