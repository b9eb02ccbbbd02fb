"""Feast's side of bench/bench_feast.py; runs inside bench/.feast-venv, never in the project's venv.

Run by bench_feast.py, one subprocess per measurement, with one JSON object on the last line of stdout:

    feast_driver.py version
    feast_driver.py offline --features F.parquet --labels L.parquet --repo DIR --out OUT.parquet
        [--offline-store file|duckdb]    (one line)
    feast_driver.py online --features F.parquet --repo DIR --device d00500 --gets 2000

The feature store is built programmatically (no feature_store.yaml, no `feast apply` CLI): local
provider, file (Dask) offline store (or, with --offline-store duckdb, Feast's DuckDB/ibis one)
over a FileSource on F.parquet, Feast's default SQLite online store, one Entity `device` and one
FeatureView `bench_features` with the bench's 8 float64 features (dots in their names become
underscores: Feast feature refs are `view:feature`) and a TTL of 3,650 days, far longer than the
data spans, so TTL never hides a row. F.parquet holds
`device`, `event_timestamp` (timestamp[us, UTC], the window's event_time) and the features;
L.parquet holds `label_id`, `device`, `event_timestamp`.

offline: times `get_historical_features(entity_df, features).to_arrow()` once (entity_df already
in memory as pandas; the features are read from Parquet inside the call, as ours and DuckDB do),
writes label_id + features to OUT.parquet, prints the seconds and the rows returned.
online: `materialize` over the data's whole time range, then `get_online_features(...).to_dict()`
for one device `--gets` times after a warm-up; prints p50/p99 in µs and the vector it got.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

VIEW = "bench_features"
FEATURES = ["temp_mean", "temp_std", "temp_min", "temp_max", "vib_mean", "vib_std", "vib_min", "vib_max"]


def store(repo: Path, features: Path, offline_store: str = "file"):
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
    from feast.infra.offline_stores.dask import DaskOfflineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.types import Float64

    repo.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(
        project="edgeloop_bench",
        provider="local",
        registry=str(repo / "registry.db"),
        online_store=SqliteOnlineStoreConfig(path=str(repo / "online.db")),
        offline_store=DaskOfflineStoreConfig() if offline_store == "file" else _duckdb_config(),
        entity_key_serialization_version=3,
        repo_path=repo,
    )
    fs = FeatureStore(config=config)
    device = Entity(name="device", join_keys=["device"], value_type=ValueType.STRING)
    source = FileSource(name="bench_features_source", path=str(features), timestamp_field="event_timestamp")
    view = FeatureView(name=VIEW, entities=[device], ttl=timedelta(days=3650), online=True, source=source,
                       schema=[Field(name=n, dtype=Float64) for n in FEATURES])
    fs.apply([device, view])
    return fs


def _duckdb_config():
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig

    return DuckDBOfflineStoreConfig()


def offline(args: argparse.Namespace) -> dict:
    import pandas as pd
    import pyarrow.parquet as pq

    t = time.perf_counter()
    fs = store(Path(args.repo), Path(args.features), args.offline_store)
    apply_s = time.perf_counter() - t
    entity_df = pd.read_parquet(args.labels)
    refs = [f"{VIEW}:{n}" for n in FEATURES]
    t = time.perf_counter()
    result = fs.get_historical_features(entity_df=entity_df, features=refs).to_arrow()
    seconds = time.perf_counter() - t
    out = result.select(["label_id", *FEATURES])
    pq.write_table(out, args.out)
    nulls = out.column(FEATURES[0]).null_count
    return {"seconds": seconds, "apply_seconds": apply_s, "labels_given": len(entity_df),
            "rows_returned": out.num_rows, "null_feature_rows": nulls, "columns": result.column_names}


def online(args: argparse.Namespace) -> dict:
    import pyarrow.parquet as pq

    fs = store(Path(args.repo), Path(args.features))
    ts = pq.read_table(args.features, columns=["event_timestamp"]).column(0)
    lo, hi = ts.to_pandas().min(), ts.to_pandas().max()
    t = time.perf_counter()
    fs.materialize(start_date=(lo - timedelta(seconds=1)).to_pydatetime(),
                   end_date=(hi + timedelta(seconds=1)).to_pydatetime())
    materialize_s = time.perf_counter() - t
    refs = [f"{VIEW}:{n}" for n in FEATURES]
    rows = [{"device": args.device}]
    want = fs.get_online_features(features=refs, entity_rows=rows).to_dict()
    for _ in range(min(200, args.gets)):  # warm-up: registry cache, connection, statements
        fs.get_online_features(features=refs, entity_rows=rows).to_dict()
    samples = []
    for _ in range(args.gets):
        t0 = time.perf_counter_ns()
        fs.get_online_features(features=refs, entity_rows=rows).to_dict()
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()

    def pct(p: float) -> float:  # numpy's default (linear) percentile, without numpy
        k = (len(samples) - 1) * p / 100
        f = int(k)
        c = min(f + 1, len(samples) - 1)
        return (samples[f] + (samples[c] - samples[f]) * (k - f)) / 1e3

    return {"materialize_seconds": materialize_s, "gets": len(samples), "p50_us": pct(50), "p99_us": pct(99),
            "vector": {n: want[n][0] for n in FEATURES}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("command", choices=["version", "offline", "online"])
    p.add_argument("--features")
    p.add_argument("--labels")
    p.add_argument("--repo")
    p.add_argument("--out")
    p.add_argument("--device")
    p.add_argument("--gets", type=int, default=2000)
    p.add_argument("--offline-store", choices=["file", "duckdb"], default="file")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("FEAST_USAGE", "False")
    if args.command == "version":
        import feast
        import dask
        import pandas
        import pyarrow
        answer = {"feast": feast.__version__, "dask": dask.__version__, "pandas": pandas.__version__,
                  "pyarrow": pyarrow.__version__, "python": sys.version.split()[0]}
    elif args.command == "offline":
        answer = offline(args)
    else:
        answer = online(args)
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
