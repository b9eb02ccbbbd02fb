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

Band energy (`FeatureSpec.bands`), for waveform channels such as an accelerometer sampled at
hundreds of Hz: `bands=(("vibration", ((0, 10), (10, 50), (50, 100))),)` adds the features
`vibration.band_0_10hz`, `vibration.band_10_50hz`, `vibration.band_50_100hz`, after that
channel's aggregates and extra. Per channel and window, over the same samples sorted the same way:

    fs     1e6 / median of the positive spacings of ts (µs) in the window; the samples are
           taken as uniformly spaced at that rate (jitter and gaps are not corrected for; a
           window with no positive spacing has no spectrum and is left out)
    X_k    numpy.fft.rfft(v - mean), f_k = k * fs / n, k = 0 .. n // 2
    band   sum over lo <= f_k < hi of w_k * |X_k|^2 / n^2, w_k = 2 except for k = 0 and the
           Nyquist bin (n even), which count once

So a band's energy is the mean power (variance, in value units squared) of the signal within
the band: by Parseval the bands covering every bin, [0, hi) with hi > fs / 2, sum to std^2
(population). The top edge is open: with fs = 200 Hz a band (50, 100) leaves out the bin at
exactly 100 Hz; use (50, 101) to include it. Windows are grouped by (n, spacing) and each
group's FFT runs over a 2-D array; numpy's FFT transforms each row on its own, and band sums are
sequential (cumsum) per row, so a window's energies never depend on the other windows in the
call: row order, batching and chunking leave them bit for bit identical.

Band edges are finite numbers >= 0 with lo < hi, ascending and non-overlapping per channel (a
band may start where the previous ends). In names they are the shortest positional decimal that
round-trips with "p" for the point (2.5 Hz: `band_2p5_10hz`): the suffix after the channel holds
no dot, so a feature name still splits uniquely at its last dot, and `feat.<name>` is a valid
channel (protocol.readings.check_channel) whenever it fits in 64 characters.

