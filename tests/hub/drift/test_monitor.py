"""The drift monitor: debounce into one trigger, cooldown, restart, quality gating, prediction and concept drift."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from hub.drift import (
    DriftMonitor, DriftPolicy, ReferenceExistsError, State, UnknownReferenceError, load_reference, reference_table,
    save_reference,
)
from hub.quality import check_readings, default_expectations
from models.condition.data import CLASSES, PERIOD_US, SPEC, START_US
from protocol.features import window_features
from simulators import device_model, stuck

NAMES = SPEC.feature_names
MIN = 60_000_000
T0 = START_US
POLICY = DriftPolicy(consecutive=3, cooldown=timedelta(hours=1))


def reference(seed: int = 0, rows: int = 3000, *, accuracy: float = 0.98) -> pa.Table:
    """Standard normal features; the champion predicts `normal` 80 % of the time, right `accuracy` of it."""
    rng = np.random.default_rng([seed, 1])
    labels = rng.choice(3, rows, p=[0.8, 0.1, 0.1])
    wrong = rng.random(rows) >= accuracy
    predictions = np.where(wrong, (labels + 1) % 3, labels)
    return reference_table(rng.normal(0.0, 1.0, (rows, len(NAMES))), NAMES, predictions=predictions, labels=labels,
                           classes=CLASSES)


def windows(seed: int, *, shift: float = 0.0, rows: int = 1200, devices: int = 12, shifted: int = 6,
            start_us: int = T0) -> pa.Table:
    """A materialized run's shape; the first `shifted` features move by `shift` reference stds."""
    rng = np.random.default_rng([seed, 2])
    x = rng.normal(0.0, 1.0, (rows, len(NAMES)))
    x[:, :shifted] += shift
    device = [f"m{i % devices:02d}" for i in range(rows)]
    start = start_us + np.arange(rows, dtype=np.int64) // devices * MIN
    return pa.table({"tenant": ["acme"] * rows, "device": device, "window_start": start, "event_time": start + MIN,
                     **{n: x[:, i] for i, n in enumerate(NAMES)}})


@pytest.fixture
def monitor(tmp_path: Path):
    with DriftMonitor(tmp_path, policy=POLICY) as m:
        yield m


def at(minutes: int) -> int:
    return T0 + minutes * MIN


def run(monitor: DriftMonitor, minutes: int, *, shift: float, ref: pa.Table, seed: int | None = None):
    [c] = monitor.check(windows(minutes if seed is None else seed, shift=shift), version="v1", now_us=at(minutes),
                        reference=ref)
    return c


def test_a_shifted_cohort_drifts_after_exactly_consecutive_checks_and_triggers_once(monitor):
    ref = reference()
    assert not run(monitor, 0, shift=0.0, ref=ref).over  # the unshifted sample is clean at this size
    states, triggers = [], []
    for minutes in range(10, 70, 10):
        c = run(monitor, minutes, shift=0.5, ref=ref)
        assert c.over and c.drifted_share >= 6 / 14
        states.append(c.state)
        triggers.append(c.trigger)
    assert states == [State.SUSPECT, State.SUSPECT, State.DRIFTING, State.DRIFTING, State.DRIFTING, State.DRIFTING]
    assert [t is not None for t in triggers] == [False, False, True, False, False, False]
    t = triggers[2]
    assert (t.cohort, t.model, t.version, t.started_at_us) == ("*", "condition", "v1", at(30))
    assert len(t.evidence["checks"]) == 3 and t.evidence["drifted_features"] == list(NAMES[:6])
    assert monitor.triggers() == [t]

    assert monitor.pending_triggers() == [t]  # handed to the pipeline, then acknowledged
    monitor.acknowledge(t.id, now_us=at(31))
    assert monitor.pending_triggers() == [] and monitor.triggers()[0].acknowledged_at_us == at(31)


def test_a_new_trigger_needs_the_cohort_cleared_and_the_cooldown_passed(monitor):
    ref = reference()
    for minutes in (0, 10, 20):
        first = run(monitor, minutes, shift=0.5, ref=ref)
    assert first.trigger is not None
    # Drifting on past the cooldown without ever clearing: still the one change, no new trigger.
    for minutes in (40, 70, 100):
        assert run(monitor, minutes, shift=0.5, ref=ref).trigger is None
    c = run(monitor, 110, shift=0.0, ref=ref)  # cleared, and the cooldown (1 h from 20) has passed
    assert (c.over, c.state) == (False, State.OK)

    again = []
    for minutes in (120, 130, 140):
        c = run(monitor, minutes, shift=0.5, ref=ref)
        again.append((c.state, c.trigger is not None))
    assert again == [(State.SUSPECT, False), (State.SUSPECT, False), (State.DRIFTING, True)]
    assert len(monitor.triggers()) == 2


