"""Data-quality checks on seeded simulator signals: clean passes, each fault is caught by its own check.

Tolerances the faults are sized against (default_expectations at a 10 s period):
stuck: a run of more than 10 identical samples; spikes: robust z > 10 with the scale floored at the
channel's noise σ (a 2.0 mm/s spike on vibration_rms is 40 σ and stays in range); silence: any gap
or staleness over 120 s; clock skew: device time more than 5 s ahead of arrival, or even the most
timely reading more than 120 s late; sampling: median interval within ±10 % of the period and at
most 5 % of intervals off it; nulls: at most 1 %.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from hub.quality import (
    Check,
    Expectation,
    InvalidExpectationError,
    InvalidReadingsError,
    UnknownSeriesError,
    check_lake,
    check_readings,
    default_expectations,
    flagged_rows,
    is_quality_problem,
)
from hub.storage.lake import SCHEMA, Lake
from protocol import Readings
from simulators import faults
from simulators.signals import device_model

PERIOD = 10_000_000
START = 1_700_000_000_000_000
N = 1500
MID = START + (N // 2) * PERIOD
CHANNELS = ("humidity", "power_w", "temperature", "vibration_rms")
EXPECT = default_expectations(period_us=PERIOD)


def readings(device: str = "sim-0001", *, period_us: int = PERIOD, n: int = N) -> Readings:
    return device_model(device, start_us=START, period_us=period_us).frame(0, n)


def arrival(r: Readings, *, seed: int = 7) -> np.ndarray:
    """Arrival times: 0.3 s to 2.3 s after the true reading time, seeded."""
    rng = np.random.default_rng(seed)
    return r.ts_us + 300_000 + rng.integers(0, 2_000_000, len(r))


def lake_table(r: Readings, device: str = "sim-0001", *, received: np.ndarray | None = None) -> pa.Table:
    n = len(r)
    cols = {
        "tenant": np.full(n, "acme", dtype=object),
        "device": np.full(n, device, dtype=object),
        "kind": np.full(n, "telemetry", dtype=object),
        "channel": np.asarray(r.channels, dtype=object)[r.channel],
        "ts": r.ts_us,
        "value": r.value,
        "epoch": np.ones(n, np.uint32),
        "seq": np.arange(n, dtype=np.uint64),
        "received": arrival(r) if received is None else received,
    }
    return pa.Table.from_arrays([pa.array(cols[f.name], type=f.type) for f in SCHEMA], schema=SCHEMA)


def now_after(table: pa.Table) -> int:
    return int(table.column("received").cast(pa.int64()).to_numpy().max()) + 1_000_000


def failures(report) -> set[tuple[str, str, str]]:
    return {(c.device, c.channel, check.value) for c in report.channels for check in c.failed}


def rows_of(r: Readings, channel: str) -> np.ndarray:
    return np.flatnonzero(r.channel == r.channels.index(channel))


# --- clean ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["sim-0001", "sim-0002", "press-17"])
def test_clean_signals_pass_every_check(device: str) -> None:
    table = lake_table(readings(device), device)
    report = check_readings(table, EXPECT, now_us=now_after(table))
    assert [c.channel for c in report.channels] == list(CHANNELS)
    for c in report.channels:
        assert c.passed, [r.detail for r in c.results if not r.passed]
        assert {r.check for r in c.results} == set(Check)
        assert not is_quality_problem(report, device, c.channel)
    assert report.health(device) == 1.0
    assert flagged_rows(report).num_rows == 0


# --- each simulator fault, caught by its own check and only that one -------------------------
CLEAN = readings()
TRUE_RECEIVED = arrival(CLEAN)  # a skewed clock moves ts, never the hub's arrival stamp

FAULTS = {
    "stuck": (faults.stuck(CLEAN, "temperature", from_us=MID), None, {("temperature", "stuck")}),
    "spikes": (faults.spikes(CLEAN, "vibration_rms", every=50, magnitude=2.0), None, {("vibration_rms", "spikes")}),
    "dropout": (faults.dropout(CLEAN, "temperature", from_us=MID, to_us=MID + 1_800_000_000), None,
                {("temperature", "silence")}),
    "clock_ahead": (faults.clock_skew(CLEAN, 60_000_000), TRUE_RECEIVED, {(c, "clock_skew") for c in CHANNELS}),
    "clock_behind": (faults.clock_skew(CLEAN, -900_000_000), TRUE_RECEIVED, {(c, "clock_skew") for c in CHANNELS}),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_is_flagged_by_its_check_only(fault: str) -> None:
    broken, received, expected = FAULTS[fault]
    table = lake_table(broken, received=received)
    now = now_after(lake_table(CLEAN))
    report = check_readings(table, EXPECT, now_us=now)
    assert failures(report) == {("sim-0001", ch, check) for ch, check in expected}
    for ch, check in expected:
        assert is_quality_problem(report, "sim-0001", ch)
        assert "sim-0001" in report.channel("sim-0001", ch).result(check).detail
    assert report.health("sim-0001") < 1.0


def test_dropout_at_the_end_is_silence_by_arrival_time() -> None:
    end = START + N * PERIOD
    broken = faults.dropout(CLEAN, "humidity", from_us=end - 600_000_000, to_us=end)
    report = check_readings(lake_table(broken), EXPECT, now_us=now_after(lake_table(CLEAN)))
    assert failures(report) == {("sim-0001", "humidity", "silence")}
    result = report.channel("sim-0001", "humidity").result(Check.SILENCE)
    assert result.value > 590e6 and "not been heard from" in result.detail


def test_stuck_flags_the_frozen_rows_and_a_short_repeat_is_tolerated() -> None:
    report = check_readings(lake_table(FAULTS["stuck"][0]), EXPECT, now_us=now_after(lake_table(CLEAN)))
    temp = report.channel("sim-0001", "temperature")
    rows = rows_of(CLEAN, "temperature")
    frozen = rows[N // 2:]
    assert set(frozen) <= set(temp.flags[Check.STUCK])
    assert len(temp.flags[Check.STUCK]) <= len(frozen) + EXPECT["temperature"].stuck_window
    # 9 frozen samples after the last real one: a run of 10, at the limit, not a fault
    short = faults.stuck(CLEAN, "temperature", from_us=START + (N - 9) * PERIOD)
    assert failures(check_readings(lake_table(short), EXPECT, now_us=now_after(lake_table(CLEAN)))) == set()


def test_spikes_flags_exactly_the_spiked_rows() -> None:
    broken = FAULTS["spikes"][0]
    report = check_readings(lake_table(broken), EXPECT, now_us=now_after(lake_table(CLEAN)))
    spiked = rows_of(CLEAN, "vibration_rms")[49::50]
    np.testing.assert_array_equal(report.channel("sim-0001", "vibration_rms").flags[Check.SPIKES], spiked)


def test_duplicates_are_flagged_by_duplicates_only() -> None:
    base = lake_table(CLEAN)
    repeats = base.take(np.arange(100, 120))
    table = pa.concat_tables([base, repeats])
    report = check_readings(table, EXPECT, now_us=now_after(base))
    got = failures(report)
    assert {check for _, _, check in got} == {"duplicates"}
    flagged = flagged_rows(report)
    np.testing.assert_array_equal(flagged.column("row").to_numpy(), np.arange(len(CLEAN), len(CLEAN) + 20))
    assert set(flagged.column("checks").to_pylist()) == {"duplicates"}


def test_out_of_range_is_flagged_by_range_only() -> None:
    value = CLEAN.value.copy()
    bad = rows_of(CLEAN, "temperature")[[10, 500, 900]]
    value[bad] = [60.0, -45.0, 99.5]
    broken = Readings(CLEAN.channels, CLEAN.channel.copy(), CLEAN.ts_us.copy(), value)
    report = check_readings(lake_table(broken), EXPECT, now_us=now_after(lake_table(CLEAN)))
    assert failures(report) == {("sim-0001", "temperature", "range")}
    result = report.channel("sim-0001", "temperature").result(Check.RANGE)
    assert result.flagged == 3 and "99.5" in result.detail
    np.testing.assert_array_equal(flagged_rows(report).column("row").to_numpy(), np.sort(bad))


def test_nulls_are_flagged_by_nulls_only() -> None:
    value = CLEAN.value.copy()
    hum = rows_of(CLEAN, "humidity")
    value[hum[::20]] = np.nan  # 5 %
    broken = Readings(CLEAN.channels, CLEAN.channel.copy(), CLEAN.ts_us.copy(), value)
    report = check_readings(lake_table(broken), EXPECT, now_us=now_after(lake_table(CLEAN)))
    assert failures(report) == {("sim-0001", "humidity", "nulls")}
    assert report.channel("sim-0001", "humidity").result(Check.NULLS).value == pytest.approx(0.05)


def test_wrong_sampling_rate_is_flagged_by_sampling_only() -> None:
    slow = readings(period_us=2 * PERIOD, n=N // 2)  # 20 s period against an expected 10 s
    table = lake_table(slow)
    report = check_readings(table, EXPECT, now_us=now_after(table))
    assert failures(report) == {("sim-0001", ch, "sampling") for ch in CHANNELS}


# --- the report -----------------------------------------------------------------------------
def test_health_is_lower_for_the_faulty_device_and_the_input_is_untouched() -> None:
    good = lake_table(readings("sim-0002"), "sim-0002")
    bad = lake_table(FAULTS["stuck"][0], "sim-0001")
    table = pa.concat_tables([good, bad])
    before = table.to_pydict()
    report = check_readings(table, EXPECT, now_us=max(now_after(good), now_after(bad)))
    assert table.to_pydict() == before
    scores = report.device_scores()
    assert scores[("acme", "sim-0002")] == 1.0
    assert 0.0 <= scores[("acme", "sim-0001")] < 0.9
    # the verdict drift consults: the stuck channel is a quality problem, its neighbours are not
    assert is_quality_problem(report, "sim-0001", "temperature")
    assert not is_quality_problem(report, "sim-0001", "humidity")
    assert not is_quality_problem(report, "sim-0002", "temperature")
    flagged = flagged_rows(report)
    rows = flagged.column("row").to_numpy()
    assert rows.min() >= good.num_rows and set(flagged.column("device").to_pylist()) == {"sim-0001"}
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    np.testing.assert_array_equal(flagged.column("ts").cast(pa.int64()).to_numpy(), ts[rows])
    assert any(m["name"] == "quality_health" and m["device"] == "sim-0001" for m in report.metrics())


def test_unknown_series_raises_and_a_missing_channel_is_silent() -> None:
    only_temp = CLEAN.take(rows_of(CLEAN, "temperature"))
    report = check_readings(lake_table(only_temp), EXPECT, now_us=now_after(lake_table(CLEAN)))
    assert failures(report) == {("sim-0001", ch, "silence") for ch in CHANNELS if ch != "temperature"}
    assert report.channel("sim-0001", "humidity").score == 0.0
    with pytest.raises(UnknownSeriesError, match="sim-9999"):
        is_quality_problem(report, "sim-9999", "temperature")


def test_unexpected_channel_is_listed_unchecked() -> None:
    report = check_readings(lake_table(CLEAN), {"temperature": EXPECT["temperature"]},
                            now_us=now_after(lake_table(CLEAN)))
    assert [c.channel for c in report.channels] == ["temperature"]
    assert {k[2] for k in report.unchecked} == {"humidity", "power_w", "vibration_rms"}


def test_check_lake_reads_a_window_of_the_lake(tmp_path) -> None:
    lake = Lake(tmp_path)
    lake.append(lake_table(FAULTS["stuck"][0]))
    report = check_lake(tmp_path, since_us=START, until_us=START + N * PERIOD, expectations=EXPECT,
                        now_us=now_after(lake_table(CLEAN)))
    assert failures(report) == {("sim-0001", "temperature", "stuck")}


def test_bad_expectations_and_readings_are_rejected_with_the_value() -> None:
    with pytest.raises(InvalidExpectationError, match="stuck_max_run is 1"):
        Expectation(channel="t", min_value=0, max_value=1, period_us=1, max_silence_us=1,
                    spike_scale_floor=1.0, stuck_max_run=1)
    with pytest.raises(InvalidExpectationError, match="min_value is 2"):
        Expectation(channel="t", min_value=2, max_value=1, period_us=1, max_silence_us=1, spike_scale_floor=1.0)
    with pytest.raises(InvalidReadingsError, match="received"):
        check_readings(lake_table(CLEAN).drop_columns(["received"]), EXPECT, now_us=0)
    with pytest.raises(InvalidReadingsError, match="'value'"):
        check_readings(lake_table(CLEAN).set_column(5, "value", pa.array(["x"] * len(CLEAN))), EXPECT, now_us=0)
