"""The rollout state machine and its tables in control.db: start, tick, pause, resume, abort, status.

    pending ──tick──▶ canary ──▶ stage 1 … stage n-1 ──▶ complete (candidate promoted to champion)
                        │  ▲ pause/resume  │
                        ▼  │               ▼
                      paused            halted (gate failed, stage timeout, abort) ──▶ rolled_back

Who calls it: the API (start, pause, resume, abort, status, list), the twin store on every device
exchange (`assignment`), and the controller every tick (`tick`). Everything lives in the database,
so a new `Rollouts` on the same data dir (a hub restart) resumes exactly where the old one was;
every transition is a row in `rollout_events`. Each rollout is watched until `deadline_s` after
it ends, so its `converged` count stays live and devices still off target are then listed.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..control_db import FILENAME, connect
from ..registry import RegistryError, cohort_matches, parse_cohort
from .errors import PlanError, RolloutStateError, UnknownRolloutError
from . import progress
from .gates import GateResult, baseline, evaluate, halting, reporting_met
from .plan import RolloutPlan

if TYPE_CHECKING:
    from ..twin import TwinStore

log = logging.getLogger(__name__)


class State(enum.StrEnum):
    PENDING = "pending"
    CANARY = "canary"
    STAGE = "stage"
    PAUSED = "paused"
    HALTED = "halted"
    COMPLETE = "complete"
    ROLLED_BACK = "rolled_back"


RUNNING = (State.CANARY, State.STAGE)
ON_CANDIDATE = (State.CANARY, State.STAGE, State.PAUSED, State.COMPLETE)  # reached devices get the candidate
TERMINAL = (State.COMPLETE, State.ROLLED_BACK)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, cohort TEXT NOT NULL,
    champion TEXT, plan TEXT NOT NULL, state TEXT NOT NULL, stage INTEGER NOT NULL DEFAULT 0,
    stage_started_us INTEGER, paused_from TEXT, created_us INTEGER NOT NULL, ended_us INTEGER,
    reason TEXT, poll_interval_s REAL NOT NULL, snapshot TEXT, baseline TEXT, unconverged TEXT, watched INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout_id TEXT NOT NULL, tenant TEXT NOT NULL, device TEXT NOT NULL, stage INTEGER NOT NULL,
    rank INTEGER, assigned_at_us INTEGER, handed_at_us INTEGER,
    PRIMARY KEY (rollout_id, tenant, device)
);
CREATE INDEX IF NOT EXISTS rollout_devices_by_device ON rollout_devices (tenant, device);
CREATE TABLE IF NOT EXISTS rollout_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, rollout_id TEXT NOT NULL, at_us INTEGER NOT NULL,
    from_state TEXT, to_state TEXT NOT NULL, stage INTEGER, reason TEXT, details TEXT
);
"""


class Assignment(NamedTuple):
    """What a rollout wants one device to run (the twin store's step 2)."""

    version: str
    rollout_id: str
    model: str
    poll_interval_s: float | None  # None once the rollout ended: the twin's default applies


# An ended rollout (complete, rolled back) is still watched until its deadline, to count the
# devices that converge; re-reading every twin on every tick for that cost a 200-device fleet
# 2x in its exchange round (bench/bench_rollout.py), so ended ones are refreshed this often.
ENDED_WATCH_US = 5_000_000


def _rank(rollout_id: str, tenant: str, device: str) -> str:
    return hashlib.sha256(f"{rollout_id}/{tenant}/{device}".encode()).hexdigest()


def stage_sizes(percents: Iterable[float], n: int) -> list[int]:
    """How many of n devices each stage covers (cumulative): ceil(percent/100 × n)."""
    return [math.ceil(round(p * n / 100, 9)) for p in percents]


