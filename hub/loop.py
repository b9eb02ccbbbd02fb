"""The closed loop: quality and drift checks per cohort, drift triggers into retraining.

    loop = ClosedLoop(data_dir, registry, twins, runner, labels, config)
    loop.tick()                       # one round; the hub runs it every `[loop] interval`

One round, at an event-time cursor `now` (the newest telemetry the hub has, or the caller's):

1. Cohorts: each device whose twin reports the tag `[loop] cohort_tag` (e.g. `site`) is in the
   cohort `site=<value>`; devices without the tag are not judged.
2. Current windows: the `condition` view's features over `[now - lookback, now - grace)`, computed
   from the lake with the code devices run (`hub.features.compute_features`; no run is kept).
3. Quality: `hub.quality.check_lake` over the same readings. Its results are kept in
   `quality_reports` (control.db), with the rows each failed check flags (`quality_quarantine`:
   device, channel, check, first and last flagged ts, rows). Nothing is deleted; the drift
   monitor leaves flagged devices out of the drift sample and reports them as quality problems.
4. Drift: per champion version (a rollout may leave cohorts on different champions), the
   `hub.drift.DriftMonitor` judges each cohort against a reference, with the devices' own
   predictions (`pred.class` rows) and the labels that arrived (`hub.labels`). The reference:
   - a version the retraining pipeline built: its training reference, the cohort's own labelled
     windows it was trained on (replayed rows left out; see `drift_reference`);
   - a recipe version (trained fleet-wide on the simulator's population, models/condition): the
     cohort's *baseline*, its first `baseline` of clean windows on that version (with the
     devices' predictions), saved once and never replaced. The cohort is not judged until the
     baseline is complete. Why not the recipe's training windows: they are a population of
     hundreds of simulated machines over 30 days, and a two-sample test on a few machines over
     half an hour is no sample of that population: measured, a healthy 3-device cohort had 93 %
     of its features flagged against the recipe's normal windows, the same cohort against its
     own baseline 29-43 %, and after a 1.6x vibration change 71 %.
5. Triggers: every pending trigger becomes a retraining run (`hub.pipelines`), keyed by the
   trigger, so a trigger handed on twice starts one run; then it is acknowledged. The pipeline
   worker runs it; its last step starts a staged rollout to the cohort.

The monitor's debounce (`consecutive` checks over threshold) and cooldown make one change one
retraining; its state is in control.db, so a restart keeps it. Times the monitor sees are event
times: the cooldown is measured on the devices' clocks, as is the lookback.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from . import control_db
from .storage import metadata as meta
from .storage.lake import Lake

log = logging.getLogger("edgeloop.hub.loop")

MODEL = "condition"
VIEW = "condition"

_TABLES = """
CREATE TABLE IF NOT EXISTS loop_baselines (
    version TEXT NOT NULL, cohort TEXT NOT NULL, started_us INTEGER NOT NULL, PRIMARY KEY (version, cohort));
