"""The durable DAG runner: runs and their steps in control.db, executed in order, resumable.

    start     → pending (every step pending; nothing runs)
    run       pending → running → done | failed | awaiting_approval
    resume    failed → pending (its failed step again, then the rest) → run
    approve   awaiting_approval → pending (`run` continues it)
    reject    awaiting_approval → rejected (the steps left are skipped)

Who calls it: the hub (a drift trigger or a due schedule starts a run; a worker thread runs it),
the API (list, show, approve, reject, resume) and tests. `run` executes the steps in the
caller's thread, one at a time, in the pipeline's topological order; it claims the run first
(pending → running in one UPDATE), so two callers never execute one run at once.

Durability: every transition of a run and of each step is committed before the next begins,
and a done step's outputs are what later steps and resumes read, so a new runner on the same
data dir (a hub restart) continues where the old one stopped. Hazard: a process that dies
inside a step leaves the run `running`; `recover()` (call it once when the hub starts, before
any worker) marks such runs failed, and `resume` then runs the interrupted step again.

Idempotency: `start` with a `key` returns the existing run of that pipeline and key, if any,
instead of starting a second one (one drift trigger, one retraining).
"""

from __future__ import annotations

import json
import sqlite3
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .. import control_db
from ..control_db import FILENAME, connect
from .dag import Pipeline, Schedule, Step, StepContext
from .errors import (
    PipelineDefinitionError, PipelineError, RunStateError, StepError, UnknownPipelineError, UnknownRunError,
)

log = logging.getLogger(__name__)

