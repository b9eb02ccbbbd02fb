"""FeatureWindower: online windows equal the hub's offline window_features, bit for bit, however fed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.inference.windows import FeatureWindower
from protocol import Readings
from protocol.features import Aggregate, FeatureSpec, window_features
from simulators import device_model, spikes

RECIPE = json.loads((Path(__file__).resolve().parents[2] / "models" / "condition" / "v1" / "manifest.json").read_text())
SPEC = FeatureSpec.from_params(RECIPE["feature_spec"]["params"])  # 60 s windows, min 30 samples
W = SPEC.window_us
T0 = 1_700_006_400_000_000  # a multiple of 60 s: tick 0 opens a window


def stream(*, first_tick: int = 0, minutes: int = 30, wear: float = 2.0, device: str = "win-1") -> Readings:
    """Four channels at 1 Hz (two outside the spec), a spiking temperature sensor, sorted by time."""
    model = device_model(device, start_us=T0, period_us=1_000_000, wear_rate=wear)
    r = spikes(model.frame(first_tick, minutes * 60), "temperature", every=11, magnitude=5.0)
    return r.take(np.argsort(r.ts_us, kind="stable"))


def feed_in_chunks(w: FeatureWindower, r: Readings, rng: np.random.Generator, *, chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the time-ordered stream at random places, shuffle each chunk, feed; then flush."""
    cuts = np.sort(rng.choice(np.arange(1, len(r)), chunks - 1, replace=False))
    starts, rows = [], []
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(r)]):
        s, f = w.feed(r.take(rng.permutation(np.arange(lo, hi))))
        starts.append(s)
        rows.append(f)
    s, f = w.flush()
    return np.concatenate([*starts, s]), np.concatenate([*rows, f])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_chunks_give_the_hubs_features_bit_for_bit(seed: int) -> None:
    r = stream(device=f"win-{seed}")
    _, hub, ends = window_features(r, SPEC)  # what the hub computes offline over all of it
    rng = np.random.default_rng(seed)
    w = FeatureWindower(SPEC)
    starts, rows = feed_in_chunks(w, r, rng, chunks=int(rng.integers(5, 400)))
    assert starts.dtype == np.int64 and rows.dtype == np.float32 and rows.shape[1] == len(SPEC.feature_names)
    np.testing.assert_array_equal(starts, ends - W)
    assert rows.tobytes() == hub.astype(np.float32).tobytes()
    assert len(rows) == 30 and (w.late_readings, w.partial_windows, w.forced_windows) == (0, 0, 0)
    assert w.open_windows == 0