Versions. A spec's version hashes its `params()` and the source of `_FEATURE_CODE`; a spec with
bands also hashes the source of `_BAND_CODE` (the band arithmetic, the band names and the public
`window_features`). `params()` holds "bands" only when there are some, so specs without bands
(the condition model's among them) keep their params, fingerprint and version: the aggregate
path, kept below byte for byte as it was, is `_aggregate_features` (its source still reads
`def window_features`, as the committed versions hashed it), and the public `window_features`
hands a spec without bands to it unchanged. Hazard: that hand-off lives in `_BAND_CODE`, so an
edit to it would not change the version of specs without bands; tests/protocol/test_band_energy.py
pins that it returns `_aggregate_features`' result bit for bit.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
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
    `((channel, (aggregate, ...)), ...)`; `bands` adds band energies to named channels, as
    `((channel, ((lo_hz, hi_hz), ...)), ...)` (module docstring). Feature names are
    `"<channel>.<aggregate>"` and `"<channel>.band_<lo>_<hi>hz"`, ordered by channel, then
    `aggregates`, then that channel's `extra`, then its `bands`.
    """

    window_us: int
    channels: tuple[str, ...]
    aggregates: tuple[Aggregate, ...] = (
        Aggregate.MEAN, Aggregate.STD, Aggregate.MIN, Aggregate.MAX, Aggregate.RMS, Aggregate.SLOPE,
    )
    extra: tuple[tuple[str, tuple[Aggregate, ...]], ...] = ()
    min_samples: int = 2
    bands: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = ()

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
        bands = _bands(self.bands, channels)
        # Normalise lists and plain strings, so equal specs compare, hash and version equal.
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "aggregates", aggregates)
        object.__setattr__(self, "extra", tuple(extra))
        object.__setattr__(self, "bands", bands)

    @property
    def feature_names(self) -> tuple[str, ...]:
        bands = dict(self.bands)
        return tuple(
            name
            for c, aggs in _columns(self)
            for name in (*(f"{c}.{a.value}" for a in aggs), *(_band_name(c, lo, hi) for lo, hi in bands.get(c, ())))
        )

    def params(self) -> dict[str, object]:
        """The parameters as plain JSON values: what a manifest records and `from_params` reads."""
        params: dict[str, object] = {
            "schema": _SCHEMA,
            "window_us": self.window_us,
            "channels": list(self.channels),
            "aggregates": [a.value for a in self.aggregates],
            "extra": {c: [a.value for a in aggs] for c, aggs in self.extra},
            "min_samples": self.min_samples,
        }
        if self.bands:  # only when used: specs without bands keep the params (and version) they had
            params["bands"] = {c: [[lo, hi] for lo, hi in bs] for c, bs in self.bands}
        return params

    @classmethod
    def from_params(cls, params: dict[str, object]) -> "FeatureSpec":
        if params.get("schema") != _SCHEMA:
            raise ValueError(f"Feature spec schema {params.get('schema')!r} is not {_SCHEMA}, the one this code computes.")
        unknown = set(params) - {"schema", "window_us", "channels", "aggregates", "extra", "min_samples", "bands"}
        if unknown:
            raise ValueError(f"Feature spec has unknown keys {sorted(unknown)!r}.")
        try:
            return cls(
                window_us=params["window_us"],  # type: ignore[arg-type]
                channels=tuple(params["channels"]),  # type: ignore[arg-type]
                aggregates=tuple(params["aggregates"]),  # type: ignore[arg-type]
                extra=tuple((c, tuple(a)) for c, a in dict(params["extra"]).items()),  # type: ignore[call-overload]
                min_samples=params["min_samples"],  # type: ignore[arg-type]
                bands=_band_params(params.get("bands", {})),
            )
        except KeyError as exc:
            raise ValueError(f"Feature spec lacks the key {exc.args[0]!r}.") from exc

    @functools.cached_property
    def version(self) -> str:
        """16 hex digits of sha256 over the parameters and the feature code's source."""
        digest = hashlib.sha256(json.dumps(self.params(), sort_keys=True, separators=(",", ":")).encode())
        digest.update(_code_fingerprint().encode())
        if self.bands:  # the band code counts only where it runs: other versions stay as they were
            digest.update(_band_fingerprint().encode())
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


def _bands(value: object, channels: tuple[str, ...]) -> tuple[tuple[str, tuple[tuple[float, float], ...]], ...]:
    """`FeatureSpec.bands` checked and normalised: ordered as `channels`, edges as floats."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"FeatureSpec.bands is {value!r}; it must be a tuple of (channel, ((lo_hz, hi_hz), ...)) pairs.")
    out: dict[str, tuple[tuple[float, float], ...]] = {}
    for item in value:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise ValueError(f"FeatureSpec.bands item {item!r} must be a (channel, ((lo_hz, hi_hz), ...)) pair.")
        channel, bands = item
        if channel not in channels:
            raise ValueError(f"FeatureSpec.bands names channel {channel!r}, which is not in channels {channels!r}.")
        if channel in out:
            raise ValueError(f"FeatureSpec.bands names channel {channel!r} more than once.")
        where = f"FeatureSpec.bands[{channel!r}]"
        if isinstance(bands, (str, bytes)) or not isinstance(bands, (list, tuple)) or not bands:
            raise ValueError(f"{where} is {bands!r}; it must be a non-empty tuple of (lo_hz, hi_hz) pairs.")
        edges: list[tuple[float, float]] = []
        for band in bands:
            if not (isinstance(band, (list, tuple)) and len(band) == 2):
                raise ValueError(f"{where} band {band!r} must be a (lo_hz, hi_hz) pair.")
            for edge in band:
                if isinstance(edge, bool) or not isinstance(edge, (int, float, np.integer, np.floating)):
                    raise ValueError(f"{where} band {band!r}: {edge!r} is not a number of Hz.")
                if not math.isfinite(edge) or edge < 0:
                    raise ValueError(f"{where} band {band!r}: {edge!r} must be a finite number of Hz >= 0.")
            lo, hi = float(band[0]) + 0.0, float(band[1]) + 0.0  # + 0.0: -0.0 becomes 0.0
            if not lo < hi:
                raise ValueError(f"{where} band {band!r}: its low edge must be below its high edge.")
            if edges and lo < edges[-1][1]:
                raise ValueError(
                    f"{where} band {band!r} overlaps or precedes {edges[-1]!r}: bands must be ascending and "
                    "non-overlapping (a band may start where the previous one ends)."
                )
            edges.append((lo, hi))
        out[channel] = tuple(edges)
    return tuple((c, out[c]) for c in channels if c in out)


def _band_params(value: object) -> tuple[tuple[str, tuple[tuple[float, float], ...]], ...]:
    """The "bands" of `params()`, `{channel: [[lo, hi], ...]}`, as `FeatureSpec.bands` takes them."""
    if not isinstance(value, dict):
        raise ValueError(f"Feature spec bands {value!r} must be an object of channel: [[lo_hz, hi_hz], ...].")
    return tuple(
        (c, tuple(tuple(b) if isinstance(b, list) else b for b in bs) if isinstance(bs, list) else bs)
        for c, bs in value.items()
    )


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



# --- band energy: fingerprinted only into the versions of specs with bands ------------------
# The aggregate path above keeps its name in its source (`def window_features`), which the
# committed versions hashed; the public `window_features` below wraps it.
_aggregate_features = window_features


def window_features(readings: Readings, spec: FeatureSpec) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:  # noqa: F811
    """(feature names, float64 matrix [n_windows, n_features], int64 window end µs [n_windows]).

    Window ends are exclusive (`(k + 1) * window_us`), ascending. A window that lacks a channel
    (fewer than `min_samples` finite samples) or yields a non-finite feature is left out, so
    the result may have no rows. A spec without bands goes to `_aggregate_features` as it is.
    """
    if not spec.bands:
        return _aggregate_features(readings, spec)
    names = spec.feature_names
    _, aggregates, ends = _aggregate_features(readings, dataclasses.replace(spec, bands=()))
    if not len(ends):
        return names, np.empty((0, len(names)), np.float64), np.empty(0, np.int64)
    ids = ends // spec.window_us - 1  # the windows every channel's aggregates kept
    bands = dict(spec.bands)
    blocks: list[np.ndarray] = []
    at = 0
    for channel, aggs in _columns(spec):
        blocks.append(aggregates[:, at : at + len(aggs)])
        at += len(aggs)
        if channel in bands:
            rows = readings.channel == readings.channels.index(channel)
            band_ids, table = _band_windows(
                readings.ts_us[rows], readings.value[rows],
                window_us=spec.window_us, min_samples=spec.min_samples, bands=bands[channel],
            )
            # Every window kept above has >= min_samples finite samples of this channel, so it is in band_ids.
            blocks.append(table[np.searchsorted(band_ids, ids)])
    matrix = np.concatenate(blocks, axis=1)
    finite = np.isfinite(matrix).all(axis=1)
    return names, np.ascontiguousarray(matrix[finite]), ends[finite]


def _band_windows(
    ts: np.ndarray, value: np.ndarray, *, window_us: int, min_samples: int, bands: tuple[tuple[float, float], ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Window ids (ascending) with at least `min_samples` samples, and their band energies (NaN: no spectrum)."""
    keep = np.isfinite(value)
    ts, value = ts[keep].astype(np.int64), value[keep].astype(np.float64)
    order = np.lexsort((value, ts))  # by time, ties by value, as the aggregates
    ts, value = ts[order], value[order]
    window = np.floor_divide(ts, window_us)
    if not len(window):
        return np.empty(0, np.int64), np.empty((0, len(bands)))
    starts = np.flatnonzero(np.r_[True, window[1:] != window[:-1]])
    counts = np.diff(np.r_[starts, len(window)])
    mean = np.add.reduceat(value, starts) / counts.astype(np.float64)  # as Aggregate.MEAN
    spacing = _median_spacing_us(ts, starts, counts)
    table = np.full((len(starts), len(bands)), np.nan)
    ok = (counts >= min_samples) & (spacing > 0)  # NaN spacing compares False
    # One FFT per group of windows with the same length and spacing (so the same bins).
    group_order = np.lexsort((spacing[ok], counts[ok]))
    members = np.flatnonzero(ok)[group_order]
    key_n, key_dt = counts[members], spacing[members]
    cuts = np.flatnonzero((key_n[1:] != key_n[:-1]) | (key_dt[1:] != key_dt[:-1])) + 1
    with np.errstate(over="ignore", invalid="ignore"):
        for group in np.split(members, cuts):
            if len(group):
                n, dt_us = int(counts[group[0]]), float(spacing[group[0]])
                x = value[starts[group][:, None] + np.arange(n)] - mean[group][:, None]
                table[group] = _band_energy(x, 1e6 / dt_us, bands)
    return window[starts][counts >= min_samples], table[counts >= min_samples]


def _median_spacing_us(ts: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per window (runs of sorted `ts`), the median of its positive spacings in µs; NaN without any."""
    segment = np.repeat(np.arange(len(starts)), counts)
    gap = np.diff(ts)
    inside = (segment[1:] == segment[:-1]) & (gap > 0)
    gap, segment = gap[inside], segment[1:][inside]
    order = np.lexsort((gap, segment))
    gap, segment = gap[order], segment[order]
    n = np.bincount(segment, minlength=len(starts))
    first = np.r_[0, np.cumsum(n)[:-1]]
    out = np.full(len(starts), np.nan)
    has = n > 0
    lo = gap[first[has] + (n[has] - 1) // 2].astype(np.float64)
    hi = gap[first[has] + n[has] // 2].astype(np.float64)
    out[has] = (lo + hi) / 2.0  # exact: integers below 2**53 and their half-sum
    return out


def _band_energy(x: np.ndarray, fs: float, bands: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Band energies [rows, bands] of rows of mean-removed samples uniformly spaced at `fs` Hz."""
    n = x.shape[1]
    spectrum = np.fft.rfft(x, axis=1)
    power = spectrum.real * spectrum.real + spectrum.imag * spectrum.imag
    power[:, 1 : (n + 1) // 2] *= 2.0  # one-sided: every bin but DC and Nyquist stands for two
    power /= float(n) * float(n)
    freq = np.arange(power.shape[1]) * fs / n
    out = np.zeros((len(x), len(bands)))
    for j, (lo, hi) in enumerate(bands):
        a, b = np.searchsorted(freq, (lo, hi), side="left")  # the bins with lo <= f < hi
        if b > a:
            out[:, j] = np.cumsum(power[:, a:b], axis=1)[:, -1]  # sequential per row: batch-independent
    return out


def _band_name(channel: str, lo: float, hi: float) -> str:
    return f"{channel}.band_{_hz(lo)}_{_hz(hi)}hz"


def _hz(x: float) -> str:
    """Shortest positional decimal that round-trips, "p" for the point: 0 -> "0", 2.5 -> "2p5"."""
    return np.format_float_positional(x, trim="-").replace(".", "p")


# Everything that turns readings into band energies and names them; with _FEATURE_CODE, every
# function of this module but the spec machinery (test_band_energy.py checks that).
_BAND_CODE = (window_features, _band_windows, _median_spacing_us, _band_energy, _band_name, _hz)


@functools.cache
def _band_fingerprint() -> str:
    return "\n".join(inspect.getsource(obj) for obj in _BAND_CODE)