RUN_STATES = ("pending", "running", "awaiting_approval", "done", "failed", "rejected")
STEP_STATES = ("pending", "running", "done", "failed", "awaiting_approval", "skipped")
MAX_ERROR_CHARS = 4000  # a traceback's last lines; the whole of it goes to the log
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pipeline_runs (
    id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, key TEXT, params TEXT NOT NULL, state TEXT NOT NULL,
    error TEXT, created_us INTEGER NOT NULL, started_us INTEGER, finished_us INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS pipeline_runs_by_key ON pipeline_runs (pipeline, key) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS pipeline_steps (
    run_id TEXT NOT NULL, name TEXT NOT NULL, position INTEGER NOT NULL, deps TEXT NOT NULL,
    approval INTEGER NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    inputs TEXT, outputs TEXT, error TEXT, started_us INTEGER, finished_us INTEGER,
    approved_by TEXT, approved_us INTEGER, PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS pipeline_schedules (
    name TEXT PRIMARY KEY, pipeline TEXT NOT NULL, every_s REAL NOT NULL, params TEXT NOT NULL,
    last_run_us INTEGER
);
"""


class PipelineRunner:
    def __init__(self, data_dir: Path, pipelines: Iterable[Pipeline] = (), *,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.data_dir = Path(data_dir)
        self.pipelines: dict[str, Pipeline] = {}
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.RLock()  # one connection, one lock; never held while a step runs
        self._db = connect(self.data_dir / FILENAME)
        self._db.executescript(_SCHEMA)
        for p in pipelines:
            self.add(p)

    def add(self, pipeline: Pipeline) -> None:
        """Make `pipeline` runnable by name (a later one of the same name replaces it)."""
        self.pipelines[pipeline.name] = pipeline

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- starting ---------------------------------------------------------------------------
    def start(self, pipeline: str, params: Mapping[str, Any] | None = None, *, key: str | None = None) -> str:
        """Record a pending run (every step pending) and return its id; nothing runs yet.

        With `key`, a run of this pipeline with this key already recorded is returned instead,
        whatever its state: the same trigger is the same run.
        """
        p = self._pipeline(pipeline)
        params_json = _json("params", dict(params or {}), PipelineDefinitionError)
        now = self._now_us()
        with self._tx():
            if key is not None:
                row = self._db.execute("SELECT id FROM pipeline_runs WHERE pipeline=? AND key=?",
                                       (pipeline, key)).fetchone()
                if row is not None:
                    return row["id"]
            n = self._db.execute("SELECT COUNT(*) FROM pipeline_runs WHERE pipeline=?", (pipeline,)).fetchone()[0]
            run_id = f"{pipeline}-{n + 1}"
            self._db.execute("INSERT INTO pipeline_runs (id, pipeline, key, params, state, created_us) "
                             "VALUES (?,?,?,?,?,?)", (run_id, pipeline, key, params_json, "pending", now))
            self._db.executemany(
                "INSERT INTO pipeline_steps (run_id, name, position, deps, approval, status) VALUES (?,?,?,?,?,?)",
                [(run_id, name, i, json.dumps(list(p.step(name).deps)), int(p.step(name).approval), "pending")
                 for i, name in enumerate(p.order)])
        log.info("pipelines: %s started (key %s)", run_id, key)
        return run_id

    # --- running ------------------------------------------------------------------------------
    def run(self, run_id: str) -> dict:
        """Execute a pending run's steps until it is done, fails, or waits for approval; its record.

        A run in any other state is left as it is (a done run is never re-run; a failed one needs
        `resume`, one awaiting approval needs `approve`), and its record returned.
        """
        row = self._run_row(run_id)
        pipeline = self._pipeline(row["pipeline"])
        now = self._now_us()
        with self._tx():
            claimed = self._db.execute(
                "UPDATE pipeline_runs SET state='running', error=NULL, started_us=COALESCE(started_us, ?) "
                "WHERE id=? AND state='pending'", (now, run_id)).rowcount
        if not claimed:
            return self.get(run_id)
        params = json.loads(row["params"])
        steps = {s["name"]: s for s in self._step_rows(run_id)}
        missing = sorted(set(steps) ^ set(pipeline.order))
        if missing:
            self._finish(run_id, "failed", f"The run's steps and pipeline {pipeline.name!r} differ in {missing!r}; "
                                           "the pipeline changed since the run started.")
            return self.get(run_id)
        for name in pipeline.order:
            status = steps[name]["status"]
            if status in ("done", "skipped"):
                continue
            step = pipeline.step(name)
            try:
                skip = step.when is not None and not step.when(params)
            except Exception as exc:  # a broken predicate fails its step like a broken fn
                self._set_step(run_id, name, status="failed", error=_error_text(exc), finished_us=self._now_us())
                self._finish(run_id, "failed", f"Step {name!r}'s condition failed: {type(exc).__name__}: {exc}")
                return self.get(run_id)
            if skip:
                self._set_step(run_id, name, status="skipped", finished_us=self._now_us())
                continue
            if step.approval and steps[name]["approved_by"] is None:
                self._set_step(run_id, name, status="awaiting_approval")
                self._set_run(run_id, state="awaiting_approval")
                log.info("pipelines: %s waits for approval at step %s", run_id, name)
                return self.get(run_id)
            done = {n: json.loads(s["outputs"]) for n, s in self._steps_by_name(run_id).items()
                    if s["status"] == "done"}
            inputs = {d: done[d] for d in step.deps if d in done}
            if not self._execute(run_id, row["pipeline"], step, params, inputs, steps[name]):
                return self.get(run_id)
        self._finish(run_id, "done", None)
        log.info("pipelines: %s done", run_id)
        return self.get(run_id)

    def _execute(self, run_id: str, pipeline: str, step: Step, params: dict, inputs: dict, row: Mapping) -> bool:
        """Attempts of one step, each recorded; True when it ended done."""
        inputs_json = _json(f"inputs of step {step.name!r}", inputs)
        workdir = self.data_dir / "pipelines" / run_id / step.name
        attempts = int(row["attempts"])
        for i in range(step.retries + 1):
            if i:
                self._sleep(step.retry_delay_s)
            attempts += 1
            self._set_step(run_id, step.name, status="running", attempts=attempts, inputs=inputs_json,
                           started_us=self._now_us(), finished_us=None)
            ctx = StepContext(run_id=run_id, pipeline=pipeline, step=step.name, attempt=attempts,
                              params=params, workdir=workdir, approved_by=row["approved_by"])
            try:
                workdir.mkdir(parents=True, exist_ok=True)
                outputs = {} if step.fn is None else step.fn(ctx, inputs)
                if not isinstance(outputs, dict):
                    raise StepError(f"Step {step.name!r} returned {type(outputs).__name__}, not a dict of outputs.")
                if step.approval:
                    outputs = {"approved_by": row["approved_by"], "approved_at": _iso(row["approved_us"]), **outputs}
                outputs_json = _json(f"outputs of step {step.name!r}", outputs)
            except Exception as exc:  # a step's failure is data: recorded, retried, never raised to the caller
                error = _error_text(exc)
                log.warning("pipelines: %s step %s attempt %d failed: %s", run_id, step.name, attempts,
                            error.splitlines()[0] if error else "")
                found = exc.outputs if isinstance(exc, StepError) and exc.outputs is not None else None
                self._set_step(run_id, step.name, status="failed", error=error, finished_us=self._now_us(),
                               outputs=None if found is None else _json_or_none(found))
                if isinstance(exc, StepError) or i == step.retries:
                    self._finish(run_id, "failed", f"Step {step.name!r} failed after {attempts} attempt(s): "
                                                   f"{str(exc) or type(exc).__name__}")
                    return False
                continue
            self._set_step(run_id, step.name, status="done", outputs=outputs_json, error=None,
                           finished_us=self._now_us())
            return True
        return False  # unreachable: the loop returns on the last attempt

    # --- operator actions ---------------------------------------------------------------------
    def resume(self, run_id: str) -> dict:
        """Put a failed run's failed steps back to pending and run it; done steps are not run again."""
        with self._tx():
            row = self._run_row(run_id)
            if row["state"] != "failed":
                raise RunStateError(f"Run {run_id} is {row['state']}; only a failed run can be resumed"
                                    + (" (approve or reject it)." if row["state"] == "awaiting_approval" else "."))
            self._db.execute("UPDATE pipeline_steps SET status='pending' WHERE run_id=? AND status IN "
                             "('failed', 'running')", (run_id,))
            self._db.execute("UPDATE pipeline_runs SET state='pending', finished_us=NULL WHERE id=?", (run_id,))
        log.info("pipelines: %s resumed", run_id)
        return self.run(run_id)

    def approve(self, run_id: str, by: str) -> dict:
        """Approve the step the run waits at; the run is pending again (`run` continues it)."""
        step = self._awaiting(run_id, by)
        with self._tx():
            self._db.execute("UPDATE pipeline_steps SET status='pending', approved_by=?, approved_us=? "
                             "WHERE run_id=? AND name=?", (by, self._now_us(), run_id, step))
            self._db.execute("UPDATE pipeline_runs SET state='pending' WHERE id=?", (run_id,))
        log.info("pipelines: %s step %s approved by %s", run_id, step, by)
        return self.get(run_id)

    def reject(self, run_id: str, by: str, reason: str = "") -> dict:
        """Reject the step the run waits at: it fails, the steps after it are skipped, the run ends rejected."""
        step = self._awaiting(run_id, by)
        why = f"Rejected by {by}" + (f": {reason}" if reason else ".")
        now = self._now_us()
        with self._tx():
            self._db.execute("UPDATE pipeline_steps SET status='failed', error=?, approved_by=?, finished_us=? "
                             "WHERE run_id=? AND name=?", (why, by, now, run_id, step))
            self._db.execute("UPDATE pipeline_steps SET status='skipped', finished_us=? "
                             "WHERE run_id=? AND status='pending'", (now, run_id))
            self._db.execute("UPDATE pipeline_runs SET state='rejected', error=?, finished_us=? WHERE id=?",
                             (why, now, run_id))
        log.info("pipelines: %s rejected at step %s by %s", run_id, step, by)
        return self.get(run_id)

    def recover(self) -> list[str]:
        """Mark runs a dead process left `running` as failed (their step: interrupted); their ids.

        Call once at hub start, before anything runs: a run that is really running in another
        process sharing the data dir would be marked too.
        """
        now = self._now_us()
        with self._tx():
            ids = [r[0] for r in self._db.execute("SELECT id FROM pipeline_runs WHERE state='running'")]
            for run_id in ids:
                self._db.execute("UPDATE pipeline_steps SET status='failed', finished_us=?, error="
                                 "'Interrupted: the hub stopped during this step.' WHERE run_id=? AND status='running'",
                                 (now, run_id))
                self._db.execute("UPDATE pipeline_runs SET state='failed', finished_us=?, error="
                                 "'Interrupted: the hub stopped during the run; resume it.' WHERE id=?", (now, run_id))
        for run_id in ids:
            log.warning("pipelines: %s was interrupted by a stop; marked failed, resume it", run_id)
        return ids

    # --- schedules ------------------------------------------------------------------------------
    def add_schedule(self, schedule: Schedule) -> Schedule:
        """Record (or update) a schedule, keeping its persisted last run; it, with that last run."""
        self._pipeline(schedule.pipeline)
        with self._tx():
            self._db.execute(
                "INSERT INTO pipeline_schedules (name, pipeline, every_s, params) VALUES (?,?,?,?) "
                "ON CONFLICT (name) DO UPDATE SET pipeline=excluded.pipeline, every_s=excluded.every_s, "
                "params=excluded.params",
                (schedule.name, schedule.pipeline, schedule.every.total_seconds(),
                 _json("schedule params", dict(schedule.params), PipelineDefinitionError)))
        return next(s for s in self.schedules() if s.name == schedule.name)

    def schedules(self) -> list[Schedule]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM pipeline_schedules ORDER BY name").fetchall()
        return [Schedule(r["pipeline"], timedelta(seconds=r["every_s"]), json.loads(r["params"]), name=r["name"],
                         last_run=None if r["last_run_us"] is None
                         else _EPOCH + timedelta(microseconds=r["last_run_us"])) for r in rows]

    def run_due(self, now: datetime | None = None) -> list[str]:
        """Start a run of each due schedule and record `now` as its last run; the run ids (not run yet).

        The run's key names the schedule and the last run it follows, so two hub processes that
        find the same schedule due start one run between them.
        """
        now = now or _EPOCH + timedelta(microseconds=self._now_us())
        started = []
        for s in self.schedules():
            if not s.due(now):
                continue
            after = "never" if s.last_run is None else s.last_run.isoformat(timespec="microseconds")
            started.append(self.start(s.pipeline, s.params, key=f"schedule:{s.name}:after:{after}"))
            with self._tx():
                self._db.execute("UPDATE pipeline_schedules SET last_run_us=? WHERE name=?",
                                 (_us(now), s.name))
        return started

    # --- reading ------------------------------------------------------------------------------
    def get(self, run_id: str) -> dict:
        """One run with every step: status, attempts, inputs, outputs, error, times, approval."""
        row = self._run_row(run_id)
        return {**_run_record(row), "steps": [_step_record(s) for s in self._step_rows(run_id)]}

    def pending(self) -> list[str]:
        """Runs waiting to be executed (started, approved, or resumed elsewhere), oldest first."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT id FROM pipeline_runs WHERE state='pending' ORDER BY created_us, rowid")]

    def list(self, *, pipeline: str | None = None, state: str | None = None, limit: int = 100) -> list[dict]:
        """Runs, newest first, without their steps' inputs and outputs (each step's status only)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM pipeline_runs WHERE (?1 IS NULL OR pipeline=?1) AND (?2 IS NULL OR state=?2) "
                "ORDER BY created_us DESC, rowid DESC LIMIT ?3", (pipeline, state, limit)).fetchall()
            steps = self._db.execute(
                "SELECT run_id, name, status FROM pipeline_steps WHERE run_id IN (%s) ORDER BY position"
                % ",".join("?" * len(rows)), [r["id"] for r in rows]).fetchall() if rows else []
        return [{**_run_record(r), "steps": {s["name"]: s["status"] for s in steps if s["run_id"] == r["id"]}}
                for r in rows]

    # --- internals ------------------------------------------------------------------------------
    def _pipeline(self, name: str) -> Pipeline:
        try:
            return self.pipelines[name]
        except KeyError:
            raise UnknownPipelineError(name, list(self.pipelines)) from None

    def _awaiting(self, run_id: str, by: str) -> str:
        if not isinstance(by, str) or not by.strip():
            raise RunStateError(f"An approval of run {run_id} needs who gives it; got {by!r}.")
        row = self._run_row(run_id)
        if row["state"] != "awaiting_approval":
            raise RunStateError(f"Run {run_id} is {row['state']}, not awaiting approval.")
        with self._lock:
            step = self._db.execute("SELECT name FROM pipeline_steps WHERE run_id=? AND status='awaiting_approval'",
                                    (run_id,)).fetchone()
        if step is None:
            raise RunStateError(f"Run {run_id} is awaiting approval but no step of it is.")
        return step["name"]

    def _run_row(self, run_id: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT * FROM pipeline_runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise UnknownRunError(run_id)
        return row

    def _step_rows(self, run_id: str) -> list[Any]:
        with self._lock:
            return self._db.execute("SELECT * FROM pipeline_steps WHERE run_id=? ORDER BY position",
                                    (run_id,)).fetchall()

    def _steps_by_name(self, run_id: str) -> dict[str, Any]:
        return {s["name"]: s for s in self._step_rows(run_id)}

    def _set_step(self, run_id: str, name: str, **values: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in values)
        with self._tx():
            self._db.execute(f"UPDATE pipeline_steps SET {cols} WHERE run_id=? AND name=?",
                             (*values.values(), run_id, name))

    def _set_run(self, run_id: str, **values: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in values)
        with self._tx():
            self._db.execute(f"UPDATE pipeline_runs SET {cols} WHERE id=?", (*values.values(), run_id))

    def _finish(self, run_id: str, state: str, error: str | None) -> None:
        self._set_run(run_id, state=state, error=error, finished_us=self._now_us())

    def _now_us(self) -> int:
        return int(round(self._clock() * 1_000_000))

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return control_db.immediate(self._db, self._lock)


def _json(what: str, value: object, error: type[PipelineError] = StepError) -> str:
    try:
        return json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise error(f"The {what} cannot be stored as JSON: {exc}.") from exc


def _json_or_none(value: object) -> str | None:
    try:
        return json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError):
        return None