def test_drift_again_within_the_cooldown_waits_for_it_to_pass(monitor):
    ref = reference()
    for minutes in (0, 10, 20):
        c = run(monitor, minutes, shift=0.5, ref=ref)
    assert c.trigger is not None
    assert run(monitor, 30, shift=0.0, ref=ref).state is State.COOLDOWN  # cleared, cooldown until 80
    for minutes in (40, 50, 60, 70):  # over again, four in a row, all inside the cooldown
        c = run(monitor, minutes, shift=0.5, ref=ref)
        assert (c.state, c.trigger) == (State.COOLDOWN, None)
    c = run(monitor, 80, shift=0.5, ref=ref)  # cooldown over; the streak began after the clear
    assert (c.state, c.trigger is not None) == (State.DRIFTING, True)
    assert [t.started_at_us for t in monitor.triggers()] == [at(20), at(80)]


def test_state_and_history_survive_a_restart(tmp_path):
    ref = reference()
    with DriftMonitor(tmp_path, policy=POLICY) as m:
        run(m, 0, shift=0.5, ref=ref)
        run(m, 10, shift=0.5, ref=ref)
        assert m.status()[0]["state"] == "suspect"
    with DriftMonitor(tmp_path, policy=POLICY) as m:  # a new process on the same data dir
        assert [s["state"] for s in m.status()] == ["suspect"]
        c = run(m, 20, shift=0.5, ref=ref)
        assert c.trigger is not None and c.state is State.DRIFTING
        history = m.history("*")
        assert [h.at_us for h in history] == [at(0), at(10), at(20)]
        assert history[-1].trigger == c.trigger and history[-1].features == c.features  # read back equal
    with DriftMonitor(tmp_path, policy=POLICY) as m:
        assert run(m, 30, shift=0.5, ref=ref).trigger is None  # the trigger is remembered too
        s = m.status()[0]
        assert (s["state"], s["last_trigger"]["started_at_us"], s["streak"]) == ("drifting", at(20), 4)
        assert s["top_features"][0] in NAMES[:6] and s["last_check_us"] == at(30)


def test_cohorts_are_judged_apart(monitor):
    ref = reference()
    north = windows(1, shift=0.5, devices=6)
    south = windows(2, devices=6)
    south = south.set_column(1, "device", pa.array([d.replace("m", "s") for d in south.column("device").to_pylist()]))
    both = pa.concat_tables([north, south])
    cohorts = {**{f"m{i:02d}": "site=north" for i in range(6)}, **{("acme", f"s{i:02d}"): "site=south" for i in range(6)}}
    checks = monitor.check(both, version="v1", now_us=at(0), reference=ref, cohorts=cohorts)
    assert [(c.cohort, c.over, c.n_current) for c in checks] == [("site=north", True, 1200), ("site=south", False, 1200)]


# --- quality gating: a stuck sensor is a quality problem, never drift -------------------------
def simulated(devices: int, *, stuck_device: str | None = None) -> tuple[pa.Table, pa.Table]:
    """(feature windows, lake-schema raw readings) of `devices` simulated machines over one hour."""
    rows, raw = [], []
    for i in range(devices):
        name = f"m{i:02d}"
        readings = device_model(name, start_us=START_US, period_us=PERIOD_US).frame(0, 3600)
        if name == stuck_device:
            readings = stuck(readings, "vibration_rms", from_us=int(readings.ts_us.min()))
        _, x, ends = window_features(readings, SPEC)
        rows.append(pa.table({"tenant": ["acme"] * len(x), "device": [name] * len(x), "window_start": ends - MIN,
                              "event_time": ends, **{n: x[:, j] for j, n in enumerate(NAMES)}}))
        raw.append(pa.table({
            "tenant": ["acme"] * len(readings.ts_us), "device": [name] * len(readings.ts_us),
            "channel": [readings.channels[c] for c in readings.channel], "ts": readings.ts_us,
            "value": readings.value, "received": readings.ts_us,
        }))
    return pa.concat_tables(rows), pa.concat_tables(raw)


def test_a_stuck_sensor_is_reported_as_a_quality_problem_not_as_drift(tmp_path):
    clean, _ = simulated(12)
    ref = clean.drop_columns(["tenant", "device", "window_start", "event_time"])
    current, raw = simulated(12, stuck_device="m00")
    quality = check_readings(raw, default_expectations(period_us=PERIOD_US), now_us=START_US + 3600 * PERIOD_US)
    assert [(c.device, c.channel) for c in quality.channels if not c.passed] == [("m00", "vibration_rms")]

    with DriftMonitor(tmp_path / "ungated", policy=POLICY) as m:  # the same data without the gate: drift
        [c] = m.check(current, version="v1", now_us=at(0), reference=ref)
    assert c.over and {"vibration_rms.std", "vibration_rms.p2p"} <= set(c.drifted_features)
    assert c.quality_problems == ()

    with DriftMonitor(tmp_path / "gated", policy=POLICY) as m:
        [c] = m.check(current, version="v1", now_us=at(0), reference=ref, quality=quality)
    assert not c.over and c.drifted_features == ()
    assert [(q.device, q.reasons) for q in c.quality_problems] == [("m00", ("vibration_rms: stuck",))]
    assert c.n_current == 11 * 60

    with DriftMonitor(tmp_path / "named", policy=POLICY) as m:  # or the caller names the bad devices
        [c] = m.check(current, version="v1", now_us=at(0), reference=ref, bad_devices=["m00"])
    assert not c.over and [q.device for q in c.quality_problems] == ["m00"]


