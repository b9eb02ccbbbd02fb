"""The telemetry lake: Parquet files partitioned by date, readable by DuckDB.

Files are written as `.<name>.parquet.tmp`, listed in the metadata manifest in the same
transaction that records their batches, and only then renamed into place; `recover()`
finishes or discards what a crash left half-way (see storage/store.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from protocol import Batch

SCHEMA = pa.schema([
    ("tenant", pa.string()),
    ("device", pa.string()),
    ("kind", pa.string()),
    ("channel", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")),
    ("value", pa.float64()),
    ("epoch", pa.uint32()),
    ("seq", pa.uint64()),
    ("received", pa.timestamp("us", tz="UTC")),
])
_DAY_US = 86_400_000_000


@dataclass(frozen=True)
class StagedFile:
    path: Path  # final path, relative names are under the lake root
    tmp: Path
    rows: int


def _tmp_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def batches_to_table(batches: Sequence[Batch], *, received_us: int) -> pa.Table:
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    for b in batches:
        r, h = b.readings, b.header
        n = len(r)
        names = np.asarray(r.channels, dtype=object)
        cols["tenant"].append(np.full(n, h.tenant, dtype=object))
        cols["device"].append(np.full(n, h.device, dtype=object))
        cols["kind"].append(np.full(n, h.kind.value, dtype=object))
        cols["channel"].append(names[r.channel])
        cols["ts"].append(r.ts_us)
        cols["value"].append(r.value)
        cols["epoch"].append(np.full(n, h.epoch, np.uint32))
        cols["seq"].append(np.full(n, h.seq, np.uint64))
        cols["received"].append(np.full(n, received_us, np.int64))
    arrays = [pa.array(np.concatenate(cols[f.name]) if cols[f.name] else [], type=f.type) for f in SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


class Lake:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.telemetry = self.root / "telemetry"
        self.telemetry.mkdir(parents=True, exist_ok=True)

    def stage(self, table: pa.Table) -> list[StagedFile]:
        """Write `table` as one tmp file per date partition, fsynced. Not yet visible."""
        if table.num_rows == 0:
            return []
        ts = table.column("ts").cast(pa.int64()).to_numpy()
        days = ts // _DAY_US
        staged: list[StagedFile] = []
        unique = np.unique(days)
        try:
            for day in unique:
                part = table.filter(pa.array(days == day)) if len(unique) > 1 else table
                date = datetime.fromtimestamp(int(day) * 86400, tz=timezone.utc).strftime("%Y-%m-%d")
                folder = self.telemetry / f"date={date}"
                folder.mkdir(exist_ok=True)
                final = folder / f"part-{uuid.uuid4().hex}.parquet"
                staged.append(StagedFile(final, _tmp_of(final), part.num_rows))
                with open(staged[-1].tmp, "wb") as f:
                    pq.write_table(part, f, compression="zstd")
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            for s in staged:  # a half-written file (disk full) must not outlive the failure
                s.tmp.unlink(missing_ok=True)
            raise
        return staged

    @staticmethod
    def publish(staged: Sequence[StagedFile]) -> None:
        """Make committed files visible (atomic rename), then fsync their folders."""
        folders = set()
        for s in staged:
            if s.tmp.exists():
                os.replace(s.tmp, s.path)
            folders.add(s.path.parent)
        for folder in folders:
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def recover(self, committed: set[str]) -> tuple[int, int]:
        """After a crash: publish staged files the manifest committed, delete the others.

        Must run while holding the metadata write lock, so no live writer's tmp is touched.
        Returns (published, discarded)."""
        published = discarded = 0
        for tmp in self.telemetry.glob("date=*/.*.parquet.tmp"):
            final = tmp.with_name(tmp.name[1:-4])
            if str(final) in committed:
                os.replace(tmp, final)
                published += 1
            else:
                tmp.unlink()
                discarded += 1
        return published, discarded

    @property
    def glob(self) -> str:
        return str(self.telemetry / "date=*" / "*.parquet")

    def has_files(self) -> bool:
        return any(self.telemetry.glob("date=*/*.parquet"))
