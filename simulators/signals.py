"""Signal models: a virtual device's channels as pure functions of (seed, tick, period, start).

A device restarted at tick `i` produces exactly the readings it would have produced had it
never stopped, so the agent only needs to persist the next tick index. Randomness is therefore
counter-based, never a stateful generator: the noise of channel `c` at tick `i` is
splitmix64(key(seed, c) + (i + 1) * golden) (Steele, Lea & Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014), turned into a normal by Box–Muller. Chunking
`frame(0, 10)` as `frame(0, 4) + frame(4, 6)` gives identical values, bit for bit.

Hazard: sin/exp/log come from numpy's SIMD kernels, which may differ by an ulp between numpy
builds or CPUs. Values are rounded to the sensor's resolution, which hides that almost always;
replaying the same build reproduces every bit.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from protocol import Readings, check_channel, check_id

DAY_S = 86_400.0
_DAY_US = 86_400_000_000
_I64_MAX = 2**63 - 1
_M64 = 2**64 - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
_MAX_DECIMALS = 6  # the codec's decimal mode stops at 10**-6


# --- counter-based randomness ----------------------------------------------------------------
def _mix_int(x: int) -> int:
    """The splitmix64 finalizer on a Python int (used for keys, once per stream)."""
    x &= _M64
    x = ((x ^ (x >> 30)) * _MUL1) & _M64
    x = ((x ^ (x >> 27)) * _MUL2) & _M64
    return x ^ (x >> 31)


def _stream_key(seed: int, stream: str) -> int:
    # Keyed by the stream's name, not its position, so adding a channel leaves the others alone.
    name = int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=8).digest(), "little")
    return _mix_int(_mix_int(seed + _GOLDEN) ^ name)


def _splitmix(key: int, counters: np.ndarray) -> np.ndarray:
    # uint64 array arithmetic wraps silently, which is what splitmix64 wants.
    x = counters.astype(np.uint64) * np.uint64(_GOLDEN) + np.uint64((key + _GOLDEN) & _M64)
    x ^= x >> np.uint64(30)
    x *= np.uint64(_MUL1)
    x ^= x >> np.uint64(27)
    x *= np.uint64(_MUL2)
    x ^= x >> np.uint64(31)
    return x


def _uniform(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _normal(bits: np.ndarray) -> np.ndarray:
    # Box–Muller on the two 32-bit halves; u1 is in (0, 1] so the log is finite (|z| <= 6.8).
    u1 = ((bits >> np.uint64(32)).astype(np.float64) + 1.0) * 2.0**-32
    u2 = (bits & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0**-32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def quantise(values: np.ndarray, decimals: int) -> np.ndarray:
    """Round to `decimals` places the way the codec checks it, so its decimal mode applies."""
    p = 10.0**decimals
    return np.round(values * p) / p


# --- what a channel sees ---------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Frame:
    """One run of ticks as a channel model sees it: the clock, the daily cycle, the noise."""

    seed: int
    ticks: np.ndarray  # int64 tick indices
    ts_us: np.ndarray  # int64 µs since the Unix epoch
    elapsed_s: np.ndarray  # float64 seconds since the model's start_us
    daily: np.ndarray  # float64 in [-1, 1]; 1 at the device's warmest time of day

    def normal(self, stream: str) -> np.ndarray:
        """A standard normal per tick, the same for the same (seed, stream, tick)."""
        return _normal(_splitmix(_stream_key(self.seed, stream), self.ticks))

    def uniform(self, stream: str, counters: np.ndarray) -> np.ndarray:
        """A uniform in [0, 1) per counter (a tick, a time slot ...), the same for the same input."""
        return _uniform(_splitmix(_stream_key(self.seed, stream), counters))

    def device_uniform(self, stream: str) -> float:
        """One uniform in [0, 1) per device: its phase, its wear onset."""
        return device_uniform(self.seed, stream)


def device_uniform(seed: int, stream: str) -> float:
    return float(_uniform(_splitmix(_stream_key(seed, stream), np.zeros(1, np.int64)))[0])


class ChannelSpec(Protocol):
    """One channel of a virtual device. `values` must depend on nothing but the frame."""

    @property
    def name(self) -> str: ...

    def values(self, frame: Frame) -> np.ndarray: ...


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_common(spec: object, *, name: str, decimals: int, nonneg: Sequence[str]) -> None:
    check_channel(name)
    _check(
        isinstance(decimals, int) and 0 <= decimals <= _MAX_DECIMALS,
        f"{type(spec).__name__}.decimals is {decimals!r}; it must be an int in 0..{_MAX_DECIMALS}.",
    )
    for attr in nonneg:
        v = getattr(spec, attr)
        _check(
            isinstance(v, (int, float)) and math.isfinite(v) and v >= 0,
            f"{type(spec).__name__}.{attr} is {v!r}; it must be a finite number >= 0.",
        )


# --- the device's environment ----------------------------------------------------------------
@dataclass(frozen=True)
class DailyCycle:
    """When the device's day is warmest (UTC hour); each device is shifted by up to ±jitter."""

    peak_hour: float = 15.0
    jitter_hours: float = 2.0

    def __post_init__(self) -> None:
        _check(0.0 <= self.peak_hour < 24.0, f"DailyCycle.peak_hour is {self.peak_hour!r}; it must be in [0, 24).")
        _check(
            0.0 <= self.jitter_hours <= 12.0,
            f"DailyCycle.jitter_hours is {self.jitter_hours!r}; it must be in [0, 12].",
        )

    def peak_s(self, seed: int) -> float:
        """Seconds after UTC midnight at which this device's day peaks."""
        shift = (2.0 * device_uniform(seed, "daily.phase") - 1.0) * self.jitter_hours
        return ((self.peak_hour + shift) % 24.0) * 3600.0

    def values(self, seed: int, ts_us: np.ndarray) -> np.ndarray:
        second_of_day = (ts_us % _DAY_US).astype(np.float64) / 1e6
        return np.cos(2.0 * np.pi * (second_of_day - self.peak_s(seed)) / DAY_S)


