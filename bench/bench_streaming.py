"""Stream processing throughput: hub.streaming with the FeatureSpec adapter, beside writing the same readings to Parquet.

Run: python bench/bench_streaming.py [--quick] [--devices 1000] [--channels 4] [--seconds 1200] [--batch-s 10]
                                     [--checkpoint-every 6] [--window-s 60] [--repeats 3] [--dir DIR]

Figure `stream_features`: readings/s through `StreamProcessor.process_many` with
`FeatureAggregate(spec)` (6 aggregates x `--channels` channels, tumbling `--window-s` windows,
max_out_of_orderness 5 s, allowed_lateness one window), state in a SQLite file with a
`checkpoint` every `--checkpoint-every` batches (WAL, synchronous=FULL), then a final `flush`.
The timed part is everything the processor does: grouping rows, firing windows, computing their
features, checkpoints and eviction.

Reference, same run, same readings, same batches: `pq.write_table` of each batch (the lake's
columns tenant, device, channel, ts, value; zstd) to its own file: the raw cost of storing them,
the floor of ingest. The issue's goal is stream throughput >= 0.5x the raw ingest rate;
`meets_goal` judges it against this reference (a stricter bar than the issue's 200k-900k
readings/s of ingest, which includes decoding and bookkeeping); `vs_ingest_900k` gives the ratio to
the top of that range for context.

Data: `--devices` devices x `--channels` channels at 1 Hz for `--seconds` s of event time,
in batches of `--batch-s` s across all devices (as a lake version would bring them), timestamps
jittered +-0.2 s, rows shuffled within a batch per device, seeded. One batch is 40k readings
by default; every window of every device fires once, none is late.

Measured here (2 shared cores, busy with other work, so absolute figures swing 3x between runs
and the ratio ranged 0.37-0.63 over five runs; default sizes, ~20-50 s in all, --quick ~5-10 s):
at the quietest run ours 1.48M readings/s, the reference 3.55M/s, ratio 0.42, so the 0.5x goal
against pq.write_table is not reliably met; against the issue's ingest range (200k-900k
readings/s) it is (`vs_ingest_900k` 1.6 at the quietest run, 0.53 at the busiest). Where the time goes, in one run:
aggregate 1.52 s (window_features; most of it its per-channel `np.lexsort((value, ts))`, ~13 ms per
60k rows), checkpoints 0.96 s (SQLite inserting ~4.3 MB of raw rows per checkpoint, plus fsync), the
engine itself 0.75 s (~6M readings/s). A faster sort in protocol/features.py (same order, e.g. a
stable argsort of ts then ordering ties by value) is the largest lever, and it is not this file's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from figures import emit, note

from hub.streaming import FeatureAggregate, StreamProcessor, feature_windows
from protocol.features import FeatureSpec
from protocol.readings import Readings

S = 1_000_000
T0 = 1_779_998_400 * S  # an arbitrary recent epoch second, aligned to the hour (so to every window size dividing it)


class TimedFeatures(FeatureAggregate):
    """The adapter, timing its own calls: the feature arithmetic's share of the total."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__(spec)
        self.seconds = 0.0

    def many(self, items):  # type: ignore[override]
        t0 = time.perf_counter()
        try:
            return super().many(items)
        finally:
            self.seconds += time.perf_counter() - t0


