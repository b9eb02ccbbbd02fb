"""The drift monitor: per-cohort checks against the champion's reference, debounced into one retraining trigger.

Who calls it: the hub's drift loop, once per interval per model, with the latest feature windows
(a `materialize` run: tenant, device, window_start, event_time, available_at, <channel>.<agg>),
the champion's reference (reference.py), and, when it has them, the champion's predictions, the
labels that arrived, and a QualityReport of the same window's raw readings. The API and the CLI
read `status()` and `history()`. Nothing here starts a pipeline: a DriftTrigger is recorded and
returned, and the caller hands it on, then calls `acknowledge` (at-least-once: a hub that dies in
between finds it again in `pending_triggers()`).

One check of one cohort, in order:

1. Quality gate. Devices with a failed quality check on a channel the model reads (stuck, spikes,
   range, nulls … from hub.quality, or named in `bad_devices`) are removed from the current
   sample and listed in `quality_problems`: a broken sensor is a quality problem, never drift.
   Hazard: a real change large enough to leave a channel's expected range fails the range check
   too; when most of a cohort is gated the check is `insufficient`, which `status()` shows,
   rather than silently clean.
2. Data drift per feature: `stats.drift_report` (method by kind and sample size, the rule in
   stats.py's docstring: Jensen–Shannon for categorical columns, KS up to 1000 reference rows,
   normalized Wasserstein past that). The cohort's data drifts when the share of drifted features
   reaches `min_share` (default 0.25, not Evidently's 0.5: features come in families per channel —
   mean, min, max and rms move together — so a change on one of the model's two channels moves a
   quarter to a half of them, and 0.5 would miss it).
3. Prediction drift: Jensen–Shannon distance of the champion's predicted-class counts against the
   reference's (its predictions on the training windows, else their true classes), >= 0.1.
4. Concept drift, when labels arrived: the champion's accuracy on labelled current windows against
   its accuracy on the reference; drifted when it fell by `accuracy_drop` (default 0.05) or more,
   judged only with `min_labels` labelled windows or more.

A check is *over threshold* when any of 2–4 drifted, and *insufficient* (no verdict, state
unchanged) with fewer than `min_windows` clean current windows.

Debounce and cooldown (state per (model, cohort), in control.db, so a restart keeps it):

    ok        ──over──▶ suspect (1 .. consecutive-1 checks over in a row) ──under──▶ ok
    suspect   ──the `consecutive`-th check over──▶ drifting   + ONE DriftTrigger
    drifting  ──over──▶ drifting (no new trigger, however long it lasts)
    drifting  ──under──▶ cooldown until started_at + cooldown, then ok
    a new trigger needs: the cohort cleared (a check under threshold) since the last trigger, the
    cooldown passed, and `consecutive` checks over in a row (those during the cooldown count).

So one change triggers one retraining. Detection delay rule: drift is detected within
`consecutive` checks of it being visible at the window sample size used — visible meaning that
one check of that many clean current windows flags it (past 1000 reference rows: a normalized
Wasserstein distance >= 0.1 on a quarter of the features; below: KS p < 0.05).
"""

from __future__ import annotations

import enum
import json
import math
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from hub import control_db

from .errors import InvalidDriftInputError
from .reference import LABEL, PREDICTION, load_reference
from .stats import ColumnDrift, Kind, Method, drift_report, prediction_drift

__all__ = ["ConceptDrift", "DriftCheck", "DriftMonitor", "DriftPolicy", "DriftTrigger", "Histogram",
           "PredictionDrift", "QualityProblem", "State"]

KEY_COLUMNS = frozenset({"tenant", "device", "window_start", "event_time", "available_at", "materialized_at",
                         PREDICTION, LABEL})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS drift_state (
    model TEXT NOT NULL, cohort TEXT NOT NULL, state TEXT NOT NULL, streak INTEGER NOT NULL,
    cleared INTEGER NOT NULL, last_check_id INTEGER, last_trigger_id INTEGER, PRIMARY KEY (model, cohort));
CREATE TABLE IF NOT EXISTS drift_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, cohort TEXT NOT NULL, version TEXT NOT NULL,
    at_us INTEGER NOT NULL, over INTEGER, drifted_share REAL, state TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS drift_checks_by_cohort ON drift_checks (model, cohort, id);
