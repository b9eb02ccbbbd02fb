"""hub.drift.stats against scipy on seeded data, PSI by hand, and the per-column rule of drift_report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st
from scipy.spatial.distance import jensenshannon

from hub.drift import (
    ColumnDrift, EmptySampleError, InvalidDriftInputError, Kind, Method, drift_report, jensen_shannon,
    kolmogorov_sf, ks, prediction_drift, psi, wasserstein,
)

SIZES = [(40, 60), (300, 1000), (1000, 1000), (5000, 3000), (20_000, 50_000)]


def _samples(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, n), rng.normal(0.1, 1.2, m)


@pytest.mark.parametrize(("n", "m"), SIZES)
def test_ks_statistic_matches_scipy_and_p_value_is_the_asymptotic_kolmogorov(n: int, m: int) -> None:
    a, b = _samples(n, m, seed=n + m)
    d, p = ks(a, b)
    ref = st.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    en = n * m / (n + m)
    assert p == pytest.approx(st.kstwobign.sf(math.sqrt(en) * d), abs=1e-12, rel=1e-9)
    # scipy's method="asymp" is the finite-n kstwo.sf(D, round(en)); ours is its n → ∞ limit.
    # Measured gap: ~0.04 at en≈24, ~0.003 at en=500; bound it by 0.5/sqrt(en).
    assert abs(p - ref.pvalue) <= 0.5 / math.sqrt(en)


def test_ks_with_ties_matches_scipy() -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(0, 20, 800).astype(float)
    b = rng.integers(2, 22, 900).astype(float)
    assert ks(a, b)[0] == pytest.approx(st.ks_2samp(a, b, method="asymp").statistic, abs=1e-12)


@pytest.mark.parametrize("lam", [1e-3, 0.1, 0.5, 0.9, 1.0, 1.3, 2.0, 4.0, 8.0])
def test_kolmogorov_sf_matches_kstwobign(lam: float) -> None:
    assert kolmogorov_sf(lam) == pytest.approx(st.kstwobign.sf(lam), abs=1e-14)


@pytest.mark.parametrize(("n", "m"), SIZES)
def test_wasserstein_matches_scipy(n: int, m: int) -> None:
    a, b = _samples(n, m, seed=3 * n + m)
    assert wasserstein(a, b) == pytest.approx(st.wasserstein_distance(a, b), abs=1e-9)
    assert wasserstein(a, b, normalized=True) == pytest.approx(st.wasserstein_distance(a, b) / np.std(a), abs=1e-9)


def test_jensen_shannon_is_scipys_distance_in_base_2() -> None:
    rng = np.random.default_rng(11)
    for _ in range(20):
        p = rng.integers(0, 50, 6)
        q = rng.integers(0, 50, 6)
        p[0], q[1] = 1, 1  # never all zero
        assert jensen_shannon(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    assert jensen_shannon([3, 4], [30, 40]) == pytest.approx(0.0, abs=1e-7)


def test_psi_by_hand() -> None:
    # Reference 1..10, bins=2: the one interior edge is the median 5.5 → expected (0.5, 0.5).
    # Current has 8 values <= 5.5 and 2 above → actual (0.8, 0.2).
    ref = np.arange(1, 11, dtype=float)
    cur = np.array([1, 1, 2, 2, 3, 3, 4, 5, 7, 9], dtype=float)
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(ref, cur, bins=2) == pytest.approx(expected, abs=1e-12)
    assert psi(ref, ref, bins=5) == pytest.approx(0.0, abs=1e-15)


def test_psi_empty_bin_uses_epsilon() -> None:
    ref = np.arange(1, 11, dtype=float)
    cur = np.full(10, 1.0)  # all in the first bin of 2; the second bin is empty → 1e-4
    expected = (1.0 - 0.5) * math.log(1.0 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert psi(ref, cur, bins=2) == pytest.approx(expected, abs=1e-12)


def _fleet(n: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    names = ["temp.mean", "temp.std", "vib.rms", "vib.p2p", "hum.mean"]
    ref = {k: rng.normal(10.0, 2.0, n) for k in names}
    cur = {k: rng.normal(10.0, 2.0, n) for k in names}
    cur["temp.mean"] = rng.normal(11.0, 2.0, n)  # +0.5 std
    cur["vib.p2p"] = rng.normal(10.0, 4.0, n)  # scale doubles
    ref["mode"] = rng.choice(np.array(["idle", "run", "fault"]), n, p=[0.3, 0.6, 0.1])
    cur["mode"] = rng.choice(np.array(["idle", "run", "fault"]), n, p=[0.1, 0.4, 0.5])
    ref["door"] = rng.choice(np.array(["open", "shut"]), n)  # categorical, not shifted
    cur["door"] = rng.choice(np.array(["open", "shut"]), n)
    return ref, cur


@pytest.mark.parametrize(("n", "method"), [(800, Method.KS), (20_000, Method.WASSERSTEIN)])
def test_drift_report_flags_exactly_the_shifted_columns(n: int, method: Method) -> None:
    ref, cur = _fleet(n, seed=n)
    report = drift_report(ref, cur)
    assert [r.column for r in report] == list(ref)
    assert {r.column for r in report if r.drifted} == {"temp.mean", "vib.p2p", "mode"}
    by = {r.column: r for r in report}
    assert by["temp.mean"].method is method and by["temp.mean"].kind is Kind.NUMERIC
    assert by["mode"].method is Method.JENSEN_SHANNON and by["mode"].kind is Kind.CATEGORICAL
    assert by["door"].method is Method.JENSEN_SHANNON
    if method is Method.KS:
        assert by["temp.mean"].d == pytest.approx(ks(ref["temp.mean"], cur["temp.mean"])[0])


def test_drift_report_takes_a_2d_array_with_names_and_detects_few_valued_numbers_as_categorical() -> None:
    rng = np.random.default_rng(5)
    ref = np.column_stack([rng.normal(size=3000), rng.integers(0, 3, 3000)])
    cur = np.column_stack([rng.normal(size=2000), rng.integers(0, 3, 2000)])
    report = drift_report(ref, cur, names=["x", "gear"])
    assert [(r.column, r.method, r.drifted) for r in report] == [
        ("x", Method.WASSERSTEIN, False), ("gear", Method.JENSEN_SHANNON, False)]
    forced = drift_report(ref, cur, names=["x", "gear"], kinds={"gear": "numeric"}, methods={"x": "psi"})
    assert [r.method for r in forced] == [Method.PSI, Method.WASSERSTEIN]


def test_nan_is_dropped_and_counted() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=500), rng.normal(size=400)
    a_nan, b_nan = a.copy(), np.concatenate([b, [np.nan] * 7])
    a_nan[:3] = np.nan
    (r,) = drift_report({"x": a_nan}, {"x": b_nan})
    assert (r.n_reference, r.n_current, r.nan_reference, r.nan_current) == (497, 400, 3, 7)
    assert r.d == pytest.approx(ks(a[3:], b)[0]) and r.statistic == pytest.approx(ks(a[3:], b)[1])
    (c,) = drift_report({"mode": np.array(["a", None, "b"], dtype=object)},
                        {"mode": np.array([None, "a", "a", float("nan")], dtype=object)})
    assert (c.n_reference, c.n_current, c.nan_reference, c.nan_current) == (2, 2, 1, 2)
    assert ks([1.0, np.nan, 2.0], [1.5]) == ks([1.0, 2.0], [1.5])


def test_empty_column_raises_naming_it() -> None:
    with pytest.raises(EmptySampleError, match="'vib.rms'") as err:
        drift_report({"temp.mean": [1.0, 2.0], "vib.rms": [np.nan, np.nan]}, {"temp.mean": [1.0], "vib.rms": [1.0]})
    assert (err.value.column, err.value.side) == ("vib.rms", "reference")
    with pytest.raises(EmptySampleError, match="'temp.mean'.*current"):
        drift_report({"temp.mean": [1.0]}, {"temp.mean": []})
    with pytest.raises(EmptySampleError):
        ks([], [1.0])


def test_bad_input_raises() -> None:
    with pytest.raises(InvalidDriftInputError, match="only in current \\['b'\\]"):
        drift_report({"a": [1.0]}, {"a": [1.0], "b": [2.0]})
    with pytest.raises(InvalidDriftInputError, match="3 names"):
        drift_report(np.zeros((4, 2)), np.zeros((4, 2)), names=["a", "b", "c"])
    with pytest.raises(InvalidDriftInputError, match="'mode' is declared numeric"):
        drift_report({"mode": np.array(["a"])}, {"mode": np.array(["b"])}, kinds={"mode": Kind.NUMERIC})
    with pytest.raises(InvalidDriftInputError, match="must match"):
        jensen_shannon([1, 2], [1, 2, 3])


def test_prediction_drift() -> None:
    same = prediction_drift([500, 300, 200], [250, 150, 100])
    moved = prediction_drift([500, 300, 200], [100, 300, 600])
    assert isinstance(same, ColumnDrift) and not same.drifted and same.statistic == pytest.approx(0.0, abs=1e-7)
    assert moved.drifted and moved.statistic == pytest.approx(jensenshannon([5, 3, 2], [1, 3, 6], base=2))
