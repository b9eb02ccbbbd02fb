"""Window features: the one code path from readings to a model's input, on the device and in the hub.

The agent computes these right before inference; the hub computes the same ones to build
training data. Both import this module, so online and offline features agree by construction.
A model's manifest names the `FeatureSpec.version` it was trained on, and that version covers
the spec's parameters *and* the source of the functions below that compute the features: edit
the arithmetic and every model trained on the old arithmetic stops matching.

Windows are tumbling and aligned to the Unix epoch: the window of a reading at `ts` is
`ts // window_us`, covering `[k * window_us, (k + 1) * window_us)`. So a window does not depend
on where a batch, a buffer or a device restart happened to cut the stream; features of
readings split on window boundaries are the features of the whole, bit for bit.

Per channel and window, over the samples sorted by time (ties by value):

    mean   sum(v) / n
    std    sqrt(sum((v - mean)^2) / n)           population, two-pass
    min    min(v)
    max    max(v)
    rms    sqrt(sum(v^2) / n)
    slope  least-squares slope of v against t, in units per second; 0 when all t are equal
    p2p    max - min                             (peak to peak)
    delta  last - first                          (change over the window)

`vibration_rms` is already an RMS over a vibration spectrum, so band energies of it mean
nothing; the condition model gives it `p2p` instead, and `temperature` gets `delta`, through
`FeatureSpec.extra` (models/condition holds that spec; a model's manifest carries its params).

Rules that keep the matrix NaN-free and deterministic: readings that are not finite are not
samples; a window is kept only when every channel of the spec has at least `min_samples`
samples in it and every feature is finite (a value near 1e155 overflows its square); readings
of channels outside the spec are ignored; row order of the input never matters. Duplicate
readings (same channel and timestamp) count as separate samples: deduplicate upstream.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import inspect
import json
from dataclasses import dataclass

import numpy as np

from .readings import Readings, check_channel

__all__ = ["Aggregate", "FeatureSpec", "window_features"]

# Bump when the meaning of a parameter changes without its value or the code changing.
_SCHEMA = 1


class Aggregate(enum.StrEnum):
    MEAN = "mean"
    STD = "std"
    MIN = "min"
    MAX = "max"
    RMS = "rms"
    SLOPE = "slope"
    P2P = "p2p"
    DELTA = "delta"


@dataclass(frozen=True)
class FeatureSpec:
    """Which features, over which windows: a value object whose `version` names it exactly.

    `aggregates` apply to every channel; `extra` adds aggregates to named channels, as
    `((channel, (aggregate, ...)), ...)`. Feature names are `"<channel>.<aggregate>"`, ordered
    by channel, then `aggregates`, then that channel's `extra`.
    """

    window_us: int
    channels: tuple[str, ...]
    aggregates: tuple[Aggregate, ...] = (
        Aggregate.MEAN, Aggregate.STD, Aggregate.MIN, Aggregate.MAX, Aggregate.RMS, Aggregate.SLOPE,
    )
    extra: tuple[tuple[str, tuple[Aggregate, ...]], ...] = ()
    min_samples: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.window_us, bool) or not isinstance(self.window_us, int) or self.window_us <= 0:
            raise ValueError(f"FeatureSpec.window_us is {self.window_us!r}; it must be an int number of µs > 0.")
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int) or self.min_samples < 1:
            raise ValueError(f"FeatureSpec.min_samples is {self.min_samples!r}; it must be an int >= 1.")
        channels = tuple(self.channels) if isinstance(self.channels, (list, tuple)) else None
        if not channels:
            raise ValueError(f"FeatureSpec.channels is {self.channels!r}; it must be a non-empty tuple of names.")
        for name in channels:
            check_channel(name)
        if len(set(channels)) != len(channels):
            raise ValueError(f"FeatureSpec.channels {channels!r} names a channel more than once.")
        aggregates = _aggregates(self.aggregates, "FeatureSpec.aggregates")
        extra: list[tuple[str, tuple[Aggregate, ...]]] = []
        for item in self.extra:
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise ValueError(f"FeatureSpec.extra item {item!r} must be a (channel, (aggregate, ...)) pair.")
            channel, aggs = item
            if channel not in channels:
                raise ValueError(f"FeatureSpec.extra names channel {channel!r}, which is not in channels {channels!r}.")
            if channel in (c for c, _ in extra):
                raise ValueError(f"FeatureSpec.extra names channel {channel!r} more than once.")
            aggs = _aggregates(aggs, f"FeatureSpec.extra[{channel!r}]")
            twice = [a.value for a in aggs if a in aggregates]
            if twice:
                raise ValueError(f"FeatureSpec.extra[{channel!r}] repeats {twice!r}, already in aggregates.")
            extra.append((channel, aggs))
        # Normalise lists and plain strings, so equal specs compare, hash and version equal.
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "aggregates", aggregates)
        object.__setattr__(self, "extra", tuple(extra))

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f"{c}.{a.value}" for c, aggs in _columns(self) for a in aggs)

    def params(self) -> dict[str, object]:
        """The parameters as plain JSON values: what a manifest records and `from_params` reads."""
        return {
            "schema": _SCHEMA,
            "window_us": self.window_us,
            "channels": list(self.channels),
            "aggregates": [a.value for a in self.aggregates],
            "extra": {c: [a.value for a in aggs] for c, aggs in self.extra},
            "min_samples": self.min_samples,
        }

    @classmethod
    def from_params(cls, params: dict[str, object]) -> "FeatureSpec":
        if params.get("schema") != _SCHEMA:
            raise ValueError(f"Feature spec schema {params.get('schema')!r} is not {_SCHEMA}, the one this code computes.")
        unknown = set(params) - {"schema", "window_us", "channels", "aggregates", "extra", "min_samples"}
        if unknown:
            raise ValueError(f"Feature spec has unknown keys {sorted(unknown)!r}.")
        try:
            return cls(
                window_us=params["window_us"],  # type: ignore[arg-type]
                channels=tuple(params["channels"]),  # type: ignore[arg-type]
                aggregates=tuple(params["aggregates"]),  # type: ignore[arg-type]
                extra=tuple((c, tuple(a)) for c, a in dict(params["extra"]).items()),  # type: ignore[call-overload]
                min_samples=params["min_samples"],  # type: ignore[arg-type]
            )
        except KeyError as exc:
            raise ValueError(f"Feature spec lacks the key {exc.args[0]!r}.") from exc

    @functools.cached_property
    def version(self) -> str:
        """16 hex digits of sha256 over the parameters and the feature code's source."""
        digest = hashlib.sha256(json.dumps(self.params(), sort_keys=True, separators=(",", ":")).encode())
        digest.update(_code_fingerprint().encode())
        return digest.hexdigest()[:16]


