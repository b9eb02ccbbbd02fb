"""Band energy features: Parseval, scipy's periodogram, bit-for-bit invariance, and versions that stay put."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import signal

from protocol import Readings, check_channel
from protocol import features
from protocol.features import Aggregate, FeatureSpec, window_features

T0 = 1_700_000_040_000_000  # on a minute boundary
S = 1_000_000
FS = 200  # Hz: one sample every 5000 µs
DT_US = S // FS
MANIFEST = Path(__file__).resolve().parents[2] / "models" / "condition" / "v1" / "manifest.json"

# The committed condition model's spec version, computed before band energy existed: signed
# into models/condition/v1 and every device manifest built from it. It must never move.
CONDITION_VERSION = "e5d1c1d840bae653"


def waveform(values: np.ndarray, *, start_us: int = T0, dt_us: int = DT_US, channel: str = "vib") -> Readings:
    ts = start_us + np.arange(len(values), dtype=np.int64) * dt_us
    return Readings.from_columns((channel,), ts, np.asarray(values, np.float64)[:, None])


def spec_of(bands: tuple[tuple[float, float], ...], **kwargs: object) -> FeatureSpec:
    base: dict[str, object] = dict(window_us=60 * S, channels=("vib",), aggregates=(Aggregate.STD,))
    return FeatureSpec(**{**base, **kwargs, "bands": (("vib", bands),)})  # type: ignore[arg-type]


def reference_bands(ts: np.ndarray, v: np.ndarray, bands: tuple[tuple[float, float], ...]) -> list[float]:
    """One window the direct way: np.median for the rate, a mask over rfftfreq-style bins."""
    order = np.lexsort((v, ts))
    ts, v = ts[order], v[order]
    gaps = np.diff(ts)
    fs = 1e6 / float(np.median(gaps[gaps > 0]))
    n = len(v)
    x = v - v.mean()
    power = np.abs(np.fft.rfft(x)) ** 2 / n**2
    k = np.arange(len(power))
    power[(k > 0) & (2 * k < n)] *= 2
    freq = k * fs / n
    return [float(power[(freq >= lo) & (freq < hi)].sum()) for lo, hi in bands]


# --- arithmetic ----------------------------------------------------------------------------------
@pytest.mark.parametrize("hz", [3.0, 23.0, 23.37, 61.9])
def test_a_pure_sine_puts_its_energy_in_the_band_that_holds_its_frequency(hz: float) -> None:
    bands = ((0.0, 10.0), (10.0, 50.0), (50.0, 101.0))
    t = np.arange(60 * FS) / FS
    names, matrix, ends = window_features(waveform(2.0 * np.sin(2 * np.pi * hz * t + 0.3)), spec_of(bands))
    assert names == ("vib.std", "vib.band_0_10hz", "vib.band_10_50hz", "vib.band_50_101hz")
    assert ends.tolist() == [T0 + 60 * S]
    energy = matrix[0, 1:]
    holder = next(j for j, (lo, hi) in enumerate(bands) if lo <= hz < hi)
    assert energy[holder] == pytest.approx(2.0, rel=1e-3)  # amplitude 2: mean power 2**2 / 2
    assert energy[holder] > 0.999 * energy.sum()
    if hz == round(hz):  # a whole number of cycles in the window: one bin, nothing leaks
        assert all(e < 1e-20 for j, e in enumerate(energy) if j != holder)


@pytest.mark.parametrize("n", [12000, 11999])  # even: a Nyquist bin; odd: none
def test_bands_covering_every_bin_sum_to_the_variance(n: int) -> None:
    rng = np.random.default_rng(n)
    v = 5.0 + rng.standard_normal(n) * 3.0 + np.sin(np.arange(n) * 0.7)
    bands = ((0.0, 0.5), (0.5, 10.0), (10.0, 33.3), (33.3, 50.0), (50.0, 99.0), (99.0, 100.5))
    names, matrix, _ = window_features(waveform(v), spec_of(bands))
    std, energy = matrix[0, 0], matrix[0, 1:]
    variance = float(np.var(v))
    assert math.isclose(energy.sum(), variance, rel_tol=1e-9)
    assert math.isclose(energy.sum(), std * std, rel_tol=1e-9)


def test_matches_scipy_periodogram_on_random_data() -> None:
    rng = np.random.default_rng(11)
    v = rng.standard_normal(3 * 60 * FS) * np.repeat([1.0, 4.0, 0.5], 60 * FS)
    bands = ((0.0, 1.0), (1.0, 12.5), (12.5, 40.0), (60.0, 80.0), (80.0, 100.0))
    names, matrix, ends = window_features(waveform(v), spec_of(bands))
    assert ends.tolist() == [T0 + (k + 1) * 60 * S for k in range(3)]
    for k in range(3):
        x = v[k * 60 * FS : (k + 1) * 60 * FS]
        f, p = signal.periodogram(x, fs=FS, window="boxcar", detrend="constant", scaling="spectrum")
        want = [p[(f >= lo) & (f < hi)].sum() for lo, hi in bands]
        np.testing.assert_allclose(matrix[k, 1:], want, rtol=1e-9, atol=1e-15 * x.var())


def test_matches_the_direct_reference_with_jitter_duplicates_and_non_finite_readings() -> None:
    rng = np.random.default_rng(5)
    n = 4 * 60 * FS
    ts = T0 + np.arange(n, dtype=np.int64) * DT_US + rng.integers(-400, 400, n)
    ts[::97] = ts[1::97][: len(ts[::97])]  # duplicate timestamps: spacing 0 is not a spacing
    v = np.sin(2 * np.pi * 17.0 * (ts - T0) / 1e6) + 0.3 * rng.standard_normal(n)
    v[::211] = np.nan
    readings = Readings.from_columns(("vib",), ts, v[:, None])
    bands = ((0.0, 10.0), (10.0, 20.0), (20.0, 100.0))
    names, matrix, ends = window_features(readings, spec_of(bands))
    assert len(ends) == 4
    for row, end in zip(matrix, ends.tolist()):
        inside = (ts >= end - 60 * S) & (ts < end) & np.isfinite(v)
        np.testing.assert_allclose(row[1:], reference_bands(ts[inside], v[inside], bands), rtol=1e-9, atol=1e-18)


def test_the_nyquist_bin_is_in_a_band_only_when_the_band_passes_it() -> None:
    v = np.tile([1.0, -1.0], 30 * FS)  # all of it at exactly fs / 2 = 100 Hz
    open_top = window_features(waveform(v), spec_of(((0.0, 50.0), (50.0, 100.0))))[1]
    past_top = window_features(waveform(v), spec_of(((0.0, 50.0), (50.0, 100.5))))[1]
    assert open_top[0, 1] < 1e-25 and open_top[0, 2] < 1e-25  # rounding residue only
    assert past_top[0, 1] < 1e-25 and past_top[0, 2] == pytest.approx(1.0, rel=1e-12)


# --- layout and the windows kept -----------------------------------------------------------------
def test_bands_follow_their_channels_aggregates_and_extra_and_leave_those_bits_alone() -> None:
    rng = np.random.default_rng(2)
    n = 3 * 60 * FS
    ts = T0 + np.arange(n, dtype=np.int64) * DT_US
    temp_ts = T0 + np.arange(180, dtype=np.int64) * S
    readings = Readings.from_rows(
        [("vib", int(t), float(x)) for t, x in zip(ts, rng.standard_normal(n))]
        + [("temp", int(t), float(x)) for t, x in zip(temp_ts, 20 + rng.standard_normal(180))]
    )
    plain = FeatureSpec(window_us=60 * S, channels=("vib", "temp"), aggregates=(Aggregate.MEAN, Aggregate.STD),
                        extra=(("vib", (Aggregate.P2P,)),))
    banded = FeatureSpec(window_us=60 * S, channels=("vib", "temp"), aggregates=(Aggregate.MEAN, Aggregate.STD),
                         extra=(("vib", (Aggregate.P2P,)),), bands=(("vib", ((0, 2.5), (2.5, 100.5))),))
    assert banded.feature_names == (
        "vib.mean", "vib.std", "vib.p2p", "vib.band_0_2p5hz", "vib.band_2p5_100p5hz", "temp.mean", "temp.std",
    )
    names, matrix, ends = window_features(readings, banded)
    _, want, want_ends = window_features(readings, plain)
    assert names == banded.feature_names and matrix.shape == (3, 7) and matrix.flags.c_contiguous
    assert np.array_equal(ends, want_ends)
    assert matrix[:, [0, 1, 2, 5, 6]].tobytes() == want.tobytes()
    np.testing.assert_allclose(matrix[:, 3] + matrix[:, 4], matrix[:, 1] ** 2, rtol=1e-9)


def test_thin_windows_windows_without_spacing_and_overflow_are_dropped() -> None:
    rows = [("vib", T0 + i * DT_US, float(i % 3)) for i in range(100)]  # window 0: kept
    rows += [("vib", T0 + 60 * S + i * DT_US, 1.0) for i in range(2)]  # window 1: too thin
    rows += [("vib", T0 + 120 * S + 7, float(i)) for i in range(5)]  # window 2: one instant, no spectrum
    rows += [("vib", T0 + 180 * S + i * DT_US, 1e200 * (-1) ** i) for i in range(10)]  # window 3: energy overflows
    readings = Readings.from_rows(rows)
    banded = spec_of(((0.0, 50.0),), aggregates=(Aggregate.MEAN,), min_samples=3)
    assert window_features(readings, banded)[2].tolist() == [T0 + 60 * S]  # and no warning leaks
    plain = FeatureSpec(window_us=60 * S, channels=("vib",), aggregates=(Aggregate.MEAN,), min_samples=3)
    assert window_features(readings, plain)[2].tolist() == [T0 + 60 * S, T0 + 180 * S, T0 + 240 * S]


def test_a_missing_channel_or_no_readings_give_no_rows() -> None:
    spec = FeatureSpec(window_us=60 * S, channels=("vib", "temp"), bands=(("vib", ((0, 10),)),))
    for readings in (Readings.empty(), waveform(np.ones(100))):
        names, matrix, ends = window_features(readings, spec)
        assert names == spec.feature_names and matrix.shape == (0, 13) and matrix.dtype == np.float64
        assert ends.shape == (0,) and ends.dtype == np.int64


# --- determinism ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jittery() -> Readings:
    """Five minutes at ~200 Hz with jitter, a gap and a short last window: many FFT groups."""
    rng = np.random.default_rng(9)
    n = 5 * 60 * FS + 777
    ts = T0 + 13 * S + np.arange(n, dtype=np.int64) * DT_US + rng.integers(0, 3, n) * 1000
    keep = (ts < T0 + 100 * S) | (ts > T0 + 110 * S)
    v = np.cos(2 * np.pi * 31.0 * (ts - T0) / 1e6) * (1 + (ts - T0) / 3e8) + 0.2 * rng.standard_normal(n)
    return Readings.from_columns(("vib",), ts[keep], v[keep, None])


BANDS = ((0.0, 5.0), (5.0, 30.0), (30.0, 32.0), (32.0, 100.0))


def test_row_order_does_not_matter_bit_for_bit(jittery: Readings) -> None:
    spec = spec_of(BANDS, aggregates=tuple(Aggregate))
    shuffled = jittery.take(np.random.default_rng(4).permutation(len(jittery)))
    a, b = window_features(jittery, spec), window_features(shuffled, spec)
    assert a[0] == b[0] and a[2].tolist() == b[2].tolist() and len(a[2]) == 6
    assert a[1].tobytes() == b[1].tobytes()


def test_window_aligned_splits_and_single_windows_give_identical_bits(jittery: Readings) -> None:
    spec = spec_of(BANDS)
    whole = window_features(jittery, spec)
    edges = [-(2**62), T0 + 60 * S, T0 + 180 * S, T0 + 240 * S, 2**62]
    parts = [jittery.take(np.flatnonzero((jittery.ts_us >= lo) & (jittery.ts_us < hi))) for lo, hi in zip(edges, edges[1:])]
    pieces = [window_features(p, spec) for p in parts]
    assert np.concatenate([p[1] for p in pieces]).tobytes() == whole[1].tobytes()
    for end, row in zip(whole[2].tolist(), whole[1]):  # each window alone: a group of one
        alone = jittery.take(np.flatnonzero((jittery.ts_us >= end - 60 * S) & (jittery.ts_us < end)))
        assert window_features(alone, spec)[1].tobytes() == row.tobytes()


def test_windows_of_one_length_batch_like_windows_alone() -> None:
    v = np.random.default_rng(8).standard_normal(6 * 60 * FS)
    spec = spec_of(BANDS)
    whole = window_features(waveform(v), spec)[1]
    assert len(whole) == 6  # one FFT group of six rows
    for k in range(6):
        alone = waveform(v[k * 60 * FS : (k + 1) * 60 * FS], start_us=T0 + k * 60 * S)
        assert window_features(alone, spec)[1].tobytes() == whole[k].tobytes()


# --- the spec, its params and its version --------------------------------------------------------
def test_specs_without_bands_keep_their_params_and_version() -> None:
    from models.condition.data import SPEC

    committed = json.loads(MANIFEST.read_text())["feature_spec"]
    assert SPEC.version == CONDITION_VERSION == committed["version"]
    assert FeatureSpec.from_params(committed["params"]).version == CONDITION_VERSION
    assert "bands" not in SPEC.params() and SPEC.params() == committed["params"]
    assert SPEC.bands == () and FeatureSpec.from_params({**SPEC.params(), "bands": {}}) == SPEC


def test_band_code_changes_the_version_of_band_specs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = FeatureSpec(window_us=60 * S, channels=("vib",))
    banded = FeatureSpec(window_us=60 * S, channels=("vib",), bands=(("vib", ((0, 10),)),))
    before = plain.version, banded.version
    assert before[0] != before[1]
    monkeypatch.setattr(features, "_band_fingerprint", lambda: "def _band_energy(): return 42")
    after = (FeatureSpec(window_us=60 * S, channels=("vib",)).version,
             FeatureSpec(window_us=60 * S, channels=("vib",), bands=(("vib", ((0, 10),)),)).version)
    assert after[0] == before[0] and after[1] != before[1]
    monkeypatch.setattr(features, "_code_fingerprint", lambda: "def window_features(): return 42")
    assert FeatureSpec(window_us=60 * S, channels=("vib",), bands=(("vib", ((0, 10),)),)).version != after[1]


def test_without_bands_the_public_function_is_the_fingerprinted_aggregate_path(jittery: Readings) -> None:
    # The hand-off is in _BAND_CODE, outside the version of specs without bands: pin it.
    spec = FeatureSpec(window_us=60 * S, channels=("vib",), aggregates=tuple(Aggregate))
    a, b = window_features(jittery, spec), features._aggregate_features(jittery, spec)
    assert a[0] == b[0] and a[1].tobytes() == b[1].tobytes() and a[2].tobytes() == b[2].tobytes()
    assert features._aggregate_features in features._FEATURE_CODE
    assert features._aggregate_features is not window_features


@pytest.mark.parametrize("bands", [
    (("vib", ((0, 10), (10, 50.5))),),
    (("vib", [[0.25, 1e-3 + 1]]), ("temp", ((0, 1),))),
])
def test_params_round_trip_through_json_and_from_params(bands: object) -> None:
    spec = FeatureSpec(window_us=60 * S, channels=("temp", "vib"), bands=bands)  # type: ignore[arg-type]
    params = json.loads(json.dumps(spec.params()))
    assert list(params["bands"]) == [c for c in spec.channels if c in dict(spec.bands)]  # channel order
    again = FeatureSpec.from_params(params)
    assert again == spec and again.version == spec.version and again.feature_names == spec.feature_names


def test_a_band_changes_the_version_and_equal_bands_compare_equal() -> None:
    a = FeatureSpec(window_us=60 * S, channels=("vib",), bands=(("vib", ((0, 10),)),))
    b = FeatureSpec(window_us=60 * S, channels=["vib"], bands=[["vib", [[0.0, 10.0]]]])  # type: ignore[arg-type]
    c = FeatureSpec(window_us=60 * S, channels=("vib",), bands=(("vib", ((0, 10.5),)),))
    assert a == b and hash(a) == hash(b) and a.version == b.version != c.version


@pytest.mark.parametrize("edges", [(0, 10), (2.5, 7.25), (0.001, 0.002), (1e-5, 3e-5), (1234.5678, 2e4), (-0.0, 1)])
def test_feature_names_are_valid_feat_channels(edges: tuple[float, float]) -> None:
    spec = FeatureSpec(window_us=60 * S, channels=("vibration",), aggregates=(Aggregate.MEAN,), bands=(("vibration", (edges,)),))
    name = spec.feature_names[-1]
    assert check_channel(f"feat.{name}") and name.count(".") == 1 and "e" not in name.split("_", 1)[1][:-2]
    assert (name.rsplit(".", 1)[0], float(name.split("_")[1].replace("p", ".")), float(name.split("_")[2][:-2].replace("p", "."))) == (
        "vibration", float(edges[0]), float(edges[1]))


def test_feature_names_are_stable() -> None:
    spec = FeatureSpec(window_us=60 * S, channels=("vibration",), aggregates=(Aggregate.RMS,),
                       bands=(("vibration", ((0, 10), (10, 50), (50, 100), (100.5, 1e3))),))
    assert spec.feature_names == (
        "vibration.rms", "vibration.band_0_10hz", "vibration.band_10_50hz", "vibration.band_50_100hz",
        "vibration.band_100p5_1000hz",
    )


@pytest.mark.parametrize(("bands", "message"), [
    (("vib", ((0, 10),)), "must be a (channel, ((lo_hz, hi_hz), ...)) pair"),
    ((("temp", ((0, 10),)),), "channel 'temp'"),
    ((("vib", ((0, 10),)), ("vib", ((10, 20),))), "'vib' more than once"),
    ((("vib", ()),), "FeatureSpec.bands['vib'] is ()"),
    ((("vib", "0-10"),), "'0-10'"),
    ((("vib", ((0, 10, 20),)),), "(0, 10, 20)"),
    ((("vib", ((10, 5),)),), "band (10, 5)"),
    ((("vib", ((5, 5),)),), "band (5, 5)"),
    ((("vib", ((-1, 5),)),), "-1 must be a finite number of Hz >= 0"),
    ((("vib", ((0, math.inf),)),), "inf must be a finite"),
    ((("vib", ((math.nan, 1),)),), "nan must be a finite"),
    ((("vib", ((0, "10"),)),), "'10' is not a number"),
    ((("vib", ((False, 10),)),), "False is not a number"),
    ((("vib", ((0, 10), (5, 20))),), "band (5, 20) overlaps or precedes (0.0, 10.0)"),
    ((("vib", ((10, 20), (0, 5))),), "band (0, 5) overlaps or precedes (10.0, 20.0)"),
    ("vib", "FeatureSpec.bands is 'vib'"),
])
def test_bad_bands_are_refused_naming_the_value(bands: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        FeatureSpec(window_us=60 * S, channels=("vib",), bands=bands)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_bad_band_params_are_refused() -> None:
    params = FeatureSpec(window_us=60 * S, channels=("vib",)).params()
    with pytest.raises(ValueError, match="must be an object"):
        FeatureSpec.from_params({**params, "bands": [["vib", [[0, 1]]]]})
    with pytest.raises(ValueError, match="overlaps"):
        FeatureSpec.from_params({**params, "bands": {"vib": [[0, 2], [1, 3]]}})


def test_a_window_moved_by_whole_windows_gives_the_same_bits(jittery: Readings) -> None:
    # hub/streaming's adapter relies on this: it shifts each window's rows by a multiple of window_us.
    spec = spec_of(BANDS)
    names, matrix, ends = window_features(jittery, spec)
    for shift in (-(10**6) * 60 * S, 60 * S, 12_345 * 60 * S):
        moved = Readings(jittery.channels, jittery.channel, jittery.ts_us + shift, jittery.value)
        again = window_features(moved, spec)
        assert again[1].tobytes() == matrix.tobytes() and (again[2] - shift).tolist() == ends.tolist()
