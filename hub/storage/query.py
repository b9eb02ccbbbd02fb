"""Reading the lake with DuckDB: telemetry queries and the counts the demo and tests check."""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb

from .lake import Lake


def _source(lake: Lake) -> str:
    return lake.duckdb_source()


def query_telemetry(
    lake: Lake,
    *,
    tenant: str | None = None,
    device: str | None = None,
    channel: str | None = None,
    kind: str | None = "telemetry",
    since_us: int | None = None,
    until_us: int | None = None,
    limit: int = 1000,
) -> list[dict]:
    """Readings matching every given filter, oldest first, at most `limit`."""
    if not lake.has_files():
        return []
    where, params = [], []
    for col, val in (("tenant", tenant), ("device", device), ("channel", channel), ("kind", kind)):
        if val is not None:
            where.append(f"{col} = ?")
            params.append(val)
    if since_us is not None:
        where.append("ts >= ?")
        params.append(datetime.fromtimestamp(since_us / 1e6, tz=timezone.utc))
    if until_us is not None:
        where.append("ts < ?")
        params.append(datetime.fromtimestamp(until_us / 1e6, tz=timezone.utc))
    sql = (
        "SELECT tenant, device, kind, channel, epoch_us(ts) AS ts_us, value, seq"
        f" FROM {_source(lake)}" + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY ts, channel LIMIT ?"
    )
    with duckdb.connect() as con:
        rows = con.execute(sql, [*params, limit]).fetchall()
    keys = ("tenant", "device", "kind", "channel", "ts_us", "value", "seq")
    return [dict(zip(keys, r)) for r in rows]


def lake_counts(lake: Lake, *, kind: str | None = "telemetry") -> dict[str, int]:
    """Rows stored, and rows that repeat a (tenant, device, channel, ts) already stored."""
    if not lake.has_files():
        return {"rows": 0, "distinct": 0, "duplicate_rows": 0}
    where = f" WHERE kind = '{kind}'" if kind else ""
    with duckdb.connect() as con:
        rows, distinct = con.execute(
            f"SELECT count(*), count(DISTINCT (tenant, device, channel, ts)) FROM {_source(lake)}{where}"
        ).fetchone()
    return {"rows": rows, "distinct": distinct, "duplicate_rows": rows - distinct}
