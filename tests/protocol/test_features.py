"""Window features: exact against plain loops, order- and chunk-invariant, versioned by code and params."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Readings
from protocol import features
from protocol.features import Aggregate, FeatureSpec, window_features
from simulators import device_model, spikes, stuck

T0 = 1_700_000_040_000_000  # on a minute boundary
S = 1_000_000
ALL = tuple(Aggregate)


def reference(readings: Readings, spec: FeatureSpec) -> tuple[list[int], list[list[float]]]:
    """The features the obvious way: a dict of windows, Python loops, one window at a time."""
    by_window: dict[int, dict[str, list[tuple[int, float]]]] = {}
    for name, ts, value in readings.rows():
        if name in spec.channels and math.isfinite(value):
            by_window.setdefault(ts // spec.window_us, {}).setdefault(name, []).append((ts, value))
    ends, rows = [], []
    for k in sorted(by_window):
        samples = by_window[k]
        if any(len(samples.get(c, ())) < spec.min_samples for c in spec.channels):
            continue
        row = []
        for channel in spec.channels:
            pts = sorted(samples[channel])
            v = [p[1] for p in pts]
            t = [(p[0] - k * spec.window_us) / 1e6 for p in pts]
            n = len(v)
            mean = sum(v) / n
            for agg in spec.aggregates + dict(spec.extra).get(channel, ()):
                if agg is Aggregate.MEAN:
                    row.append(mean)
                elif agg is Aggregate.STD:
                    row.append(math.sqrt(sum((x - mean) ** 2 for x in v) / n))
                elif agg is Aggregate.MIN:
                    row.append(min(v))
                elif agg is Aggregate.MAX:
                    row.append(max(v))
                elif agg is Aggregate.RMS:
                    row.append(math.sqrt(sum(x * x for x in v) / n))
                elif agg is Aggregate.SLOPE:
                    tm = sum(t) / n
                    sxx = sum((a - tm) ** 2 for a in t)
                    sxy = sum((a - tm) * (b - mean) for a, b in zip(t, v))
                    row.append(sxy / sxx if sxx > 1e-18 else 0.0)
                elif agg is Aggregate.P2P:
                    row.append(max(v) - min(v))
                elif agg is Aggregate.DELTA:
                    row.append(v[-1] - v[0])
        ends.append((k + 1) * spec.window_us)
        rows.append(row)
    return ends, rows


def two_channel(ts_a: list[int], va: list[float], ts_b: list[int], vb: list[float]) -> Readings:
    return Readings.from_rows([("a", t, v) for t, v in zip(ts_a, va)] + [("b", t, v) for t, v in zip(ts_b, vb)])


# --- exact values --------------------------------------------------------------------------------
def test_crafted_window_exact_values() -> None:
    spec = FeatureSpec(window_us=10 * S, channels=("a",), aggregates=ALL)
    ts = [T0 + i * S for i in range(4)]
    names, matrix, ends = window_features(Readings.from_rows([("a", t, v) for t, v in zip(ts, [1.0, 2.0, 4.0, 8.0])]), spec)
    assert names == ("a.mean", "a.std", "a.min", "a.max", "a.rms", "a.slope", "a.p2p", "a.delta")
    assert ends.tolist() == [T0 + 10 * S]
    assert matrix.dtype == np.float64
    # mean 15/4; variance (7.5625 + 3.0625 + 0.0625 + 18.0625) / 4; slope 11.5 / 5 per second.
    assert matrix.tolist() == [[3.75, math.sqrt(28.75 / 4), 1.0, 8.0, math.sqrt(85 / 4), 11.5 / 5, 7.0, 7.0]]


def test_slope_is_per_second_and_zero_without_spread_in_time() -> None:
    spec = FeatureSpec(window_us=60 * S, channels=("a",), aggregates=(Aggregate.SLOPE,), min_samples=1)
    line = Readings.from_rows([("a", T0 + i * 2 * S, 5.0 + 0.5 * 2 * i) for i in range(10)])
    assert window_features(line, spec)[1].tolist() == [[0.5]]
    same_instant = Readings.from_rows([("a", T0 + 7 * S, v) for v in (0.1, 0.7, 0.3)])
    assert window_features(same_instant, spec)[1].tolist() == [[0.0]]
    single = Readings.from_rows([("a", T0, 4.0)])
    assert window_features(single, spec)[1].tolist() == [[0.0]]


def test_matches_the_loop_reference_on_random_readings() -> None:
    rng = np.random.default_rng(7)
    spec = FeatureSpec(window_us=5 * S, channels=("a", "b"), aggregates=ALL[:6],
                       extra=(("a", (Aggregate.P2P,)), ("b", (Aggregate.DELTA,))), min_samples=3)
    ts_a = sorted(rng.integers(T0, T0 + 60 * S, 400).tolist())
    ts_b = sorted(rng.integers(T0, T0 + 60 * S, 300).tolist())
    readings = two_channel(ts_a, (20 + rng.standard_normal(400)).tolist(), ts_b, rng.exponential(3, 300).tolist())
    names, matrix, ends = window_features(readings, spec)
    want_ends, want = reference(readings, spec)
    assert names == spec.feature_names and len(names) == 14
    assert ends.tolist() == want_ends and len(want_ends) == 12
    np.testing.assert_allclose(matrix, np.asarray(want), rtol=1e-12, atol=1e-12)


def test_windows_are_epoch_aligned_and_thin_or_one_sided_windows_are_dropped() -> None:
    spec = FeatureSpec(window_us=10 * S, channels=("a", "b"), aggregates=(Aggregate.MEAN,), min_samples=2)
    # a: 2 samples in window 0, 1 in window 1, 3 in window 2; b: 2 in each of windows 0 and 1, none in 2.
    ts_a = [T0 + 1 * S, T0 + 9 * S, T0 + 15 * S, T0 + 20 * S, T0 + 21 * S, T0 + 29 * S]
    ts_b = [T0, T0 + 2 * S, T0 + 10 * S, T0 + 19 * S]
    readings = two_channel(ts_a, [1.0, 3.0, 5.0, 7.0, 8.0, 9.0], ts_b, [10.0, 20.0, 30.0, 40.0])
    names, matrix, ends = window_features(readings, spec)
    assert names == ("a.mean", "b.mean")
    assert ends.tolist() == [T0 + 10 * S]  # window 1 lacks a sample of a, window 2 lacks b
    assert matrix.tolist() == [[2.0, 15.0]]


def test_negative_timestamps_floor_into_their_window() -> None:
    spec = FeatureSpec(window_us=10, channels=("a",), aggregates=(Aggregate.MEAN,), min_samples=1)
    names, matrix, ends = window_features(Readings.from_rows([("a", -1, 1.0), ("a", -10, 3.0), ("a", 0, 7.0)]), spec)
    assert ends.tolist() == [0, 10]
    assert matrix.tolist() == [[2.0], [7.0]]


def test_non_finite_readings_are_not_samples_and_overflowing_windows_are_dropped() -> None:
    spec = FeatureSpec(window_us=10 * S, channels=("a",), aggregates=(Aggregate.MEAN, Aggregate.RMS), min_samples=2)
    readings = Readings.from_rows([
        ("a", T0, 1.0), ("a", T0 + S, float("nan")), ("a", T0 + 2 * S, 3.0), ("a", T0 + 3 * S, float("inf")),
        ("a", T0 + 10 * S, 1e200), ("a", T0 + 11 * S, 1e200),  # rms overflows: the window goes
        ("a", T0 + 20 * S, 2.0), ("a", T0 + 21 * S, float("nan")),  # one finite sample: too thin
    ])
    names, matrix, ends = window_features(readings, spec)  # warnings are errors here: none may leak
    assert ends.tolist() == [T0 + 10 * S]
    assert matrix.tolist() == [[2.0, math.sqrt(5.0)]]


def test_missing_channel_and_empty_readings_give_no_rows() -> None:
    spec = FeatureSpec(window_us=10 * S, channels=("a", "b"))
    for readings in (Readings.empty(), Readings.from_rows([("a", T0 + i, 1.0) for i in range(5)])):
        names, matrix, ends = window_features(readings, spec)
        assert matrix.shape == (0, 12) and matrix.dtype == np.float64
        assert ends.shape == (0,) and ends.dtype == np.int64


def test_other_channels_are_ignored_and_row_order_does_not_matter() -> None:
    spec = FeatureSpec(window_us=60 * S, channels=("vibration_rms", "temperature"), aggregates=ALL)
    readings = device_model("pump-1", start_us=T0, period_us=S, wear_rate=1.0).frame(0, 600)
    shuffled = readings.take(np.random.default_rng(3).permutation(len(readings)))
    a, b = window_features(readings, spec), window_features(shuffled, spec)
    assert a[0] == b[0] and np.array_equal(a[2], b[2])
    assert a[1].tobytes() == b[1].tobytes()
    assert a[1].shape == (10, 16)


def test_simulator_faults_look_as_expected() -> None:
    spec = FeatureSpec(window_us=60 * S, channels=("vibration_rms",), aggregates=ALL)
    readings = device_model("pump-2", start_us=T0, period_us=S).frame(0, 300)
    names = spec.feature_names
    frozen = dict(zip(names, window_features(stuck(readings, "vibration_rms", from_us=T0), spec)[1][-1]))
    assert frozen["vibration_rms.p2p"] == 0.0 and frozen["vibration_rms.slope"] == 0.0
    assert frozen["vibration_rms.delta"] == 0.0 and frozen["vibration_rms.std"] < 1e-12
    spiky = window_features(spikes(readings, "vibration_rms", every=10, magnitude=5.0), spec)[1]
    clean = window_features(readings, spec)[1]
    p2p = names.index("vibration_rms.p2p")
    assert (spiky[:, p2p] > clean[:, p2p] + 4.0).all()


# --- chunking ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hour() -> Readings:
    return device_model("pump-3", start_us=T0 + 17 * S, period_us=S, wear_rate=2.0).frame(0, 3600)


@settings(derandomize=True, database=None, max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=61), max_size=5))
def test_window_aligned_splits_give_identical_features(hour: Readings, cuts: list[int]) -> None:
    spec = FeatureSpec(window_us=60 * S, channels=("vibration_rms", "temperature"), aggregates=ALL)
    bounds = [T0 + c * 60 * S for c in sorted(cuts)]
    edges = [-(2**62), *bounds, 2**62]
    parts = [hour.take(np.flatnonzero((hour.ts_us >= lo) & (hour.ts_us < hi))) for lo, hi in zip(edges, edges[1:])]
    whole = window_features(hour, spec)
    pieces = [window_features(p, spec) for p in parts]
    assert np.concatenate([p[1] for p in pieces]).tobytes() == whole[1].tobytes()
    assert np.concatenate([p[2] for p in pieces]).tolist() == whole[2].tolist()
    assert len(whole[2]) == 61  # the partial first and last windows (43 and 17 samples) included


# --- the spec and its version --------------------------------------------------------------------
def test_version_is_stable_for_equal_specs_and_survives_params_round_trip() -> None:
    a = FeatureSpec(window_us=60 * S, channels=("vibration_rms", "temperature"), extra=(("temperature", ("delta",)),))
    b = FeatureSpec(window_us=60 * S, channels=["vibration_rms", "temperature"], extra=[("temperature", [Aggregate.DELTA])])
    assert a == b and a.version == b.version and len(a.version) == 16
    assert FeatureSpec.from_params(a.params()) == a
    assert FeatureSpec.from_params(a.params()).version == a.version


@pytest.mark.parametrize("change", [
    {"window_us": 30 * S},
    {"channels": ("temperature", "vibration_rms")},
    {"aggregates": (Aggregate.MEAN, Aggregate.STD)},
    {"extra": (("vibration_rms", (Aggregate.P2P,)),)},
    {"min_samples": 3},
])
def test_version_changes_with_every_parameter(change: dict[str, object]) -> None:
    base = dict(window_us=60 * S, channels=("vibration_rms", "temperature"), aggregates=ALL[:6], min_samples=2)
    assert FeatureSpec(**{**base, **change}).version != FeatureSpec(**base).version  # type: ignore[arg-type]


def test_version_changes_when_the_feature_code_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    before = FeatureSpec(window_us=60 * S, channels=("a",)).version
    monkeypatch.setattr(features, "_code_fingerprint", lambda: "def window_features(): return 42")
    assert FeatureSpec(window_us=60 * S, channels=("a",)).version != before


def test_every_function_of_the_module_is_fingerprinted_or_only_builds_the_spec() -> None:
    # By object, not name: the aggregate path is `_aggregate_features`, whose source (and so
    # __name__) still says window_features; the public window_features is in _BAND_CODE.
    spec_machinery = {"FeatureSpec", "_aggregates", "_bands", "_band_params", "_code_fingerprint", "_band_fingerprint"}
    own = {
        id(obj): name for name, obj in vars(features).items()
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == features.__name__
    }
    fingerprinted = {id(obj) for obj in features._FEATURE_CODE + features._BAND_CODE}
    assert len(fingerprinted) == len(features._FEATURE_CODE) + len(features._BAND_CODE)
    assert {i for i, name in own.items() if name not in spec_machinery} == fingerprinted


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"window_us": 0, "channels": ("a",)}, "window_us is 0"),
    ({"window_us": 1.5, "channels": ("a",)}, "window_us is 1.5"),
    ({"window_us": 10, "channels": ()}, "channels is ()"),
    ({"window_us": 10, "channels": ("a", "a")}, "more than once"),
    ({"window_us": 10, "channels": ("a",), "aggregates": ("mean", "median")}, "'median'"),
    ({"window_us": 10, "channels": ("a",), "aggregates": "mean"}, "non-empty tuple"),
    ({"window_us": 10, "channels": ("a",), "extra": (("b", ("p2p",)),)}, "channel 'b'"),
    ({"window_us": 10, "channels": ("a",), "extra": (("a", ("mean",)),)}, "repeats ['mean']"),
    ({"window_us": 10, "channels": ("a",), "min_samples": 0}, "min_samples is 0"),
])
def test_bad_specs_are_refused_naming_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        FeatureSpec(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_params_from_another_schema_or_with_unknown_keys_are_refused() -> None:
    params = FeatureSpec(window_us=10, channels=("a",)).params()
    with pytest.raises(ValueError, match="schema 99"):
        FeatureSpec.from_params({**params, "schema": 99})
    with pytest.raises(ValueError, match="unknown keys"):
        FeatureSpec.from_params({**params, "hop_us": 5})
