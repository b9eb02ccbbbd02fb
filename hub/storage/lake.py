"""The telemetry lake: one Delta Lake table (delta-rs), partitioned by event date, read by DuckDB.

Layout: `<data_dir>/lake/telemetry/` is a Delta table with the columns of `SCHEMA` plus `date`
(the UTC date of `ts`, the partition column). A backlog that arrives hours late lands in the
partitions of the days it was measured on, not the day it arrived. Why Delta and not the
Parquet + SQLite-manifest lake it replaced: docs/lake-formats.md.

Writes. `append` commits one Delta version whose files and app transaction `(writer_id,
txn_version)` land together; hub/storage/store.py turns that into exactly-once with the SQLite
ledger. Several processes may append at once: delta-rs resolves concurrent appends by retrying
the commit (optimistic concurrency). After a commit, `append` fsyncs the version's log entry and
data files (delta-rs writes through the page cache), so an acked batch survives a power cut.

Reads never go through `DeltaTable.to_pyarrow_table()`: with deltalake 1.6 a process that did
aborts at interpreter exit about one run in three (delta-rs issue #2184). Readers take the
version's file list (`files()`) and hand it to DuckDB's `read_parquet` or pyarrow. The list is
the version's whole content for tables delta-rs writes (no deletion vectors: a delete rewrites
the files it touches).

Also here: time travel (`files(version)`), deletes (`delete_device`, for erasure), compaction of
small files (`compact`), `vacuum`, and `changes(since)`: the files each append added after a
version, read from the Delta log, for consumers that tail the lake (the streaming path).

Types: Delta has no unsigned integers, so `epoch` and `seq` are stored as int64.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from protocol import Batch

log = logging.getLogger("edgeloop.hub.lake")

SCHEMA = pa.schema([
    ("tenant", pa.string()),
    ("device", pa.string()),
    ("kind", pa.string()),
    ("channel", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")),
    ("value", pa.float64()),
    ("epoch", pa.int64()),
    ("seq", pa.int64()),
    ("received", pa.timestamp("us", tz="UTC")),
])
PARTITION = "date"
TABLE_SCHEMA = SCHEMA.append(pa.field(PARTITION, pa.date32()))
_DAY_US = 86_400_000_000
LEGACY_DIR = "telemetry.parquet-v1"  # where a pre-Delta lake is moved by `prepare`


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
        cols["epoch"].append(np.full(n, h.epoch, np.int64))
        cols["seq"].append(np.full(n, h.seq, np.int64))
        cols["received"].append(np.full(n, received_us, np.int64))
    arrays = [pa.array(np.concatenate(cols[f.name]) if cols[f.name] else [], type=f.type) for f in SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def with_date(table: pa.Table) -> pa.Table:
    """`table` (lake SCHEMA) plus its UTC `date` partition column."""
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    days = pa.array((ts // _DAY_US).astype(np.int32)).view(pa.date32())
    return table.append_column(PARTITION, days)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Change:
    """One Delta version that added data: its number and the absolute paths of the files it added."""

    version: int
    files: tuple[str, ...]
    rows: int


class Lake:
    """The telemetry table under `<root>/telemetry`. Thread-safe; one per process is plenty."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / "telemetry"
        self.uri = str(self.path)
        self._log_dir = self.path / "_delta_log"
        self._lock = threading.Lock()
        self._dt: Any = None  # the latest DeltaTable, updated incrementally

    # --- setup -------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self._log_dir.is_dir()

    def prepare(self) -> None:
        """Create the table if missing (idempotent, safe across processes); a pre-Delta lake
        (Parquet files under telemetry/date=*/ and no Delta log) is moved aside and imported."""
        from deltalake import DeltaTable

        if self.exists():
            return
        legacy = sorted(self.path.glob("date=*/*.parquet")) if self.path.is_dir() else []
        if legacy:
            moved = self.root / LEGACY_DIR
            if moved.exists():
                raise FileExistsError(f"Cannot move the pre-Delta lake aside: {moved} already exists.")
            os.replace(self.path, moved)
            log.warning("lake: moved the pre-Delta Parquet lake to %s; importing %d files", moved, len(legacy))
        try:
            DeltaTable.create(self.uri, schema=TABLE_SCHEMA, mode="ignore", partition_by=[PARTITION])
        except Exception:  # another process created it at the same moment
            if not self.exists():
                raise
        if legacy:
            files = sorted((self.root / LEGACY_DIR).glob("date=*/*.parquet"))
            table = pa.concat_tables(pq.read_table(f).cast(SCHEMA) for f in files)
            self.append(table, writer_id="legacy-import", txn_version=1)
            log.warning("lake: imported %d rows from %d pre-Delta files; %s can be deleted",
                        table.num_rows, len(files), self.root / LEGACY_DIR)

    # --- the DeltaTable ------------------------------------------------------------------------
    def _latest(self) -> Any:
        """The cached latest DeltaTable, brought up to date. Call with `_lock` held."""
        from deltalake import DeltaTable

        if self._dt is None:
            self._dt = DeltaTable(self.uri)
        else:
            self._dt.update_incremental()
        return self._dt

    def table(self, version: int | None = None) -> Any:
        """A fresh DeltaTable at `version` (latest when None), for callers that use delta-rs directly."""
        from deltalake import DeltaTable

        return DeltaTable(self.uri, version=version)

    def version(self) -> int:
        if not self.exists():
            return -1
        with self._lock:
            return self._latest().version()

    def committed_txn(self, writer_id: str) -> int | None:
        """The latest txn_version the log holds for writer_id (None: never committed)."""
        with self._lock:
            return self._latest().transaction_version(writer_id)

    # --- writes ------------------------------------------------------------------------------
    def append(self, table: pa.Table, *, writer_id: str | None = None, txn_version: int | None = None) -> int:
        """Append `table` (lake SCHEMA; unsigned epoch/seq are cast) as one commit tagged
        (writer_id, txn_version); returns the version. Durable on return. The caller keeps
        txn_version increasing per writer_id. Without a writer_id (tests, imports) the commit
        carries no app transaction, and nothing guards against appending the same rows twice."""
        from deltalake import CommitProperties, Transaction, WriterProperties, write_deltalake

        if (writer_id is None) != (txn_version is None):
            raise ValueError(f"Lake.append got writer_id {writer_id!r} and txn_version {txn_version!r}; give both or neither.")
        self.prepare()
        txns = [Transaction(app_id=writer_id, version=txn_version)] if writer_id is not None else None
        with self._lock:
            dt = self._latest()
            write_deltalake(
                dt, with_date(table.cast(SCHEMA)), mode="append", partition_by=[PARTITION],
                writer_properties=WriterProperties(compression="ZSTD"),
                commit_properties=CommitProperties(app_transactions=txns, max_commit_retries=1000),
            )
            version = dt.version()  # the write moved the cached table to its own commit
            self._sync_version(version)
            return version

    def _sync_version(self, version: int) -> None:
        """fsync a version's log entry, the data files it added and their folders."""
        entry = self._log_dir / f"{version:020d}.json"
        folders = {self._log_dir}
        for action in _actions(entry):
            add = action.get("add")
            if add:
                path = self.path / add["path"]
                _fsync(path)
                folders.add(path.parent)
        _fsync(entry)
        for folder in folders:
            _fsync(folder, directory=True)

    def delete_device(self, tenant: str, device: str) -> dict[str, Any]:
        """Erase one device's rows from the latest version (older versions keep them until vacuum)."""
        from deltalake import WriterProperties

        with self._lock:
            dt = self._latest()
            metrics = dt.delete(
                f"tenant = {_quote(tenant)} AND device = {_quote(device)}",
                writer_properties=WriterProperties(compression="ZSTD"),
            )
            self._sync_version(dt.version())  # an erasure must not come back after a power cut
            return metrics

    def compact(self, target_size: int | None = None) -> dict[str, Any]:
        """Rewrite each partition's small files into few large ones: a new version, same rows."""
        from deltalake import WriterProperties

        with self._lock:
            dt = self._latest()
            metrics = dt.optimize.compact(target_size=target_size, writer_properties=WriterProperties(compression="ZSTD"))
            dt.update_incremental()
            self._sync_version(dt.version())
            return metrics

    def vacuum(self, retention_hours: int = 168) -> list[str]:
        """Delete files no version younger than retention_hours references (0: erase now)."""
        with self._lock:
            return self._latest().vacuum(
                retention_hours=retention_hours, dry_run=False, enforce_retention_duration=retention_hours >= 168,
            )

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return self._latest().history(limit)

    # --- reads -------------------------------------------------------------------------------
    def files(self, version: int | None = None) -> list[str]:
        """Absolute paths of the Parquet files that make up `version` (latest when None)."""
        if not self.exists():
            return []
        if version is None:
            with self._lock:
                return self._latest().file_uris()
        return self.table(version).file_uris()

    def has_files(self, version: int | None = None) -> bool:
        return bool(self.files(version))

    def duckdb_source(self, version: int | None = None) -> str:
        """A DuckDB FROM clause over `version`'s files (DuckDB's delta extension is not offline)."""
        files = self.files(version)
        if not files:
            raise LookupError("The lake holds no files yet.")
        return f"read_parquet([{', '.join(_quote(f) for f in files)}], hive_partitioning = true)"

    def read(self, version: int | None = None, columns: Sequence[str] | None = None) -> pa.Table:
        """Every row of `version` (latest when None), through pyarrow (not delta-rs's reader)."""
        import pyarrow.dataset as pads

        files = self.files(version)
        if not files:
            return TABLE_SCHEMA.empty_table().select(list(columns) if columns else TABLE_SCHEMA.names)
        dataset = pads.dataset(
            files, schema=TABLE_SCHEMA, format="parquet",
            partitioning=pads.partitioning(pa.schema([(PARTITION, pa.date32())]), flavor="hive"),
            partition_base_dir=self.uri,
        )
        return dataset.to_table(columns=list(columns) if columns else None)

    def changes(self, since: int) -> list[Change]:
        """The appends committed after version `since` (-1: from the start), oldest first.

        Read from the Delta log's JSON entries: a version counts when its commit is a WRITE
        whose added files change data. Compaction (`dataChange: false`) and deletes are left
        out: they add no new readings. Hazard: Delta's log cleanup removes entries older than
        `delta.logRetentionDuration` (30 days) after a checkpoint; a consumer that falls that
        far behind gets a FileNotFoundError naming the missing entry."""
        out: list[Change] = []
        latest = self.version()
        for version in range(since + 1, latest + 1):
            entry = self._log_dir / f"{version:020d}.json"
            actions = _actions(entry)
            info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
            if info.get("operation") != "WRITE":
                continue
            added = [a["add"] for a in actions if "add" in a and a["add"].get("dataChange", True)]
            rows = sum(json.loads(a["stats"])["numRecords"] for a in added if a.get("stats"))
            out.append(Change(version, tuple(str(self.path / a["path"]) for a in added), rows))
        return out


def _actions(entry: Path) -> list[dict[str, Any]]:
    with open(entry, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

