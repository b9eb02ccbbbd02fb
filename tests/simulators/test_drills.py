"""Drills for the closed loop: a world that changes (shift) and a sensor that freezes (hold), in the
fault functions and through the agent's simulated input."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agent.config import SimulatedInputConfig
from agent.inputs.simulated import SimulatedInput
from protocol import Readings
from simulators.faults import hold, shift

T0 = 1_700_000_000_000_000
S = 1_000_000


def channel(r: Readings, name: str) -> tuple[np.ndarray, np.ndarray]:
    m = r.channel == r.channels.index(name)
    return r.ts_us[m], r.value[m]


def test_shift_and_hold_change_only_their_channel_from_their_time():
    r = Readings.from_rows([("t", T0 + i * S, float(i)) for i in range(10)] + [("v", T0 + i * S, 1.0) for i in range(10)])
    shifted = shift(r, "t", from_us=T0 + 5 * S, offset=10.0, scale=2.0)
    assert channel(shifted, "t")[1].tolist() == [0, 1, 2, 3, 4, 20, 22, 24, 26, 28]
    assert channel(shifted, "v")[1].tolist() == [1.0] * 10
    held = hold(r, "t", from_us=T0 + 3 * S, value=2.5)
    assert channel(held, "t")[1].tolist() == [0, 1, 2] + [2.5] * 7
    with pytest.raises(ValueError, match="nan"):
        shift(r, "t", from_us=T0, offset=float("nan"))
    with pytest.raises(ValueError, match="'x'"):
        hold(r, "x", from_us=T0, value=1.0)


class _Sink:
    def __init__(self) -> None:
        self.frames: list[Readings] = []

    async def checkpoint(self, name: str) -> None:
        return None

    async def append(self, readings: Readings, checkpoint: tuple[str, str]) -> None:
        self.frames.append(readings)


def test_the_simulated_input_drifts_and_freezes_the_same_way_in_every_chunk():
    cfg = SimulatedInputConfig(
        type="simulated", realtime=False, max_ticks=1200, start_us=T0,
        drift=[{"channel": "temperature", "from_us": T0 + 600 * S, "offset": 10.0}],
        stuck=[{"channel": "vibration_rms", "from_us": T0 + 300 * S}],
    )
    clean = SimulatedInputConfig(type="simulated", realtime=False, max_ticks=1200, start_us=T0)
    got, ref = _Sink(), _Sink()
    asyncio.run(SimulatedInput(cfg, device="d1").run(got))
    asyncio.run(SimulatedInput(clean, device="d1").run(ref))
    assert len(got.frames) > 2  # the property below holds across chunk boundaries
    (ts, temp), (_, temp0) = (channel(Readings.concat(x.frames), "temperature") for x in (got, ref))
    np.testing.assert_allclose(temp - temp0, np.where(ts >= T0 + 600 * S, 10.0, 0.0), atol=1e-9)
    (ts, vib), (_, vib0) = (channel(Readings.concat(x.frames), "vibration_rms") for x in (got, ref))
    assert (vib[ts < T0 + 300 * S] == vib0[ts < T0 + 300 * S]).all()
    assert set(vib[ts >= T0 + 300 * S].tolist()) == {vib0[ts < T0 + 300 * S][-1]}  # frozen at its last reading