def _aggregates(value: object, where: str) -> tuple[Aggregate, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where} is {value!r}; it must be a non-empty tuple of {[a.value for a in Aggregate]!r}.")
    try:
        out = tuple(Aggregate(a) for a in value)
    except ValueError as exc:
        raise ValueError(f"{where} is {value!r}; each must be one of {[a.value for a in Aggregate]!r}.") from exc
    if len(set(out)) != len(out):
        raise ValueError(f"{where} is {value!r}; it names an aggregate more than once.")
    return out


# --- the feature code: everything the version fingerprints ----------------------------------
def _columns(spec: FeatureSpec) -> tuple[tuple[str, tuple[Aggregate, ...]], ...]:
    """The matrix's column layout: per channel in order, `aggregates` then the channel's `extra`."""
    extra = dict(spec.extra)
    return tuple((c, spec.aggregates + extra.get(c, ())) for c in spec.channels)


def window_features(readings: Readings, spec: FeatureSpec) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(feature names, float64 matrix [n_windows, n_features], int64 window end µs [n_windows]).

    Window ends are exclusive (`(k + 1) * window_us`), ascending. A window that lacks a channel
    (fewer than `min_samples` finite samples) or yields a non-finite feature is left out, so
    the result may have no rows.
    """
    names = spec.feature_names
    per_channel: list[tuple[np.ndarray, np.ndarray]] = []  # (window ids, [windows, aggs]) per channel
    for channel, aggregates in _columns(spec):
        try:
            ci = readings.channels.index(channel)
        except ValueError:
            return names, np.empty((0, len(names)), np.float64), np.empty(0, np.int64)
        rows = readings.channel == ci
        per_channel.append(_channel_windows(
            readings.ts_us[rows], readings.value[rows],
            window_us=spec.window_us, min_samples=spec.min_samples, aggregates=aggregates,
        ))
    common = functools.reduce(np.intersect1d, (ids for ids, _ in per_channel))
    blocks = [table[np.searchsorted(ids, common)] for ids, table in per_channel]
    matrix = np.concatenate(blocks, axis=1)
    finite = np.isfinite(matrix).all(axis=1)
    return names, np.ascontiguousarray(matrix[finite]), (common[finite] + 1) * spec.window_us


def _channel_windows(
    ts: np.ndarray, value: np.ndarray, *, window_us: int, min_samples: int, aggregates: tuple[Aggregate, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Window ids (ascending) with at least `min_samples` samples, and their aggregates."""
    keep = np.isfinite(value)
    ts, value = ts[keep].astype(np.int64), value[keep].astype(np.float64)
    order = np.lexsort((value, ts))  # by time, ties by value: row order of the input never matters
    ts, value = ts[order], value[order]
    window = np.floor_divide(ts, window_us)
    if not len(window):
        return np.empty(0, np.int64), np.empty((0, len(aggregates)))
    starts = np.flatnonzero(np.r_[True, window[1:] != window[:-1]])
    counts = np.diff(np.r_[starts, len(window)])
    ok = counts >= min_samples
    # µs from each window's own start: small integers whatever the epoch.
    offset_us = ts - window * window_us
    with np.errstate(over="ignore", invalid="ignore"):
        columns = [_aggregate(a, offset_us, value, starts, counts) for a in aggregates]
    return window[starts][ok], np.stack(columns, axis=1)[ok]


