"""AlertStore: alerts in one SQLite file (WAL), deduplicated per key, rate-limited per device, acked and resolved.

    with AlertStore(data_dir / "alerts.db", rate_limit=RateLimit(max_new=10, interval_us=3_600_000_000)) as store:
        event = store.raise_(finding, now_us)     # AlertEvent raised|updated, or None: suppressed (counted)
        store.ack(event.alert.id, "ops@acme")     # AlertEvent acked
        store.resolve(event.alert.id, "ops@acme") # AlertEvent resolved
        store.resolve_quiet(now_us, after_us=...) # auto-resolve: AlertEvent resolved for each quiet open alert

Semantics
---------

Key. An alert is keyed by (tenant, device, channel, kind). At most one alert per key is LIVE (open or
acked; a partial unique index enforces it). A finding whose key has a live alert UPDATES it:
count + 1, last_at, and the finding's value, score, baseline and message; an acked alert stays acked.
Otherwise the finding opens a new alert, so a resolved alert followed by a finding is a new alert
with a new id (the old one keeps its history).

Rate limit. At most `max_new` alerts are opened per (tenant, device) in any `interval_us` of
processing time (a sliding window over the alerts' first_at). A finding that would open one more is
SUPPRESSED: no alert, but the device's `suppressed` counter (with the time, channel and kind of the
last one) goes up, and `list_suppressed()` / `stats()` show it, so a flapping device is visible and
never silently dropped. Updates of live alerts are never limited.

Transitions. open → acked (ack), open | acked → resolved (resolve); anything else is an
AlertTransitionError (409) naming the alert, its state and who moved it there; an unknown id is an
UnknownAlertError (404). `resolve_quiet(now_us, after_us)` resolves, as `AUTO_RESOLVER`, the open
alerts (and with include_acked=True the acked ones) whose last finding is `after_us` old or more.

Times. `now_us` is processing time the caller passes (µs since the epoch; the wall clock where it
is optional); `window_end_us` is the event time of the last finding.

Detector state. `save_detectors(name, state)` / `load_detectors(name)` keep a DetectorBank's state as
JSON in the same file, so a restarted hub resumes its baselines. Hazard: a snapshot is O(keys);
save it every minute or so, not per observation.

Threads. One connection behind a lock: the API's threadpool and the stream's sink may share a store;
every call is one short transaction. Blocking: call it off the event loop (run_in_threadpool).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from protocol import check_id

from .. import control_db

from .detectors import Finding
from .errors import AlertConfigError, AlertTransitionError, UnknownAlertError

__all__ = ["AUTO_RESOLVER", "STATES", "Alert", "AlertEvent", "AlertStore", "EventType", "RateLimit"]

STATES = ("open", "acked", "resolved")
AUTO_RESOLVER = "edgeloop:quiet"  # `resolved_by` of alerts resolve_quiet resolved
MAX_LIMIT = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL, device TEXT NOT NULL, channel TEXT NOT NULL, kind TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'acked', 'resolved')),
    first_at INTEGER NOT NULL, last_at INTEGER NOT NULL, count INTEGER NOT NULL,
    window_end_us INTEGER NOT NULL, value REAL NOT NULL, score REAL NOT NULL, baseline REAL NOT NULL,
    message TEXT NOT NULL,
    acked_by TEXT, acked_at INTEGER, resolved_by TEXT, resolved_at INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_live ON alerts (tenant, device, channel, kind) WHERE state != 'resolved';
CREATE INDEX IF NOT EXISTS alerts_opened ON alerts (tenant, device, first_at);
CREATE TABLE IF NOT EXISTS suppressed (
    tenant TEXT NOT NULL, device TEXT NOT NULL, count INTEGER NOT NULL, last_at INTEGER NOT NULL,
    last_channel TEXT NOT NULL, last_kind TEXT NOT NULL, PRIMARY KEY (tenant, device)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS detectors (name TEXT PRIMARY KEY, state TEXT NOT NULL, saved_at INTEGER NOT NULL);
"""


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class RateLimit:
    """At most `max_new` new alerts per device in any `interval_us` (processing time)."""

    max_new: int = 10
    interval_us: int = 3_600_000_000

    def __post_init__(self) -> None:
        for field, value in (("rate_limit.max_new", self.max_new), ("rate_limit.interval_us", self.interval_us)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AlertConfigError(field, value, "it must be an integer of at least 1")


class EventType(StrEnum):
    RAISED = "raised"
    UPDATED = "updated"
    ACKED = "acked"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class Alert:
    id: int
    tenant: str
    device: str
    channel: str
    kind: str
    state: str
    first_at: int
    last_at: int
    count: int
    window_end_us: int
    value: float
    score: float
    baseline: float
    message: str
    acked_by: str | None
    acked_at: int | None
    resolved_by: str | None
    resolved_at: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AlertEvent:
    """What a call changed: the alert as it is now, and when (processing time, µs)."""

    event: EventType
    alert: Alert
    at: int


def _by(by: object) -> str:
    if not isinstance(by, str) or not 1 <= len(by.strip()) <= 200:
        raise AlertConfigError("by", by, "it must be 1-200 characters naming who did it")
    return by.strip()


class AlertStore:
    def __init__(self, path: Path | str, *, rate_limit: RateLimit = RateLimit()) -> None:
        self.path = Path(path)
        self.rate_limit = rate_limit
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return control_db.immediate(self._db, self._lock)

    def _get(self, db: sqlite3.Connection, alert_id: int) -> Alert:
        if not isinstance(alert_id, int) or isinstance(alert_id, bool):
            raise UnknownAlertError(alert_id)
        row = db.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        if row is None:
            raise UnknownAlertError(alert_id)
        return Alert(**dict(row))

    def get(self, alert_id: int) -> Alert:
        with self._lock:
            return self._get(self._db, alert_id)

    def raise_(self, finding: Finding, now_us: int) -> AlertEvent | None:
        """Open an alert for the finding, or update its key's live one; None when the rate limit suppressed it."""
        check_id("tenant", finding.tenant)
        check_id("device", finding.device)
        f = finding
        key = (f.tenant, f.device, f.channel, str(f.kind))
        with self._tx() as db:
            live = db.execute("SELECT id FROM alerts WHERE tenant = ? AND device = ? AND channel = ? AND kind = ? "
                              "AND state != 'resolved'", key).fetchone()
            if live is not None:
                db.execute("UPDATE alerts SET count = count + 1, last_at = ?, window_end_us = ?, value = ?, score = ?, "
                           "baseline = ?, message = ? WHERE id = ?",
                           (now_us, f.window_end_us, f.value, f.score, f.baseline, f.message, live["id"]))
                return AlertEvent(EventType.UPDATED, self._get(db, live["id"]), now_us)
            (opened,) = db.execute("SELECT count(*) FROM alerts WHERE tenant = ? AND device = ? AND first_at > ?",
                                   (f.tenant, f.device, now_us - self.rate_limit.interval_us)).fetchone()
            if opened >= self.rate_limit.max_new:
                db.execute("INSERT INTO suppressed VALUES (?, ?, 1, ?, ?, ?) ON CONFLICT (tenant, device) DO UPDATE "
                           "SET count = count + 1, last_at = excluded.last_at, last_channel = excluded.last_channel, "
                           "last_kind = excluded.last_kind", (f.tenant, f.device, now_us, f.channel, str(f.kind)))
                return None
            cur = db.execute(
                "INSERT INTO alerts (tenant, device, channel, kind, state, first_at, last_at, count, window_end_us, "
                "value, score, baseline, message) VALUES (?, ?, ?, ?, 'open', ?, ?, 1, ?, ?, ?, ?, ?)",
                (*key, now_us, now_us, f.window_end_us, f.value, f.score, f.baseline, f.message))
            return AlertEvent(EventType.RAISED, self._get(db, int(cur.lastrowid or 0)), now_us)

    def ack(self, alert_id: int, by: str, now_us: int | None = None) -> AlertEvent:
        """open → acked: someone is on it. Findings keep updating it; it stays acked until resolved."""
        by, now_us = _by(by), _now_us() if now_us is None else now_us
        with self._tx() as db:
            a = self._get(db, alert_id)
            if a.state == "acked":
                raise AlertTransitionError(a.id, a.state, "acked", f"{a.acked_by} acked it already")
            if a.state == "resolved":
                raise AlertTransitionError(a.id, a.state, "acked", f"{a.resolved_by} resolved it; a new finding "
                                           "opens a new alert")
            db.execute("UPDATE alerts SET state = 'acked', acked_by = ?, acked_at = ? WHERE id = ?", (by, now_us, a.id))
            return AlertEvent(EventType.ACKED, self._get(db, a.id), now_us)

    def resolve(self, alert_id: int, by: str, now_us: int | None = None) -> AlertEvent:
        """open | acked → resolved; the next finding for its key opens a new alert."""
        by, now_us = _by(by), _now_us() if now_us is None else now_us
        with self._tx() as db:
            a = self._get(db, alert_id)
            if a.state == "resolved":
                raise AlertTransitionError(a.id, a.state, "resolved", f"{a.resolved_by} resolved it already")
            return self._resolve(db, a.id, by, now_us)

    def _resolve(self, db: sqlite3.Connection, alert_id: int, by: str, now_us: int) -> AlertEvent:
        db.execute("UPDATE alerts SET state = 'resolved', resolved_by = ?, resolved_at = ? WHERE id = ?",
                   (by, now_us, alert_id))
        return AlertEvent(EventType.RESOLVED, self._get(db, alert_id), now_us)

    def resolve_quiet(self, now_us: int, after_us: int, *, include_acked: bool = False) -> list[AlertEvent]:
        """Resolve (as AUTO_RESOLVER) the open alerts whose last finding is at least `after_us` old."""
        if not isinstance(after_us, int) or isinstance(after_us, bool) or after_us < 1:
            raise AlertConfigError("after_us", after_us, "it must be an integer of at least 1 (µs)")
        states = ("open", "acked") if include_acked else ("open",)
        with self._tx() as db:
            ids = [r["id"] for r in db.execute(
                f"SELECT id FROM alerts WHERE state IN ({', '.join('?' * len(states))}) AND last_at <= ? ORDER BY id",
                (*states, now_us - after_us))]
            return [self._resolve(db, i, AUTO_RESOLVER, now_us) for i in ids]

    def list(
        self, state: str | None = None, device: str | None = None, *, tenant: str | None = None, limit: int = 100,
    ) -> list[Alert]:
        """Alerts, the most recently active first; `device` alone matches that device name in every tenant."""
        if state is not None and state not in STATES:
            raise AlertConfigError("state", state, f"it must be one of {', '.join(STATES)}")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
            raise AlertConfigError("limit", limit, f"it must be an integer from 1 to {MAX_LIMIT}")
        where, args = self._where(state=state, tenant=tenant, device=device)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM alerts{where} ORDER BY last_at DESC, id DESC LIMIT ?",
                                    (*args, limit)).fetchall()
        return [Alert(**dict(r)) for r in rows]

    @staticmethod
    def _where(**filters: str | None) -> tuple[str, list[str]]:
        parts = [(f"{k} = ?", v) for k, v in filters.items() if v is not None]
        return (" WHERE " + " AND ".join(p for p, _ in parts) if parts else ""), [v for _, v in parts]

    def list_suppressed(self, device: str | None = None, *, tenant: str | None = None) -> list[dict[str, Any]]:
        """Per device: findings the rate limit kept from opening an alert, and the last one's time, channel, kind."""
        where, args = self._where(tenant=tenant, device=device)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM suppressed{where} ORDER BY tenant, device", args).fetchall()
        return [dict(r) for r in rows]

    def stats(self) -> dict[str, int]:
        """Alerts per state, and every finding the rate limit suppressed."""
        with self._lock:
            counts = dict(self._db.execute("SELECT state, count(*) FROM alerts GROUP BY state").fetchall())
            (suppressed,) = self._db.execute("SELECT coalesce(sum(count), 0) FROM suppressed").fetchone()
        return {**{s: counts.get(s, 0) for s in STATES}, "suppressed": suppressed}

    def save_detectors(self, name: str, state: dict[str, Any], now_us: int | None = None) -> None:
        """Keep a DetectorBank.to_state() under `name`, replacing the last one."""
        text = json.dumps(state, allow_nan=False, separators=(",", ":"))
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO detectors VALUES (?, ?, ?)",
                       (name, text, _now_us() if now_us is None else now_us))

    def load_detectors(self, name: str) -> dict[str, Any] | None:
        """The state last saved under `name`, or None (start a fresh DetectorBank)."""
        with self._lock:
            row = self._db.execute("SELECT state FROM detectors WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row["state"])
