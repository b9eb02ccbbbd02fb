"""Streaming anomaly detectors per (tenant, device, channel): robust z-score and EWMA against a seasonal baseline.

    bank = DetectorBank(robust_z=RobustZConfig(season=Seasonality(DAY_US, 24), window=48, min_obs=24),
                        ewma=EwmaConfig(alpha=0.05), prediction=PredictionConfig(consecutive=3))
    for w in stream_output.windows:                       # hub/streaming: one value per key and window
        if not w.update:
            tenant, device, channel = w.key
            findings = bank.observe(tenant, device, channel, w.end_us, w.value)
    bank.observe_prediction(tenant, device, window_end_us, CLASSES[int(row.value)])   # lake rows `pred.class`
    store.save_detectors("stream", bank.to_state())       # now and then; DetectorBank.from_state on restart

Semantics
---------

Input. One value per key and window, identified by the window's end (event time, µs). A key's
windows must come in order: an observation whose `window_end_us` is not after the key's last one
is skipped and counted as `stale` (so a replay after a restart, or a window update with
revision 2+, never enters a baseline twice). Non-finite values are skipped and counted as
`non_finite`. Each observation is O(window) with `window` a small constant: O(1) in the length of
the stream.

Seasonality. `Seasonality(period_us, buckets)` cuts the period into equal buckets (24 over a day:
hour of day, in UTC) and a window belongs to the bucket holding its last instant
(`window_end_us - 1`). Every bucket has its own baseline, so a machine that runs 08:00-16:00 is
compared with earlier days' 08:00-16:00, not with last night. `buckets=1` is no seasonality.
Hazard: buckets are UTC, so a duty cycle kept in local time moves one bucket at a DST change and
alerts until the buckets have re-learned it, as after a level shift (below).

RobustZ. Per bucket a ring buffer (numpy) of the last `window` values. Once the bucket holds
`min_obs` values, score = |x - median| / (1.4826 * MAD + floor) where MAD is the median absolute
deviation from the median (1.4826 makes it estimate σ for normal data; Iglewicz & Hoaglin,
"How to Detect and Handle Outliers", 1993). `floor` is in the channel's units: it keeps a flat
signal (MAD 0, e.g. a quantized sensor) from scoring every change as infinite; set it to the
sensor's resolution. Scoring happens BEFORE the value joins its bucket. Every value joins, outliers
too: a spike barely moves a median, and a level shift becomes the new normal once it fills half of
each bucket's ring, i.e. it alerts for window/2 values per bucket and then stops (hourly buckets,
10-minute windows, window 48: 4 days).

Ewma. Per bucket an exponentially weighted mean and variance (West 1979 / Finch 2009, "Incremental
calculation of weighted mean and variance"): z = |x - mean| / sqrt(var + floor), `floor` in the
channel's units squared, scored BEFORE the update, after `min_obs` values in the bucket. Hazard:
one outlier inflates the variance, which then masks smaller anomalies for about 1/alpha values of
the bucket; so a level shift is found where it starts, and not much longer.

Predictions. The devices' own model predicts a class per window (lake rows `pred.class`).
`observe_prediction` finds a device whose predicted class is outside `normal` for `consecutive`
windows in a row, and keeps finding it for every further such window; a normal prediction resets
the run. Windows a device did not predict are not counted either way.

Findings. A score above `threshold` gives a Finding, at most one per detector per observation;
hub/alerts/store.py turns findings into deduplicated, rate-limited alerts. State
(`to_state`/`from_state`) is a JSON-able dict; restoring it gives the same later findings as never
stopping (tests/hub/alerts/test_detectors.py). Memory per channel key: buckets * window * 8 bytes
(RobustZ) + a few dozen bytes per bucket (Ewma), about 10 KiB with the defaults; keys are never
evicted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from .errors import AlertConfigError, DetectorStateError

__all__ = [
    "DAY_US", "PRED_CHANNEL", "DetectorBank", "Ewma", "EwmaConfig", "Finding", "FindingKind", "PredictionConfig",
    "RobustZ", "RobustZConfig", "Seasonality",
]

DAY_US = 86_400 * 1_000_000
MAD_SCALE = 1.4826  # 1 / Φ⁻¹(3/4): MAD * 1.4826 estimates σ for normal data
PRED_CHANNEL = "pred.class"  # the lake channel of the devices' own predictions (value = class index)
STATE_FORMAT = 1


def _int(field: str, value: object, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"from {low} to {high}"
        raise AlertConfigError(field, value, f"it must be an integer {bound}")


def _positive(field: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (math.isfinite(value) and value > 0):
        raise AlertConfigError(field, value, "it must be a finite number above 0")


@dataclass(frozen=True)
class Seasonality:
    """The period cut into `buckets` equal buckets, each with its own baseline; buckets=1 is none."""

    period_us: int = DAY_US
    buckets: int = 24

    def __post_init__(self) -> None:
        _int("season.period_us", self.period_us, 1)
        _int("season.buckets", self.buckets, 1, 10_000)

    def bucket(self, window_end_us: int) -> int:
        return (window_end_us - 1) % self.period_us * self.buckets // self.period_us


NO_SEASON = Seasonality(buckets=1)


@dataclass(frozen=True)
class RobustZConfig:
    season: Seasonality = Seasonality()
    window: int = 48  # values kept per bucket
    min_obs: int = 24  # per bucket, before it scores
    # A MAD of a few dozen values is often half of σ, so the tail is much heavier than normal's: on
    # normal noise (window 48, min_obs 24) 6 alerts on 2.5e-5 of windows, 5 on 1.1e-4 (measured).
    threshold: float = 6.0
    floor: float = 1e-6  # channel units

    def __post_init__(self) -> None:
        _int("robust_z.window", self.window, 1, 100_000)
        _int("robust_z.min_obs", self.min_obs, 1, self.window)
        _positive("robust_z.threshold", self.threshold)
        _positive("robust_z.floor", self.floor)


@dataclass(frozen=True)
class EwmaConfig:
    season: Seasonality = NO_SEASON
    alpha: float = 0.05  # weight of the newest value; ~2/alpha - 1 values of memory
    min_obs: int = 24  # per bucket, before it scores
    threshold: float = 5.0  # alerts on 1.5e-5 of windows of normal noise with alpha 0.05 (measured)
    floor: float = 1e-12  # channel units squared

    def __post_init__(self) -> None:
        _positive("ewma.alpha", self.alpha)
        if self.alpha > 1:
            raise AlertConfigError("ewma.alpha", self.alpha, "it must be in (0, 1]")
        _int("ewma.min_obs", self.min_obs, 2)
        _positive("ewma.threshold", self.threshold)
        _positive("ewma.floor", self.floor)


@dataclass(frozen=True)
class PredictionConfig:
    consecutive: int = 3  # non-normal predictions in a row before a finding
    normal: tuple[str, ...] = ("normal",)  # models/condition/data.py CLASSES[0]

    def __post_init__(self) -> None:
        _int("prediction.consecutive", self.consecutive, 1)
        if not isinstance(self.normal, tuple) or not all(isinstance(c, str) for c in self.normal):
            raise AlertConfigError("prediction.normal", self.normal, "it must be a tuple of class names")


class FindingKind(StrEnum):
    ROBUST_Z = "robust_z"
    EWMA = "ewma"
    PREDICTION = "prediction"


@dataclass(frozen=True)
class Finding:
    """One anomalous window. For `prediction`: value = score = the run length, baseline = `consecutive`,
    label = the latest predicted class; for the others label is None."""

    tenant: str
    device: str
    channel: str
    kind: FindingKind
    window_end_us: int
    value: float
    score: float
    baseline: float
    label: str | None = None

    @property
    def message(self) -> str:
        if self.kind is FindingKind.PREDICTION:
            return f"The device's model predicted {self.label} for {int(self.value)} window(s) in a row."
        what = "robust z from its bucket's median" if self.kind is FindingKind.ROBUST_Z else "σ from its EWMA"
        return f"{self.channel} = {self.value:.6g} is {self.score:.1f} {what} {self.baseline:.6g}."


class RobustZ:
    """One key's robust z-score detector: a ring of the last `window` values per season bucket."""

    def __init__(self, config: RobustZConfig) -> None:
        self.config = config
        self._ring = np.zeros((config.season.buckets, config.window))
        self._count = [0] * config.season.buckets
        self._pos = [0] * config.season.buckets

    def observe(self, window_end_us: int, value: float) -> tuple[float, float] | None:
        """(score, median) once the bucket is warm, else None; the value joins the bucket either way."""
        b = self.config.season.bucket(window_end_us)
        n, out = self._count[b], None
        if n >= self.config.min_obs:
            held = self._ring[b, :n]
            median = float(np.median(held))
            mad = float(np.median(np.abs(held - median)))
            out = (abs(value - median) / (MAD_SCALE * mad + self.config.floor), median)
        self._ring[b, self._pos[b]] = value
        self._pos[b] = (self._pos[b] + 1) % self.config.window
        self._count[b] = min(n + 1, self.config.window)
        return out

    def to_state(self) -> dict[str, list[float]]:
        """Each non-empty bucket's values, oldest first."""
        out = {}
        for b, n in enumerate(self._count):
            if n:
                ring = self._ring[b, :n] if n < self.config.window else np.roll(self._ring[b], -self._pos[b])
                out[str(b)] = ring.tolist()
        return out

    @classmethod
    def from_state(cls, config: RobustZConfig, state: dict[str, list[float]]) -> "RobustZ":
        self = cls(config)
        for key, values in state.items():
            b = int(key)
            if not 0 <= b < config.season.buckets or not 0 < len(values) <= config.window:
                raise DetectorStateError(f"RobustZ bucket {key!r} with {len(values)} value(s) does not fit "
                                         f"{config.season.buckets} bucket(s) of {config.window}.")
            self._ring[b, :len(values)] = np.asarray(values, dtype=np.float64)
            self._count[b] = len(values)
            self._pos[b] = len(values) % config.window
        return self


