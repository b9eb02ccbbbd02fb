"""Drift statistics between a reference and a current sample, and the rule that picks one per column.

Pure numpy functions; no state, no I/O. Each agrees with a reference implementation
(tests/hub/drift/test_stats.py checks them against scipy on seeded data):

    ks(ref, cur)               two-sample Kolmogorov–Smirnov: exact statistic D = max|F_ref - F_cur|,
                               p-value from the asymptotic Kolmogorov distribution Q_KS(sqrt(en) * D),
                               en = n*m/(n+m) (= scipy.stats.kstwobign.sf). Hazard: scipy's
                               ks_2samp(method="asymp") uses the finite-n distribution kstwo.sf(D, round(en))
                               instead; the two differ by O(1/sqrt(en)) (test measures the gap).
    wasserstein(ref, cur)      1-D earth mover's distance = integral |F_ref - F_cur| dx, in data units
                               (= scipy.stats.wasserstein_distance); `normalized=True` divides by
                               std(ref, ddof=0) floored at 1e-3, as Evidently does.
    psi(ref, cur, bins=10)     population stability index over `bins` quantile bins of the reference;
                               proportions of empty bins become PSI_EPSILON (1e-4, Evidently's choice)
                               so the log stays finite.
    jensen_shannon(p, q)       Jensen–Shannon *distance* (sqrt of the divergence), base 2, in [0, 1],
                               from two count (or probability) vectors over the same categories
                               (= scipy.spatial.distance.jensenshannon(p, q, base=2)).

The rule (`drift_report`), modelled on Evidently's data-drift defaults so the bench can compare
flags column for column; n is the reference size after NaN/None are dropped:

    categorical (non-numeric dtype, bool, or numeric with <= 5 distinct reference values)
                         → Jensen–Shannon distance of the category frequencies, drifted if >= 0.1
    numeric, n <= 1000   → KS, drifted if p-value < 0.05
    numeric, n  > 1000   → Wasserstein normalized by the reference std, drifted if >= 0.1

Why: a KS p-value on a large sample flags shifts too small to matter (with 1M rows a 0.01-std shift
is "significant"), so past 1000 rows an effect size with a fixed threshold judges instead; on small
samples the test guards against noise. Evidently uses chi-square (or a Z-test for two classes) for
categorical columns with n <= 1000; we use JS at every size — a chi-square p-value needs the
incomplete gamma function, which numpy lacks, and JS is what Evidently uses past 1000 rows anyway.
PSI is available as a statistic but no rule picks it; pass `methods={"col": Method.PSI}` to use it
(threshold 0.1).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import EmptySampleError, InvalidDriftInputError

__all__ = [
    "CATEGORICAL_MAX_UNIQUE", "KS_MAX_N", "PSI_EPSILON", "THRESHOLDS",
    "ColumnDrift", "Kind", "Method",
    "drift_report", "jensen_shannon", "kolmogorov_sf", "ks", "prediction_drift", "psi", "wasserstein",
]

PSI_EPSILON = 1e-4
KS_MAX_N = 1000  # reference rows at or below which numeric columns are judged by the KS test
CATEGORICAL_MAX_UNIQUE = 5  # numeric columns with this many distinct reference values or fewer are categorical
_STD_FLOOR = 1e-3  # Evidently's floor for the Wasserstein normalizer


class Kind(enum.StrEnum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


class Method(enum.StrEnum):
    KS = "ks"  # statistic reported is the p-value; drifted when below the threshold
    WASSERSTEIN = "wasserstein"  # normalized by the reference std
    PSI = "psi"
    JENSEN_SHANNON = "jensen_shannon"  # distance, base 2


THRESHOLDS: Mapping[Method, float] = {
    Method.KS: 0.05, Method.WASSERSTEIN: 0.1, Method.PSI: 0.1, Method.JENSEN_SHANNON: 0.1,
}


@dataclass(frozen=True)
class ColumnDrift:
    """One column's verdict. For KS `statistic` is the p-value (drifted when < threshold) and `d` holds D;
    for the others `statistic` is the distance (drifted when >= threshold)."""

    column: str
    kind: Kind
    method: Method
    statistic: float
    threshold: float
    drifted: bool
    n_reference: int
    n_current: int
    nan_reference: int  # NaN/None values dropped before the statistic
    nan_current: int
    d: float | None = None  # the KS statistic, when method is KS


# ---------------------------------------------------------------- the statistics


def _clean(x: object, column: str, side: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    a = a[~np.isnan(a)]
    if a.size == 0:
        raise EmptySampleError(column, side)
    return a


def _ks_sorted(r: np.ndarray, c: np.ndarray) -> float:
    # F is right-continuous, so the sup of |F_r - F_c| is reached at a sample point; at a point x,
    # F(x) = searchsorted(sorted, x, "right") / size, which counts ties correctly.
    n, m = r.size, c.size
    at_r = np.abs(np.searchsorted(r, r, "right") / n - np.searchsorted(c, r, "right") / m)
    at_c = np.abs(np.searchsorted(r, c, "right") / n - np.searchsorted(c, c, "right") / m)
    return float(max(at_r.max(), at_c.max()))


def kolmogorov_sf(lam: float) -> float:
    """Q_KS(λ) = P(K > λ) of the Kolmogorov distribution (scipy.stats.kstwobign.sf).

    Two series, each used where it converges in a few terms (Press et al., Numerical Recipes §14.3;
    the small-λ form is the Jacobi-theta dual): 2 Σ (-1)^(k-1) exp(-2k²λ²) for λ >= 1, else
    1 - sqrt(2π)/λ Σ exp(-(2k-1)²π²/(8λ²)).
    """
    if lam <= 0.0:
        return 1.0
    k = np.arange(1, 101, dtype=np.float64)
    if lam >= 1.0:
        terms = np.exp(-2.0 * k * k * lam * lam)
        signs = np.where(k % 2 == 1, 1.0, -1.0)
        # Sum from the smallest terms up, so the tail is not lost to rounding.
        return float(min(1.0, max(0.0, 2.0 * np.sum((signs * terms)[::-1]))))
    odd = 2.0 * k - 1.0
    cdf = math.sqrt(2.0 * math.pi) / lam * float(np.sum(np.exp(-odd * odd * math.pi**2 / (8.0 * lam * lam))[::-1]))
    return float(min(1.0, max(0.0, 1.0 - cdf)))


def ks(reference: object, current: object) -> tuple[float, float]:
    """Two-sample KS: (D, p-value by the asymptotic Kolmogorov distribution); NaN dropped."""
    r = np.sort(_clean(reference, "", "reference"))
    c = np.sort(_clean(current, "", "current"))
    return _ks_from_sorted(r, c)


def _ks_from_sorted(r: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    d = _ks_sorted(r, c)
    en = r.size * c.size / (r.size + c.size)
    return d, kolmogorov_sf(math.sqrt(en) * d)


def _wasserstein_sorted(r: np.ndarray, c: np.ndarray) -> float:
    # In one dimension ∫|F_r - F_c| dx = ∫_0^1 |Q_r(u) - Q_c(u)| du, Q the empirical quantile
    # functions (the same value as scipy's _cdf_distance with p=1, without its merge sort and two
    # searchsorted passes: 30x faster at equal sizes, 2.5x at unequal ones). Q_r steps at i/n and
    # Q_c at j/m; on the integer grid of n*m those are i*m and j*n (exact in int64 for any sample
    # that fits in memory), merged by computing each one's rank instead of sorting.
    n, m = r.size, c.size
    if n == m:
        return float(np.mean(np.abs(r - c)))
    i = np.arange(1, n + 1, dtype=np.int64)
    j = np.arange(1, m + 1, dtype=np.int64)
    b = np.empty(n + m, np.int64)
    b[i - 2 + -(-i * m // n)] = i * m  # rank of i*m: i - 1, plus the j*n strictly below it (ceil(i*m/n) - 1)
    b[j - 1 + j * n // m] = j * n  # rank of j*n: j - 1, plus the i*m at or below it (ties: zero-width steps)
    width = np.diff(b, prepend=0)
    return float(np.dot(width, np.abs(r[-(-b // m) - 1] - c[-(-b // n) - 1]))) / (n * m)


def wasserstein(reference: object, current: object, *, normalized: bool = False) -> float:
    """1-D earth mover's distance in data units, or divided by std(reference) (floored at 1e-3)."""
    r = np.sort(_clean(reference, "", "reference"))
    c = np.sort(_clean(current, "", "current"))
    w = _wasserstein_sorted(r, c)
    return w / max(float(np.std(r)), _STD_FLOOR) if normalized else w


