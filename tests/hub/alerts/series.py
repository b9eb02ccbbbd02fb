"""Seeded synthetic series for the alert tests: a daily duty cycle, and stationary noise."""

from __future__ import annotations

import numpy as np

from hub.alerts import DetectorBank, Finding

H = 3_600_000_000  # µs per hour
M10 = 600_000_000  # µs per 10-minute window
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, a day boundary
PER_DAY = 144  # 10-minute windows


def duty_cycle(days: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """10-minute window ends and means of a machine at 20 from 08:00 to 16:00 UTC and at 5 otherwise,
    with N(0, 0.5) noise: the `i`th window is [T0 + i * M10, T0 + (i + 1) * M10)."""
    rng = np.random.default_rng(seed)
    ends = T0 + M10 * np.arange(1, days * PER_DAY + 1, dtype=np.int64)
    hour = (ends - 1) // H % 24
    return ends, np.where((hour >= 8) & (hour < 16), 20.0, 5.0) + rng.normal(0.0, 0.5, len(ends))


def feed(bank: DetectorBank, ends: np.ndarray, values: np.ndarray, *, tenant: str = "acme", device: str = "m1",
         channel: str = "temp") -> list[Finding]:
    out: list[Finding] = []
    for end, value in zip(ends.tolist(), values.tolist()):
        out += bank.observe(tenant, device, channel, end, value)
    return out


def window_index(f: Finding) -> int:
    return (f.window_end_us - T0) // M10 - 1