# --- channels --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TemperatureSpec:
    """Air temperature in °C: daily cycle, a slow multi-day weather drift, sensor noise."""

    name: str = "temperature"
    base_c: float = 21.0
    daily_amplitude_c: float = 4.0
    drift_c: float = 0.8
    noise_c: float = 0.15
    decimals: int = 2

    def __post_init__(self) -> None:
        _check_common(self, name=self.name, decimals=self.decimals,
                      nonneg=("daily_amplitude_c", "drift_c", "noise_c"))
        _check(math.isfinite(self.base_c), f"TemperatureSpec.base_c is {self.base_c!r}; it must be finite.")

    def values(self, frame: Frame) -> np.ndarray:
        # Weather: two incommensurate slow sinusoids with per-device phases; bounded by drift_c.
        days = frame.elapsed_s / DAY_S
        p1 = frame.device_uniform(f"{self.name}.drift1")
        p2 = frame.device_uniform(f"{self.name}.drift2")
        drift = 0.5 * self.drift_c * (np.sin(2 * np.pi * (days / 3.7 + p1)) + np.sin(2 * np.pi * (days / 8.3 + p2)))
        v = self.base_c + self.daily_amplitude_c * frame.daily + drift + self.noise_c * frame.normal(self.name)
        return quantise(v, self.decimals)


@dataclass(frozen=True)
class HumiditySpec:
    """Relative humidity in %: falls as the day warms, noise, clipped to [0, 100]."""

    name: str = "humidity"
    base_pct: float = 45.0
    daily_amplitude_pct: float = 12.0
    noise_pct: float = 0.8
    decimals: int = 1

    def __post_init__(self) -> None:
        _check_common(self, name=self.name, decimals=self.decimals,
                      nonneg=("base_pct", "daily_amplitude_pct", "noise_pct"))
        _check(self.base_pct <= 100.0, f"HumiditySpec.base_pct is {self.base_pct!r}; it must be <= 100.")

    def values(self, frame: Frame) -> np.ndarray:
        v = self.base_pct - self.daily_amplitude_pct * frame.daily + self.noise_pct * frame.normal(self.name)
        return quantise(np.clip(v, 0.0, 100.0), self.decimals)


