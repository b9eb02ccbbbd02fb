"""Signal models: resumable and chunk-invariant, physically plausible; faults do what they say."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import DecodeError, Readings, decode_batch
from protocol.envelope import HEADER_SIZE
from simulators import (
    DailyCycle,
    PowerSpec,
    SignalModel,
    TemperatureSpec,
    VibrationSpec,
    clock_skew,
    device_model,
    device_seed,
    dropout,
    malformed_payloads,
    spikes,
    stuck,
)
from simulators.signals import Frame

T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z: not on a day boundary, on purpose
DAY_US = 86_400_000_000
MINUTE_US = 60_000_000


def column(readings: Readings, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps and values of one channel, in time order."""
    rows = np.flatnonzero(readings.channel == readings.channels.index(name))
    rows = rows[np.argsort(readings.ts_us[rows])]
    return readings.ts_us[rows], readings.value[rows]


@pytest.fixture(scope="module")
def worn_days() -> Readings:
    """Six days at one reading per 10 minutes of a device whose bearing wears at 1/day."""
    return device_model("pump-7", start_us=T0, period_us=10 * MINUTE_US, wear_rate=1.0).frame(0, 6 * 144)


# --- determinism -------------------------------------------------------------------------------
@settings(derandomize=True, database=None, max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6), first=st.integers(0, 10**6))
def test_any_chunking_gives_identical_readings(cuts: list[int], first: int) -> None:
    model = device_model("sim-0001", start_us=T0, period_us=MINUTE_US, wear_rate=2.0)
    bounds = [0, *sorted(cuts), 300]
    parts = [model.frame(first + a, b - a) for a, b in zip(bounds, bounds[1:])]
    assert Readings.concat(parts).equals(model.frame(first, 300))


def test_split_frames_equal_the_whole() -> None:
    model = device_model("sim-0001", start_us=T0, period_us=1_000_000)
    whole = model.frame(0, 10)
    assert Readings.concat([model.frame(0, 4), model.frame(4, 6)]).equals(whole)
    assert len(whole) == 10 * 4
    assert not Readings.concat([model.frame(0, 4), model.frame(5, 6)]).equals(whole)


def test_a_restarted_device_resumes_exactly() -> None:
    first = device_model("sim-0001", start_us=T0, period_us=1_000_000, wear_rate=0.5).frame(0, 1050)
    again = device_model("sim-0001", start_us=T0, period_us=1_000_000, wear_rate=0.5).frame(1000, 50)
    tail = first.take(np.flatnonzero(first.ts_us >= T0 + 1000 * 1_000_000))
    assert again.equals(tail)


def test_different_devices_differ() -> None:
    a = device_model("sim-0001", start_us=T0, period_us=1_000_000).frame(0, 100)
    b = device_model("sim-0002", start_us=T0, period_us=1_000_000).frame(0, 100)
    c = device_model("sim-0001", seed_base=1, start_us=T0, period_us=1_000_000).frame(0, 100)
    for name in ("temperature", "humidity", "vibration_rms", "power_w"):
        assert not np.array_equal(column(a, name)[1], column(b, name)[1])
        assert not np.array_equal(column(a, name)[1], column(c, name)[1])


def test_seeds_and_noise_are_pinned_across_processes_and_versions() -> None:
    # hash() would change per process; these must not change per release either.
    assert device_seed("sim-0001") == 12905715417068367099
    assert device_seed("sim-0001", seed_base=1) == 11412074891748498987
    t = np.arange(3, dtype=np.int64)
    frame = Frame(42, t, t, t.astype(float), t.astype(float))
    assert frame.uniform("x", t).tolist() == [0.5195037286950288, 0.1461839121638847, 0.9018655876760145]


def test_noise_is_standard_normal() -> None:
    t = np.arange(20_000, dtype=np.int64)
    z = Frame(7, t, t, t.astype(float), t.astype(float)).normal("temperature")
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1.0) < 0.03


