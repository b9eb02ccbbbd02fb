"""The FeatureSpec adapter gives window_features' numbers bit for bit, streamed in any batches."""

from __future__ import annotations

import numpy as np
import pytest

from hub.streaming import FeatureAggregate, StreamConfigError, StreamProcessor, Windows, feature_windows
from protocol.features import Aggregate, FeatureSpec, window_features
from protocol.readings import Readings

S = 1_000_000

SPEC = FeatureSpec(
    window_us=10 * S, channels=("temperature", "vibration_rms", "current"),
    aggregates=tuple(Aggregate), extra=(), min_samples=2,
)
SPEC_EXTRA = FeatureSpec(
    window_us=7 * S, channels=("vibration_rms", "temperature"),
    extra=(("vibration_rms", (Aggregate.P2P,)), ("temperature", (Aggregate.DELTA,))),
)


def device_readings(seed: int, *, windows: int = 60, spec: FeatureSpec = SPEC) -> Readings:
    """Irregular timestamps at a large epoch, duplicates, NaN, gaps, windows missing a channel, an extra channel."""
    rng = np.random.default_rng(seed)
    t0 = 1_780_000_000 * S
    w = spec.window_us
    names = spec.channels + ("noise",)
    parts = []
    for j, name in enumerate(names):
        n = windows * 8
        ts = t0 + rng.integers(0, windows * w, n)
        ts[: n // 20] = ts[n // 20: n // 10]  # duplicate timestamps
        v = rng.normal(20 * (j + 1), 5, n) + 1e-3 * ts / S
        v[rng.random(n) < 0.03] = np.nan
        if name == spec.channels[0]:  # a few windows lose this channel entirely
            gone = np.isin((ts - t0) // w, rng.choice(windows, windows // 10, replace=False))
            ts, v = ts[~gone], v[~gone]
        parts.append(Readings((name,), np.zeros(len(ts), np.uint16), ts, v))
    r = Readings.concat(parts)
    return r.take(rng.permutation(len(r)))


def check_equal(got: dict, readings: Readings, spec: FeatureSpec) -> None:
    names, matrix, ends = window_features(readings, spec)
    kept = {e: v for e, v in got.items() if v is not None}
    assert sorted(kept) == ends.tolist()
    assert len(ends) > 10 and len(got) > len(kept)  # some windows had no features (a channel missing)
    mine = np.stack([kept[e].values for e in ends.tolist()])
    assert all(kept[e].names == names for e in kept)
    assert mine.dtype == matrix.dtype and mine.tobytes() == matrix.tobytes()  # bit for bit


class PerWindow:
    """The adapter without `many`: one window_features call per window."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._agg = FeatureAggregate(spec)

    def __call__(self, *item):
        return self._agg(*item)


@pytest.mark.parametrize("spec", [SPEC, SPEC_EXTRA], ids=["all-aggregates", "extra"])
@pytest.mark.parametrize("batched", [True, False], ids=["many", "per-window"])
def test_adapter_equals_window_features_bit_for_bit(spec, batched):
    data = {("t", "d1"): device_readings(1, spec=spec), ("t", "d2"): device_readings(2, spec=spec)}
    agg = FeatureAggregate(spec) if batched else PerWindow(spec)
    rng = np.random.default_rng(5)
    p = StreamProcessor(agg, feature_windows(spec))
    got: dict = {k: {} for k in data}
    keys = list(data)
    ordered = {k: r.take(np.argsort(r.ts_us, kind="stable")) for k, r in data.items()}
    pieces = {k: np.array_split(np.arange(len(r)), 13) for k, r in ordered.items()}
    for b in range(13):
        parts = [ordered[k].take(rng.permutation(pieces[k][b])) for k in keys]
        out = p.process_many(keys, np.repeat(np.arange(len(keys)), [len(x) for x in parts]), Readings.concat(parts))
        assert out.late == [] and not any(w.update for w in out.windows)
        for w in out.windows:
            got[w.key][w.end_us] = w.value
    for w in p.flush().windows:
        got[w.key][w.end_us] = w.value
    for k in keys:
        check_equal(got[k], data[k], spec)


def test_updates_recompute_the_window_over_all_its_rows():
    r = device_readings(3, windows=20)
    order = np.argsort(r.ts_us, kind="stable")
    rng = np.random.default_rng(0)
    held = rng.random(len(r)) < 0.1  # 10% of rows arrive after everything else, within lateness
    p = StreamProcessor(FeatureAggregate(SPEC), feature_windows(SPEC), allowed_lateness_us=10**15)
    got = {}
    for part in (r.take(order[~held[order]]), r.take(order[held[order]])):
        for w in p.process("d", part).windows:
            got[w.end_us] = w.value
    for w in p.flush().windows:
        got[w.end_us] = w.value
    assert p.counters["windows_updated"] > 0
    check_equal(got, r, SPEC)


def test_adapter_refuses_windows_that_are_not_the_specs():
    p = StreamProcessor(FeatureAggregate(SPEC), Windows(20 * S))
    with pytest.raises(StreamConfigError):
        p.process("d", device_readings(4, windows=3))
        p.flush()


def _spec_with_bands() -> FeatureSpec:
    return FeatureSpec(window_us=5 * S, channels=("vibration", "temperature"),
                       bands=(("vibration", ((0, 1), (1, 3), (3, 10.5))),))


@pytest.mark.parametrize("batched", [True, False], ids=["many", "per-window"])
def test_adapter_equals_window_features_with_band_energy(batched):
    spec = _spec_with_bands()
    rng = np.random.default_rng(6)
    t0 = 1_780_000_000 * S
    parts = []
    for name, hz in (("vibration", 20), ("temperature", 1)):
        ts = t0 + np.arange(0, 40 * 5 * S, S // hz, dtype=np.int64)
        ts = ts[rng.random(len(ts)) > 0.05]  # gaps: some windows at another spacing or length
        v = np.sin(2 * np.pi * 2.0 * (ts - t0) / S) + rng.normal(0, 0.3, len(ts))
        parts.append(Readings((name,), np.zeros(len(ts), np.uint16), ts, v))
    r = Readings.concat(parts)
    agg = FeatureAggregate(spec) if batched else PerWindow(spec)
    p = StreamProcessor(agg, feature_windows(spec), max_out_of_orderness_us=S)
    got = {}
    order = np.argsort(r.ts_us, kind="stable")
    for idx in np.array_split(order, 9):
        for w in p.process("d", r.take(rng.permutation(idx))).windows:
            got[w.end_us] = w.value
    for w in p.flush().windows:
        got[w.end_us] = w.value
    names, matrix, ends = window_features(r, spec)
    assert any(n.startswith("vibration.band_") for n in names)
    kept = {e: v for e, v in got.items() if v is not None}
    assert sorted(kept) == ends.tolist() and len(ends) >= 35
    mine = np.stack([kept[e].values for e in ends.tolist()])
    assert mine.tobytes() == matrix.tobytes()
