"""The closed loop's drill, timed: drift onset → detection → retraining → the fleet on the new model.

Run: python bench/bench_closed_loop.py

The drill of tests/integration/test_closed_loop.py (simulators/loop_drill.py): eight devices with
the agent's model path in two cohorts, site=b's vibration reading 1.6x from 60 min, a-3's
vibration sensor frozen from 20 min; a hub in this process (embedded nats-server, Delta lake,
control plane) whose closed loop runs one round per ten-minute step of simulated time.

Figures, each beside a reference from the same run:

* `loop_detect_windows`: one-minute windows from the drift onset to the round that set site=b
  drifting, beside the stated bound (lookback + consecutive rounds, in windows).
* `loop_fleet_on_new_model_windows`: windows from the onset to the first step after which every
  site=b device served the retrained version, beside the detection delay.
* `loop_retrain_run_s`: wall seconds of the retraining run (materialize, dataset, train, evaluate,
  quantize, register, sign, start the rollout), beside the wall seconds of one loop round.
* `loop_drill_s`: the whole drill's wall time beside the simulated time it covers (compression).

Measured here (2 shared cores): see the figures of the latest run in docs/loop.md.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from pathlib import Path

from figures import emit, note

from hub.config import HubConfig
from hub.service import Hub
from simulators.loop_drill import MINUTE, T0, drill_loop_config, register_champion, run_drill

STEP_MIN = 10
LOOKBACK_MIN = 20
CONSECUTIVE = 2
DRIFT_AT = T0 + 60 * MINUTE
STUCK_AT = T0 + 20 * MINUTE


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench_closed_loop-") as d:
        config = HubConfig.model_validate({
            "data_dir": d + "/hub", "log_level": "warning",
            "broker": {"embedded": {"port": 0, "mqtt_port": 0, "http_port": 0}},
            "ingest": {"ack_wait": "3s", "fetch_timeout": "200ms"},
            "api": {"enabled": True, "port": 0},
            "control": {"poll_interval": "200ms", "tick": "100ms"},
            "features": {"streaming": False},
            "loop": drill_loop_config(lookback_min=LOOKBACK_MIN, consecutive=CONSECUTIVE, baseline_min=60),
        })
        hub = Hub(config)
        stop = asyncio.Event()
        task = asyncio.create_task(hub.run(stop))
        while not hub.state.ready.is_set():
            if task.done():
                await task
            await asyncio.sleep(0.05)
        try:
            register_champion(hub)
            drill = await run_drill(hub, Path(d), drift_at=DRIFT_AT, stuck_at=STUCK_AT, step_ticks=STEP_MIN * 60)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)

    rounds = drill.rounds
    detected = next((r for r in rounds if r.get("site=b", {}).get("state") == "drifting"), None)
    bound = LOOKBACK_MIN + CONSECUTIVE * STEP_MIN
    if detected is None or drill.run is None or drill.run["state"] != "done":
        note(f"the drill did not complete: detected={detected is not None}, run={drill.run}")
        raise SystemExit(1)
    detect_windows = (detected["now"] - DRIFT_AT) // MINUTE
    onset_wall = next(r["wall_s"] for r in rounds if r["now"] > DRIFT_AT)
    emit("loop_detect_windows", detect_windows, "windows", reference="stated bound: lookback + consecutive rounds",
         reference_value=bound, goal="detected within the bound", meets_goal=bool(0 < detect_windows <= bound),
         detect_wall_s_after_onset_round=round(detected["wall_s"] - onset_wall, 3), step_windows=STEP_MIN)
    on_new = next(r for r in rounds if r["step"] == drill.fleet_on_new_step) if drill.fleet_on_new_step else None
    if on_new is not None:
        emit("loop_fleet_on_new_model_windows", (on_new["now"] - DRIFT_AT) // MINUTE, "windows",
             reference="onset to detection (same run)", reference_value=detect_windows,
             goal="context: the issue sets no bound", meets_goal=None,
             wall_s_after_onset_round=round(on_new["wall_s"] - onset_wall, 3),
             rollout_complete_step=drill.rollout_done_step)
    walls = [b["wall_s"] - a["wall_s"] for a, b in zip(rounds, rounds[1:])]
    emit("loop_retrain_run_s", drill.wall["retrain_run_s"], "s", reference="median wall time of one drill step "
         "(fleet step, ingest, labels, one loop round)", reference_value=statistics.median(walls),
         goal="context", meets_goal=None)
    simulated_s = rounds[-1]["now"] / 1e6 - T0 / 1e6
    emit("loop_drill_s", drill.wall["drill_s"], "s", reference="simulated time covered (s)",
         reference_value=simulated_s, goal="context", meets_goal=None, steps=len(rounds))


if __name__ == "__main__":
    asyncio.run(main())