@dataclass(frozen=True)
class VibrationSpec:
    """Vibration RMS velocity in mm/s: a healthy floor, then bearing wear that accelerates.

    Wear starts `wear_onset_days` (+ up to `wear_onset_jitter_days`, per device) after the
    model's start and adds `wear_scale_mm_s * (exp(wear_rate_per_day * days_since_onset) - 1)`,
    capped at `max_mm_s`; noise grows with it. `wear_rate_per_day = 0` is a healthy machine.
    """

    name: str = "vibration_rms"
    base_mm_s: float = 1.2
    noise_mm_s: float = 0.05
    wear_rate_per_day: float = 0.0
    wear_onset_days: float = 1.0
    wear_onset_jitter_days: float = 1.0
    wear_scale_mm_s: float = 0.1
    max_mm_s: float = 45.0  # ISO 10816 zone D ends well below this
    decimals: int = 3

    def __post_init__(self) -> None:
        _check_common(self, name=self.name, decimals=self.decimals, nonneg=(
            "base_mm_s", "noise_mm_s", "wear_rate_per_day", "wear_onset_days",
            "wear_onset_jitter_days", "wear_scale_mm_s", "max_mm_s",
        ))

    def onset_s(self, seed: int) -> float:
        """Seconds after the model's start at which this device's wear begins."""
        u = device_uniform(seed, f"{self.name}.onset")
        return (self.wear_onset_days + u * self.wear_onset_jitter_days) * DAY_S

    def values(self, frame: Frame) -> np.ndarray:
        wear = np.zeros(len(frame.ticks))
        if self.wear_rate_per_day > 0 and self.wear_scale_mm_s > 0:
            days = np.maximum(frame.elapsed_s - self.onset_s(frame.seed), 0.0) / DAY_S
            # Clamp the exponent where the cap is reached: exp must not overflow (warnings are errors).
            limit = math.log1p(self.max_mm_s / self.wear_scale_mm_s)
            wear = self.wear_scale_mm_s * np.expm1(np.minimum(self.wear_rate_per_day * days, limit))
        sigma = self.noise_mm_s + 0.05 * wear  # a worn bearing rattles: the spread grows too
        v = self.base_mm_s + wear + sigma * frame.normal(self.name)
        return quantise(np.clip(v, 0.0, self.max_mm_s), self.decimals)


@dataclass(frozen=True)
class PowerSpec:
    """Electrical power in W: idle draw plus a load that switches on and off in fixed time slots.

    Each `slot_s` slot of wall-clock time is loaded with probability `duty`, at a per-slot
    level between 70 % and 130 % of `load_w`: a piecewise-constant duty cycle.
    """

    name: str = "power_w"
    base_w: float = 150.0
    load_w: float = 250.0
    duty: float = 0.35
    slot_s: float = 900.0
    noise_w: float = 1.5
    decimals: int = 1

    def __post_init__(self) -> None:
        _check_common(self, name=self.name, decimals=self.decimals,
                      nonneg=("base_w", "load_w", "duty", "slot_s", "noise_w"))
        _check(self.duty <= 1.0, f"PowerSpec.duty is {self.duty!r}; it must be in [0, 1].")
        _check(self.slot_s >= 1e-6, f"PowerSpec.slot_s is {self.slot_s!r}; it must be at least 1 µs.")

    def values(self, frame: Frame) -> np.ndarray:
        slot = frame.ts_us // max(int(round(self.slot_s * 1e6)), 1)
        on = frame.uniform(f"{self.name}.duty", slot) < self.duty
        level = 0.7 + 0.6 * frame.uniform(f"{self.name}.level", slot)
        v = self.base_w + np.where(on, self.load_w * level, 0.0) + self.noise_w * frame.normal(self.name)
        return quantise(np.maximum(v, 0.0), self.decimals)