# --- shape and physics -------------------------------------------------------------------------
def test_frame_layout_and_timestamps() -> None:
    model = device_model("sim-0001", start_us=T0, period_us=250_000)
    r = model.frame(8, 5)
    assert r.channels == ("temperature", "humidity", "vibration_rms", "power_w")
    ts, _ = column(r, "power_w")
    assert ts.tolist() == [T0 + (8 + i) * 250_000 for i in range(5)]
    assert len(model.frame(3, 0)) == 0
    assert model.tick_at(T0 + 8 * 250_000) == 8
    assert model.tick_at(T0 + 8 * 250_000 + 1) == 9
    assert model.tick_at(0) == 0


def test_values_stay_in_physical_ranges(worn_days: Readings) -> None:
    _, temp = column(worn_days, "temperature")
    _, hum = column(worn_days, "humidity")
    _, vib = column(worn_days, "vibration_rms")
    _, power = column(worn_days, "power_w")
    assert 5.0 < temp.min() and temp.max() < 35.0
    assert 0.0 <= hum.min() and hum.max() <= 100.0
    assert 0.0 <= vib.min() and vib.max() <= 45.0
    assert 100.0 < power.min() and power.max() < 600.0
    assert np.all(np.isfinite(worn_days.value))


@pytest.mark.parametrize(("name", "decimals"), [("temperature", 2), ("humidity", 1), ("vibration_rms", 3), ("power_w", 1)])
def test_values_are_rounded_to_the_sensor_resolution(worn_days: Readings, name: str, decimals: int) -> None:
    _, v = column(worn_days, name)
    p = 10.0**decimals
    assert np.array_equal(np.round(v * p) / p, v)  # exactly what the codec's decimal mode checks
    assert not np.array_equal(np.round(v * p / 10) / (p / 10), v)  # and not coarser


def test_the_daily_cycle_is_visible() -> None:
    # Peak hour 15:00 UTC ± 2 h, so 09:00-21:00 UTC is the warm half for every device.
    for device in ("sim-0001", "sim-0002", "sim-0003"):
        r = device_model(device, start_us=T0, period_us=10 * MINUTE_US).frame(0, 4 * 144)
        ts, temp = column(r, "temperature")
        _, hum = column(r, "humidity")
        hour = (ts % DAY_US) / 3_600_000_000
        warm = (hour >= 9) & (hour < 21)
        assert temp[warm].mean() > temp[~warm].mean() + 3.0
        assert hum[warm].mean() < hum[~warm].mean()
        assert np.corrcoef(temp, hum)[0, 1] < -0.8


def test_the_daily_phase_differs_per_device_within_the_jitter() -> None:
    climate = DailyCycle()
    peaks = {climate.peak_s(device_seed(f"sim-{i:04d}")) / 3600 for i in range(20)}
    assert len(peaks) == 20 and all(13.0 <= p <= 17.0 for p in peaks)


def test_bearing_wear_grows_and_accelerates(worn_days: Readings) -> None:
    _, vib = column(worn_days, "vibration_rms")
    daily = vib.reshape(6, 144).mean(axis=1)
    assert daily[-1] > daily[0] + 0.3
    assert daily[5] - daily[4] > daily[4] - daily[3] > 0  # accelerating once it has started


def test_a_healthy_machine_stays_flat() -> None:
    r = device_model("pump-7", start_us=T0, period_us=10 * MINUTE_US, wear_rate=0.0).frame(0, 6 * 144)
    _, vib = column(r, "vibration_rms")
    daily = vib.reshape(6, 144).mean(axis=1)
    assert np.ptp(daily) < 0.02
    assert abs(daily.mean() - 1.2) < 0.02


def test_power_is_a_piecewise_constant_duty_cycle() -> None:
    spec = PowerSpec(noise_w=0.0)
    model = SignalModel(seed=3, start_us=0, period_us=MINUTE_US, channels=(spec,))
    _, power = column(model.frame(0, 15 * 400), "power_w")
    slots = power.reshape(400, 15)
    assert np.all(slots == slots[:, :1])  # constant within each 15-minute slot
    loaded = slots[:, 0] > spec.base_w
    assert 0.25 < loaded.mean() < 0.45
    assert np.all(slots[~loaded, 0] == spec.base_w)