def _aggregate(
    agg: Aggregate, offset_us: np.ndarray, v: np.ndarray, starts: np.ndarray, counts: np.ndarray,
) -> np.ndarray:
    """One aggregate for every window; windows are the runs `v[starts[i] : starts[i] + counts[i]]`."""
    n = counts.astype(np.float64)
    if agg is Aggregate.MEAN:
        return np.add.reduceat(v, starts) / n
    if agg is Aggregate.STD:
        dev = v - np.repeat(np.add.reduceat(v, starts) / n, counts)
        return np.sqrt(np.add.reduceat(dev * dev, starts) / n)
    if agg is Aggregate.MIN:
        return np.minimum.reduceat(v, starts)
    if agg is Aggregate.MAX:
        return np.maximum.reduceat(v, starts)
    if agg is Aggregate.RMS:
        return np.sqrt(np.add.reduceat(v * v, starts) / n)
    if agg is Aggregate.SLOPE:
        # Centre time in integers, n * t_i - sum(t), so equal timestamps give exactly 0 and a
        # slope of 0, where a float mean an ulp off would divide rounding noise by ~1e-34.
        # Exact while n * window_us < 2**53 (2**53 µs is 285 years).
        reps = np.repeat(counts.astype(np.int64), counts)
        centred = reps * offset_us - np.repeat(np.add.reduceat(offset_us, starts), counts)
        dt = centred.astype(np.float64) / (np.repeat(n, counts) * 1e6)  # seconds
        dv = v - np.repeat(np.add.reduceat(v, starts) / n, counts)
        sxx = np.add.reduceat(dt * dt, starts)
        sxy = np.add.reduceat(dt * dv, starts)
        return np.divide(sxy, sxx, out=np.zeros_like(sxy), where=sxx > 0)
    if agg is Aggregate.P2P:
        return np.maximum.reduceat(v, starts) - np.minimum.reduceat(v, starts)
    if agg is Aggregate.DELTA:
        return v[starts + counts - 1] - v[starts]
    raise AssertionError(f"Aggregate {agg!r} has no implementation.")


# Everything that turns readings into numbers. tests/protocol/test_features.py checks that no
# function of this module is left out, so a new helper cannot slip past the version.
_FEATURE_CODE = (Aggregate, _columns, window_features, _channel_windows, _aggregate)


@functools.cache
def _code_fingerprint() -> str:
    # The source text, comments included: a comment edit here also changes the version. That
    # errs the safe way (retrain or re-register rather than silently mismatch). Hazard: needs
    # the .py files at run time; a deployment that strips sources to .pyc cannot compute it.
    return "\n".join(inspect.getsource(obj) for obj in _FEATURE_CODE)