@dataclass(frozen=True)
class VibrationWaveform:
    """Raw accelerometer samples in m/s² of a rotating machine: shaft tone, harmonics, bearing wear.

    One value per tick, so the model's period is the sample interval: run it in a model of its
    own, e.g. `SignalModel(seed, start_us, period_us=5_000, channels=(VibrationWaveform(),))` for
    200 Hz (band energy: protocol.features, `FeatureSpec.bands`). Not in `default_channels`.

    Healthy, the shaft tone at `shaft_hz` has amplitude `shaft_amplitude` and its k-th harmonic
    (k = 2 .. `harmonics`) `shaft_amplitude * harmonic_decay**(k - 1)`. Wear follows
    VibrationSpec's law, `w = exp(wear_rate_per_day * days_since_onset) - 1` capped at
    `max_wear`, and shifts the energy up the spectrum: harmonic k gains
    `shaft_amplitude * wear_gain * w * (k - 1) / (harmonics - 1)`, a bearing-defect tone at
    `defect_order * shaft_hz` (an outer-race order, not a multiple of the shaft) grows as
    `shaft_amplitude * wear_gain * w`, and the broadband noise as `noise * (1 + w)`. Tones have
    per-device phases. Frequencies at or above half the sampling rate alias: keep
    `max(harmonics, defect_order) * shaft_hz` below it (99 Hz with the defaults; 100 Hz at 200 Hz).
    """

    name: str = "vibration"
    shaft_hz: float = 24.75  # 1485 rpm: a 4-pole motor at 50 Hz under load
    shaft_amplitude: float = 1.0
    harmonics: int = 4
    harmonic_decay: float = 0.3
    defect_order: float = 3.57
    noise: float = 0.05
    wear_rate_per_day: float = 0.0
    wear_onset_days: float = 1.0
    wear_onset_jitter_days: float = 1.0
    wear_gain: float = 0.5
    max_wear: float = 20.0
    decimals: int = 4

    def __post_init__(self) -> None:
        _check_common(self, name=self.name, decimals=self.decimals, nonneg=(
            "shaft_hz", "shaft_amplitude", "harmonic_decay", "defect_order", "noise", "wear_rate_per_day",
            "wear_onset_days", "wear_onset_jitter_days", "wear_gain", "max_wear",
        ))
        _check(self.shaft_hz > 0, f"VibrationWaveform.shaft_hz is {self.shaft_hz!r}; it must be > 0.")
        _check(
            isinstance(self.harmonics, int) and not isinstance(self.harmonics, bool) and 1 <= self.harmonics <= 64,
            f"VibrationWaveform.harmonics is {self.harmonics!r}; it must be an int in 1..64.",
        )

    def onset_s(self, seed: int) -> float:
        """Seconds after the model's start at which this device's wear begins."""
        u = device_uniform(seed, f"{self.name}.onset")
        return (self.wear_onset_days + u * self.wear_onset_jitter_days) * DAY_S

    def wear(self, frame: Frame) -> np.ndarray:
        """The wear level `w` per tick: 0 before the onset and for a healthy machine."""
        if self.wear_rate_per_day <= 0 or self.max_wear <= 0:
            return np.zeros(len(frame.ticks))
        days = np.maximum(frame.elapsed_s - self.onset_s(frame.seed), 0.0) / DAY_S
        # Clamp the exponent where the cap is reached: exp must not overflow (warnings are errors).
        return np.expm1(np.minimum(self.wear_rate_per_day * days, math.log1p(self.max_wear)))

    def values(self, frame: Frame) -> np.ndarray:
        w = self.wear(frame)
        t = frame.elapsed_s

        def tone(order: float, key: str) -> np.ndarray:
            # Cycles modulo 1 before the 2π: the phase stays accurate however long the run.
            cycles = np.mod(order * self.shaft_hz * t + frame.device_uniform(f"{self.name}.{key}"), 1.0)
            return np.sin(2.0 * np.pi * cycles)

        v = self.shaft_amplitude * tone(1.0, "phase1")
        for k in range(2, self.harmonics + 1):
            grow = self.wear_gain * w * (k - 1) / (self.harmonics - 1)
            v = v + self.shaft_amplitude * (self.harmonic_decay ** (k - 1) + grow) * tone(float(k), f"phase{k}")
        v = v + self.shaft_amplitude * self.wear_gain * w * tone(self.defect_order, "defect")
        v = v + self.noise * (1.0 + w) * frame.normal(self.name)
        return quantise(v, self.decimals)


