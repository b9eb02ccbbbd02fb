"""A rollout plan (candidate, cohort, stages, gates, deadlines) as a validated value object.

Plans arrive as JSON from the API and the CLI and are stored as JSON in the rollout's row, so
`from_dict(to_dict(plan)) == plan`. Parsing is strict: unknown fields are refused, and every
error is a PlanError naming the field and the bad value.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..registry import RegistryError, normalize_cohort
from .errors import PlanError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")  # protocol/twin.py's rule for names and versions
MAX_STAGES = 20


def _number(where: str, value: object, *, low: float, high: float = math.inf, low_open: bool = False,
            integer: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if integer and ok and value != int(value):
        ok = False
    if not ok:
        kind = "a whole number" if integer else "a number"
        lo = f"over {low:g}" if low_open else f"{low:g} or more"
        hi = "" if high == math.inf else f" and at most {high:g}"
        raise PlanError(where, value, f"it must be {kind} {lo}{hi}")
    return int(value) if integer else float(value)


def _fields_of(where: str, obj: object, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise PlanError(where, obj, "it must be a JSON object")
    for k in obj:
        if k not in allowed:
            raise PlanError(f"{where}.{k}".lstrip("."), obj[k], f"unknown field (known: {', '.join(allowed)})")
    for k in required:
        if k not in obj:
            raise PlanError(f"{where}.{k}".lstrip("."), None, "the field is required")
    return obj


@dataclass(frozen=True)
class Stage:
    """Give the candidate to `percent` of the cohort, then wait `bake_s` before judging the stage."""

    percent: float
    bake_s: float

    def __post_init__(self) -> None:
        _number("stages[].percent", self.percent, low=0, high=100, low_open=True)
        _number("stages[].bake_s", self.bake_s, low=0)


@dataclass(frozen=True)
class Gates:
    """Health gates on the devices assigned so far; None turns a gate off."""

    min_reporting: int | None = 1  # devices on the candidate with inference.windows >= min_windows
    min_windows: int = 1
    max_failures: int | None = 0  # devices whose failure report names the candidate
    max_error_rate: float | None = None  # errors / windows over candidate devices
    max_p95_ms: float | None = None  # median over candidate devices
    max_p95_ratio: float | None = None  # median candidate p95 / median champion p95
    max_divergence: float | None = None  # total-variation distance of predicted classes
    min_shadow_agreement: float | None = None  # champion devices shadowing the candidate
    min_accuracy: float | None = None  # needs labels, which no device reports yet

    def __post_init__(self) -> None:
        for name, low, high, integer, low_open in (
            ("min_reporting", 0, math.inf, True, False), ("min_windows", 1, math.inf, True, False),
            ("max_failures", 0, math.inf, True, False), ("max_error_rate", 0, 1, False, False),
            ("max_p95_ms", 0, math.inf, False, True), ("max_p95_ratio", 0, math.inf, False, True),
            ("max_divergence", 0, 1, False, False), ("min_shadow_agreement", 0, 1, False, False),
            ("min_accuracy", 0, 1, False, False),
        ):
            value = getattr(self, name)
            if value is None and name != "min_windows":
                continue
            object.__setattr__(self, name, _number(f"gates.{name}", value, low=low, high=high,
                                                   integer=integer, low_open=low_open))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, obj: object) -> "Gates":
        return cls(**_fields_of("gates", obj, cls.names()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_STAGES = (Stage(5, 60), Stage(25, 60), Stage(50, 60), Stage(100, 60))


@dataclass(frozen=True)
class RolloutPlan:
    """What to roll out, to whom, in which steps, judged by which gates."""

    model: str
    version: str
    cohort: str = "*"
    stages: tuple[Stage, ...] = DEFAULT_STAGES
    gates: Gates = field(default_factory=Gates)
    deadline_s: float = 3600.0  # after the rollout ends, devices have this long to converge
    stage_timeout_s: float = 3600.0  # a stage that cannot gather min_reporting in this long halts
    poll_interval_s: float = 30.0  # how often devices in the rollout ask for their desired state

    def __post_init__(self) -> None:
        for name in ("model", "version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise PlanError(name, value, f"it must be a string matching {_NAME.pattern}")
        try:
            object.__setattr__(self, "cohort", normalize_cohort(self.cohort))
        except RegistryError as exc:
            raise PlanError("cohort", self.cohort, str(exc).rstrip(".")) from exc
        stages = tuple(self.stages)
        if not stages or len(stages) > MAX_STAGES:
            raise PlanError("stages", [asdict(s) for s in stages], f"a plan has 1 to {MAX_STAGES} stages")
        for i, s in enumerate(stages):
            if not isinstance(s, Stage):
                raise PlanError(f"stages[{i}]", s, "it must be a Stage")
            if i and s.percent <= stages[i - 1].percent:
                raise PlanError(f"stages[{i}].percent", s.percent,
                                f"stage percentages must increase, and stage {i - 1} has {stages[i - 1].percent:g}")
        if stages[-1].percent != 100:
            raise PlanError(f"stages[{len(stages) - 1}].percent", stages[-1].percent,
                            "the last stage must cover 100 percent of the cohort")
        object.__setattr__(self, "stages", stages)
        if not isinstance(self.gates, Gates):
            raise PlanError("gates", self.gates, "it must be a Gates")
        object.__setattr__(self, "deadline_s", _number("deadline_s", self.deadline_s, low=0))
        object.__setattr__(self, "stage_timeout_s", _number("stage_timeout_s", self.stage_timeout_s, low=0,
                                                            low_open=True))
        object.__setattr__(self, "poll_interval_s", _number("poll_interval_s", self.poll_interval_s, low=0.01,
                                                            high=86400))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "cohort": self.cohort,
                "stages": [{"percent": s.percent, "bake_s": s.bake_s} for s in self.stages],
                "gates": self.gates.to_dict(), "deadline_s": self.deadline_s,
                "stage_timeout_s": self.stage_timeout_s, "poll_interval_s": self.poll_interval_s}

    @classmethod
    def from_dict(cls, obj: object) -> "RolloutPlan":
        names = tuple(f.name for f in fields(cls))
        d = dict(_fields_of("", obj, names, ("model", "version")))
        if "stages" in d:
            if not isinstance(d["stages"], list):
                raise PlanError("stages", d["stages"], "it must be a list of {percent, bake_s}")
            stages = []
            for i, s in enumerate(d["stages"]):
                sd = _fields_of(f"stages[{i}]", s, ("percent", "bake_s"), ("percent",))
                stages.append(_stage(i, sd["percent"], sd.get("bake_s", 0)))
            d["stages"] = tuple(stages)
        if "gates" in d:
            d["gates"] = Gates() if d["gates"] is None else Gates.from_dict(d["gates"])
        return cls(**d)


def _stage(i: int, percent: object, bake_s: object) -> Stage:
    """A Stage whose errors name its index, not just `stages[]`."""
    try:
        return Stage(percent, bake_s)  # type: ignore[arg-type]
    except PlanError as exc:
        raise PlanError(exc.field.replace("[]", f"[{i}]"), exc.value, exc.why) from None


def parse_stages(text: str) -> tuple[Stage, ...]:
    """`5:60,25:60,100:0` (percent:bake seconds, bake may be a duration like 10m) as stages."""
    from protocol import parse_duration

    out = []
    for i, part in enumerate(p for p in text.split(",") if p.strip()):
        percent, sep, bake = part.strip().partition(":")
        try:
            pct = float(percent)
        except ValueError:
            raise PlanError(f"stages[{i}].percent", percent, "it must be a number from 0 to 100") from None
        try:
            seconds = 0.0 if not sep else float(bake) if re.fullmatch(r"[0-9.]+", bake.strip()) \
                else parse_duration(bake).total_seconds()
        except ValueError:
            raise PlanError(f"stages[{i}].bake_s", bake, "it must be seconds or a duration like 10m") from None
        out.append(_stage(i, pct, seconds))
    return tuple(out)
