"""Data-quality expectations per channel and the pure checks that hold lake readings to them.

Who calls it: `edgeloop quality report` and the drift detector, over a window of lake rows
(`check_readings` on an Arrow table, or `check_lake` on the lake folder). Nothing here writes:
flagged rows are returned for quarantine, never deleted.

Each (tenant, device, channel) series is sorted by device time `ts`; the first row of each
repeated `ts` is the series the value and timing checks see (the repeats are duplicates).
Value checks ignore nulls/NaN, and spikes ignores rows already out of range, so one fault is
reported by one check:

    nulls       null or NaN values / rows > max_null_fraction                      flags those rows
    range       values outside [min_value, max_value]                              flags those rows
    stuck       a run of identical values longer than stuck_max_run, or a rolling
                std over stuck_window samples below stuck_std_floor                flags the run/window
    spikes      |x − rolling median(spike_window)| / scale > spike_z, with
                scale = max(1.4826·MAD of those residuals, spike_scale_floor)       flags the spikes
    sampling    median interval off period_us by > period_tolerance, or more than
                max_irregular_fraction of intervals off by it (a device sampling
                at the wrong rate, or losing scattered readings)                    no rows
    silence     a gap between readings, or now_us − last arrival, > max_silence_us  no rows
    duplicates  rows repeating a (tenant, device, channel, ts)                       flags the repeats
    clock_skew  ts ahead of `received` by > future_tolerance_us (clock ahead), or
                the smallest received − ts > max_skew_us (clock behind; the
                smallest, because store-and-forward legitimately delays some rows)  flags those rows
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from .errors import InvalidExpectationError, InvalidReadingsError
from .report import ChannelReport, Check, CheckResult, QualityReport

__all__ = ["Expectation", "check_lake", "check_readings", "default_expectations"]

_MAD_TO_SIGMA = 1.4826  # MAD of a normal is 0.6745 σ
_NORMAL_BOUND = 7.0  # the simulator's Box–Muller normals satisfy |z| <= 6.8
_REQUIRED = ("tenant", "device", "channel", "ts", "value", "received")
_CHUNK = 65_536  # rolling-median rows per step: bounds the sliding window's memory


@dataclass(frozen=True)
class Expectation:
    """What one channel's readings must satisfy. Durations are integer µs."""

    channel: str
    min_value: float
    max_value: float
    period_us: int
    max_silence_us: int
    spike_scale_floor: float
    max_null_fraction: float = 0.01
    stuck_max_run: int = 10
    stuck_window: int = 20
    stuck_std_floor: float = 0.0  # 0 disables the rolling-std test; the run test remains
    spike_window: int = 11
    spike_z: float = 10.0
    period_tolerance: float = 0.1
    max_irregular_fraction: float = 0.05
    max_skew_us: int = 120_000_000
    future_tolerance_us: int = 5_000_000

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> InvalidExpectationError:
            return InvalidExpectationError(
                f"Expectation for {self.channel!r}: {name} is {getattr(self, name)!r}; it must be {rule}."
            )

        if not isinstance(self.channel, str) or not self.channel:
            raise InvalidExpectationError(f"Expectation channel {self.channel!r} must be a non-empty string.")
        for name in ("min_value", "max_value", "spike_scale_floor", "spike_z", "stuck_std_floor",
                     "max_null_fraction", "period_tolerance", "max_irregular_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, "a finite number")
        if self.min_value > self.max_value:
            raise bad("min_value", f"<= max_value ({self.max_value!r})")
        for name in ("max_null_fraction", "max_irregular_fraction", "period_tolerance"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "in [0, 1]")
        for name in ("spike_scale_floor", "spike_z"):
            if getattr(self, name) <= 0:
                raise bad(name, "> 0")
        if self.stuck_std_floor < 0:
            raise bad("stuck_std_floor", ">= 0")
        for name, low in (("period_us", 1), ("max_silence_us", 1), ("stuck_max_run", 2), ("stuck_window", 2),
                          ("spike_window", 3), ("max_skew_us", 0), ("future_tolerance_us", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise bad(name, f"an int >= {low}")
        if self.spike_window % 2 == 0:
            raise bad("spike_window", "odd (the median is centred)")


def default_expectations(*, period_us: int, channels: Iterable[object] | None = None) -> dict[str, Expectation]:
    """Expectations for the simulator's channels, derived from their specs in simulators/signals.py.

    Ranges are each spec's envelope (base ± cycle ± drift ± 7σ, the noise's hard bound), so a
    healthy simulated device never leaves them; spike scale and the stuck std floor follow the
    spec's noise (floor = σ/4). Silence allows max(10 periods, 2 minutes): the agent batches.
    """
    from simulators.signals import HumiditySpec, PowerSpec, TemperatureSpec, VibrationSpec, default_channels

    specs = tuple(channels) if channels is not None else default_channels()
    silence = max(10 * period_us, 120_000_000)
    out: dict[str, Expectation] = {}
    for s in specs:
        if isinstance(s, TemperatureSpec):
            half = s.daily_amplitude_c + s.drift_c + _NORMAL_BOUND * s.noise_c
            lo, hi, noise = s.base_c - half, s.base_c + half, s.noise_c
        elif isinstance(s, HumiditySpec):
            half = s.daily_amplitude_pct + _NORMAL_BOUND * s.noise_pct
            lo, hi, noise = max(0.0, s.base_pct - half), min(100.0, s.base_pct + half), s.noise_pct
        elif isinstance(s, VibrationSpec):
            lo, hi, noise = 0.0, s.max_mm_s, s.noise_mm_s
        elif isinstance(s, PowerSpec):
            lo = max(0.0, s.base_w - _NORMAL_BOUND * s.noise_w)
            hi, noise = s.base_w + 1.3 * s.load_w + _NORMAL_BOUND * s.noise_w, s.noise_w
        else:
            raise InvalidExpectationError(f"No default expectation for channel spec {s!r}; write one.")
        scale = max(noise, 10.0**-s.decimals)
        out[s.name] = Expectation(
            channel=s.name, min_value=float(lo), max_value=float(hi), period_us=period_us,
            max_silence_us=silence, spike_scale_floor=scale, stuck_std_floor=scale / 4,
        )
    return out


# --- reading the input -----------------------------------------------------------------------
def _as_table(readings: pa.Table | Mapping[str, object]) -> pa.Table:
    table = readings if isinstance(readings, pa.Table) else pa.table(dict(readings))
    missing = [c for c in _REQUIRED if c not in table.column_names]
    if missing:
        raise InvalidReadingsError(
            f"The readings lack lake column(s) {missing!r}; they have {table.column_names!r}."
        )
    return table


def _column(table: pa.Table, name: str, kind: str) -> np.ndarray:
    col = table.column(name)
    try:
        if kind == "time":
            if pa.types.is_timestamp(col.type):
                col = col.cast(pa.timestamp("us", tz=col.type.tz)).cast(pa.int64())
            elif not pa.types.is_integer(col.type):
                raise TypeError(col.type)
            return col.cast(pa.int64()).to_numpy()
        if kind == "value":
            if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
                raise TypeError(col.type)
            return col.cast(pa.float64()).fill_null(math.nan).to_numpy()
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
                or pa.types.is_dictionary(col.type)):
            raise TypeError(col.type)
        return np.asarray(col.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
    except (TypeError, pa.ArrowInvalid) as exc:
        raise InvalidReadingsError(
            f"Lake column {name!r} has type {table.column(name).type}; it must be "
            + {"time": "a µs timestamp or integer", "value": "a number", "id": "a string"}[kind]
            + " (and hold no nulls where a key is)."
        ) from exc


def _groups(*keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first row of each group, group id per row, rows ordered by group) for object key columns."""
    if not len(keys[0]):
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    combined = np.zeros(len(keys[0]), np.int64)
    for k in keys:
        _, inv = np.unique(k, return_inverse=True)
        combined = combined * (int(inv.max()) + 1) + inv
    _, first, gid = np.unique(combined, return_index=True, return_inverse=True)
    return first, gid, np.argsort(gid, kind="stable")


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.int64)
    a.setflags(write=False)
    return a


def _fmt_ts(ts_us: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts_us / 1e6, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the checks, each on one series sorted by ts ---------------------------------------------
@dataclass
class _Series:
    rows: np.ndarray  # row indexes into the input, sorted by (ts, row)
    ts: np.ndarray
    value: np.ndarray
    received: np.ndarray
    first: np.ndarray  # bool per row: first occurrence of its ts


def _nulls(s: _Series, e: Expectation, name: str) -> tuple[bool, float, float, np.ndarray, str]:
    null = np.isnan(s.value)
    frac = float(null.mean()) if len(null) else 0.0
    ok = frac <= e.max_null_fraction
    where = f", first at {_fmt_ts(int(s.ts[null][0]))}" if null.any() else ""
    return ok, frac, e.max_null_fraction, s.rows[null], (
        f"{name}: {int(null.sum())} of {len(null)} values are null ({frac:.2%}, limit {e.max_null_fraction:.2%}){where}."
    )


def _range(s: _Series, e: Expectation, name: str) -> tuple[bool, float, float, np.ndarray, str]:
    v = s.value
    out = ~np.isnan(v) & ((v < e.min_value) | (v > e.max_value))
    if not out.any():
        return True, 0.0, 0.0, s.rows[out], f"{name}: every value is within [{e.min_value:g}, {e.max_value:g}]."
    worst = np.flatnonzero(out)[np.argmax(np.maximum(e.min_value - v[out], v[out] - e.max_value))]
    return False, float(out.sum()), 0.0, s.rows[out], (
        f"{name}: {int(out.sum())} values are outside [{e.min_value:g}, {e.max_value:g}]; the worst is "
        f"{v[worst]:g} at {_fmt_ts(int(s.ts[worst]))}."
    )


def _stuck(s: _Series, e: Expectation, name: str) -> tuple[bool, float, float, np.ndarray, str]:
    keep = s.first & ~np.isnan(s.value)
    idx = np.flatnonzero(keep)
    v = s.value[idx]
    bad = np.zeros(len(v), bool)
    longest, at = 0, 0
    if len(v):
        starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
        lengths = np.diff(np.r_[starts, len(v)])
        longest, at = int(lengths.max()), int(starts[np.argmax(lengths)])
        for a, n in zip(starts[lengths > e.stuck_max_run], lengths[lengths > e.stuck_max_run]):
            bad[a:a + n] = True
    min_std, std_at = math.inf, 0
    w = e.stuck_window
    if e.stuck_std_floor > 0 and len(v) >= w:
        # Rolling variance from cumulative sums of centred values: O(n) memory; clipped at 0
        # because cancellation can make a flat window's variance a tiny negative number.
        x = v - v.mean()
        c1, c2 = np.r_[0.0, np.cumsum(x)], np.r_[0.0, np.cumsum(x * x)]
        mean = (c1[w:] - c1[:-w]) / w
        std = np.sqrt(np.maximum((c2[w:] - c2[:-w]) / w - mean * mean, 0.0))
        low = np.flatnonzero(std < e.stuck_std_floor)
        std_at = int(np.argmin(std))
        min_std = float(std[std_at])
        if len(low):
            cover = np.zeros(len(v) + 1, np.int64)
            np.add.at(cover, low, 1)
            np.add.at(cover, low + w, -1)
            bad |= np.cumsum(cover[:-1]) > 0
    ok = not bad.any()
    if ok:
        return True, longest, e.stuck_max_run, s.rows[idx[bad]], (
            f"{name}: the longest run of one value is {longest} samples (limit {e.stuck_max_run})"
            + (f"; the lowest {w}-sample std is {min_std:.4g} (floor {e.stuck_std_floor:.4g})." if math.isfinite(min_std) else ".")
        )
    if longest > e.stuck_max_run:
        why = f"value {v[at]:g} repeats {longest} times from {_fmt_ts(int(s.ts[idx[at]]))} (limit {e.stuck_max_run})"
    else:
        why = (f"its {w}-sample std falls to {min_std:.4g} (floor {e.stuck_std_floor:.4g}) "
               f"from {_fmt_ts(int(s.ts[idx[std_at]]))}")
    return False, longest, e.stuck_max_run, s.rows[idx[bad]], (
        f"{name} looks stuck: {why}; {int(bad.sum())} readings flagged."
    )


def _rolling_median(v: np.ndarray, w: int) -> np.ndarray:
    half = w // 2
    padded = np.pad(v, half, mode="reflect")  # "edge" would hide a spike in the last sample
    out = np.empty(len(v))
    for a in range(0, len(v), _CHUNK):
        b = min(a + _CHUNK, len(v))
        out[a:b] = np.median(np.lib.stride_tricks.sliding_window_view(padded[a:b + 2 * half], w), axis=1)
    return out


def _spikes(s: _Series, e: Expectation, name: str) -> tuple[bool, float, float, np.ndarray, str]:
    v0 = s.value
    keep = s.first & ~np.isnan(v0) & (v0 >= e.min_value) & (v0 <= e.max_value)
    idx = np.flatnonzero(keep)
    if len(idx) < e.spike_window:
        return True, 0.0, e.spike_z, s.rows[:0], (
            f"{name}: {len(idx)} in-range readings, fewer than the {e.spike_window} a spike test needs."
        )
    v = v0[idx]
    resid = v - _rolling_median(v, e.spike_window)
    mad = float(np.median(np.abs(resid - np.median(resid))))
    scale = max(_MAD_TO_SIGMA * mad, e.spike_scale_floor)
    z = np.abs(resid) / scale
    hit = z > e.spike_z
    top = int(np.argmax(z))
    if not hit.any():
        return True, float(z[top]), e.spike_z, s.rows[:0], (
            f"{name}: the largest robust z-score is {z[top]:.2f} (limit {e.spike_z:g})."
        )
    return False, float(z[top]), e.spike_z, s.rows[idx[hit]], (
        f"{name}: {int(hit.sum())} spikes with robust z-score above {e.spike_z:g}; the largest is "
        f"{v[top]:g} (z {z[top]:.1f}) at {_fmt_ts(int(s.ts[idx[top]]))}."
    )


def _sampling(s: _Series, e: Expectation, name: str) -> tuple[bool, float, float, np.ndarray, str]:
    ts = s.ts[s.first]
    if len(ts) < 2:
        return True, 0.0, e.period_us, s.rows[:0], f"{name}: {len(ts)} reading(s), too few to measure a period."
    d = np.diff(ts)
    median = float(np.median(d))
    off = np.abs(d - e.period_us) > e.period_tolerance * e.period_us
    frac = float(off.mean())
    median_ok = abs(median - e.period_us) <= e.period_tolerance * e.period_us
    ok = median_ok and frac <= e.max_irregular_fraction
    return ok, median, e.period_us, s.rows[:0], (
        f"{name}: median interval {median / 1e6:g} s against {e.period_us / 1e6:g} s "
        f"(±{e.period_tolerance:.0%}); {frac:.1%} of intervals are off it (limit {e.max_irregular_fraction:.0%})."
    )


def _silence(s: _Series, e: Expectation, name: str, now_us: int) -> tuple[bool, float, float, np.ndarray, str]:
    ts = s.ts[s.first]
    stale = now_us - int(s.received.max())  # arrival time: the device clock's skew must not matter here
    gap, at = 0, 0
    if len(ts) > 1:
        d = np.diff(ts)
        at = int(np.argmax(d))
        gap = int(d[at])
    worst = max(gap, stale)
    ok = worst <= e.max_silence_us
    if ok:
        detail = f"{name}: the longest silence is {worst / 1e6:g} s (limit {e.max_silence_us / 1e6:g} s)."
    elif gap >= stale:
        detail = (f"{name} went silent for {gap / 1e6:g} s after {_fmt_ts(int(ts[at]))} "
                  f"(limit {e.max_silence_us / 1e6:g} s).")
    else:
        detail = (f"{name} has not been heard from for {stale / 1e6:g} s, since {_fmt_ts(int(s.received.max()))} "
                  f"(limit {e.max_silence_us / 1e6:g} s).")
    return ok, worst, e.max_silence_us, s.rows[:0], detail


def _duplicates(s: _Series, e: Expectation, name: str) -> tuple[bool, float, float, np.ndarray, str]:
    rep = ~s.first
    if not rep.any():
        return True, 0.0, 0.0, s.rows[rep], f"{name}: no timestamp repeats."
    return False, float(rep.sum()), 0.0, s.rows[rep], (
        f"{name}: {int(rep.sum())} rows repeat a timestamp already read, the first at {_fmt_ts(int(s.ts[rep][0]))}."
    )


def _clock_skew(s: _Series, e: Expectation, name: str) -> tuple[bool, float, float, np.ndarray, str]:
    delay = s.received - s.ts
    ahead = -delay > e.future_tolerance_us
    behind_by = int(delay.min())
    behind = behind_by > e.max_skew_us
    bad = ahead | (delay > e.max_skew_us) if behind else ahead
    if ahead.any():
        i = int(np.argmin(delay))
        return False, float(-delay[i]), e.future_tolerance_us, s.rows[bad], (
            f"{name}: {int(ahead.sum())} readings are stamped in the future of their arrival, the worst by "
            f"{-delay[i] / 1e6:g} s at device time {_fmt_ts(int(s.ts[i]))} (tolerance {e.future_tolerance_us / 1e6:g} s)."
        )
    if behind:
        return False, float(behind_by), e.max_skew_us, s.rows[bad], (
            f"{name}: even the most timely reading arrived {behind_by / 1e6:g} s after its device time "
            f"(limit {e.max_skew_us / 1e6:g} s): the device clock runs behind."
        )
    return True, float(max(behind_by, 0)), e.max_skew_us, s.rows[:0], (
        f"{name}: device time is within {e.max_skew_us / 1e6:g} s of arrival (least delay {behind_by / 1e6:g} s)."
    )


def _check_series(s: _Series, e: Expectation, name: str, now_us: int) -> tuple[tuple[CheckResult, ...], dict, dict]:
    results, flags, flag_ts = [], {}, {}
    runs = (
        (Check.NULLS, _nulls(s, e, name)), (Check.RANGE, _range(s, e, name)), (Check.STUCK, _stuck(s, e, name)),
        (Check.SPIKES, _spikes(s, e, name)), (Check.SAMPLING, _sampling(s, e, name)),
        (Check.SILENCE, _silence(s, e, name, now_us)), (Check.DUPLICATES, _duplicates(s, e, name)),
        (Check.CLOCK_SKEW, _clock_skew(s, e, name)),
    )
    order = np.argsort(s.rows, kind="stable")
    for check, (ok, value, threshold, rows, detail) in runs:
        rows = np.sort(np.asarray(rows, np.int64))
        flags[check] = _frozen(rows)
        flag_ts[check] = _frozen(s.ts[order][np.searchsorted(s.rows[order], rows)])
        results.append(CheckResult(check, bool(ok), float(value), float(threshold), int(len(rows)), detail))
    return tuple(results), flags, flag_ts


def _silent_channel(tenant: str, device: str, e: Expectation) -> ChannelReport:
    detail = f"{tenant}/{device}/{e.channel}: no readings at all in the checked window."
    results = tuple(
        CheckResult(c, c is not Check.SILENCE, 0.0, e.max_silence_us if c is Check.SILENCE else 0.0, 0,
                    detail if c is Check.SILENCE else f"{tenant}/{device}/{e.channel}: nothing to check.")
        for c in Check
    )
    return ChannelReport(tenant, device, e.channel, 0, results, {}, {})


def check_readings(
    readings: pa.Table | Mapping[str, object],
    expectations: Mapping[str, Expectation],
    *,
    now_us: int,
) -> QualityReport:
    """Hold every (tenant, device, channel) series in `readings` to its channel's expectation.

    `readings` is a lake-schema Arrow table (extra columns are ignored) or a mapping of column
    name → array with at least tenant, device, channel, ts, value and received (µs ints or
    timestamps). It is read, never modified. A device missing an expected channel entirely gets
    that channel reported silent; a channel with no expectation is listed in `unchecked`.
    """
    table = _as_table(readings)
    tenant, device, channel = (_column(table, c, "id") for c in ("tenant", "device", "channel"))
    ts, received = _column(table, "ts", "time"), _column(table, "received", "time")
    value = _column(table, "value", "value")
    first, gid, order = _groups(tenant, device, channel)
    bounds = np.searchsorted(gid[order], np.arange(len(first) + 1))
    reports: list[ChannelReport] = []
    unchecked: list[tuple[str, str, str]] = []
    seen: dict[tuple[str, str], set[str]] = {}
    for g, f in enumerate(first):
        key = (str(tenant[f]), str(device[f]), str(channel[f]))
        seen.setdefault(key[:2], set()).add(key[2])
        e = expectations.get(key[2])
        if e is None:
            unchecked.append(key)
            continue
        rows = order[bounds[g]:bounds[g + 1]]
        rows = rows[np.lexsort((rows, ts[rows]))]
        t = ts[rows]
        s = _Series(rows=rows.astype(np.int64), ts=t, value=value[rows], received=received[rows],
                    first=np.r_[True, t[1:] != t[:-1]])
        results, flags, flag_ts = _check_series(s, e, "/".join(key), now_us)
        reports.append(ChannelReport(*key, len(rows), results, flags, flag_ts))
    for (t_, d_), chans in seen.items():
        reports.extend(_silent_channel(t_, d_, e) for name, e in expectations.items() if name not in chans)
    reports.sort(key=lambda c: c.key)
    return QualityReport(now_us=now_us, channels=tuple(reports), unchecked=tuple(sorted(unchecked)))


def check_lake(
    lake_dir: Path | str,
    *,
    since_us: int,
    until_us: int,
    expectations: Mapping[str, Expectation],
    now_us: int,
) -> QualityReport:
    """check_readings over the lake's telemetry rows with since_us <= ts < until_us (read with DuckDB).

    Row indexes in the report then refer to the table DuckDB returned, ordered by
    (tenant, device, channel, ts, received, seq).
    """
    from hub.storage.lake import SCHEMA, Lake

    lake = Lake(Path(lake_dir))
    if not lake.has_files():
        return check_readings(SCHEMA.empty_table(), expectations, now_us=now_us)
    import duckdb

    cols = ", ".join(SCHEMA.names)
    sql = (
        f"SELECT {cols} FROM read_parquet(?, hive_partitioning = true, union_by_name = true)"
        " WHERE kind = 'telemetry' AND epoch_us(ts) >= ? AND epoch_us(ts) < ?"
        " ORDER BY tenant, device, channel, ts, received, seq"
    )
    with duckdb.connect() as con:
        table = con.sql(sql, params=[lake.files(), since_us, until_us]).to_arrow_table()
    return check_readings(table, expectations, now_us=now_us)
