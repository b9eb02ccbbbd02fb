"""Quality verdicts: one CheckResult per check per series, gathered into a QualityReport with health scores.

Health score (documented contract, the drift detector and `edgeloop quality report` rely on it):

    channel score = (checks passed / checks run) × (1 − flagged rows / rows)
                    and 0 for an expected channel with no rows at all
    device score  = mean of its channels' scores

Both lie in [0, 1]; 1 means every check passed and no row was flagged.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .errors import UnknownSeriesError

__all__ = ["ChannelReport", "Check", "CheckResult", "QualityReport", "flagged_rows", "is_quality_problem"]


class Check(str, enum.Enum):
    """The checks run on every (tenant, device, channel) series."""

    NULLS = "nulls"
    RANGE = "range"
    STUCK = "stuck"
    SPIKES = "spikes"
    SAMPLING = "sampling"
    SILENCE = "silence"
    DUPLICATES = "duplicates"
    CLOCK_SKEW = "clock_skew"


@dataclass(frozen=True)
class CheckResult:
    """One check on one series: `value` is what was measured, `threshold` the bound it is held to."""

    check: Check
    passed: bool
    value: float
    threshold: float
    flagged: int  # rows this check flags for quarantine (0 for gap checks: missing data has no rows)
    detail: str


@dataclass(frozen=True, eq=False)
class ChannelReport:
    """Every check's result for one (tenant, device, channel), and the input rows it flags."""

    tenant: str
    device: str
    channel: str
    rows: int
    results: tuple[CheckResult, ...]
    # check → row indexes into the checked table (read-only int64 arrays, ascending)
    flags: Mapping[Check, np.ndarray] = field(default_factory=dict)
    flag_ts_us: Mapping[Check, np.ndarray] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.tenant, self.device, self.channel)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(r.check for r in self.results if not r.passed)

    def result(self, check: Check | str) -> CheckResult:
        check = Check(check)
        for r in self.results:
            if r.check is check:
                return r
        raise UnknownSeriesError(f"Check {check.value!r} was not run on {self.key!r}.")

    @property
    def flagged_rows(self) -> np.ndarray:
        """Row indexes any check flagged, ascending and unique."""
        parts = [a for a in self.flags.values() if len(a)]
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    @property
    def score(self) -> float:
        if self.rows == 0 or not self.results:
            return 0.0
        passed = sum(r.passed for r in self.results) / len(self.results)
        return passed * (1.0 - len(self.flagged_rows) / self.rows)


@dataclass(frozen=True, eq=False)
class QualityReport:
    """The checks of one run over a set of readings, evaluated as of `now_us`."""

    now_us: int
    channels: tuple[ChannelReport, ...]
    unchecked: tuple[tuple[str, str, str], ...] = ()  # series with no expectation for their channel

    def channel(self, device: str, channel: str, *, tenant: str | None = None) -> ChannelReport:
        hits = [c for c in self.channels
                if c.device == device and c.channel == channel and (tenant is None or c.tenant == tenant)]
        if len(hits) != 1:
            what = "no" if not hits else f"{len(hits)} (name the tenant)"
            raise UnknownSeriesError(
                f"The report holds {what} series for device {device!r}, channel {channel!r}"
                + (f", tenant {tenant!r}." if tenant is not None else ".")
            )
        return hits[0]

    def device_scores(self) -> dict[tuple[str, str], float]:
        """(tenant, device) → health score: the mean of its channels' scores."""
        by: dict[tuple[str, str], list[float]] = {}
        for c in self.channels:
            by.setdefault((c.tenant, c.device), []).append(c.score)
        return {k: float(np.mean(v)) for k, v in by.items()}

    def health(self, device: str, *, tenant: str | None = None) -> float:
        scores = [s for (t, d), s in self.device_scores().items() if d == device and (tenant is None or t == tenant)]
        if len(scores) != 1:
            raise UnknownSeriesError(f"The report holds {len(scores)} devices named {device!r}; expected one.")
        return scores[0]

    def metrics(self) -> list[dict]:
        """Flat rows for a metrics sink: one per check per series, plus one health row per device."""
        out = [
            {"name": f"quality_{r.check.value}", "tenant": c.tenant, "device": c.device, "channel": c.channel,
             "passed": r.passed, "value": r.value, "threshold": r.threshold, "flagged": r.flagged}
            for c in self.channels for r in c.results
        ]
        out += [{"name": "quality_health", "tenant": t, "device": d, "channel": None, "value": s}
                for (t, d), s in self.device_scores().items()]
        return out


def is_quality_problem(report: QualityReport, device: str, channel: str, *, tenant: str | None = None) -> bool:
    """True when any check failed on this series: the drift detector should not call its change drift.

    Raises UnknownSeriesError when the report never saw the series, so a caller cannot mistake
    "not checked" for "clean".
    """
    return not report.channel(device, channel, tenant=tenant).passed


_FLAG_SCHEMA = pa.schema([
    ("row", pa.int64()), ("tenant", pa.string()), ("device", pa.string()), ("channel", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")), ("checks", pa.string()),
])


def flagged_rows(report: QualityReport) -> pa.Table:
    """The rows to quarantine: index into the checked table, its series and ts, and the checks that flagged it.

    `checks` is a comma-separated, sorted list of check names. Nothing is removed from anything:
    quarantine is a label on rows the lake keeps.
    """
    rows: list[np.ndarray] = []
    ts: list[np.ndarray] = []
    names: list[np.ndarray] = []
    keys: list[tuple[str, str, str, int]] = []
    for c in report.channels:
        for check, idx in c.flags.items():
            if len(idx):
                rows.append(idx)
                ts.append(c.flag_ts_us[check])
                names.append(np.full(len(idx), check.value, dtype=object))
                keys.append((*c.key, len(idx)))
    if not rows:
        return _FLAG_SCHEMA.empty_table()
    row = np.concatenate(rows)
    t = np.concatenate(ts)
    name = np.concatenate(names)
    tenant = np.concatenate([np.full(n, k[0], dtype=object) for *k, n in keys])
    device = np.concatenate([np.full(n, k[1], dtype=object) for *k, n in keys])
    chan = np.concatenate([np.full(n, k[2], dtype=object) for *k, n in keys])
    order = np.lexsort((name, row))
    row, t, name, tenant, device, chan = (a[order] for a in (row, t, name, tenant, device, chan))
    first = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    joined = [",".join(name[a:b]) for a, b in zip(first, np.r_[first[1:], len(row)])]
    cols = [row[first], tenant[first], device[first], chan[first], t[first], joined]
    return pa.Table.from_arrays([pa.array(v, type=f.type) for v, f in zip(cols, _FLAG_SCHEMA)], schema=_FLAG_SCHEMA)
