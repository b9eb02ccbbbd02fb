"""The closed loop, end to end, on a simulated fleet and a real hub (simulators/loop_drill.py).

Eight devices in two cohorts (twin tag `site`) run the agent's real model path (twin, signed
install, windows, inference) on simulated sensors and send telemetry and predictions to the hub's
JetStream, in ten-minute steps of simulated time:

* site=a: healthy, except a-3, whose vibration sensor freezes at 20 min: a quality problem.
* site=b: from 60 min the machines' vibration reads 1.6x (new mounting brackets): data drift. The
  champion, trained where 1.2 mm/s was normal, calls every window bearing_wear; maintenance
  inspects and labels them normal.

After each step the hub's closed loop runs one round. Checked: site=b drifts within the stated
number of windows, exactly one retraining starts, the candidate beats the champion on the cohort's
held-out devices, its staged rollout completes, drift on site=b clears afterwards, and the frozen
sensor is a quality problem that never triggers anything.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from hub.config import LoopConfig
from simulators.loop_drill import MINUTE, T0, drill_loop_config, register_champion, run_drill

from tests.integration.harness import hub_config, running_hub

pytestmark = pytest.mark.integration

STEP_MIN = 10
DRIFT_AT = T0 + 60 * MINUTE
STUCK_AT = T0 + 20 * MINUTE
LOOKBACK_MIN = 20
CONSECUTIVE = 2
# Stated bound: drift is visible in the first round whose lookback holds drifted windows, and the
# debounce needs CONSECUTIVE such rounds, one per step: within lookback + CONSECUTIVE steps.
DETECT_WITHIN_WINDOWS = LOOKBACK_MIN + CONSECUTIVE * STEP_MIN


async def test_drift_retrains_once_rolls_out_and_clears_while_a_stuck_sensor_is_only_a_quality_problem(tmp_path):
    loop = LoopConfig.model_validate(drill_loop_config(lookback_min=LOOKBACK_MIN, consecutive=CONSECUTIVE,
                                                       baseline_min=60))
    config = hub_config(tmp_path / "hub", api=True, features={"streaming": False}).model_copy(update={"loop": loop})
    async with running_hub(config) as hub:
        register_champion(hub)
        drill = await run_drill(hub, tmp_path, drift_at=DRIFT_AT, stuck_at=STUCK_AT, step_ticks=STEP_MIN * 60)
        # The operator's view of the same rounds: `edgeloop quality report` names the frozen sensor.
        cli = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "edgeloop", "quality", "report",
                                                       "--json", "--hub", hub.state.api_url],
                                      capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert "vibration_rms: stuck" in json.loads(cli.stdout)["devices"]["sim/a-3"]["failing"]
        # `edgeloop drift status` and the drift report a person would rather look at than read.
        edgeloop = [sys.executable, "-m", "edgeloop", "drift"]
        status = await asyncio.to_thread(subprocess.run, [*edgeloop, "status", "--json", "--hub", hub.state.api_url],
                                         capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        report = await asyncio.to_thread(subprocess.run, [*edgeloop, "report", "site=b", "--out", str(tmp_path / "rep"),
                                                          "--hub", hub.state.api_url],
                                         capture_output=True, text=True, timeout=120)
        assert report.returncode == 0, report.stderr
        html = (tmp_path / "rep" / "index.html").read_text()
        pngs = list((tmp_path / "rep").glob("*.png"))
        assert pngs and all(p.name in html for p in pngs)
        quarantine = hub.loop.quality_report()["quarantine"]
        runs = hub.pipelines.list()
        champions = {site: hub.registry.alias_for("condition", "champion", {"site": site}) for site in "ab"}
    rounds = drill.rounds
    by_cohort = {c["cohort"]: c for c in json.loads(status.stdout)}
    assert by_cohort["site=b"]["last_trigger"] is not None and by_cohort["site=a"]["last_trigger"] is None, by_cohort

    # Detection: site=b drifting within the stated number of windows of the change, never before it.
    first = next(r for r in rounds if r.get("site=b", {}).get("state") == "drifting")
    delay_windows = (first["now"] - DRIFT_AT) // MINUTE
    assert 0 < delay_windows <= DETECT_WITHIN_WINDOWS, (delay_windows, rounds)
    assert all(r.get("site=b", {}).get("over") is not True for r in rounds if r["now"] <= DRIFT_AT)

    # Exactly one retraining, for site=b, and the candidate won on the cohort's held-out devices.
    assert len(drill.runs) == 1 and len(runs) == 1, runs
    assert drill.run["state"] == "done", drill.run
    steps = {s["name"]: s for s in drill.run["steps"]}
    evaluate = steps["evaluate"]["outputs"]
    candidate, champion = evaluate["candidate"]["scores"]["accuracy"], evaluate["champion"]["scores"]["accuracy"]
    assert candidate >= champion + 0.05, evaluate
    assert steps["dataset"]["outputs"]["holdout_devices"] and steps["train"]["outputs"]["replayed_rows"] > 0
    version = steps["register"]["outputs"]["version"]

    # The staged rollout completed: site=b runs the new version, which is site=b's champion.
    assert drill.rollout_done_step is not None and drill.rollout["state"] == "complete", drill.rollout
    assert champions == {"a": "1.0.0", "b": version}
    assert {drill.versions[f"b-{i}"] for i in range(4)} == {version}
    assert {drill.versions[f"a-{i}"] for i in range(4)} == {"1.0.0"}

    # Drift on site=b clears once it runs the new model (judged against its new reference).
    last = rounds[-1]["site=b"]
    assert last["version"] == version and last["over"] is False and last["state"] in ("cooldown", "ok"), last

    # The frozen sensor: a quality problem in every round, never drift, never a trigger.
    judged_a = [r["site=a"] for r in rounds if "site=a" in r]
    assert judged_a and all("a-3" in c["quality_problems"] for c in judged_a)
    assert all(c["over"] is False and c["state"] == "ok" for c in judged_a), judged_a
    assert any(q["device"] == "a-3" and q["channel"] == "vibration_rms" and q["check"] == "stuck" for q in quarantine)
    print(f"closed loop: drift detected {delay_windows} windows after onset (bound {DETECT_WITHIN_WINDOWS}); "
          f"site=b on {version} at step {drill.fleet_on_new_step}, rollout complete at step "
          f"{drill.rollout_done_step}; candidate accuracy {candidate} vs champion {champion}")
