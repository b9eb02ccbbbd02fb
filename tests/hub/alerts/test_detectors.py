"""The detectors on seeded synthetic series: seasonality, spikes, level shifts, prediction runs, state round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hub.alerts import (
    PRED_CHANNEL, AlertConfigError, DetectorBank, DetectorStateError, EwmaConfig, FindingKind, PredictionConfig,
    RobustZConfig, Seasonality,
)
from tests.hub.alerts.series import H, PER_DAY, T0, duty_cycle, feed, window_index

FLAT = Seasonality(buckets=1)
HOURLY = Seasonality()  # 24 buckets over a day
SPIKE_AT = 12 * PER_DAY + 3 * 6 + 2  # day 12, window 03:20-03:30


def hours(findings) -> set[int]:
    return {(f.window_end_us - 1) // H % 24 for f in findings}


def test_a_daily_cycle_alerts_only_against_a_baseline_without_seasons():
    ends, values = duty_cycle(14, seed=3)
    assert feed(DetectorBank(robust_z=RobustZConfig(season=HOURLY), ewma=EwmaConfig(season=HOURLY)),
                ends, values) == []

    flat = feed(DetectorBank(robust_z=RobustZConfig(season=FLAT), ewma=None), ends, values)
    # Every shift start and end: the last 8 hours say "off" at 08:00 and "on" at 16:00, until half
    # of the ring (4 hours) has the new level.
    assert len(flat) > 600 and hours(flat) == {8, 9, 10, 11, 16, 17, 18, 19}
    ewma = feed(DetectorBank(robust_z=None, ewma=EwmaConfig(season=FLAT)), ends, values)
    assert len(ewma) > 10 and hours(ewma) == {8}


def test_a_spike_is_found_by_both_detectors_at_its_window_only():
    ends, values = duty_cycle(24, seed=3)
    values[SPIKE_AT] += 8.0  # 16 σ
    found = feed(DetectorBank(robust_z=RobustZConfig(season=HOURLY), ewma=EwmaConfig(season=HOURLY)), ends, values)
    assert [(window_index(f), f.kind) for f in found] == [(SPIKE_AT, FindingKind.ROBUST_Z),
                                                          (SPIKE_AT, FindingKind.EWMA)]
    rz = found[0]
    assert (rz.tenant, rz.device, rz.channel, rz.window_end_us) == ("acme", "m1", "temp", int(ends[SPIKE_AT]))
    assert rz.value == values[SPIKE_AT] and abs(rz.baseline - 5.0) < 0.3 and rz.score > 10
    assert "robust z" in rz.message and rz.label is None


def test_a_level_shift_is_found_at_once_and_learned_after_half_a_ring():
    ends, values = duty_cycle(24, seed=3)
    values[SPIKE_AT:] += 8.0
    bank = DetectorBank(robust_z=RobustZConfig(season=HOURLY), ewma=None)
    found = [window_index(f) for f in feed(bank, ends, values)]
    assert found[:3] == [SPIKE_AT, SPIKE_AT + 1, SPIKE_AT + 2]
    # 6 windows a day per bucket, 24 of the ring's 48 values shifted: the new level is normal after 4 days.
    assert 3.5 * PER_DAY < found[-1] - SPIKE_AT < 4 * PER_DAY
    assert len(found) > 400


def test_stationary_noise_spike_and_shift_without_seasons():
    rng = np.random.default_rng(11)
    ends = T0 + 60_000_000 * np.arange(1, 1001, dtype=np.int64)  # 1-minute windows
    clean = rng.normal(10.0, 1.0, 1000)
    bank = dict(robust_z=RobustZConfig(season=FLAT), ewma=EwmaConfig(season=FLAT))
    assert feed(DetectorBank(**bank), ends, clean) == []

    spiked = clean.copy()
    spiked[500] += 10.0
    found = feed(DetectorBank(**bank), ends, spiked)
    assert [(f.window_end_us, f.kind) for f in found] == [(int(ends[500]), FindingKind.ROBUST_Z),
                                                           (int(ends[500]), FindingKind.EWMA)]

    shifted = clean.copy()
    shifted[700:] += 10.0
    found = feed(DetectorBank(**bank), ends, shifted)
    assert {(f.window_end_us, f.kind) for f in found} >= {(int(ends[700]), FindingKind.ROBUST_Z),
                                                          (int(ends[700]), FindingKind.EWMA)}
    assert min(f.window_end_us for f in found) == int(ends[700])


def test_predictions_alert_after_k_non_normal_windows_in_a_row():
    bank = DetectorBank(prediction=PredictionConfig(consecutive=3))
    classes = ["normal", "bearing_wear", "bearing_wear", "normal", "bearing_wear", "sensor_fault", "bearing_wear",
               "bearing_wear", "normal", "bearing_wear"]
    got = [bank.observe_prediction("acme", "m1", T0 + i * 60_000_000, c) for i, c in enumerate(classes)]
    assert [i for i, f in enumerate(got) if f] == [6, 7]
    f = got[6]
    assert (f.channel, f.kind, f.label, f.value, f.score, f.baseline) == (
        PRED_CHANNEL, FindingKind.PREDICTION, "bearing_wear", 3.0, 3.0, 3.0)
    assert f.message == "The device's model predicted bearing_wear for 3 window(s) in a row."
    assert got[7].value == 4.0
    # Devices are independent.
    assert bank.observe_prediction("acme", "m2", T0, "sensor_fault") is None


def test_prediction_classes_default_to_the_condition_models():
    from models.condition.data import CLASSES

    assert PredictionConfig().normal == (CLASSES[0],)


def test_stale_windows_and_non_finite_values_are_skipped_and_counted():
    bank = DetectorBank(robust_z=RobustZConfig(season=FLAT, window=4, min_obs=2), ewma=None)
    for i in range(5):
        bank.observe("acme", "m1", "temp", T0 + i, 1.0 + i % 2)
    assert bank.observe("acme", "m1", "temp", T0 + 4, 1e9) == []  # the same window again: a replay or an update
    assert bank.observe("acme", "m1", "temp", T0 + 2, 1e9) == []  # an older one
    assert bank.observe("acme", "m1", "temp", T0 + 9, float("nan")) == []
    assert bank.observe_prediction("acme", "m1", T0, "normal") is None
    assert bank.observe_prediction("acme", "m1", T0, "bearing_wear") is None
    assert (bank.stats.observed, bank.stats.stale, bank.stats.non_finite) == (6, 3, 1)
    assert len(bank.observe("acme", "m1", "temp", T0 + 10, 1e9)) == 1


def test_state_round_trip_gives_the_same_later_findings():
    ends, values = duty_cycle(16, seed=5)
    values[14 * PER_DAY + 40] += 9.0
    values[15 * PER_DAY:] -= 6.0
    config = dict(robust_z=RobustZConfig(season=HOURLY, window=24, min_obs=12),
                  ewma=EwmaConfig(season=HOURLY, alpha=0.1, min_obs=6), prediction=PredictionConfig(consecutive=2))
    rng = np.random.default_rng(9)
    labels = rng.choice(["normal", "bearing_wear", "sensor_fault"], size=len(ends), p=[0.5, 0.3, 0.2])

    def step(bank: DetectorBank, i: int) -> list:
        end = int(ends[i])
        found = bank.observe("acme", "m1", "temp", end, float(values[i]))
        found += bank.observe("acme", "m2", "vib.rms", end, float(values[i]) * 0.1 + 3.0)
        found.append(bank.observe_prediction("acme", "m1", end, str(labels[i])))
        return found

    a = DetectorBank(**config)
    half = 13 * PER_DAY
    for i in range(half):
        step(a, i)
    saved = json.loads(json.dumps(a.to_state(), allow_nan=False))
    b = DetectorBank.from_state(saved)
    assert b.to_state() == a.to_state() and len(b) == len(a) == 3

    later_a = [step(a, i) for i in range(half, len(ends))]
    later_b = [step(b, i) for i in range(half, len(ends))]
    assert later_a == later_b
    kinds = {f.kind for found in later_a for f in found if f is not None}
    assert kinds == {FindingKind.ROBUST_Z, FindingKind.EWMA, FindingKind.PREDICTION}
    assert a.to_state() == b.to_state()


def test_a_bank_with_a_detector_off_round_trips_too():
    a = DetectorBank(robust_z=None, prediction=None)
    a.observe("acme", "m1", "temp", T0, 1.0)
    b = DetectorBank.from_state(json.loads(json.dumps(a.to_state())))
    assert (b.robust_z, b.prediction, b.ewma) == (None, None, a.ewma)
    assert b.observe_prediction("acme", "m1", T0, "bearing_wear") is None


def test_a_state_that_does_not_fit_is_refused_with_the_reason():
    state = DetectorBank().to_state()
    with pytest.raises(DetectorStateError, match="format 2 cannot be loaded"):
        DetectorBank.from_state({**state, "format": 2})
    with pytest.raises(DetectorStateError, match="KeyError: 'channels'"):
        DetectorBank.from_state({k: v for k, v in state.items() if k != "channels"})
    bad = json.loads(json.dumps(state))
    bad["config"]["ewma"]["alpha"] = 0
    with pytest.raises(DetectorStateError, match=r"ewma.alpha = 0"):
        DetectorBank.from_state(bad)
    small = DetectorBank(robust_z=RobustZConfig(window=2, min_obs=1))
    for i in range(3):
        small.observe("acme", "m1", "temp", T0 + i * H * 24, 1.0)
    big = json.loads(json.dumps(small.to_state()))
    big["channels"][0][4]["0"] = [1.0, 2.0, 3.0]
    with pytest.raises(DetectorStateError, match="bucket '0' with 3 value"):
        DetectorBank.from_state(big)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Seasonality(buckets=0), "season.buckets = 0 is refused: it must be an integer from 1 to 10000"),
    (lambda: Seasonality(period_us=1.5), "season.period_us = 1.5"),
    (lambda: RobustZConfig(window=48, min_obs=49),
     "robust_z.min_obs = 49 is refused: it must be an integer from 1 to 48"),
    (lambda: RobustZConfig(floor=0.0), "robust_z.floor = 0.0 is refused: it must be a finite number above 0"),
    (lambda: EwmaConfig(alpha=1.5), r"ewma.alpha = 1.5 is refused: it must be in \(0, 1\]"),
    (lambda: EwmaConfig(threshold=float("inf")), "ewma.threshold = inf"),
    (lambda: PredictionConfig(consecutive=0), "prediction.consecutive = 0"),
    (lambda: PredictionConfig(normal="normal"), "prediction.normal = 'normal'"),
])
def test_settings_out_of_range_name_the_setting_and_value(make, message):
    with pytest.raises(AlertConfigError, match=message):
        make()


def test_a_window_belongs_to_the_bucket_of_its_last_instant():
    day = Seasonality()
    assert [day.bucket(T0 + H), day.bucket(T0 + H + 1), day.bucket(T0 + 24 * H)] == [0, 1, 23]
    assert FLAT.bucket(T0 + 5 * H) == 0
