"""Rollout health gates as pure functions: device reports in, one GateResult per configured gate out.

Who is compared with whom: *candidate devices* are devices assigned so far that run the candidate
and report at least `min_windows` windows for it; *champion devices* are devices of the cohort
(assigned or not) that run the champion with as many windows. Inference figures count since the
model was loaded (protocol/twin.py), so a device's figures always belong to one version.

A gate with no data to judge (no champion device to compare p95 with, no labels) is reported
with `passed=None` and does not block a stage; `min_reporting` is what makes sure there is data.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocol.twin import InferenceReport, Reported

from .plan import Gates


@dataclass(frozen=True)
class GateResult:
    name: str
    value: float | None  # what was measured; None when not evaluated
    threshold: float | None
    passed: bool | None  # None: not evaluated (no data), never blocks
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "threshold": self.threshold, "passed": self.passed,
                "detail": self.detail}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GateResult":
        return cls(d["name"], d["value"], d["threshold"], d["passed"], d["detail"])


def runs(r: Reported | None, model: str, version: str | None) -> bool:
    """Whether the device reports this model version as its active one."""
    return (r is not None and r.active is not None and version is not None
            and r.active.name == model and r.active.version == version)


def figures(r: Reported | None, model: str, version: str | None, min_windows: int) -> InferenceReport | None:
    """The device's inference figures for this version, when it runs it and has enough windows."""
    if not runs(r, model, version) or r.inference is None or r.inference.version != version:
        return None
    return r.inference if r.inference.windows >= min_windows else None


def failed(r: Reported | None, model: str, version: str) -> bool:
    """Whether the device's last refused or abandoned install was this version, and it does not run it
    (a device keeps reporting its last failure after a later install of the same version worked)."""
    return (r is not None and r.failure is not None and (r.failure.name, r.failure.version) == (model, version)
            and not runs(r, model, version))


def tv_distance(p: Mapping[str, int], q: Mapping[str, int]) -> float | None:
    """Total-variation distance between two class-count histograms (0 same, 1 disjoint); None if one is empty."""
    np, nq = sum(p.values()), sum(q.values())
    if np <= 0 or nq <= 0:
        return None
    return 0.5 * sum(abs(p.get(c, 0) / np - q.get(c, 0) / nq) for c in set(p) | set(q))


def _p95s(figs: Sequence[InferenceReport]) -> list[float]:
    return [f.p95_ms for f in figs if f.p95_ms is not None]


def baseline(reports: Iterable[Reported | None], *, model: str, champion: str | None, min_windows: int) -> dict:
    """The champion's figures over the cohort when the rollout starts: the comparison the gates fall
    back to once no device runs the champion any more (the last stage)."""
    figs = [f for r in reports if (f := figures(r, model, champion, min_windows)) is not None]
    p95 = _p95s(figs)
    return {"devices": len(figs), "p95_ms": statistics.median(p95) if p95 else None, "classes": dict(_classes(figs))}


def evaluate(gates: Gates, *, model: str, candidate: str, champion: str | None,
             assigned: Sequence[Reported | None], others: Sequence[Reported | None],
             start: Mapping[str, Any] | None = None) -> list[GateResult]:
    """Judge the devices assigned so far (`assigned`) against the rest of the cohort (`others`), or
    against the champion's `start` baseline when no device of the cohort runs the champion now."""
    mw = gates.min_windows
    cand = [f for r in assigned if (f := figures(r, model, candidate, mw)) is not None]
    champ = [f for r in (*assigned, *others) if (f := figures(r, model, champion, mw)) is not None]
    start = start or {}
    use_start = not champ and start.get("devices", 0) > 0
    whom = f"the champion's {start.get('devices')} device(s) at the start" if use_start \
        else f"{len(champ)} champion device(s)"
    out: list[GateResult] = []

    if gates.min_reporting is not None:
        need = min(gates.min_reporting, len(assigned))  # a stage smaller than the gate can still pass
        out.append(GateResult("min_reporting", len(cand), need, len(cand) >= need,
                              f"{len(cand)} of {len(assigned)} assigned device(s) run {candidate} with "
                              f">= {mw} window(s); {need} needed"))
    if gates.max_failures is not None:
        n = sum(failed(r, model, candidate) for r in assigned)
        out.append(GateResult("max_failures", n, gates.max_failures, n <= gates.max_failures,
                              f"{n} assigned device(s) report a failure with {candidate}"))
    if gates.max_error_rate is not None:
        windows, errors = sum(f.windows for f in cand), sum(f.errors for f in cand)
        out.append(_judge("max_error_rate", errors / windows if windows else None, gates.max_error_rate, max,
                          f"{errors} error(s) in {windows} window(s) on {len(cand)} candidate device(s)"))
    if gates.max_p95_ms is not None:
        p95 = _p95s(cand)
        out.append(_judge("max_p95_ms", statistics.median(p95) if p95 else None, gates.max_p95_ms, max,
                          f"median p95 over {len(p95)} candidate device(s)"))
    if gates.max_p95_ratio is not None:
        cp, hp = _p95s(cand), _p95s(champ)
        base = start.get("p95_ms") if use_start else statistics.median(hp) if hp else None
        ratio = statistics.median(cp) / base if cp and base else None
        out.append(_judge("max_p95_ratio", ratio, gates.max_p95_ratio, max,
                          f"median p95 of {len(cp)} candidate device(s) over that of {whom}"))
    if gates.max_divergence is not None:
        cc, hc = _classes(cand), Counter(start.get("classes", {})) if use_start else _classes(champ)
        out.append(_judge("max_divergence", tv_distance(cc, hc), gates.max_divergence, max,
                          f"total-variation distance of the classes predicted in {sum(cc.values())} candidate "
                          f"window(s) and {sum(hc.values())} of {whom}"))
    if gates.min_shadow_agreement is not None:
        shadows = [r.shadow for r in (*assigned, *others)
                   if runs(r, model, champion) and r.shadow is not None and r.shadow.version == candidate]
        windows, agreed = sum(s.windows for s in shadows), sum(s.agreed for s in shadows)
        out.append(_judge("min_shadow_agreement", agreed / windows if windows else None, gates.min_shadow_agreement,
                          min, f"{agreed} of {windows} shadow window(s) on {len(shadows)} champion device(s) agree"))
    if gates.min_accuracy is not None:
        out.append(GateResult("min_accuracy", None, gates.min_accuracy, None, "no labels reported"))
    return out


def _classes(figs: Sequence[InferenceReport]) -> Counter[str]:
    total: Counter[str] = Counter()
    for f in figs:
        total.update(f.classes)
    return total


def _judge(name: str, value: float | None, threshold: float, bound: Any, detail: str) -> GateResult:
    """`bound` is max (value must stay at or under the threshold) or min (at or over it)."""
    if value is None:
        return GateResult(name, None, threshold, None, f"not evaluated: {detail}")
    ok = value <= threshold if bound is max else value >= threshold
    return GateResult(name, round(value, 6), threshold, ok, detail)


def reporting_met(results: Sequence[GateResult]) -> bool:
    return all(r.passed for r in results if r.name.startswith("min_reporting"))


def halting(results: Sequence[GateResult]) -> list[GateResult]:
    """Gates that fail with enough data to act on: failures always, the rest once min_reporting holds."""
    enough = reporting_met(results)
    return [r for r in results if r.passed is False and not r.name.startswith("min_reporting")
            and (enough or r.name == "max_failures")]
