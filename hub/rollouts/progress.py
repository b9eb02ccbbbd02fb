"""Where a rollout's devices stand: per-stage counts, who converged, who has still to come back.

Pure functions of the rollout's row, its device rows (`rollout_devices`), the devices' last
reports and when each was seen. Hazard: a device reports its state *before* it applies the answer
of the same exchange, so the report that came with the exchange that handed it the candidate
still names the champion. A device counts as back on the champion only on a report seen after
it was handed the candidate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from protocol.twin import Reported

from .gates import failed, figures, runs
from .plan import RolloutPlan

Key = tuple[str, str]
_ON_CANDIDATE = ("canary", "stage", "paused", "complete")


def _key(d: Mapping[str, Any]) -> Key:
    return d["tenant"], d["device"]


def reached(row: Mapping[str, Any], d: Mapping[str, Any]) -> bool:
    """Whether the rollout has got as far as this device's stage."""
    return d["stage"] <= row["stage"] or row["state"] == "complete"


def target(row: Mapping[str, Any], d: Mapping[str, Any]) -> str | None:
    """The version the device should run now: the candidate once reached (unless halted), else the champion."""
    return row["version"] if reached(row, d) and row["state"] in _ON_CANDIDATE else row["champion"]


def on_target(row: Mapping[str, Any], d: Mapping[str, Any], report: Reported | None, seen_us: int | None) -> bool:
    want = target(row, d)
    if not runs(report, row["model"], want):
        return False
    handed = d["handed_at_us"]
    return want == row["version"] or handed is None or (seen_us or 0) > handed


def off_target(row: Mapping[str, Any], devs: list[dict], reports: Mapping[Key, Reported],
               seen: Mapping[Key, int]) -> list[str]:
    return sorted(f"{d['tenant']}/{d['device']}" for d in devs
                  if not on_target(row, d, reports.get(_key(d)), seen.get(_key(d))))


def still_away(row: Mapping[str, Any], devs: list[dict], reports: Mapping[Key, Reported],
               seen: Mapping[Key, int]) -> list[str]:
    """Devices that took the candidate (were handed it, or run it) and are not back on their target."""
    model, cand = row["model"], row["version"]
    return sorted(f"{d['tenant']}/{d['device']}" for d in devs
                  if (d["handed_at_us"] is not None or runs(reports.get(_key(d)), model, cand))
                  and not on_target(row, d, reports.get(_key(d)), seen.get(_key(d))))


def stage_counts(row: Mapping[str, Any], plan: RolloutPlan, devs: list[dict],
                 reports: Mapping[Key, Reported]) -> list[dict]:
    """Per stage: devices assigned to it, reporting on the candidate, running it, failing with it."""
    model, cand, mw = row["model"], row["version"], plan.gates.min_windows
    stages = [{"stage": i, "percent": s.percent, "bake_s": s.bake_s, "assigned": 0, "reporting": 0,
               "on_candidate": 0, "failed": 0} for i, s in enumerate(plan.stages)]
    for d in devs:
        r, s = reports.get(_key(d)), stages[d["stage"]]
        s["assigned"] += 1
        s["reporting"] += figures(r, model, cand, mw) is not None
        s["on_candidate"] += runs(r, model, cand)
        s["failed"] += failed(r, model, cand)
    return stages


def without_stale_failures(devs: list[dict], reports: Mapping[Key, Reported],
                           seen: Mapping[Key, int]) -> dict[Key, Reported]:
    """The reports, where a failure counts only if reported after this rollout handed the device the
    candidate: a refusal left over from an earlier rollout of the same version is not this one's."""
    out = dict(reports)
    for d in devs:
        r, k = out.get(_key(d)), _key(d)
        if r is not None and r.failure is not None and (d["handed_at_us"] is None
                                                        or seen.get(k, 0) <= d["handed_at_us"]):
            out[k] = dataclasses.replace(r, failure=None)
    return out