def default_channels(*, wear_rate: float = 0.0) -> tuple[ChannelSpec, ...]:
    """temperature, humidity, vibration_rms (wearing at `wear_rate` per day) and power_w."""
    return (TemperatureSpec(), HumiditySpec(), VibrationSpec(wear_rate_per_day=wear_rate), PowerSpec())


# --- the model -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignalModel:
    """A virtual device: tick `i` is at `start_us + i * period_us` and its values depend on nothing else."""

    seed: int
    start_us: int
    period_us: int
    channels: tuple[ChannelSpec, ...] = field(default_factory=lambda: default_channels())
    climate: DailyCycle = DailyCycle()

    def __post_init__(self) -> None:
        _check(isinstance(self.seed, int) and 0 <= self.seed <= _M64,
               f"Seed {self.seed!r} must be an int in 0..2**64-1.")
        _check(isinstance(self.start_us, int) and 0 <= self.start_us <= _I64_MAX,
               f"start_us {self.start_us!r} must be an int of µs since the Unix epoch, >= 0.")
        _check(isinstance(self.period_us, int) and self.period_us > 0,
               f"period_us {self.period_us!r} must be an int > 0.")
        _check(len(self.channels) > 0, "A signal model needs at least one channel; it has none.")
        names = [c.name for c in self.channels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        _check(not dupes, f"Channel names {dupes!r} appear more than once in the model.")

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)

    def ts_us_of(self, tick: int) -> int:
        return self.start_us + tick * self.period_us

    def tick_at(self, ts_us: int) -> int:
        """The first tick at or after `ts_us` (0 before the start): where to resume by wall clock."""
        return max(0, -((self.start_us - ts_us) // self.period_us))

    def frame(self, first_tick: int, n: int) -> Readings:
        """Ticks `first_tick .. first_tick + n - 1` of every channel, as one Readings frame."""
        _check(isinstance(first_tick, int) and first_tick >= 0, f"first_tick {first_tick!r} must be an int >= 0.")
        _check(isinstance(n, int) and n >= 0, f"n {n!r} must be an int >= 0.")
        _check(
            self.ts_us_of(first_tick + max(n - 1, 0)) <= _I64_MAX,
            f"Ticks {first_tick}..{first_tick + n - 1} run past the int64 µs clock (period {self.period_us} µs).",
        )
        ticks = np.arange(first_tick, first_tick + n, dtype=np.int64)
        ts = self.start_us + ticks * self.period_us
        frame = Frame(
            seed=self.seed,
            ticks=ticks,
            ts_us=ts,
            elapsed_s=(ticks * self.period_us).astype(np.float64) / 1e6,
            daily=self.climate.values(self.seed, ts),
        )
        values = np.empty((n, len(self.channels)), np.float64)
        for j, spec in enumerate(self.channels):
            values[:, j] = spec.values(frame)
        return Readings.from_columns(self.channel_names, ts, values)


def device_seed(device_id: str, *, seed_base: int = 0) -> int:
    """A stable 64-bit seed for a device id: blake2b, never hash() (salted per process).

    crc32 would do for a handful of devices but collides by the birthday bound in a fleet of
    tens of thousands; 64 bits do not.
    """
    check_id("device", device_id)
    digest = hashlib.blake2b(f"{seed_base}:{device_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def device_model(
    device_id: str,
    *,
    seed_base: int = 0,
    start_us: int,
    period_us: int,
    wear_rate: float = 0.0,
) -> SignalModel:
    """The default four-channel model for `device_id`; the same id always gives the same device."""
    return SignalModel(
        seed=device_seed(device_id, seed_base=seed_base),
        start_us=start_us,
        period_us=period_us,
        channels=default_channels(wear_rate=wear_rate),
    )
