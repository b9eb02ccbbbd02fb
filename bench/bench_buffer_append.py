"""Agent buffer append rate beside a raw batched SQLite insert of the same rows, same pragmas.

Run: python bench/bench_buffer_append.py [--readings 200000] [--per-append 1000] [--rounds 5] [--dir PATH]

Both sides open a fresh database file with journal_mode=WAL and the same `synchronous`, and commit
one transaction per `--per-append` readings. The agent side calls Buffer.append (with the input's
checkpoint, as the simulated input does); the reference executemany()s (ts, channel, value) rows
into a table with an INTEGER PRIMARY KEY, rows built before the clock starts. A second figure adds
sealing (encode + zstd into 5000-reading batches) to the agent side. Rounds alternate between the
two sides so machine noise hits both; medians are printed. The store must sit on a real disk: on
tmpfs an fsync costs nothing.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from figures import emit, note

from agent.buffer import Buffer
from agent.config import BufferConfig, Synchronous
from protocol import Kind, Readings
from simulators.signals import device_model

GOAL = 0.5
START_US = 1_750_000_000_000_000


def frames(readings: int, per_append: int) -> list[Readings]:
    model = device_model("dev-1", start_us=START_US, period_us=1_000_000)
    k = len(model.channels)
    ticks = max(1, per_append // k)
    return [model.frame(t, ticks) for t in range(0, readings // k, ticks)]


def agent_run(path: Path, parts: list[Readings], sync: Synchronous, *, seal: bool) -> float:
    buf = Buffer(BufferConfig(path=path, synchronous=sync), tenant="bench", device="dev-1")
    try:
        tick = 0
        started = time.perf_counter()
        for part in parts:
            tick += len(part) // 4
            buf.append(part, kind=Kind.TELEMETRY, checkpoint=("sim", f"{START_US}:{tick}"))
        if seal:
            buf.seal(force=True)
        elapsed = time.perf_counter() - started
        stats = buf.stats()
        want = sum(len(p) for p in parts)
        if stats.pending_readings != want:
            raise RuntimeError(f"The buffer holds {stats.pending_readings} readings; {want} were appended.")
    finally:
        buf.close()
    return elapsed


def raw_run(path: Path, parts: list[Readings], sync: Synchronous) -> float:
    batches = [list(zip(p.ts_us.tolist(), [p.channels[c] for c in p.channel.tolist()], p.value.tolist()))
               for p in parts]
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={sync.value.upper()}")
        db.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL,"
                   " channel TEXT NOT NULL, value REAL NOT NULL)")
        started = time.perf_counter()
        for rows in batches:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO readings (ts, channel, value) VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
        got = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        if got != sum(len(b) for b in batches):
            raise RuntimeError(f"The raw table holds {got} rows.")
    finally:
        db.close()
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=200_000)
    p.add_argument("--per-append", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dir", type=Path, default=None, help="where the databases go (default: a temp dir)")
    args = p.parse_args()
    parts = frames(args.readings, args.per_append)
    n = sum(len(x) for x in parts)
    for sync in (Synchronous.FULL, Synchronous.NORMAL):
        times: dict[str, list[float]] = {"append": [], "append_seal": [], "raw": []}
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-buffer-") as tmp:
            for r in range(args.rounds):
                times["raw"].append(raw_run(Path(tmp, f"raw-{r}.db"), parts, sync))
                times["append"].append(agent_run(Path(tmp, f"agent-{r}.db"), parts, sync, seal=False))
                times["append_seal"].append(agent_run(Path(tmp, f"seal-{r}.db"), parts, sync, seal=True))
                note(f"synchronous={sync.value} round {r}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
        raw = n / statistics.median(times["raw"])
        shape = {"readings": n, "readings_per_append": len(parts[0]), "appends": len(parts),
                 "synchronous": sync.value, "journal_mode": "wal", "rounds": args.rounds}
        for fig, key in (("buffer_append", "append"), ("buffer_append_and_seal", "append_seal")):
            rate = n / statistics.median(times[key])
            emit(f"{fig}_readings_per_s[synchronous={sync.value}]", rate, "readings/s",
                 reference="raw_sqlite_executemany_rows_per_s", reference_value=raw,
                 goal=f">= {GOAL} x reference", meets_goal=rate >= GOAL * raw, **shape)


if __name__ == "__main__":
    main()