def _psi_sorted(r: np.ndarray, c: np.ndarray, bins: int) -> float:
    # Interior edges at the reference's quantiles (linear interpolation, numpy's default); bins are
    # (-inf, e1], (e1, e2], ..., (e_k, inf), so the outer bins catch current values outside the
    # reference's range. Repeated edges (heavy ties) merge bins rather than leave zero-width ones.
    edges = np.unique(np.quantile(r, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    e = np.diff(np.concatenate(([0], np.searchsorted(r, edges, "right"), [r.size]))) / r.size
    a = np.diff(np.concatenate(([0], np.searchsorted(c, edges, "right"), [c.size]))) / c.size
    e = np.where(e == 0.0, PSI_EPSILON, e)
    a = np.where(a == 0.0, PSI_EPSILON, a)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(reference: object, current: object, *, bins: int = 10) -> float:
    """Population stability index Σ (a - e)·ln(a / e) over `bins` quantile bins of the reference."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InvalidDriftInputError(f"psi bins is {bins!r}; it must be an int >= 1.")
    return _psi_sorted(np.sort(_clean(reference, "", "reference")), np.sort(_clean(current, "", "current")), bins)


def jensen_shannon(p_counts: object, q_counts: object) -> float:
    """Jensen–Shannon distance, base 2, between two count vectors over the same categories."""
    p = np.asarray(p_counts, dtype=np.float64).ravel()
    q = np.asarray(q_counts, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise InvalidDriftInputError(f"Count vectors have {p.size} and {q.size} categories; they must match.")
    for side, v in (("reference", p), ("current", q)):
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise InvalidDriftInputError(f"The {side} counts {v.tolist()!r} must be finite and >= 0.")
        if v.sum() <= 0:
            raise EmptySampleError("", side)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0)
    js = (kl_p.sum() + kl_q.sum()) / 2.0
    return float(math.sqrt(min(1.0, max(0.0, js))))


def prediction_drift(reference_class_counts: object, current_class_counts: object) -> ColumnDrift:
    """Drift of a model's predicted-class distribution: JS distance of the counts, threshold 0.1."""
    p = np.asarray(reference_class_counts, dtype=np.float64).ravel()
    q = np.asarray(current_class_counts, dtype=np.float64).ravel()
    stat = jensen_shannon(p, q)
    t = THRESHOLDS[Method.JENSEN_SHANNON]
    return ColumnDrift("prediction", Kind.CATEGORICAL, Method.JENSEN_SHANNON, stat, t, stat >= t,
                       int(p.sum()), int(q.sum()), 0, 0)


# ---------------------------------------------------------------- the report


def _missing(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return np.isnan(a)
    if a.dtype.kind == "O":
        return np.fromiter((v is None or (isinstance(v, float) and v != v) for v in a), bool, a.size)
    return np.zeros(a.size, bool)


def _columns(data: object, names: Sequence[str] | None, side: str) -> dict[str, np.ndarray]:
    if isinstance(data, Mapping):
        if names is not None:
            raise InvalidDriftInputError("Pass `names` only with a 2-D array, not with a dict of columns.")
        return {str(k): np.asarray(v).ravel() for k, v in data.items()}
    a = np.asarray(data)
    if a.ndim != 2:
        raise InvalidDriftInputError(f"The {side} data has shape {a.shape}; give a dict of columns or a 2-D array.")
    if names is None:
        names = [f"f{i}" for i in range(a.shape[1])]
    if len(names) != a.shape[1]:
        raise InvalidDriftInputError(f"{len(names)} names for the {side} data's {a.shape[1]} columns.")
    return {str(n): a[:, i] for i, n in enumerate(names)}


def _judge_categorical(col: str, r: np.ndarray, c: np.ndarray, counts: tuple[int, int, int, int]) -> ColumnDrift:
    values, inverse = np.unique(np.concatenate((r, c)), return_inverse=True)
    p = np.bincount(inverse[: r.size], minlength=values.size)
    q = np.bincount(inverse[r.size:], minlength=values.size)
    stat = jensen_shannon(p, q)
    t = THRESHOLDS[Method.JENSEN_SHANNON]
    return ColumnDrift(col, Kind.CATEGORICAL, Method.JENSEN_SHANNON, stat, t, stat >= t, *counts)


def _judge(col: str, ref: np.ndarray, cur: np.ndarray, kind: Kind | None, method: Method | None) -> ColumnDrift:
    mr, mc = _missing(ref), _missing(cur)
    r, c = ref[~mr], cur[~mc]
    if r.size == 0:
        raise EmptySampleError(col, "reference")
    if c.size == 0:
        raise EmptySampleError(col, "current")
    counts = (int(r.size), int(c.size), int(mr.sum()), int(mc.sum()))
    numeric = r.dtype.kind in "iuf" and c.dtype.kind in "iuf"
    if kind is Kind.NUMERIC and not numeric:
        raise InvalidDriftInputError(f"Column {col!r} is declared numeric but has dtypes {r.dtype} and {c.dtype}.")
    if kind is Kind.CATEGORICAL or not numeric:
        if method not in (None, Method.JENSEN_SHANNON):
            raise InvalidDriftInputError(f"Column {col!r} is categorical; method {method.value!r} needs numbers.")
        return _judge_categorical(col, r, c, counts)
    rs = np.sort(r.astype(np.float64, copy=False))
    cs = np.sort(c.astype(np.float64, copy=False))
    if kind is None and method is None and np.count_nonzero(np.diff(rs)) + 1 <= CATEGORICAL_MAX_UNIQUE:
        return _judge_categorical(col, rs, cs, counts)
    if method is None:
        method = Method.KS if rs.size <= KS_MAX_N else Method.WASSERSTEIN
    t = THRESHOLDS[method]
    if method is Method.KS:
        d, p = _ks_from_sorted(rs, cs)
        return ColumnDrift(col, Kind.NUMERIC, method, p, t, p < t, *counts, d=d)
    if method is Method.WASSERSTEIN:
        stat = _wasserstein_sorted(rs, cs) / max(float(np.std(rs)), _STD_FLOOR)
    elif method is Method.PSI:
        stat = _psi_sorted(rs, cs, 10)
    else:
        return _judge_categorical(col, rs, cs, counts)
    return ColumnDrift(col, Kind.NUMERIC, method, stat, t, stat >= t, *counts)


def drift_report(
    reference: Mapping[str, object] | np.ndarray,
    current: Mapping[str, object] | np.ndarray,
    *,
    names: Sequence[str] | None = None,
    kinds: Mapping[str, Kind | str] | None = None,
    methods: Mapping[str, Method | str] | None = None,
) -> list[ColumnDrift]:
    """One ColumnDrift per reference column, in its order, by the rule in the module docstring.

    `reference`/`current`: dicts of 1-D columns, or 2-D arrays (rows × columns) with `names`
    (default f0, f1, ...). `kinds` overrides the detected kind of a column, `methods` its method.
    NaN (and None in object columns) are dropped and counted; a column left empty on either side
    raises EmptySampleError naming it.
    """
    ref = _columns(reference, names, "reference")
    cur = _columns(current, names, "current")
    if set(ref) != set(cur):
        raise InvalidDriftInputError(
            f"Reference and current columns differ: only in reference {sorted(set(ref) - set(cur))!r}, "
            f"only in current {sorted(set(cur) - set(ref))!r}.")
    kinds = {k: Kind(v) for k, v in (kinds or {}).items()}
    methods = {k: Method(v) for k, v in (methods or {}).items()}
    unknown = (set(kinds) | set(methods)) - set(ref)
    if unknown:
        raise InvalidDriftInputError(f"kinds/methods name columns {sorted(unknown)!r} that the data lacks.")
    return [_judge(col, ref[col], cur[col], kinds.get(col), methods.get(col)) for col in ref]