def test_one_reading_at_a_time_and_one_chunk_agree() -> None:
    r = stream(minutes=5)
    one = FeatureWindower(SPEC)
    s1, f1 = one.feed(r)
    s1b, f1b = one.flush()
    each = FeatureWindower(SPEC)
    parts = [each.feed(r.take(np.array([i]))) for i in range(len(r))] + [each.flush()]
    np.testing.assert_array_equal(np.r_[s1, s1b], np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(np.r_[f1, f1b], np.concatenate([p[1] for p in parts]))
    assert len(s1) == 4 and len(s1b) == 1  # the last window closes only on flush


def test_a_window_closes_on_the_first_reading_past_its_end_plus_grace() -> None:
    r = stream(minutes=3)
    for grace_s in (0, 5):
        w = FeatureWindower(SPEC, grace_us=grace_s * 1_000_000)
        before = r.take(np.flatnonzero(r.ts_us < T0 + W + grace_s * 1_000_000))
        at = r.take(np.flatnonzero(r.ts_us == T0 + W + grace_s * 1_000_000))
        assert len(w.feed(before)[0]) == 0
        starts, _ = w.feed(at)
        np.testing.assert_array_equal(starts, [T0])


def test_late_readings_are_counted_and_dropped_not_raised() -> None:
    r = stream(minutes=4)
    _, hub, _ = window_features(r, SPEC)
    first = r.take(np.flatnonzero(r.ts_us < T0 + W))  # window 0
    late = first.take(np.arange(0, len(first), 10))  # some of it held back ...
    on_time = first.take(np.setdiff1d(np.arange(len(first)), np.arange(0, len(first), 10)))
    rest = r.take(np.flatnonzero(r.ts_us >= T0 + W))
    w = FeatureWindower(SPEC)
    w.feed(on_time)
    s, f = w.feed(rest)  # ... closes window 0 without them
    np.testing.assert_array_equal(s, T0 + W * np.arange(3))
    assert not np.array_equal(f[0], hub[0].astype(np.float32))  # window 0 lacked some readings
    np.testing.assert_array_equal(f[1:], hub[1:3].astype(np.float32))
    assert len(w.feed(late)[0]) == 0  # ... and arrive after it closed
    spec_rows = int(np.isin(late.channel, [late.channels.index(c) for c in SPEC.channels]).sum())
    assert (w.late_readings, w.late_windows) == (spec_rows, 1)
    assert len(w.flush()[0]) == 1


def test_readings_behind_the_watermark_are_on_time_within_the_grace() -> None:
    r = stream(minutes=3)
    _, hub, _ = window_features(r, SPEC)
    w0 = r.take(np.flatnonzero(r.ts_us < T0 + W))
    w1 = r.take(np.flatnonzero((r.ts_us >= T0 + W) & (r.ts_us < T0 + 2 * W)))
    w2 = r.take(np.flatnonzero(r.ts_us >= T0 + 2 * W))
    # one reading of window 0, all of window 1, then the rest of window 0 (a slow sensor), window 2
    order = [w0.take(np.arange(1)), w1, w0.take(np.arange(1, len(w0))), w2]

    def run(w: FeatureWindower) -> tuple[np.ndarray, np.ndarray]:
        parts = [w.feed(x) for x in order] + [w.flush()]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    strict = FeatureWindower(SPEC)
    starts, rows = run(strict)  # window 1 passed window 0's end: window 0 closed with one reading
    assert strict.late_windows == 1 and strict.late_readings == int(np.isin(
        order[2].channel, [order[2].channels.index(c) for c in SPEC.channels]).sum())
    np.testing.assert_array_equal(starts, T0 + W * np.arange(1, 3))  # one reading is below min_samples
    np.testing.assert_array_equal(rows, hub[1:].astype(np.float32))
    patient = FeatureWindower(SPEC, grace_us=W)
    starts, rows = run(patient)  # a window's grace keeps window 0 open for the slow sensor
    assert patient.late_readings == 0
    np.testing.assert_array_equal(starts, T0 + W * np.arange(3))
    np.testing.assert_array_equal(rows, hub.astype(np.float32))


def test_memory_is_bounded_by_max_open_windows() -> None:
    r = stream(minutes=6)
    w = FeatureWindower(SPEC, grace_us=10 * W, max_open_windows=2)  # the grace alone would keep all open
    s, _ = w.feed(r)
    assert w.open_windows == 2 and w.forced_windows == 4
    np.testing.assert_array_equal(s, T0 + W * np.arange(4))
    assert len(w.flush()[0]) == 2


def test_channels_outside_the_spec_are_neither_kept_nor_a_clock() -> None:
    w = FeatureWindower(SPEC)
    other = Readings.from_rows([("humidity", T0 + 10 * W, 50.0), ("power_w", T0 + 11 * W, 3.0)])
    r = stream(minutes=2)
    w.feed(r.take(np.flatnonzero(r.ts_us < T0 + W)))
    assert len(w.feed(other)[0]) == 0 and w.open_windows == 1  # humidity far ahead closes nothing
    assert sum(len(c) for pieces in w._open.values() for c, _, _ in pieces) == 2 * 60


def test_a_restart_mid_window_drops_that_window_as_partial() -> None:
    r = stream(first_tick=17, minutes=5)  # the first reading is 17 s into its window
    _, hub, ends = window_features(r, SPEC)
    w = FeatureWindower(SPEC)
    starts, rows = feed_in_chunks(w, r, np.random.default_rng(7), chunks=20)
    assert w.partial_windows == 1 and ends[0] - W == T0  # the hub has the window; the device does not
    np.testing.assert_array_equal(starts, ends[1:] - W)
    np.testing.assert_array_equal(rows, hub[1:].astype(np.float32))


def test_set_spec_starts_over() -> None:
    r = stream(minutes=3)
    w = FeatureWindower(SPEC)
    w.feed(r.take(np.flatnonzero(r.ts_us < T0 + W + 30_000_000)))
    other = FeatureSpec(window_us=30_000_000, channels=("temperature",), aggregates=(Aggregate.MEAN,), min_samples=2)
    w.set_spec(other)
    assert w.spec == other and w.open_windows == 0
    s, f = w.feed(r.take(np.flatnonzero(r.ts_us >= T0 + W + 30_000_000)))
    assert f.shape[1] == 1 and s[0] == T0 + W + 30_000_000


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"grace_us": -1}, "grace_us is -1"), ({"grace_us": 1.5}, "grace_us is 1.5"),
    ({"max_open_windows": 0}, "max_open_windows is 0"),
])
def test_bad_settings_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FeatureWindower(SPEC, **kwargs)