def batches(devices: int, channels: int, seconds: int, batch_s: int, seed: int):
    """[(key_index, Readings)] per batch, rows grouped by device and shuffled within a device."""
    rng = np.random.default_rng(seed)
    names = tuple(f"ch{j}" for j in range(channels))
    out = []
    for b in range(seconds // batch_s):
        secs = np.arange(b * batch_s, (b + 1) * batch_s, dtype=np.int64)
        per_dev = len(secs) * channels
        ts = T0 + np.tile(np.repeat(secs * S, channels), devices) + rng.integers(-200_000, 200_000, per_dev * devices)
        ts = np.clip(ts, T0 + b * batch_s * S, T0 + (b + 1) * batch_s * S - 1)  # stay inside the batch's span
        ch = np.tile(np.arange(channels, dtype=np.uint16), len(secs) * devices)
        val = rng.normal(20.0, 3.0, per_dev * devices)
        kidx = np.repeat(np.arange(devices, dtype=np.int64), per_dev)
        perm = np.lexsort((rng.random(len(kidx)), kidx))  # device blocks kept, rows shuffled inside each
        out.append((kidx[perm], Readings(names, ch[perm], ts[perm], val[perm])))
    return names, out


def tables(names: tuple[str, ...], data, devices: int) -> list[pa.Table]:
    dev_names = np.asarray([f"dev{d:05d}" for d in range(devices)], dtype=object)
    ch_names = np.asarray(names, dtype=object)
    out = []
    for kidx, r in data:
        out.append(pa.table({
            "tenant": pa.array(np.full(len(r), "acme", dtype=object), pa.string()),
            "device": pa.array(dev_names[kidx], pa.string()),
            "channel": pa.array(ch_names[r.channel], pa.string()),
            "ts": pa.array(r.ts_us, pa.timestamp("us", tz="UTC")),
            "value": pa.array(r.value, pa.float64()),
        }))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="300 s of event time")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--seconds", type=int, default=1200)
    p.add_argument("--batch-s", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=6)
    p.add_argument("--window-s", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternating; medians reported")
    p.add_argument("--dir", default=None, help="where the state file and Parquet files go (default: a temp dir)")
    args = p.parse_args()
    if args.quick:
        args.seconds = 300
    note(f"generating {args.devices} devices x {args.channels} channels x {args.seconds} s at 1 Hz")
    names, data = batches(args.devices, args.channels, args.seconds, args.batch_s, args.seed)
    n = sum(len(r) for _, r in data)
    spec = FeatureSpec(window_us=args.window_s * S, channels=names)
    keys = [("acme", f"dev{d:05d}") for d in range(args.devices)]
    arrow = tables(names, data, args.devices)

    def ours(tmp: Path) -> dict:
        agg = TimedFeatures(spec)
        t0 = time.perf_counter()
        proc, _ = StreamProcessor.open(tmp / "stream.db", agg, feature_windows(spec),
                                       max_out_of_orderness_us=5 * S, allowed_lateness_us=args.window_s * S)
        fired = with_features = 0
        checkpoint_s = 0.0
        for i, (kidx, r) in enumerate(data):
            out = proc.process_many(keys, kidx, r)
            fired += len(out.windows)
            with_features += sum(w.value is not None for w in out.windows)
            if (i + 1) % args.checkpoint_every == 0:
                c0 = time.perf_counter()
                proc.checkpoint(i)
                checkpoint_s += time.perf_counter() - c0
        out = proc.flush()
        fired += len(out.windows)
        with_features += sum(w.value is not None for w in out.windows)
        c0 = time.perf_counter()
        proc.checkpoint(len(data))
        checkpoint_s += time.perf_counter() - c0
        seconds = time.perf_counter() - t0
        counters = proc.counters
        db_bytes = sum(f.stat().st_size for f in tmp.glob("stream.db*"))
        proc.close()
        return {"seconds": seconds, "checkpoint_s": checkpoint_s, "aggregate_s": agg.seconds, "fired": fired, "with_features": with_features,
                "too_late": counters["too_late"], "db_bytes": db_bytes}

    def reference(tmp: Path) -> float:
        (tmp / "lake").mkdir()
        t0 = time.perf_counter()
        for i, table in enumerate(arrow):
            pq.write_table(table, tmp / "lake" / f"part-{i:05d}.parquet", compression="zstd")
        return time.perf_counter() - t0

    def ingest(tmp: Path) -> float:
        """The hub's storage path on the same readings: Store.commit of one batch per device per
        lake batch (ledger, Delta append with its app transaction, fsync), as ingest commits a fetch."""
        from hub.storage.store import Store
        from protocol import Kind, decode_batch, encode_batch

        seqs = [0] * args.devices
        fetches = []
        for kidx, r in data:
            order = np.argsort(kidx, kind="stable")
            cuts = np.flatnonzero(np.diff(kidx[order])) + 1
            fetch = []
            for rows in np.split(order, cuts):
                d = int(kidx[rows[0]])
                seqs[d] += 1
                fetch.append(decode_batch(encode_batch(r.take(rows), tenant="acme", device=keys[d][1],
                                                       kind=Kind.TELEMETRY, epoch=1, seq=seqs[d])))
            fetches.append(fetch)
        store = Store(tmp)
        try:
            t0 = time.perf_counter()
            for fetch in fetches:
                store.commit(fetch)
            return time.perf_counter() - t0
        finally:
            store.close()

    runs, refs = [], []
    for rep in range(args.repeats):  # alternate, so both see the same load on shared cores
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-streaming-") as tmp_name:
            note(f"run {rep + 1}/{args.repeats}: streaming {n:,} readings in {len(data)} batches, "
                 f"checkpoint every {args.checkpoint_every}")
            runs.append(ours(Path(tmp_name)))
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-streaming-ref-") as tmp_name:
            note(f"run {rep + 1}/{args.repeats}: reference, pq.write_table per batch, zstd")
            refs.append(reference(Path(tmp_name)))
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-streaming-ingest-") as tmp_name:
        note("reference: the hub's Store.commit of the same readings (one run)")
        ingest_s = ingest(Path(tmp_name))
    run = sorted(runs, key=lambda x: x["seconds"])[len(runs) // 2]
    ours_s, ref_s = run["seconds"], statistics.median(refs)
    fired, with_features = run["fired"], run["with_features"]

    windows_expected = args.devices * (args.seconds // args.window_s)
    emit("stream_features", n / ours_s, "readings/s",
         reference="pyarrow pq.write_table (zstd) of the same batches, lake columns", reference_value=n / ref_s,
         goal=">= 0.5x the raw cost of storing the readings (issue: >= 0.5x raw ingest rate)",
         meets_goal=(n / ours_s) >= 0.5 * (n / ref_s),
         seconds=ours_s, reference_seconds=ref_s, checkpoint_seconds=run["checkpoint_s"],
         aggregate_seconds=run["aggregate_s"], engine_seconds=ours_s - run["checkpoint_s"] - run["aggregate_s"],
         repeats=args.repeats,
         readings=n,
         batches=len(data), batch_readings=len(data[0][1]), devices=args.devices, channels=args.channels,
         window_s=args.window_s, checkpoint_every=args.checkpoint_every,
         windows_fired=fired, windows_with_features=with_features, windows_expected=windows_expected,
         correct_count=fired == windows_expected and with_features == windows_expected,
         too_late=run["too_late"], state_file_bytes=run["db_bytes"],
         vs_ingest_900k=(n / ours_s) / 900_000)
    emit("stream_vs_ingest", n / ours_s, "readings/s",
         reference="the hub's ingest storage path, Store.commit of the same readings (ledger + Delta + fsync)",
         reference_value=n / ingest_s, goal=">= 0.5x the raw ingest rate (the issue's goal)",
         meets_goal=(n / ours_s) >= 0.5 * (n / ingest_s), seconds=ours_s, reference_seconds=ingest_s,
         commits=len(data), note="the reference is one run; ours the median of --repeats")


if __name__ == "__main__":
    main()