CREATE TABLE IF NOT EXISTS drift_triggers (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, cohort TEXT NOT NULL, version TEXT NOT NULL,
    started_at_us INTEGER NOT NULL, evidence TEXT NOT NULL, acknowledged_at_us INTEGER);
"""


class State(enum.StrEnum):
    OK = "ok"
    SUSPECT = "suspect"
    DRIFTING = "drifting"
    COOLDOWN = "cooldown"


@dataclass(frozen=True)
class DriftPolicy:
    """When a cohort counts as drifted, and how checks are debounced into triggers."""

    consecutive: int = 3
    cooldown: timedelta = timedelta(hours=24)
    min_share: float = 0.25  # share of drifted features at which the data drifts
    min_windows: int = 30  # clean current windows a verdict needs
    accuracy_drop: float = 0.05  # absolute fall in accuracy that is concept drift
    min_labels: int = 30  # labelled windows a concept-drift verdict needs
    bins: int = 30  # histogram bins kept per feature for the report

    def __post_init__(self) -> None:
        for name, low in (("consecutive", 1), ("min_windows", 1), ("min_labels", 1), ("bins", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InvalidDriftInputError(f"DriftPolicy.{name} is {v!r}; it must be an int >= {low}.")
        for name in ("min_share", "accuracy_drop"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
                raise InvalidDriftInputError(f"DriftPolicy.{name} is {v!r}; it must be a number in (0, 1].")
        if not isinstance(self.cooldown, timedelta) or self.cooldown < timedelta(0):
            raise InvalidDriftInputError(f"DriftPolicy.cooldown is {self.cooldown!r}; it must be a timedelta >= 0.")

    @property
    def cooldown_us(self) -> int:
        return self.cooldown // timedelta(microseconds=1)


@dataclass(frozen=True)
class Histogram:
    """One feature binned on shared edges, reference and current: what the report draws."""

    edges: tuple[float, ...]
    reference: tuple[int, ...]
    current: tuple[int, ...]


@dataclass(frozen=True)
class PredictionDrift:
    drift: ColumnDrift
    classes: tuple[str, ...]
    reference_counts: tuple[int, ...]
    current_counts: tuple[int, ...]


@dataclass(frozen=True)
class ConceptDrift:
    reference_accuracy: float
    accuracy: float
    labelled: int
    threshold: float  # the fall in accuracy that counts
    drifted: bool

    @property
    def decay(self) -> float:
        return self.reference_accuracy - self.accuracy


@dataclass(frozen=True)
class QualityProblem:
    tenant: str | None
    device: str
    reasons: tuple[str, ...]  # "vibration_rms: stuck" …


@dataclass(frozen=True)
class DriftTrigger:
    """One retraining request: the cohort drifted for `consecutive` checks in a row."""

    id: int
    model: str
    version: str  # the champion whose reference the cohort drifted from
    cohort: str
    started_at_us: int
    evidence: Mapping[str, object]  # the triggering check's summary, and the ids of the checks behind it
    acknowledged_at_us: int | None = None


@dataclass(frozen=True)
class DriftCheck:
    """One cohort's verdict at `at_us`, and the state the monitor moved it to."""

    cohort: str
    model: str
    version: str
    at_us: int
    n_reference: int
    n_current: int
    features: tuple[ColumnDrift, ...]
    prediction: PredictionDrift | None
    concept: ConceptDrift | None
    quality_problems: tuple[QualityProblem, ...]
    histograms: Mapping[str, Histogram]
    sufficient: bool
    over: bool
    reasons: tuple[str, ...]
    state: State = State.OK
    trigger: DriftTrigger | None = None
    id: int | None = None

    @property
    def drifted_features(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.features if f.drifted)

    @property
    def drifted_share(self) -> float:
        return len(self.drifted_features) / len(self.features) if self.features else 0.0

    def top_features(self, n: int = 3) -> tuple[str, ...]:
        """The `n` features furthest past (or nearest to) their thresholds, worst first."""
        return tuple(f.column for f in sorted(self.features, key=lambda f: -severity(f))[:n])

    def summary(self) -> dict:
        """The flat JSON the API and the history list show."""
        return {
            "id": self.id, "cohort": self.cohort, "model": self.model, "version": self.version, "at_us": self.at_us,
            "state": self.state.value, "over": self.over, "sufficient": self.sufficient,
            "n_reference": self.n_reference, "n_current": self.n_current,
            "drifted_share": self.drifted_share, "drifted_features": list(self.drifted_features),
            "top_features": list(self.top_features()),
            "prediction_js": None if self.prediction is None else _finite(self.prediction.drift.statistic),
            "accuracy": None if self.concept is None else self.concept.accuracy,
            "reference_accuracy": None if self.concept is None else self.concept.reference_accuracy,
            "quality_problems": [q.device for q in self.quality_problems],
            "reasons": list(self.reasons), "trigger": None if self.trigger is None else self.trigger.id,
        }

    def to_json(self) -> str:
        d = asdict(replace(self, trigger=None))
        d["trigger_id"] = None if self.trigger is None else self.trigger.id
        return json.dumps(d, default=_json_default)

    @classmethod
    def from_json(cls, text: str, *, id: int | None = None, trigger: DriftTrigger | None = None) -> "DriftCheck":
        d = json.loads(text)
        d.pop("trigger_id", None)
        p = d["prediction"]
        c = d["concept"]
        return cls(**{
            **d, "id": id, "trigger": trigger, "state": State(d["state"]),
            "features": tuple(_column_drift(f) for f in d["features"]),
            "prediction": None if p is None else PredictionDrift(
                _column_drift(p["drift"]), tuple(p["classes"]), tuple(p["reference_counts"]),
                tuple(p["current_counts"])),
            "concept": None if c is None else ConceptDrift(**c),
            "quality_problems": tuple(QualityProblem(q["tenant"], q["device"], tuple(q["reasons"]))
                                      for q in d["quality_problems"]),
            "histograms": {k: Histogram(tuple(h["edges"]), tuple(h["reference"]), tuple(h["current"]))
                           for k, h in d["histograms"].items()},
            "reasons": tuple(d["reasons"]),
        })


