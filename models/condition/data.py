"""Labelled windows from the simulator: normal, bearing wear, sensor fault — deterministic in one seed.

Every window is computed by `protocol.features.window_features`, the function the agent runs
before inference, over readings from `simulators.signals.device_model`, the model the agent's
simulated input runs. Splits use disjoint device ids, so held-out windows come from machines the
model never saw.

How each class is made (a segment is `SEGMENT_WINDOWS` consecutive one-minute windows of one
device at one reading a second):

* normal — a healthy device (wear rate 0), or a wearing one before its wear onset, anywhere in
  its first 30 days.
* bearing_wear — a device wearing at 0.5–3 per day, late enough in life that wear adds
  0.3–20 mm/s to the 1.2 mm/s floor (ISO 10816-1 puts the zone B/C line of small machines at
  1.8 mm/s, so the mildest cases would still pass that standard). Earlier wear looks normal
  and is not in the data: see the model card's limits.
* sensor_fault — `simulators.faults.stuck` (from the segment's start) or
  `simulators.faults.spikes` (every 2–60 readings, ±0.3–8 mm/s or ±0.5–15 °C) on vibration_rms
  or temperature, of a healthy device or a wearing one anywhere in its life: a broken sensor
  is a sensor fault whatever the bearing behind it is doing.

Randomness: the simulator's noise is counter-based and survives numpy upgrades (up to an ulp in
sin/exp, which rounding to the sensor's resolution hides). The choices made here (when, how
fast, which fault) come from `numpy.random.default_rng((seed, split, class, device))`; its
PCG64 streams for `random`, `integers` and `uniform` have not changed since numpy 1.17, though
numpy does not promise that they never will. If they do, the data changes and so does every
sha256 in the manifest: the tests say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protocol import Readings
from protocol.features import Aggregate, FeatureSpec, window_features
from simulators import VibrationSpec, device_model, spikes, stuck

CLASSES = ("normal", "bearing_wear", "sensor_fault")

SPEC = FeatureSpec(
    window_us=60_000_000,
    channels=("vibration_rms", "temperature"),
    extra=(("vibration_rms", (Aggregate.P2P,)), ("temperature", (Aggregate.DELTA,))),
    min_samples=30,
)
"""One-minute windows of vibration and temperature; a window with fewer than 30 readings is dropped.

At the simulator's (and the agent's default) one reading a second a full window holds 60
samples; one cut by an outage or the edge of a buffer is left out, not fed to a model that
never saw one so thin.
"""

PERIOD_US = 1_000_000
START_US = 1_700_006_400_000_000  # 2023-11-15T00:00:00Z: windows and days line up
SEGMENT_WINDOWS = 10
_TICKS_PER_WINDOW = SPEC.window_us // PERIOD_US
_DAY_TICKS = 86_400_000_000 // PERIOD_US
_SPLIT_IDS = {"train": 1, "test": 2}


@dataclass(frozen=True)
class Split:
    """How much data one split holds: devices per class x segments per device x SEGMENT_WINDOWS."""

    name: str
    devices_per_class: int
    segments_per_device: int

    def __post_init__(self) -> None:
        if self.name not in _SPLIT_IDS:
            raise ValueError(f"Split name {self.name!r} is not one of {sorted(_SPLIT_IDS)!r}.")
        for field in ("devices_per_class", "segments_per_device"):
            v = getattr(self, field)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Split.{field} is {v!r}; it must be an int >= 1.")


@dataclass(frozen=True)
class Dataset:
    features: np.ndarray  # float64 [n, n_features]
    labels: np.ndarray  # int64 [n], indexes CLASSES
    devices: tuple[str, ...]  # per row


def _start_tick(rng: np.random.Generator, lo_tick: float, hi_tick: float) -> int:
    """A window-aligned tick in [lo, hi)."""
    lo = math.ceil(lo_tick / _TICKS_PER_WINDOW)
    hi = max(lo + 1, math.floor(hi_tick / _TICKS_PER_WINDOW))
    return int(rng.integers(lo, hi)) * _TICKS_PER_WINDOW


def device_segments(seed: int, split: str, *, label: int, index: int, segments: int) -> tuple[str, list[Readings]]:
    """One device's id and its `segments` labelled segments of readings."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], label, index])
    kind = CLASSES[label]
    device = f"{split}-{kind}-{index:03d}"
    n = SEGMENT_WINDOWS * _TICKS_PER_WINDOW
    wearing = kind == "bearing_wear" or rng.random() < 0.5
    rate = float(rng.uniform(0.5, 3.0)) if wearing else 0.0
    model = device_model(device, seed_base=seed, start_us=START_US, period_us=PERIOD_US, wear_rate=rate)
    onset = VibrationSpec(wear_rate_per_day=rate).onset_s(model.seed) * 1e6 / PERIOD_US  # in ticks
    # wear = 0.1 * (exp(rate * days) - 1) mm/s: 0.3 at rate * days = ln 4, 20 at ln 201.
    worn_out = onset + math.log(201.0) / max(rate, 1e-9) * _DAY_TICKS
    out: list[Readings] = []
    for _ in range(segments):
        if kind == "bearing_wear":
            first = onset + rng.uniform(math.log(4.0), math.log(201.0)) / rate * _DAY_TICKS
            start = _start_tick(rng, first, first + _TICKS_PER_WINDOW)
        elif kind == "normal":
            start = _start_tick(rng, 0, onset - n if wearing else 30 * _DAY_TICKS)
        else:  # sensor_fault: at any point of the device's life, worn or not
            start = _start_tick(rng, 0, worn_out if wearing else 30 * _DAY_TICKS)
        readings = model.frame(start, n)
        out.append(_break(rng, readings) if kind == "sensor_fault" else readings)
    return device, out


def _break(rng: np.random.Generator, readings: Readings) -> Readings:
    channel = SPEC.channels[int(rng.integers(0, len(SPEC.channels)))]
    if rng.random() < 0.5:
        return stuck(readings, channel, from_us=readings.t_min)
    lo, hi = (0.3, 8.0) if channel == "vibration_rms" else (0.5, 15.0)
    magnitude = float(rng.uniform(lo, hi)) * (1.0 if rng.random() < 0.5 else -1.0)
    return spikes(readings, channel, every=int(rng.integers(2, 61)), magnitude=magnitude)


def make_dataset(seed: int, split: Split) -> Dataset:
    """Every window of every segment of `split`, in a fixed order (class, device, segment, time)."""
    blocks, labels, devices = [], [], []
    for label in range(len(CLASSES)):
        for index in range(split.devices_per_class):
            device, segments = device_segments(
                seed, split.name, label=label, index=index, segments=split.segments_per_device,
            )
            for readings in segments:
                _, matrix, _ = window_features(readings, SPEC)
                if len(matrix) != SEGMENT_WINDOWS:
                    raise AssertionError(
                        f"Segment of {device} gave {len(matrix)} windows, not {SEGMENT_WINDOWS}: misaligned start."
                    )
                blocks.append(matrix)
                labels.append(np.full(len(matrix), label, np.int64))
                devices.extend([device] * len(matrix))
    return Dataset(np.concatenate(blocks), np.concatenate(labels), tuple(devices))
