"""The consistency check: features a device sent with its predictions against the hub's, per window.

A device with `[inference] send_features` on sends, with each window's prediction, the features
its model was fed (`feat.<feature>` channels of kind `prediction`, at the window's start; see
docs/protocol.md §6). Both sides compute them with `protocol.features.window_features` from the
same float64 readings, and readings and features travel losslessly, so on the same windows they
are the same bits: the default tolerance is exact (`rtol = atol = 0`). A mismatch means the two
saw different readings (a reading the device dropped as late, a window it closed early, one the
hub holds more or fewer readings of) or ran different feature code.

`check` only reads: the lake's `feat.*` prediction rows, pivoted to one row per (tenant, device,
window_start), joined with the view as of its latest materialization run (materialize first to
compare recent windows). A feature sent by index (`feat.<i>`, its channel name too long) is
read as the view's i-th feature; the comparison assumes the device's model takes the view's
feature spec, so a device on another spec shows as mismatches or missing features.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np

from hub.storage.lake import Lake
from protocol.topic import Kind

from .definitions import FeatureView
from .errors import InvalidFeatureViewError
from .retrieval import _snapshot

__all__ = ["MAX_MISMATCHES", "check", "feature_channels"]

MAX_MISMATCHES = 100  # listed; all are counted
_MAX_CHANNEL = 64


def feature_channels(names: tuple[str, ...]) -> tuple[str, ...]:
    """The device's `feat.*` channel of each feature (agent/inference/pipeline.py, same rule)."""
    return tuple(f"feat.{n}" if len(f"feat.{n}") <= _MAX_CHANNEL else f"feat.{i}" for i, n in enumerate(names))


def check(
    data_dir: Path,
    view: FeatureView,
    *,
    tenant: str | None = None,
    device: str | None = None,
    since_us: int | None = None,
    until_us: int | None = None,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> dict[str, object]:
    """Compare device-sent features with the hub's materialized ones, window by window.

    Windows are those whose start lies in [since_us, until_us), of `tenant`/`device` when given.
    A value matches when `|device - hub| <= atol + rtol * |hub|` (both NaN also matches; a
    feature the device did not send for a window it sent others of never does: its
    `device_value` is null). Exact by default: the same code on the same float64 readings
    gives the same bits. Returns `windows_compared` (windows both sides have),
    `windows_matching`, `mismatches` (the first MAX_MISMATCHES, by tenant, device, window and
    feature order; `mismatch_count` counts all), `device_only` and `hub_only` (windows one side
    has: the hub not materialized yet, or the hub holding fewer readings of a window than
    `min_samples`; a window the device dropped as partial or late), and `tolerance`.
    """
    for label, x in (("rtol", rtol), ("atol", atol)):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise InvalidFeatureViewError(f"Consistency {label} is {x!r}; it must be a finite number >= 0.")
    for label, x in (("since_us", since_us), ("until_us", until_us)):
        if x is not None and (isinstance(x, bool) or not isinstance(x, int)):
            raise InvalidFeatureViewError(f"Consistency {label} is {x!r}; it must be an int of µs or None.")
    names = view.feature_names
    channels = feature_channels(names)
    sent = _device_rows(Path(data_dir), channels, tenant, device, since_us, until_us)

    hub = _snapshot(Path(data_dir), view, None)
    keys = {"tenant": tenant, "device": device}
    mask = np.ones(hub.num_rows, bool)
    for col, val in keys.items():
        if val is not None:
            mask &= np.asarray(hub.column(col).to_pylist(), dtype=object) == val
    starts = hub.column("window_start").to_numpy()
    if since_us is not None:
        mask &= starts >= since_us
    if until_us is not None:
        mask &= starts < until_us
    hub_rows: dict[tuple[str, str, int], np.ndarray] = {}
    idx = np.flatnonzero(mask)
    if len(idx):
        matrix = np.column_stack([hub.column(n).to_numpy(zero_copy_only=False).astype(np.float64)[idx]
                                  for n in names]) if names else np.empty((len(idx), 0))
        tenants, devices = hub.column("tenant").to_pylist(), hub.column("device").to_pylist()
        for row, i in enumerate(idx.tolist()):
            hub_rows[(tenants[i], devices[i], int(starts[i]))] = matrix[row]

    both = sorted(sent.keys() & hub_rows.keys())
    mismatches: list[dict[str, object]] = []
    count = matching = 0
    for key in both:
        (d, sent_mask), h = sent[key], hub_rows[key]
        with np.errstate(invalid="ignore", over="ignore"):
            same = sent_mask & ((np.abs(d - h) <= atol + rtol * np.abs(h)) | (np.isnan(d) & np.isnan(h)))
        if same.all():
            matching += 1
            continue
        for j in np.flatnonzero(~same).tolist():
            count += 1
            if len(mismatches) < MAX_MISMATCHES:
                dv, hv = float(d[j]), float(h[j])
                mismatches.append({
                    "tenant": key[0], "device": key[1], "window_start": key[2], "feature": names[j],
                    "device_value": _json(dv) if sent_mask[j] else None,
                    "hub_value": _json(hv),
                    "abs_diff": _json(abs(dv - hv)) if sent_mask[j] else None,
                })
    window = lambda k: {"tenant": k[0], "device": k[1], "window_start": k[2]}  # noqa: E731
    return {
        "name": view.name,
        "version": view.version,
        "windows_compared": len(both),
        "windows_matching": matching,
        "mismatch_count": count,
        "mismatches": mismatches,
        "device_only": [window(k) for k in sorted(sent.keys() - hub_rows.keys())],
        "hub_only": [window(k) for k in sorted(hub_rows.keys() - sent.keys())],
        "tolerance": {"rtol": float(rtol), "atol": float(atol)},
    }


def _json(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _device_rows(
    data_dir: Path, channels: tuple[str, ...], tenant: str | None, device: str | None,
    since_us: int | None, until_us: int | None,
) -> dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]]:
    """(tenant, device, window_start) -> (the device's feature values in view order, which it sent)."""
    lake = Lake(data_dir / "lake")
    if not lake.has_files():
        return {}
    where, params = ["kind = ?", "list_contains(?, channel)"], [Kind.PREDICTION.value, list(channels)]
    for col, val in (("tenant", tenant), ("device", device)):
        if val is not None:
            where.append(f"{col} = ?")
            params.append(val)
    if since_us is not None:
        where.append("epoch_us(ts) >= ?")
        params.append(since_us)
    if until_us is not None:
        where.append("epoch_us(ts) < ?")
        params.append(until_us)
    # A redelivered batch repeats rows exactly: any() of equal values is the value. Rows that
    # differ at one (window, feature) would be two predictions of a window; the latest arrival wins.
    sql = f"""
        SELECT tenant, device, epoch_us(ts) AS window_start, channel, arg_max(value, received) AS value
        FROM read_parquet(?, hive_partitioning = true, union_by_name = true)
        WHERE {" AND ".join(where)}
        GROUP BY tenant, device, window_start, channel
    """
    with duckdb.connect() as con:
        got = con.execute(sql, [lake.files(), *params]).fetchall()
    index = {c: i for i, c in enumerate(channels)}
    out: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]] = {}
    for t, d, ws, ch, value in got:
        row = out.get((t, d, ws))
        if row is None:
            row = out[(t, d, ws)] = (np.full(len(channels), np.nan), np.zeros(len(channels), bool))
        row[0][index[ch]] = value
        row[1][index[ch]] = True
    return out