def _error_text(exc: BaseException) -> str:
    """`Type: message` first (what the API and CLI show), then the traceback's last lines."""
    head = str(exc) if isinstance(exc, StepError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, StepError):
        return head
    tail = "".join(traceback.format_exception(exc))[-MAX_ERROR_CHARS:]
    return f"{head}\n\n{tail}"


def _us(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1)


def _iso(us: int | None) -> str | None:
    return None if us is None else (_EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds")


def _run_record(r: Any) -> dict:
    return {"id": r["id"], "pipeline": r["pipeline"], "key": r["key"], "state": r["state"],
            "params": json.loads(r["params"]), "error": r["error"], "created": _iso(r["created_us"]),
            "started": _iso(r["started_us"]), "finished": _iso(r["finished_us"])}


def _step_record(s: Any) -> dict:
    return {"name": s["name"], "deps": json.loads(s["deps"]), "status": s["status"], "attempts": s["attempts"],
            "approval": bool(s["approval"]), "inputs": None if s["inputs"] is None else json.loads(s["inputs"]),
            "outputs": None if s["outputs"] is None else json.loads(s["outputs"]), "error": s["error"],
            "started": _iso(s["started_us"]), "finished": _iso(s["finished_us"]),
            "approved_by": s["approved_by"], "approved_at": _iso(s["approved_us"])}