class Ewma:
    """One key's EWMA detector: mean and variance per season bucket."""

    def __init__(self, config: EwmaConfig) -> None:
        self.config = config
        buckets = config.season.buckets
        self._mean, self._var, self._n = [0.0] * buckets, [0.0] * buckets, [0] * buckets

    def observe(self, window_end_us: int, value: float) -> tuple[float, float] | None:
        """(z, mean) once the bucket is warm, else None; the value updates the bucket either way."""
        b = self.config.season.bucket(window_end_us)
        mean, var, n, out = self._mean[b], self._var[b], self._n[b], None
        if n == 0:
            mean, var = value, 0.0
        else:
            if n >= self.config.min_obs:
                out = (abs(value - mean) / math.sqrt(var + self.config.floor), mean)
            diff = value - mean
            incr = self.config.alpha * diff
            mean, var = mean + incr, (1 - self.config.alpha) * (var + diff * incr)
        self._mean[b], self._var[b], self._n[b] = mean, var, min(n + 1, self.config.min_obs)
        return out

    def to_state(self) -> dict[str, list[float]]:
        return {str(b): [self._mean[b], self._var[b], self._n[b]] for b in range(len(self._n)) if self._n[b]}

    @classmethod
    def from_state(cls, config: EwmaConfig, state: dict[str, list[float]]) -> "Ewma":
        self = cls(config)
        for key, (mean, var, n) in state.items():
            b = int(key)
            if not 0 <= b < config.season.buckets:
                raise DetectorStateError(f"Ewma bucket {key!r} does not fit {config.season.buckets} bucket(s).")
            self._mean[b], self._var[b], self._n[b] = float(mean), float(var), int(n)
        return self


