"""VibrationWaveform: a chunk-invariant accelerometer signal whose band energies move up as wear grows."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.features import Aggregate, FeatureSpec, window_features
from simulators import SignalModel, default_channels
from simulators.signals import VibrationWaveform

T0 = 1_700_000_040_000_000  # on a minute boundary
S = 1_000_000
DAY_US = 86_400 * S
BANDS = (("vibration", ((0.0, 30.0), (30.0, 60.0), (60.0, 101.0))),)  # 1x | 2x | 3x, 4x and the defect tone
SPEC = FeatureSpec(window_us=10 * S, channels=("vibration",), aggregates=(Aggregate.STD,), bands=BANDS)


def model(**kwargs: object) -> SignalModel:
    return SignalModel(seed=42, start_us=T0, period_us=5_000, channels=(VibrationWaveform(**kwargs),))  # type: ignore[arg-type]


def test_chunks_and_restarts_give_the_same_bits() -> None:
    m = model(wear_rate_per_day=2.0, wear_onset_days=0.0)
    whole = m.frame(0, 5000).value
    parts = np.concatenate([m.frame(0, 1234).value, m.frame(1234, 3000).value, m.frame(4234, 766).value])
    assert whole.tobytes() == parts.tobytes()


def test_a_healthy_machine_rings_at_its_shaft_frequency() -> None:
    names, matrix, _ = window_features(model().frame(0, 2000), SPEC)  # 10 s at 200 Hz
    std, low, mid, high = matrix[0]
    assert low > 0.85 * std**2 and mid < 0.15 * low and high < 0.02 * low
    np.testing.assert_allclose(low + mid + high, std**2, rtol=1e-9)


def test_wear_shifts_the_energy_up_the_spectrum() -> None:
    m = model(wear_rate_per_day=1.0, wear_onset_days=0.0, wear_onset_jitter_days=0.0)
    share = []
    for day in (0, 1, 2, 3):
        first = (day * DAY_US) // 5_000
        _, matrix, _ = window_features(m.frame(first, 2000), SPEC)
        std, low, mid, high = matrix[0]
        share.append((mid + high) / std**2)
    assert share == sorted(share) and share[0] < 0.15 < 0.5 < 0.95 < share[-1]


def test_not_in_the_default_fleet_and_bad_params_are_refused() -> None:
    assert not any(isinstance(c, VibrationWaveform) for c in default_channels(wear_rate=1.0))
    for kwargs, message in [
        ({"shaft_hz": 0.0}, "shaft_hz is 0.0"),
        ({"harmonics": 0}, "harmonics is 0"),
        ({"noise": -1.0}, "noise is -1.0"),
        ({"name": "bad name"}, "bad name"),
    ]:
        with pytest.raises(ValueError) as info:
            VibrationWaveform(**kwargs)  # type: ignore[arg-type]
        assert message in str(info.value)