def test_settings_reject_bad_values_by_name() -> None:
    with pytest.raises(ValueError, match="period_us 0"):
        SignalModel(seed=1, start_us=T0, period_us=0)
    with pytest.raises(ValueError, match="noise_c is -1"):
        TemperatureSpec(noise_c=-1)
    with pytest.raises(ValueError, match="decimals is 9"):
        VibrationSpec(decimals=9)
    with pytest.raises(ValueError, match=r"\['temperature'\] appear more than once"):
        SignalModel(seed=1, start_us=T0, period_us=1, channels=(TemperatureSpec(), TemperatureSpec()))
    with pytest.raises(ValueError, match="first_tick -1"):
        SignalModel(seed=1, start_us=T0, period_us=1).frame(-1, 3)
    with pytest.raises(ValueError, match="Invalid device"):
        device_model("no/slashes", start_us=T0, period_us=1)


# --- faults ------------------------------------------------------------------------------------
@pytest.fixture
def minute() -> Readings:
    return device_model("sim-0001", start_us=T0, period_us=1_000_000).frame(0, 60)


def test_stuck_flat_lines_at_the_last_value(minute: Readings) -> None:
    at = T0 + 20 * 1_000_000
    out = stuck(minute, "temperature", from_us=at)
    ts, before = column(minute, "temperature")
    _, after = column(out, "temperature")
    assert np.array_equal(after[ts < at], before[ts < at])
    assert np.all(after[ts >= at] == before[ts < at][-1])
    assert np.array_equal(column(out, "humidity")[1], column(minute, "humidity")[1])


def test_spikes_hit_every_nth_reading(minute: Readings) -> None:
    out = spikes(minute, "vibration_rms", every=10, magnitude=25.0)
    diff = column(out, "vibration_rms")[1] - column(minute, "vibration_rms")[1]
    assert np.flatnonzero(diff).tolist() == [9, 19, 29, 39, 49, 59]
    assert np.allclose(diff[diff != 0], 25.0)
    assert np.array_equal(column(out, "power_w")[1], column(minute, "power_w")[1])
    with pytest.raises(ValueError, match="every=0"):
        spikes(minute, "vibration_rms", every=0, magnitude=1.0)


def test_clock_skew_shifts_every_timestamp(minute: Readings) -> None:
    out = clock_skew(minute, -3_500_000)
    assert np.array_equal(out.ts_us, minute.ts_us - 3_500_000)
    assert np.array_equal(out.value, minute.value)
    with pytest.raises(ValueError, match="out of int64"):
        clock_skew(minute, 2**63 - 1)


def test_dropout_removes_only_the_window(minute: Readings) -> None:
    lo, hi = T0 + 10 * 1_000_000, T0 + 25 * 1_000_000
    out = dropout(minute, "humidity", from_us=lo, to_us=hi)
    ts, _ = column(out, "humidity")
    assert len(ts) == 60 - 15 and not np.any((ts >= lo) & (ts < hi))
    assert len(out) == len(minute) - 15
    assert np.array_equal(column(out, "temperature")[1], column(minute, "temperature")[1])
    with pytest.raises(ValueError, match="'pressure' is not in these readings"):
        dropout(minute, "pressure", from_us=lo, to_us=hi)


def test_faults_leave_their_input_alone(minute: Readings) -> None:
    copy = Readings(minute.channels, minute.channel.copy(), minute.ts_us.copy(), minute.value.copy())
    stuck(minute, "temperature", from_us=T0)
    spikes(minute, "temperature", every=2, magnitude=9.0)
    clock_skew(minute, 5)
    dropout(minute, "temperature", from_us=T0, to_us=T0 + 10**7)
    assert minute.equals(copy)


def test_every_malformed_payload_is_rejected_by_the_decoder() -> None:
    payloads = malformed_payloads(1)
    labels = [label for label, _ in payloads]
    assert len(labels) == len(set(labels)) >= 20
    assert {"empty", "magic_then_random", "truncated_header", "corrupt_body"} <= set(labels)
    assert payloads == malformed_payloads(1)
    assert payloads != malformed_payloads(2)
    assert len(dict(payloads)["header_without_ids"]) == HEADER_SIZE  # faults.py's copy of the layout
    for label, data in payloads:
        with pytest.raises(DecodeError):
            decode_batch(data)