@dataclass
class _Channel:
    last_end_us: int
    robust_z: RobustZ | None
    ewma: Ewma | None


@dataclass
class _Prediction:
    last_end_us: int
    run: int = 0
    label: str | None = None


@dataclass
class BankStats:
    observed: int = 0  # values and predictions that reached a detector
    stale: int = 0  # skipped: window not after the key's last one
    non_finite: int = 0  # skipped: NaN or ±inf
    findings: int = 0


class DetectorBank:
    """RobustZ and Ewma per (tenant, device, channel), prediction runs per (tenant, device); None turns one off.

    Not thread-safe: one caller (the stream's sink) feeds it."""

    def __init__(
        self, *, robust_z: RobustZConfig | None = RobustZConfig(), ewma: EwmaConfig | None = EwmaConfig(),
        prediction: PredictionConfig | None = PredictionConfig(),
    ) -> None:
        self.robust_z, self.ewma, self.prediction = robust_z, ewma, prediction
        self.stats = BankStats()
        self._channels: dict[tuple[str, str, str], _Channel] = {}
        self._predictions: dict[tuple[str, str], _Prediction] = {}

    def __len__(self) -> int:
        return len(self._channels) + len(self._predictions)

    def observe(self, tenant: str, device: str, channel: str, window_end_us: int, value: float) -> list[Finding]:
        """The findings of one window's value: none, or one per detector whose score is above its threshold."""
        value, window_end_us = float(value), int(window_end_us)  # numpy scalars would not survive json.dumps
        if not math.isfinite(value):
            self.stats.non_finite += 1
            return []
        key = (tenant, device, channel)
        state = self._channels.get(key)
        if state is None:
            state = self._channels[key] = _Channel(window_end_us, RobustZ(self.robust_z) if self.robust_z else None,
                                                   Ewma(self.ewma) if self.ewma else None)
        elif window_end_us <= state.last_end_us:
            self.stats.stale += 1
            return []
        state.last_end_us = window_end_us
        self.stats.observed += 1
        out = []
        for kind, detector, config in ((FindingKind.ROBUST_Z, state.robust_z, self.robust_z),
                                       (FindingKind.EWMA, state.ewma, self.ewma)):
            if detector is None or config is None:
                continue
            scored = detector.observe(window_end_us, value)
            if scored is not None and scored[0] > config.threshold:
                out.append(Finding(tenant, device, channel, kind, window_end_us, value, scored[0], scored[1]))
        self.stats.findings += len(out)
        return out

    def observe_prediction(self, tenant: str, device: str, window_end_us: int, class_name: str) -> Finding | None:
        """A finding once the device's model has predicted a non-normal class `consecutive` windows in a row."""
        if self.prediction is None:
            return None
        window_end_us, class_name = int(window_end_us), str(class_name)
        state = self._predictions.get((tenant, device))
        if state is None:
            state = self._predictions[(tenant, device)] = _Prediction(window_end_us)
        elif window_end_us <= state.last_end_us:
            self.stats.stale += 1
            return None
        state.last_end_us = window_end_us
        self.stats.observed += 1
        if class_name in self.prediction.normal:
            state.run, state.label = 0, None
            return None
        state.run, state.label = state.run + 1, class_name
        if state.run < self.prediction.consecutive:
            return None
        self.stats.findings += 1
        return Finding(tenant, device, PRED_CHANNEL, FindingKind.PREDICTION, window_end_us, float(state.run),
                       float(state.run), float(self.prediction.consecutive), class_name)

    def to_state(self) -> dict[str, Any]:
        """Everything, as JSON-able values (finite floats only, so json.dumps round-trips them exactly)."""
        return {
            "format": STATE_FORMAT,
            "config": {"robust_z": None if self.robust_z is None else asdict(self.robust_z),
                       "ewma": None if self.ewma is None else asdict(self.ewma),
                       "prediction": None if self.prediction is None else asdict(self.prediction)},
            "stats": asdict(self.stats),
            "channels": [[*key, s.last_end_us, s.robust_z.to_state() if s.robust_z else None,
                          s.ewma.to_state() if s.ewma else None] for key, s in self._channels.items()],
            "predictions": [[*key, s.last_end_us, s.run, s.label] for key, s in self._predictions.items()],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "DetectorBank":
        """The bank `to_state` saved, with the configs it was saved with (start a fresh bank to change them)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise DetectorStateError(f"A detector state of format {got!r} cannot be loaded; this hub reads "
                                     f"format {STATE_FORMAT}.")
        try:
            config = state["config"]
            r, e, p = config["robust_z"], config["ewma"], config["prediction"]
            bank = cls(
                robust_z=None if r is None else RobustZConfig(**{**r, "season": Seasonality(**r["season"])}),
                ewma=None if e is None else EwmaConfig(**{**e, "season": Seasonality(**e["season"])}),
                prediction=None if p is None else PredictionConfig(**{**p, "normal": tuple(p["normal"])}),
            )
            bank.stats = BankStats(**state["stats"])
            for tenant, device, channel, last_end_us, rz, ew in state["channels"]:
                bank._channels[(tenant, device, channel)] = _Channel(
                    int(last_end_us),
                    RobustZ.from_state(bank.robust_z, rz) if bank.robust_z and rz is not None else None,
                    Ewma.from_state(bank.ewma, ew) if bank.ewma and ew is not None else None)
            for tenant, device, last_end_us, run, label in state["predictions"]:
                bank._predictions[(tenant, device)] = _Prediction(int(last_end_us), int(run), label)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DetectorStateError):
                raise
            raise DetectorStateError(f"The detector state cannot be loaded: {type(exc).__name__}: {exc}.") from exc
        return bank