def test_a_cohort_gated_below_min_windows_gets_no_verdict_and_keeps_its_state(monitor):
    ref = reference()
    run(monitor, 0, shift=0.5, ref=ref)
    [c] = monitor.check(windows(1, shift=0.5, rows=120), version="v1", now_us=at(10), reference=ref,
                        bad_devices=[f"m{i:02d}" for i in range(11)])
    assert (c.sufficient, c.over, c.n_current, c.state) == (False, False, 10, State.SUSPECT)
    assert "fewer than the 30" in c.reasons[0]
    assert monitor.status()[0]["streak"] == 1


# --- prediction drift and concept drift -------------------------------------------------------
def predictions_for(current: pa.Table, classes: np.ndarray) -> pa.Table:
    return pa.table({"tenant": current.column("tenant"), "device": current.column("device"),
                     "window_start": current.column("window_start"), "prediction": pa.array(classes.tolist())})


def test_prediction_drift_alone_puts_the_check_over(monitor):
    ref = reference()
    cur = windows(3)
    rng = np.random.default_rng(3)
    same = predictions_for(cur, np.asarray(CLASSES, object)[rng.choice(3, cur.num_rows, p=[0.8, 0.1, 0.1])])
    [c] = monitor.check(cur, version="v1", now_us=at(0), reference=ref, predictions=same)
    assert not c.prediction.drift.drifted and not c.over
    worn = predictions_for(cur, rng.choice(3, cur.num_rows, p=[0.4, 0.5, 0.1]))  # class indexes work too
    [c] = monitor.check(cur, version="v1", now_us=at(10), reference=ref, predictions=worn)
    assert c.drifted_features == () and c.prediction.drift.drifted and c.over
    assert c.prediction.classes == CLASSES and sum(c.prediction.current_counts) == cur.num_rows
    assert any("predicted classes drifted" in r for r in c.reasons)


def test_concept_drift_when_labels_show_the_accuracy_decayed(monitor):
    ref = reference(accuracy=0.98)
    cur = windows(4)
    rng = np.random.default_rng(4)
    labels = rng.choice(3, cur.num_rows, p=[0.8, 0.1, 0.1])
    label_table = pa.table({"device": cur.column("device"), "window_start": cur.column("window_start"),
                            "label": pa.array(np.asarray(CLASSES, object)[labels].tolist())})

    def predicted(accuracy: float) -> pa.Table:
        wrong = rng.random(cur.num_rows) >= accuracy
        return predictions_for(cur, np.where(wrong, (labels + 1) % 3, labels))

    [c] = monitor.check(cur, version="v1", now_us=at(0), reference=ref, predictions=predicted(0.98), labels=label_table)
    assert c.concept.labelled == cur.num_rows and not c.concept.drifted and not c.over
    [c] = monitor.check(cur, version="v1", now_us=at(10), reference=ref, predictions=predicted(0.80), labels=label_table)
    assert c.concept.drifted and c.concept.decay == pytest.approx(0.18, abs=0.03) and c.over
    assert any("accuracy fell" in r for r in c.reasons)
    few = label_table.slice(0, 20)  # fewer than min_labels: no verdict on accuracy
    [c] = monitor.check(cur, version="v1", now_us=at(20), reference=ref, predictions=predicted(0.5), labels=few)
    assert c.concept is None


# --- the reference sample ---------------------------------------------------------------------
def test_the_reference_is_saved_once_per_version_and_loaded_by_the_monitor(tmp_path):
    ref = reference(rows=500)
    path = save_reference(tmp_path, "condition", "v7", ref)
    assert path == tmp_path / "drift" / "reference" / "condition" / "v7.parquet"
    assert load_reference(tmp_path, "condition", "v7").equals(ref)
    with pytest.raises(ReferenceExistsError, match="never replaced"):
        save_reference(tmp_path, "condition", "v7", ref)
    with pytest.raises(UnknownReferenceError, match="v8"):
        load_reference(tmp_path, "condition", "v8")
    with DriftMonitor(tmp_path, policy=POLICY) as m:
        [c] = m.check(windows(5, rows=300), version="v7", now_us=at(0))
    assert c.n_reference == 500 and {f.method.value for f in c.features} == {"ks"}  # <= 1000 rows: KS


def test_policy_rejects_bad_settings():
    with pytest.raises(ValueError, match="consecutive"):
        DriftPolicy(consecutive=0)
    with pytest.raises(ValueError, match="min_share"):
        DriftPolicy(min_share=1.5)