class Rollouts:
    def __init__(self, data_dir: Path, registry: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.clock = clock
        self._lock = threading.RLock()  # one connection, one lock; never held while calling the twin store
        self._tick_lock = threading.Lock()
        self._con = connect(Path(data_dir) / FILENAME)
        self._con.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def _now(self) -> int:
        return int(self.clock() * 1e6)

    # --- operator actions -----------------------------------------------------------------
    def start(self, plan: RolloutPlan) -> dict:
        """Record a pending rollout; the next tick snapshots the cohort and starts the canary."""
        try:
            self.registry.desired_model(plan.model, plan.version)
        except RegistryError as exc:
            raise PlanError("version", plan.version, f"the candidate cannot be sent to devices: {exc}") from exc
        champion = self.registry.alias_for(plan.model, "champion", parse_cohort(plan.cohort))
        if champion is None:
            raise PlanError("model", plan.model, f"it has no champion for cohort {plan.cohort!r} to fall back to; "
                                                 "promote a first version before rolling out another")
        if champion == plan.version:
            raise PlanError("version", plan.version, f"it is already the champion for cohort {plan.cohort!r}")
        with self._lock:
            busy = self._con.execute(
                "SELECT id, state FROM rollouts WHERE model = ? AND state IN (?, ?, ?, ?)",
                (plan.model, State.PENDING, State.CANARY, State.STAGE, State.PAUSED)).fetchone()
            if busy is not None:
                raise RolloutStateError(f"Rollout {busy['id']} of {plan.model} is {busy['state']}; "
                                        "let it finish or abort it before starting another.")
            n = self._con.execute("SELECT COUNT(*) FROM rollouts WHERE model = ? AND version = ?",
                                  (plan.model, plan.version)).fetchone()[0]
            rid, now = f"{plan.model}-{plan.version}-{n + 1}", self._now()
            self._con.execute("BEGIN IMMEDIATE")
            try:
                self._con.execute(
                    "INSERT INTO rollouts (id, model, version, cohort, champion, plan, state, created_us, poll_interval_s)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (rid, plan.model, plan.version, plan.cohort, champion, json.dumps(plan.to_dict()),
                     State.PENDING, now, plan.poll_interval_s))
                self._event(rid, now, None, State.PENDING, 0, "started", {"champion": champion})
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
        log.info("rollouts: %s started (%s %s over champion %s, cohort %s)", rid, plan.model, plan.version,
                 champion, plan.cohort)
        return self.status(rid)

    def pause(self, rollout_id: str) -> dict:
        row = self._row(rollout_id)
        if row["state"] not in RUNNING:
            raise RolloutStateError(f"Rollout {rollout_id} is {row['state']}; only a canary or stage can be paused.")
        self._transition(row, State.PAUSED, "paused by the operator", paused_from=row["state"])
        return self.status(rollout_id)

    def resume(self, rollout_id: str) -> dict:
        row = self._row(rollout_id)
        if row["state"] != State.PAUSED:
            raise RolloutStateError(f"Rollout {rollout_id} is {row['state']}, not paused.")
        # The bake restarts: what the devices did while nobody was judging them is not a bake.
        self._transition(row, State(row["paused_from"]), "resumed by the operator", stage_started_us=self._now())
        return self.status(rollout_id)

    def abort(self, rollout_id: str, reason: str = "aborted by the operator") -> dict:
        row = self._row(rollout_id)
        if row["state"] in (State.HALTED, *TERMINAL):
            raise RolloutStateError(f"Rollout {rollout_id} is {row['state']} already; there is nothing to abort.")
        self._transition(row, State.HALTED, reason or "aborted by the operator", ended_us=self._now())
        return self.status(rollout_id)

    # --- reading ----------------------------------------------------------------------------
    def _row(self, rollout_id: str) -> dict:
        with self._lock:
            row = self._con.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        if row is None:
            raise UnknownRolloutError(rollout_id)
        return dict(row)

    def list(self) -> list[dict]:
        """Every rollout, newest first, without its events."""
        with self._lock:
            ids = [r[0] for r in self._con.execute("SELECT id FROM rollouts ORDER BY created_us DESC, rowid DESC")]
        return [self.status(i, events=False) for i in ids]

    def status(self, rollout_id: str, *, events: bool = True) -> dict:
        row = self._row(rollout_id)
        plan = RolloutPlan.from_dict(json.loads(row["plan"]))
        snap = json.loads(row["snapshot"] or "{}")
        now = self._now()
        out = {
            "id": row["id"], "model": row["model"], "version": row["version"], "champion": row["champion"],
            "cohort": row["cohort"], "state": row["state"], "stage": row["stage"],
            "stage_percent": plan.stages[row["stage"]].percent, "stage_count": len(plan.stages),
            "time_in_stage_s": None if row["stage_started_us"] is None or row["state"] in TERMINAL
            else (now - row["stage_started_us"]) / 1e6,
            "created_at_us": row["created_us"], "ended_at_us": row["ended_us"], "reason": row["reason"],
            "devices": snap.get("devices", 0), "converged": snap.get("converged", 0),
            "stages": snap.get("stages") or [{"stage": i, "percent": s.percent, "bake_s": s.bake_s, "assigned": 0,
                                              "reporting": 0, "on_candidate": 0, "failed": 0}
                                             for i, s in enumerate(plan.stages)],
            "gates": snap.get("gates", []), "evaluated_at_us": snap.get("at_us"),
            "unconverged": None if row["unconverged"] is None else json.loads(row["unconverged"]),
            "plan": plan.to_dict(),
        }
        if events:
            with self._lock:
                out["events"] = [
                    {"at_us": e["at_us"], "from": e["from_state"], "to": e["to_state"], "stage": e["stage"],
                     "reason": e["reason"], "details": json.loads(e["details"] or "{}")}
                    for e in self._con.execute("SELECT * FROM rollout_events WHERE rollout_id = ? ORDER BY seq",
                                               (rollout_id,))]
        return out

    # --- the twin store's question ------------------------------------------------------------
    def assignment(self, tenant: str, device: str, tags: dict[str, str]) -> Assignment | None:
        """The newest rollout that has reached this device decides; devices first seen mid-rollout
        join its last stage."""
        with self._lock:
            for r in self._con.execute("SELECT id, cohort, plan, stage FROM rollouts WHERE state IN (?, ?, ?)",
                                       (State.CANARY, State.STAGE, State.PAUSED)).fetchall():
                if cohort_matches(r["cohort"], tags) and self._con.execute(
                        "SELECT 1 FROM rollout_devices WHERE rollout_id = ? AND tenant = ? AND device = ?",
                        (r["id"], tenant, device)).fetchone() is None:
                    last = len(json.loads(r["plan"])["stages"]) - 1
                    self._con.execute(
                        "INSERT INTO rollout_devices (rollout_id, tenant, device, stage, assigned_at_us)"
                        " VALUES (?, ?, ?, ?, ?)", (r["id"], tenant, device, last,
                                                    self._now() if r["stage"] == last else None))
            rows = self._con.execute(
                "SELECT r.*, d.stage AS dstage, d.handed_at_us FROM rollout_devices d JOIN rollouts r"
                " ON r.id = d.rollout_id WHERE d.tenant = ? AND d.device = ? AND r.state != ?"
                " ORDER BY r.created_us DESC, r.rowid DESC", (tenant, device, State.PENDING)).fetchall()
            for r in rows:
                if r["dstage"] > r["stage"] and r["state"] != State.COMPLETE:
                    continue  # not reached yet: an older rollout (or the rules) decide
                poll = None if r["state"] in TERMINAL else r["poll_interval_s"]
                if r["state"] in ON_CANDIDATE:
                    if r["handed_at_us"] is None:
                        self._con.execute("UPDATE rollout_devices SET handed_at_us = ? WHERE rollout_id = ?"
                                          " AND tenant = ? AND device = ?", (self._now(), r["id"], tenant, device))
                    return Assignment(r["version"], r["id"], r["model"], poll)
                if r["champion"] is not None:
                    return Assignment(r["champion"], r["id"], r["model"], poll)
        return None

    # --- the controller's tick ----------------------------------------------------------------
    def tick(self, twins: "TwinStore") -> list[dict]:
        """Advance every rollout still watched (a paused one only has its counts refreshed); returns
        the transitions made."""
        with self._tick_lock:
            with self._lock:
                rows = [dict(r) for r in self._con.execute("SELECT * FROM rollouts WHERE watched = 1 ORDER BY created_us")]
            out: list[dict] = []
            now = self._now()
            for row in rows:
                if row["state"] in TERMINAL and now - json.loads(row["snapshot"] or "{}").get("at_us", 0) < ENDED_WATCH_US:
                    continue  # an ended rollout only counts convergence: every few seconds is enough
                try:
                    out.extend(self._advance(row, twins))
                except RolloutStateError as exc:  # an operator acted meanwhile; the next tick sees it
                    log.info("rollouts: %s", exc)
            return out

    def _advance(self, row: dict, twins: "TwinStore") -> list[dict]:
        now, rid, state = self._now(), row["id"], State(row["state"])
        plan = RolloutPlan.from_dict(json.loads(row["plan"]))
        if state == State.PENDING:  # begin, then judge the canary like any later tick would
            begun = self._begin(row, plan, twins, now)
            return [begun, *self._advance(self._row(rid), twins)]
        with self._lock:
            devs = [dict(d) for d in self._con.execute("SELECT * FROM rollout_devices WHERE rollout_id = ?", (rid,))]
        keys = {(d["tenant"], d["device"]) for d in devs} | set(twins.devices(row["cohort"]))
        seen = twins.seen(keys)
        reports = progress.without_stale_failures(devs, twins.reports(keys), seen)
        near = {(d["tenant"], d["device"]) for d in devs if progress.reached(row, d)}
        results = evaluate(plan.gates, model=row["model"], candidate=row["version"], champion=row["champion"],
                           assigned=[reports.get(k) for k in sorted(near)],
                           others=[reports.get(k) for k in sorted(keys - near)],
                           start=json.loads(row["baseline"] or "{}")) if state in RUNNING else None
        if results is not None and plan.gates.min_reporting is not None:
            results.append(stage_reporting(plan, row, devs, reports))
        moves = self._decide(row, plan, results, devs, reports, seen, now)
        row = self._row(rid) if moves else row
        old = json.loads(row["snapshot"] or "{}")
        snap = {"at_us": now, "devices": len(devs), "stages": progress.stage_counts(row, plan, devs, reports),
                "converged": len(devs) - len(progress.off_target(row, devs, reports, seen)),
                "gates": _dicts(results) if results is not None else old.get("gates", [])}
        with self._lock:
            self._con.execute("UPDATE rollouts SET snapshot = ? WHERE id = ?", (json.dumps(snap), rid))
        return moves

    def _decide(self, row: dict, plan: RolloutPlan, results: list[GateResult] | None, devs: list[dict],
                reports: dict, seen: dict, now: int) -> list[dict]:
        state, in_stage_s = row["state"], (now - (row["stage_started_us"] or now)) / 1e6
        if state in RUNNING:
            assert results is not None
            bad = halting(results)
            if bad:
                why = "; ".join(f"gate {g.name} failed: {g.value} against {g.threshold} ({g.detail})" for g in bad)
                return [self._transition(row, State.HALTED, why, ended_us=now, details={"gates": _dicts(results)})]
            if reporting_met(results) and in_stage_s >= plan.stages[row["stage"]].bake_s:
                return [self._next_stage(row, plan, results, now)]
            if not reporting_met(results) and in_stage_s >= plan.stage_timeout_s:
                g = next(g for g in results if g.name == "min_reporting")
                return [self._transition(row, State.HALTED, f"stage {row['stage']} gathered {g.value} reporting "
                                         f"device(s) of {g.threshold} needed in {plan.stage_timeout_s:g}s",
                                         ended_us=now, details={"gates": _dicts(results)})]
            return []
        deadline_over = row["ended_us"] is not None and now >= row["ended_us"] + plan.deadline_s * 1e6
        if state == State.HALTED:
            away = progress.still_away(row, devs, reports, seen)
            if away and not deadline_over:
                return []
            why = (f"every device that took {row['version']} runs {row['champion']} again" if not away
                   else f"the deadline of {plan.deadline_s:g}s passed with {len(away)} device(s) unconverged")
            return [self._transition(row, State.ROLLED_BACK, why, unconverged=away if deadline_over else None,
                                     watched=0 if deadline_over else 1, details={"unconverged": away})]
        if deadline_over:  # complete or rolled back: the watch ends; whoever is still off target is listed
            with self._lock:
                self._con.execute("UPDATE rollouts SET watched = 0, unconverged = ? WHERE id = ?",
                                  (json.dumps(progress.off_target(row, devs, reports, seen)), row["id"]))
        return []

    def _begin(self, row: dict, plan: RolloutPlan, twins: "TwinStore", now: int) -> dict:
        """Snapshot the cohort, order it by hash, give every device the first stage that covers it."""
        rid = row["id"]
        ordered = sorted(twins.devices(row["cohort"]), key=lambda k: _rank(rid, *k))
        if not ordered:
            return self._transition(row, State.HALTED, f"the hub knows no device of cohort {row['cohort']!r}",
                                    ended_us=now)
        sizes = stage_sizes((s.percent for s in plan.stages), len(ordered))
        start = baseline(twins.reports(ordered).values(), model=row["model"], champion=row["champion"],
                         min_windows=plan.gates.min_windows)
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                for i, (tenant, device) in enumerate(ordered):
                    stage = next(k for k, size in enumerate(sizes) if i < size)
                    self._con.execute(
                        "INSERT OR REPLACE INTO rollout_devices (rollout_id, tenant, device, stage, rank, assigned_at_us)"
                        " VALUES (?, ?, ?, ?, ?, ?)", (rid, tenant, device, stage, i, now if stage == 0 else None))
                self._con.execute("UPDATE rollouts SET baseline = ? WHERE id = ?", (json.dumps(start), rid))
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
        return self._transition(row, State.CANARY, f"canary on {sizes[0]} of {len(ordered)} device(s)",
                                stage=0, stage_started_us=now, details={"devices": len(ordered), "stage_sizes": sizes})

    def _next_stage(self, row: dict, plan: RolloutPlan, results: list[GateResult], now: int) -> dict:
        stage, details = row["stage"], {"gates": _dicts(results)}
        if stage == len(plan.stages) - 1:
            try:
                self.registry.promote(row["model"], row["version"], alias="champion", cohort=row["cohort"])
                details["promoted"] = {"alias": "champion", "cohort": row["cohort"], "version": row["version"]}
                why = f"every stage passed; {row['version']} is the champion of cohort {row['cohort']!r}"
            except RegistryError as exc:  # the devices keep the candidate through the rollout either way
                details["promote_error"] = str(exc)
                why = f"every stage passed, but promoting {row['version']} failed: {exc}"
            return self._transition(row, State.COMPLETE, why, ended_us=now, details=details)
        with self._lock:
            self._con.execute("UPDATE rollout_devices SET assigned_at_us = ? WHERE rollout_id = ? AND stage = ?"
                              " AND assigned_at_us IS NULL", (now, row["id"], stage + 1))
        return self._transition(row, State.STAGE, f"stage {stage} passed; stage {stage + 1} at "
                                f"{plan.stages[stage + 1].percent:g}%", stage=stage + 1, stage_started_us=now,
                                details=details)

    # --- bookkeeping ------------------------------------------------------------------------------
    def _transition(self, row: dict, to: State, reason: str, *, details: dict | None = None, **cols: Any) -> dict:
        """Change state if nobody else did meanwhile (an operator action racing a tick), and log the event."""
        now = self._now()
        cols = {"state": str(to), "reason": reason, **cols}
        if "unconverged" in cols:
            cols["unconverged"] = None if cols["unconverged"] is None else json.dumps(cols["unconverged"])
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                cur = self._con.execute(
                    f"UPDATE rollouts SET {', '.join(f'{k} = ?' for k in cols)} WHERE id = ? AND state = ?",
                    (*cols.values(), row["id"], row["state"]))
                if cur.rowcount != 1:
                    self._con.execute("ROLLBACK")
                    raise RolloutStateError(f"Rollout {row['id']} changed state meanwhile; try again.")
                stage = cols.get("stage", row["stage"])
                self._event(row["id"], now, row["state"], to, stage, reason, details or {})
                self._con.execute("COMMIT")
            except RolloutStateError:
                raise
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
        log.info("rollouts: %s %s -> %s (stage %s): %s", row["id"], row["state"], to, stage, reason)
        return {"rollout": row["id"], "from": row["state"], "to": str(to), "stage": stage, "reason": reason}

    def _event(self, rid: str, at: int, frm: str | None, to: str, stage: int, reason: str, details: dict) -> None:
        self._con.execute("INSERT INTO rollout_events (rollout_id, at_us, from_state, to_state, stage, reason, details)"
                          " VALUES (?, ?, ?, ?, ?, ?, ?)", (rid, at, frm, str(to), stage, reason, json.dumps(details)))


def stage_reporting(plan: RolloutPlan, row: dict, devs: list[dict], reports: dict) -> GateResult:
    """`min_reporting` over the stage's own new devices too: without it, a stage whose bake is
    shorter than a device's poll passed on the earlier stages' evidence (bench/bench_rollout.py
    saw stages pass with 11 of 50 devices on the candidate)."""
    mine = [d for d in devs if d["stage"] == row["stage"]]
    need = min(plan.gates.min_reporting, len(mine))
    have = sum(progress.figures(reports.get((d["tenant"], d["device"])), row["model"], row["version"],
                                plan.gates.min_windows) is not None for d in mine)
    return GateResult("min_reporting_stage", have, need, have >= need,
                      f"{have} of the {len(mine)} device(s) new in stage {row['stage']} report on {row['version']}; "
                      f"{need} needed")


def _dicts(results: list[GateResult] | None) -> list[dict]:
    return [g.to_dict() for g in results or []]