def severity(f: ColumnDrift) -> float:
    """How far past its threshold a column is, on one scale for every method: >= 1 exactly when drifted."""
    if f.method is Method.KS:
        return math.log(max(f.statistic, 1e-300)) / math.log(f.threshold)
    return f.statistic / f.threshold


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _json_default(o: object) -> object:
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _column_drift(d: Mapping[str, object]) -> ColumnDrift:
    return ColumnDrift(**{**d, "kind": Kind(d["kind"]), "method": Method(d["method"])})  # type: ignore[arg-type]


# ---------------------------------------------------------------- the monitor


class DriftMonitor:
    """Checks per cohort for one model, with debounce state and history in <data_dir>/control.db."""

    def __init__(
        self,
        data_dir: Path | str,
        model: str = "condition",
        *,
        policy: DriftPolicy | None = None,
        classes: Sequence[str] | None = None,
        features: Sequence[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.model = model
        self.policy = policy or DriftPolicy()
        if classes is None:
            from models.condition.data import CLASSES as classes  # the default model's classes
        self.classes = tuple(classes)
        self.features = None if features is None else tuple(features)
        self._lock = threading.Lock()
        self._db = control_db.connect(self.data_dir / control_db.FILENAME)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "DriftMonitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- checking -------------------------------------------------------------------------
    def check(
        self,
        current: pa.Table,
        *,
        version: str,
        now_us: int,
        cohorts: Mapping[str | tuple[str, str], str] | None = None,
        reference: pa.Table | None = None,
        predictions: pa.Table | None = None,
        labels: pa.Table | None = None,
        quality: object | None = None,
        bad_devices: Collection[str] = (),
    ) -> list[DriftCheck]:
        """Judge every cohort in `current` against `reference`, record each check, move each state.

        `cohorts` maps a device (or a (tenant, device) pair, which wins) to its cohort; None puts
        every device in the fleet cohort `*`; devices it does not name are not checked.
        `reference` defaults to the saved one of (model, version). `predictions`: device,
        window_start and prediction (class name or index), tenant optional; `labels` the same
        with label. `quality` is a hub.quality QualityReport over the same devices' raw readings.
        Returns one DriftCheck per cohort, in cohort order; `trigger` is set on the one check
        that started a retraining.
        """
        if reference is None:
            reference = load_reference(self.data_dir, self.model, version)
        names = self._feature_names(reference, current)
        ref_cols = {n: reference.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in names}
        ref_classes = self._class_counts_of_reference(reference)
        ref_accuracy = self._reference_accuracy(reference)
        tenants = _strings(current, "tenant") if "tenant" in current.column_names else None
        devices = _strings(current, "device")
        cohort_of = np.asarray(_assign(tenants, devices, cohorts), dtype=object)
        gated = self._quality_problems(quality, bad_devices, names, tenants, devices)
        out = []
        for cohort in sorted({c for c in cohort_of.tolist() if c is not None}):
            in_cohort = cohort_of == cohort
            problems = tuple(q for key, q in gated.items() if _row_mask(tenants, devices, key)[in_cohort].any())
            clean = in_cohort.copy()
            for key in gated:
                clean &= ~_row_mask(tenants, devices, key)
            keep = _keys(tenants, devices, clean)
            c = self._judge(cohort, version, now_us, names, ref_cols, current, clean, ref_classes, ref_accuracy,
                            _subset(predictions, keep), _subset(labels, keep), problems)
            out.append(self._record(c))
        return out

    def _feature_names(self, reference: pa.Table, current: pa.Table) -> tuple[str, ...]:
        if self.features is not None:
            names = self.features
        else:
            names = tuple(n for n, t in zip(reference.column_names, reference.schema.types)
                          if n not in KEY_COLUMNS and (pa.types.is_floating(t) or pa.types.is_integer(t)))
        missing = [n for n in names if n not in reference.column_names or n not in current.column_names]
        if not names or missing:
            raise InvalidDriftInputError(
                f"The reference and current tables must both hold the model's features; missing {missing!r} "
                f"(features {list(names)!r}).")
        return names

    def _classes(self, values: np.ndarray) -> np.ndarray:
        if values.dtype.kind in "iu":
            if len(values) and (values.min() < 0 or values.max() >= len(self.classes)):
                raise InvalidDriftInputError(f"Class indexes {sorted(set(values.tolist()))[:5]!r} fall outside "
                                             f"the model's {len(self.classes)} classes {self.classes!r}.")
            return np.asarray(self.classes, dtype=object)[values]
        return values.astype(object)

    def _class_counts_of_reference(self, reference: pa.Table) -> dict[str, int] | None:
        col = PREDICTION if PREDICTION in reference.column_names else LABEL if LABEL in reference.column_names else None
        if col is None:
            return None
        values, counts = np.unique(self._classes(_values(reference, col)).astype(str), return_counts=True)
        return dict(zip(values.tolist(), counts.tolist()))

    def _reference_accuracy(self, reference: pa.Table) -> float | None:
        if PREDICTION not in reference.column_names or LABEL not in reference.column_names:
            return None
        p = self._classes(_values(reference, PREDICTION))
        y = self._classes(_values(reference, LABEL))
        return float(np.mean(p == y))

    def _quality_problems(self, quality: object | None, bad_devices: Collection[str], names: Sequence[str],
                          tenants: np.ndarray | None, devices: np.ndarray) -> dict[tuple[str | None, str], QualityProblem]:
        # Only the channels the model reads: a failing humidity sensor does not spoil vibration features.
        channels = {n.split(".", 1)[0] for n in names}
        present = set(devices.tolist())
        out: dict[tuple[str | None, str], list[str]] = {}
        for d in bad_devices:
            if d in present:
                out.setdefault((None, d), []).append("named by the caller as a quality problem")
        for ch in getattr(quality, "channels", ()):
            if ch.channel in channels and not ch.passed and ch.device in present:
                key = (ch.tenant, ch.device) if tenants is not None else (None, ch.device)
                out.setdefault(key, []).extend(f"{ch.channel}: {c.value}" for c in ch.failed)
        return {k: QualityProblem(k[0], k[1], tuple(v)) for k, v in sorted(out.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))}

    def _judge(self, cohort: str, version: str, now_us: int, names: Sequence[str], ref_cols: Mapping[str, np.ndarray],
               current: pa.Table, clean: np.ndarray, ref_classes: dict[str, int] | None, ref_accuracy: float | None,
               predictions: pa.Table | None, labels: pa.Table | None,
               problems: tuple[QualityProblem, ...]) -> DriftCheck:
        p = self.policy
        idx = np.flatnonzero(clean)
        cur_cols = {n: current.column(n).take(pa.array(idx)).to_numpy(zero_copy_only=False).astype(np.float64)
                    for n in names}
        n_ref = len(next(iter(ref_cols.values())))
        base = dict(cohort=cohort, model=self.model, version=version, at_us=now_us, n_reference=n_ref,
                    n_current=len(idx), quality_problems=problems)
        if len(idx) < p.min_windows:
            return DriftCheck(**base, features=(), prediction=None, concept=None, histograms={}, sufficient=False,
                              over=False, reasons=(f"{len(idx)} clean current windows, fewer than the {p.min_windows} "
                                                   f"a verdict needs ({len(problems)} device(s) gated by quality)",))
        features = tuple(drift_report(ref_cols, cur_cols))
        histograms = {n: _histogram(ref_cols[n], cur_cols[n], p.bins) for n in names}
        reasons = []
        drifted = [f.column for f in features if f.drifted]
        share = len(drifted) / len(features)
        if share >= p.min_share:
            reasons.append(f"{len(drifted)} of {len(features)} features drifted ({share:.0%} >= {p.min_share:.0%}): "
                           + ", ".join(drifted))
        pred = self._prediction_drift(ref_classes, predictions)
        if pred is not None and pred.drift.drifted:
            reasons.append(f"predicted classes drifted (Jensen-Shannon {pred.drift.statistic:.3f} >= "
                           f"{pred.drift.threshold:g})")
        concept = self._concept_drift(ref_accuracy, predictions, labels)
        if concept is not None and concept.drifted:
            reasons.append(f"accuracy fell from {concept.reference_accuracy:.1%} to {concept.accuracy:.1%} on "
                           f"{concept.labelled} labelled windows (limit {concept.threshold:.1%})")
        return DriftCheck(**base, features=features, prediction=pred, concept=concept, histograms=histograms,
                          sufficient=True, over=bool(reasons), reasons=tuple(reasons))

    def _prediction_drift(self, ref_classes: dict[str, int] | None, predictions: pa.Table | None) -> PredictionDrift | None:
        if ref_classes is None or predictions is None or predictions.num_rows == 0:
            return None
        cur = self._classes(_values(predictions, PREDICTION)).astype(str)
        classes = tuple(c for c in self.classes if c in ref_classes or c in set(cur)) + tuple(
            sorted((set(ref_classes) | set(cur)) - set(self.classes)))
        rc = tuple(int(ref_classes.get(c, 0)) for c in classes)
        cc = tuple(int(np.count_nonzero(cur == c)) for c in classes)
        return PredictionDrift(prediction_drift(rc, cc), classes, rc, cc)

    def _concept_drift(self, ref_accuracy: float | None, predictions: pa.Table | None,
                       labels: pa.Table | None) -> ConceptDrift | None:
        if ref_accuracy is None or predictions is None or labels is None or labels.num_rows == 0:
            return None
        keys = [k for k in ("tenant", "device", "window_start") if k in predictions.column_names and k in labels.column_names]
        if "device" not in keys or "window_start" not in keys:
            raise InvalidDriftInputError("Predictions and labels must both have device and window_start to be joined.")
        joined = labels.select([*keys, LABEL]).join(predictions.select([*keys, PREDICTION]), keys=keys, join_type="inner")
        if joined.num_rows < self.policy.min_labels:
            return None
        y = self._classes(_values(joined, LABEL)).astype(str)
        pr = self._classes(_values(joined, PREDICTION)).astype(str)
        acc = float(np.mean(y == pr))
        drop = self.policy.accuracy_drop
        return ConceptDrift(ref_accuracy, acc, joined.num_rows, drop, ref_accuracy - acc >= drop - 1e-12)

    # --- state ----------------------------------------------------------------------------
    def _record(self, c: DriftCheck) -> DriftCheck:
        p = self.policy
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT * FROM drift_state WHERE model=? AND cohort=?",
                                       (self.model, c.cohort)).fetchone()
                streak, cleared = (0, 1) if row is None else (row["streak"], row["cleared"])
                last = None if row is None or row["last_trigger_id"] is None else self._trigger(row["last_trigger_id"])
                if c.sufficient:
                    streak = streak + 1 if c.over else 0
                    cleared = cleared or not c.over
                armed = last is None or (cleared and c.at_us >= last.started_at_us + p.cooldown_us)
                cur = self._db.execute(
                    "INSERT INTO drift_checks(model, cohort, version, at_us, over, drifted_share, state, body) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (self.model, c.cohort, c.version, c.at_us, int(c.over) if c.sufficient else None,
                     c.drifted_share if c.sufficient else None, "", ""))
                check_id = cur.lastrowid
                trigger = None
                if c.sufficient and c.over and streak >= p.consecutive and armed:
                    behind = [r[0] for r in self._db.execute(
                        "SELECT id FROM drift_checks WHERE model=? AND cohort=? AND over=1 ORDER BY id DESC LIMIT ?",
                        (self.model, c.cohort, p.consecutive))]
                    evidence = {**replace(c, id=check_id).summary(), "checks": sorted(behind)}
                    tid = self._db.execute(
                        "INSERT INTO drift_triggers(model, cohort, version, started_at_us, evidence) VALUES (?,?,?,?,?)",
                        (self.model, c.cohort, c.version, c.at_us, json.dumps(evidence))).lastrowid
                    trigger = last = DriftTrigger(tid, self.model, c.version, c.cohort, c.at_us, evidence)
                    cleared = 0
                state = _state(streak, bool(cleared), last, c.at_us, p.cooldown_us)
                c = replace(c, id=check_id, state=state, trigger=trigger)
                self._db.execute("UPDATE drift_checks SET state=?, body=? WHERE id=?", (state.value, c.to_json(), check_id))
                self._db.execute(
                    "INSERT OR REPLACE INTO drift_state(model, cohort, state, streak, cleared, last_check_id, "
                    "last_trigger_id) VALUES (?,?,?,?,?,?,?)",
                    (self.model, c.cohort, state.value, streak, int(cleared), check_id, None if last is None else last.id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return c

    def _trigger(self, trigger_id: int) -> DriftTrigger:
        r = self._db.execute("SELECT * FROM drift_triggers WHERE id=?", (trigger_id,)).fetchone()
        return DriftTrigger(r["id"], r["model"], r["version"], r["cohort"], r["started_at_us"],
                            json.loads(r["evidence"]), r["acknowledged_at_us"])

    # --- reading --------------------------------------------------------------------------
    def status(self) -> list[dict]:
        """Per cohort: state, last check time, drifted share, top features, last trigger."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM drift_state WHERE model=? ORDER BY cohort", (self.model,)).fetchall()
            out = []
            for r in rows:
                body = self._db.execute("SELECT body FROM drift_checks WHERE id=?", (r["last_check_id"],)).fetchone()
                last = None if r["last_trigger_id"] is None else self._trigger(r["last_trigger_id"])
                c = DriftCheck.from_json(body["body"], id=r["last_check_id"])
                out.append({
                    "model": self.model, "cohort": r["cohort"], "state": r["state"], "streak": r["streak"],
                    "last_check_us": c.at_us, "version": c.version, "sufficient": c.sufficient,
                    "drifted_share": c.drifted_share, "drifted_features": len(c.drifted_features),
                    "features": len(c.features), "top_features": list(c.top_features()),
                    "quality_problems": [q.device for q in c.quality_problems], "reasons": list(c.reasons),
                    "last_trigger": None if last is None else _trigger_dict(last),
                })
        return out

    def history(self, cohort: str, *, limit: int = 100) -> list[DriftCheck]:
        """The cohort's last `limit` checks, oldest first (empty for a cohort never checked)."""
        with self._lock:
            rows = self._db.execute("SELECT id, body FROM drift_checks WHERE model=? AND cohort=? ORDER BY id DESC LIMIT ?",
                                    (self.model, cohort, limit)).fetchall()
            triggers = {r["id"]: self._trigger(r["id"]) for r in self._db.execute(
                "SELECT id FROM drift_triggers WHERE model=? AND cohort=?", (self.model, cohort))}
        out = []
        for r in reversed(rows):
            tid = json.loads(r["body"]).get("trigger_id")
            out.append(DriftCheck.from_json(r["body"], id=r["id"], trigger=triggers.get(tid)))
        return out

    def cohorts(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT cohort FROM drift_state WHERE model=? ORDER BY cohort",
                                                   (self.model,))]

    def triggers(self, cohort: str | None = None) -> list[DriftTrigger]:
        with self._lock:
            ids = [r[0] for r in self._db.execute(
                "SELECT id FROM drift_triggers WHERE model=? AND (?2 IS NULL OR cohort=?2) ORDER BY id",
                (self.model, cohort))]
            return [self._trigger(i) for i in ids]

    def pending_triggers(self) -> list[DriftTrigger]:
        """Triggers not yet acknowledged: hand each to the retraining pipeline, then `acknowledge` it."""
        return [t for t in self.triggers() if t.acknowledged_at_us is None]

    def acknowledge(self, trigger_id: int, *, now_us: int) -> None:
        with self._lock:
            self._db.execute("UPDATE drift_triggers SET acknowledged_at_us=? WHERE id=? AND model=? "
                             "AND acknowledged_at_us IS NULL", (now_us, trigger_id, self.model))


def _trigger_dict(t: DriftTrigger) -> dict:
    return {"id": t.id, "version": t.version, "started_at_us": t.started_at_us,
            "acknowledged_at_us": t.acknowledged_at_us, "reasons": t.evidence.get("reasons", [])}


def _state(streak: int, cleared: bool, last: DriftTrigger | None, now_us: int, cooldown_us: int) -> State:
    if last is not None and not cleared:
        return State.DRIFTING
    if last is not None and now_us < last.started_at_us + cooldown_us:
        return State.COOLDOWN
    return State.SUSPECT if streak > 0 else State.OK


# ---------------------------------------------------------------- table plumbing


def _strings(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)


def _values(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if pa.types.is_integer(col.type):
        return col.to_numpy().astype(np.int64)
    return np.asarray(col.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)


def _assign(tenants: np.ndarray | None, devices: np.ndarray,
            cohorts: Mapping[str | tuple[str, str], str] | None) -> list[str | None]:
    if cohorts is None:
        return ["*"] * len(devices)
    memo: dict[tuple[object, str], str | None] = {}
    out = []
    for i, d in enumerate(devices):
        t = None if tenants is None else tenants[i]
        key = (t, d)
        if key not in memo:
            memo[key] = cohorts.get((t, d), cohorts.get(d)) if t is not None else cohorts.get(d)  # type: ignore[call-overload]
        out.append(memo[key])
    return out


def _row_mask(tenants: np.ndarray | None, devices: np.ndarray, key: tuple[str | None, str]) -> np.ndarray:
    m = devices == key[1]
    if key[0] is not None and tenants is not None:
        m &= tenants == key[0]
    return m


def _keys(tenants: np.ndarray | None, devices: np.ndarray, mask: np.ndarray) -> set[tuple[str | None, str]]:
    t = tenants[mask] if tenants is not None else [None] * int(mask.sum())
    return set(zip(t, devices[mask]))


def _subset(table: pa.Table | None, keep: set[tuple[str | None, str]]) -> pa.Table | None:
    """The rows of `table` (predictions or labels) whose device is in `keep`."""
    if table is None:
        return None
    devices = _strings(table, "device")
    if "tenant" in table.column_names and all(t is not None for t, _ in keep):
        tenants = _strings(table, "tenant")
        mask = np.fromiter(((t, d) in keep for t, d in zip(tenants, devices)), bool, len(devices))
    else:
        names = {d for _, d in keep}
        mask = np.fromiter((d in names for d in devices), bool, len(devices))
    return table.filter(pa.array(mask))


def _histogram(ref: np.ndarray, cur: np.ndarray, bins: int) -> Histogram:
    # Edges over both samples' 0.5–99.5 % range, so one outlier does not squash the rest into a
    # bar; values outside land in the end bins.
    r, c = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    both = np.concatenate((r, c))
    if both.size == 0:
        return Histogram((0.0, 1.0), (0,), (0,))
    lo, hi = np.quantile(both, [0.005, 0.995])
    if not hi > lo:
        lo, hi = float(both.min()) - 0.5, float(both.max()) + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    rc = np.histogram(np.clip(r, lo, hi), edges)[0]
    cc = np.histogram(np.clip(c, lo, hi), edges)[0]
    return Histogram(tuple(edges.tolist()), tuple(rc.tolist()), tuple(cc.tolist()))