CREATE TABLE IF NOT EXISTS quality_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at_us INTEGER NOT NULL, since_us INTEGER NOT NULL,
    until_us INTEGER NOT NULL, devices TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quality_quarantine (
    report_id INTEGER NOT NULL, tenant TEXT NOT NULL, device TEXT NOT NULL, channel TEXT NOT NULL,
    "check" TEXT NOT NULL, first_ts_us INTEGER NOT NULL, last_ts_us INTEGER NOT NULL, rows INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class LoopSettings:
    cohort_tag: str = "site"
    lookback: timedelta = timedelta(minutes=30)
    grace: timedelta = timedelta(minutes=1)  # the newest minute may still be arriving
    baseline: timedelta = timedelta(hours=24)  # a recipe version's cohort baseline: this much event time
    retrain: dict[str, Any] = field(default_factory=dict)  # hub.pipelines.retrain_params keywords


class ClosedLoop:
    def __init__(self, data_dir: Path, *, registry: Any, twins: Any, runner: Any, labels: Any, monitor: Any,
                 settings: LoopSettings | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.registry = registry
        self.twins = twins
        self.runner = runner
        self.labels = labels
        self.monitor = monitor
        self.settings = settings or LoopSettings()
        self.lake = Lake(self.data_dir / "lake")
        self._db = control_db.connect(self.data_dir / control_db.FILENAME)
        self._db.executescript(_TABLES)
        self.counters = {"ticks": 0, "checks": 0, "triggers": 0, "runs_started": 0, "insufficient": 0}

    def close(self) -> None:
        self._db.close()

    # --- the round ----------------------------------------------------------------------------
    def tick(self, now_event_us: int | None = None) -> dict[str, Any]:
        """One round at event time `now_event_us` (default: the newest telemetry stored)."""
        from models.condition.data import SPEC

        from .features import FeatureRegistry, compute_features
        from .pipelines import Trigger, start_retraining
        from .quality import check_lake, default_expectations

        self.counters["ticks"] += 1
        now = self._newest_event() if now_event_us is None else now_event_us
        if now is None:
            return {"at_us": None, "checks": [], "triggers": []}
        window = SPEC.window_us
        until = (now - int(self.settings.grace.total_seconds() * 1e6)) // window * window
        since = until - int(self.settings.lookback.total_seconds() * 1e6)
        cohort_of = self._cohorts()
        if not cohort_of or until <= since:
            return {"at_us": now, "checks": [], "triggers": []}
        with FeatureRegistry(self.data_dir) as features:
            view = features.get(VIEW).view
        current = _only(compute_features(self.data_dir, view, since_us=since, until_us=until), cohort_of)
        quality = check_lake(self.data_dir / "lake", since_us=since, until_us=until,
                             expectations=default_expectations(period_us=1_000_000), now_us=until)
        self._keep_quality(quality, since, until)
        predictions = self._predictions(since, until, cohort_of, window)
        labels = self._labels(since, until, cohort_of, window)

        by_version: dict[str, dict[tuple[str, str], str]] = defaultdict(dict)
        for device, cohort in cohort_of.items():
            version = self.registry.alias_for(MODEL, "champion", _tags(cohort))
            if version is not None:
                by_version[version][device] = cohort
        broken = _broken_sensors(quality, SPEC.channels)
        checks = []
        waiting = []
        for version, cohorts in sorted(by_version.items()):
            for cohort in sorted(set(cohorts.values())):
                members = {k: c for k, c in cohorts.items() if c == cohort}
                reference = self._reference(version, cohort, members, view, until, broken)
                if reference is None:
                    waiting.append({"cohort": cohort, "version": version,
                                    "reason": "collecting its baseline on this version"})
                    continue
                checks += self.monitor.check(current, version=version, now_us=until, cohorts=members,
                                             reference=reference, predictions=predictions, labels=labels,
                                             bad_devices=broken)
        self.counters["checks"] += len(checks)
        self.counters["insufficient"] += sum(not c.sufficient for c in checks)
        started = []
        for t in self.monitor.pending_triggers():
            run_id = start_retraining(self.runner, Trigger.from_drift(t), **self.settings.retrain)
            self.monitor.acknowledge(t.id, now_us=until)
            started.append({"trigger": t.id, "cohort": t.cohort, "run": run_id})
            self.counters["triggers"] += 1
            log.warning("loop: cohort %s drifted from %s %s; retraining run %s", t.cohort, MODEL, t.version, run_id)
        self.counters["runs_started"] = len({s["run"] for s in started}) + self.counters["runs_started"]
        return {"at_us": now, "since_us": since, "until_us": until,
                "checks": [c.summary() for c in checks], "waiting": waiting, "triggers": started}

    # --- references ---------------------------------------------------------------------------
    def _reference(self, version: str, cohort: str, members: dict, view: Any, until: int,
                   broken: set[str]) -> pa.Table | None:
        """What `cohort` on `version` is judged against (the module docstring's rule), or None while
        its baseline is still being collected."""
        from .drift import UnknownReferenceError, load_reference, save_reference
        from .features import compute_features

        if (self.registry.get(MODEL, version).get("metadata") or {}).get("pipeline_run"):
            try:  # a retrained version: the cohort's own windows it was trained on
                return drift_reference(load_reference(self.data_dir, MODEL, version))
            except UnknownReferenceError:
                pass
        name = _baseline_name(version, cohort)
        try:
            return load_reference(self.data_dir, MODEL, name)
        except UnknownReferenceError:
            pass
        row = self._db.execute("SELECT started_us FROM loop_baselines WHERE version = ? AND cohort = ?",
                               (version, cohort)).fetchone()
        if row is None:
            first = until - int(self.settings.lookback.total_seconds() * 1e6)
            self._db.execute("INSERT OR IGNORE INTO loop_baselines VALUES (?, ?, ?)", (version, cohort, first))
            row = (first,)
        started = int(row[0])
        end = started + int(self.settings.baseline.total_seconds() * 1e6)
        if until < end:
            return None
        clean = {k: c for k, c in members.items() if k[1] not in broken}
        table = _only(compute_features(self.data_dir, view, since_us=started, until_us=end), clean)
        predictions = self._predictions(started, end, clean, view.spec.window_us)
        if table.num_rows == 0:
            return None
        if predictions is not None and predictions.num_rows:
            by_window = {(t, d, w): p for t, d, w, p in zip(*(predictions.column(c).to_pylist() for c in
                                                              ("tenant", "device", "window_start", "prediction")))}
            keys = zip(*(table.column(c).to_pylist() for c in ("tenant", "device", "window_start")))
            table = table.append_column("prediction", pa.array([by_window.get(k) for k in keys], pa.string()))
        table = table.drop_columns([c for c in ("event_time", "available_at", "materialized_at")
                                    if c in table.column_names])
        try:
            save_reference(self.data_dir, MODEL, name, table)
        except Exception:  # noqa: BLE001 - another hub process saved it first
            pass
        log.info("loop: baseline of cohort %s on %s %s saved: %d windows", cohort, MODEL, version, table.num_rows)
        return load_reference(self.data_dir, MODEL, name)

    # --- inputs -------------------------------------------------------------------------------
    def _newest_event(self) -> int | None:
        db = meta.connect_readonly(self.data_dir / "meta.db")
        try:
            row = db.execute("SELECT max(t_end_us) FROM batches WHERE kind = 'telemetry'").fetchone()
        finally:
            db.close()
        return None if row is None or row[0] is None else int(row[0])

    def _cohorts(self) -> dict[tuple[str, str], str]:
        tag = self.settings.cohort_tag
        out = {}
        for twin in self.twins.list():
            tags = twin.get("tags") or {}
            if tag in tags:
                out[(twin["tenant"], twin["device"])] = f"{tag}={tags[tag]}"
        return out

    def _predictions(self, since: int, until: int, cohort_of: dict, window: int) -> pa.Table | None:
        from models.condition.data import CLASSES

        files = self.lake.files()
        if not files:
            return None
        with duckdb.connect() as con:
            got = con.sql(
                "SELECT tenant, device, epoch_us(ts) AS window_start, any_value(value) AS cls FROM read_parquet(?)"
                " WHERE kind = 'prediction' AND channel = 'pred.class' AND epoch_us(ts) >= ? AND epoch_us(ts) < ?"
                " GROUP BY tenant, device, window_start",
                params=[files, since, until],
            ).to_arrow_table()
        keep = [(t, d) in cohort_of for t, d in zip(got.column("tenant").to_pylist(), got.column("device").to_pylist())]
        got = got.filter(pa.array(keep, pa.bool_()))
        names = [CLASSES[int(c)] if 0 <= int(c) < len(CLASSES) else str(int(c)) for c in got.column("cls").to_pylist()]
        return pa.table({"tenant": got.column("tenant"), "device": got.column("device"),
                         "window_start": got.column("window_start"), "prediction": pa.array(names, pa.string())})

    def _labels(self, since: int, until: int, cohort_of: dict, window: int) -> pa.Table | None:
        table = self.labels.table(list(cohort_of), since_us=since + window, until_us=until + 1)
        if table.num_rows == 0:
            return None
        # A label at ts judges the window that ended by ts (as point-in-time retrieval joins it).
        ts = table.column("ts_us").to_numpy()
        return pa.table({"tenant": table.column("tenant"), "device": table.column("device"),
                         "window_start": pa.array(ts // window * window - window, pa.int64()),
                         "label": table.column("label")})

    # --- quality ------------------------------------------------------------------------------
    def _keep_quality(self, report: Any, since: int, until: int) -> None:
        scores = report.device_scores()
        failing: dict[str, list[str]] = defaultdict(list)
        quarantine = []
        for c in report.channels:
            for r in c.results:
                if not r.passed:
                    failing[f"{c.tenant}/{c.device}"].append(f"{c.channel}: {r.check.value}")
                    ts = c.flag_ts_us.get(r.check) if c.flag_ts_us else None
                    if ts is not None and len(ts):
                        quarantine.append((c.tenant, c.device, c.channel, r.check.value, int(np.min(ts)),
                                           int(np.max(ts)), int(len(ts))))
        devices = {f"{t}/{d}": {"score": round(s, 4), "failing": failing.get(f"{t}/{d}", [])}
                   for (t, d), s in sorted(scores.items())}
        with control_db.immediate(self._db):
            cur = self._db.execute("INSERT INTO quality_reports (at_us, since_us, until_us, devices) VALUES (?, ?, ?, ?)",
                                   (time.time_ns() // 1000, since, until, json.dumps(devices)))
            self._db.executemany('INSERT INTO quality_quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                                 [(cur.lastrowid, *q) for q in quarantine])

    def quality_report(self) -> dict[str, Any]:
        """The latest quality round: per device its health score and failing checks, and the
        quarantined (flagged, never deleted) row ranges."""
        row = self._db.execute("SELECT * FROM quality_reports ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return {"at_us": None, "devices": {}, "quarantine": []}
        quarantine = [dict(r) for r in self._db.execute(
            'SELECT tenant, device, channel, "check", first_ts_us, last_ts_us, rows FROM quality_quarantine'
            " WHERE report_id = ? ORDER BY tenant, device, channel", (row["id"],))]
        return {"at_us": row["at_us"], "since_us": row["since_us"], "until_us": row["until_us"],
                "devices": json.loads(row["devices"]), "quarantine": quarantine}


def drift_reference(table: pa.Table, normal: str = "normal") -> pa.Table:
    """What a cohort's windows are judged against: the reference rows of the normal class that are
    the version's own (not replayed). A balanced training set holds as many worn and faulty
    windows as healthy ones, and a healthy fleet does not: judged against all of them, every
    healthy cohort would look drifted. Wear and faults are what the model is there to catch
    (its predictions, the alerts); drift is the normal operating envelope moving."""
    mask = np.ones(table.num_rows, bool)
    if "label" in table.column_names:
        mask &= np.asarray([v == normal or v == 0 for v in table.column("label").to_pylist()], bool)
    if "replayed" in table.column_names:
        mask &= ~np.asarray(table.column("replayed").to_pylist(), bool)
    return table.filter(pa.array(mask)) if mask.any() else table


SENSOR_CHECKS = ("nulls", "range", "stuck", "spikes")


def _broken_sensors(report: Any, channels: tuple[str, ...]) -> set[str]:
    """Devices with a broken sensor on a channel the model reads: a failed value check (nulls,
    range, stuck, spikes). Link and clock checks (silence, sampling, duplicates, clock skew) are
    reported too, but leave the values, and so the features, as the device measured them."""
    return {c.device for c in report.channels if c.channel in channels
            and any(not r.passed and r.check.value in SENSOR_CHECKS for r in c.results)}


def _baseline_name(version: str, cohort: str) -> str:
    """The reference name of a cohort's baseline on a version (the registry's name characters)."""
    slug = "".join(ch if ch.isalnum() or ch in "._-" else "." for ch in cohort)
    return f"{version}+baseline.{slug}"[:64]


def _tags(cohort: str) -> dict[str, str]:
    from .registry import parse_cohort

    return parse_cohort(cohort)


def _only(table: pa.Table, cohort_of: dict[tuple[str, str], str]) -> pa.Table:
    keep = [(t, d) in cohort_of for t, d in zip(table.column("tenant").to_pylist(), table.column("device").to_pylist())]
    return table.filter(pa.array(keep, pa.bool_()))


def labels_hook(labels: Any, twins: Any):
    """The retraining pipeline's `labels` hook: every label of the trigger cohort's devices."""

    def hook(trigger: Any) -> tuple[pa.Table, str]:
        devices = twins.devices(trigger.cohort)
        table = labels.table(devices)
        return table, f"hub labels of the {len(devices)} devices in cohort {trigger.cohort}"

    return hook
