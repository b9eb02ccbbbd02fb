"""Prototype: the telemetry lake as a Delta table (deltalake / delta-rs). Not wired into the hub.

A spike for issue 4, item 1 (see docs/lake-formats.md). The table holds hub.storage.lake.SCHEMA
plus a `date` column (UTC date of `ts`, the partition column), so a backlog that arrives hours
late lands in the partitions of the days it was measured on, not the day it arrived.

Exactly-once per writer: each append carries a Delta app transaction (writer_id, txn_version) in
the same commit as its files. Before writing, `append` reads the latest committed version for
writer_id from the log and skips the write when txn_version is not newer. write_deltalake does NOT
skip on its own (measured: it commits the same txn version twice), so txn_version must increase
per writer_id, and one writer_id must be driven by one process at a time.

Reads go through the current file list (DeltaTable.file_uris) and pyarrow.parquet / DuckDB
read_parquet, not DeltaTable.to_pyarrow_table(): with deltalake 1.6.6 the latter aborts the
interpreter at exit ("terminate called without an active exception", about 1 run in 3; delta-rs
issue #2184). A file list is complete for tables delta-rs writes: it writes no deletion vectors,
a delete rewrites the files it touches.

Delta has no unsigned integers: epoch (uint32) is stored as int32, seq (uint64) as int64.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake

from .lake import SCHEMA

_DAY_US = 86_400_000_000
PARTITION = "date"
ZSTD = WriterProperties(compression="ZSTD")  # the Parquet lake's codec (delta-rs defaults to snappy)


def with_date(table: pa.Table) -> pa.Table:
    """`table` (lake SCHEMA) plus its UTC `date` partition column."""
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    days = pa.array((ts // _DAY_US).astype(np.int32)).view(pa.date32())
    return table.append_column(PARTITION, days)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class DeltaLake:
    """The telemetry table at `root` (a local folder), created on first use."""

    def __init__(self, root: Path, *, max_commit_retries: int = 100) -> None:
        self.root = Path(root)
        self.uri = str(self.root)
        self.max_commit_retries = max_commit_retries

    def create(self) -> None:
        """Create the empty table (idempotent). Run once before several processes append."""
        schema = with_date(SCHEMA.empty_table()).schema
        DeltaTable.create(self.uri, schema=schema, mode="ignore", partition_by=[PARTITION])

    def table(self, version: int | None = None) -> DeltaTable:
        return DeltaTable(self.uri, version=version)

    def version(self) -> int:
        return self.table().version()

    def committed_txn(self, writer_id: str) -> int | None:
        """The latest txn_version committed for writer_id, or None."""
        return self.table().transaction_version(writer_id)

    def append(self, table: pa.Table, *, writer_id: str, txn_version: int) -> bool:
        """Append `table` in one commit tagged (writer_id, txn_version). False: already committed."""
        if not self.root.joinpath("_delta_log").exists():
            self.create()
        done = self.committed_txn(writer_id)
        if done is not None and txn_version <= done:
            return False
        write_deltalake(
            self.uri,
            with_date(table),
            mode="append",
            partition_by=[PARTITION],
            writer_properties=ZSTD,
            commit_properties=CommitProperties(
                app_transactions=[Transaction(app_id=writer_id, version=txn_version)],
                max_commit_retries=self.max_commit_retries,
            ),
        )
        return True

    def delete_device(self, tenant: str, device: str) -> dict[str, Any]:
        """Erase one device's rows from the latest version (older versions keep them until vacuum)."""
        return self.table().delete(f"tenant = {_quote(tenant)} AND device = {_quote(device)}", writer_properties=ZSTD)

    def compact(self, target_size: int | None = None) -> dict[str, Any]:
        """Rewrite each partition's small files into few large ones (a new version; data unchanged)."""
        return self.table().optimize.compact(target_size=target_size, writer_properties=ZSTD)

    def vacuum(self, retention_hours: int = 168) -> list[str]:
        """Delete files no version younger than retention_hours references (0: erase now)."""
        return self.table().vacuum(
            retention_hours=retention_hours, dry_run=False, enforce_retention_duration=retention_hours >= 168,
        )

    def files(self, version: int | None = None) -> list[str]:
        return self.table(version).file_uris()

    def dataset(self, version: int | None = None) -> pads.Dataset:
        """The files of `version` (latest when None) as a pyarrow dataset with the date partition."""
        schema = with_date(SCHEMA.empty_table()).schema
        schema = schema.set(schema.get_field_index("epoch"), pa.field("epoch", pa.int32()))
        schema = schema.set(schema.get_field_index("seq"), pa.field("seq", pa.int64()))
        return pads.dataset(
            self.files(version), schema=schema, format="parquet",
            partitioning=pads.partitioning(pa.schema([(PARTITION, pa.date32())]), flavor="hive"),
            partition_base_dir=self.uri,
        )

    def read(self, version: int | None = None) -> pa.Table:
        """Every row of `version` (latest when None)."""
        return self.dataset(version).to_table()

    def duckdb_source(self, version: int | None = None) -> str:
        """A DuckDB FROM clause over the files of `version` (the delta extension is not offline)."""
        files = self.files(version)
        if not files:
            raise LookupError("The Delta table holds no files.")
        listed = ", ".join(_quote(f) for f in files)
        return f"read_parquet([{listed}], hive_partitioning = true)"
