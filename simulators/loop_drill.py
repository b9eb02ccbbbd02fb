"""The closed-loop drill: a fleet in two cohorts, one drifts and one has a frozen sensor, walked
through a running hub step by step (tests/integration/test_closed_loop.py, bench/bench_closed_loop.py).

    site=a   a-0 .. a-3: healthy, except a-3, whose vibration sensor freezes at `stuck_at`
    site=b   b-0 .. b-3: from `drift_at`, vibration reads `scale` x (the machines' mounting changed)

Each step: every device advances `step_ticks` readings (one a second) and sends telemetry and
predictions (simulators/drift_fleet.py); once the hub has stored them, maintenance labels site=b's
windows since the change `normal` (POST /v1/labels: the inspection found no wear); then the hub's
closed loop runs one round (`hub.loop.tick`). When a round starts a retraining run, the drill waits
for the pipeline worker to finish it, then keeps stepping while the rollout reaches the devices.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats

from .drift_fleet import DeviceSpec, Drift, DriftFleet, Stuck
from .model_faults import V1

MINUTE = 60_000_000
T0 = 1_700_006_400_000_000  # 2023-11-15T00:00:00Z


def drill_fleet(*, drift_at: int, stuck_at: int, scale: float = 1.6) -> list[DeviceSpec]:
    return (
        [DeviceSpec(f"a-{i}", {"site": "a"}) for i in range(3)]
        + [DeviceSpec("a-3", {"site": "a"}, stuck=(Stuck("vibration_rms", stuck_at),))]
        + [DeviceSpec(f"b-{i}", {"site": "b"}, drifts=(Drift("vibration_rms", drift_at, scale=scale),))
           for i in range(4)]
    )


@dataclass
class DrillResult:
    rounds: list[dict] = field(default_factory=list)  # per step: step, now (event µs), wall_s, checks by cohort
    runs: list[str] = field(default_factory=list)  # retraining runs the loop started
    run: dict | None = None  # the first run, as the runner records it
    rollout: dict | None = None  # its rollout's last status
    rollout_done_step: int | None = None
    fleet_on_new_step: int | None = None  # first step after which every site=b device ran the new version
    versions: dict[str, str | None] = field(default_factory=dict)  # per device, at the end
    wall: dict[str, float] = field(default_factory=dict)  # seconds: retrain run, drill


async def run_drill(hub: Any, root: Path, *, drift_at: int, stuck_at: int, steps: int = 18, step_ticks: int = 600,
                    after_rollout: int = 3) -> DrillResult:
    """Walk the fleet through the hub (registered, signed, promoted champion 1.0.0 expected)."""
    key = hub.registry.keys.export_public(root / "fleet-key.pem")
    fleet = DriftFleet(root / "fleet", hub.state.api_url, (key,), drill_fleet(drift_at=drift_at, stuck_at=stuck_at),
                       start_us=T0)
    out = DrillResult()
    nc = await nats.connect(hub.state.nats_url)
    http = httpx.AsyncClient(base_url=hub.state.api_url, trust_env=False, timeout=30)
    began = time.perf_counter()
    try:
        await fleet.start()
        await fleet.exchange()  # every device installs the champion before its sensors start
        published = 0
        for step in range(1, steps + 1):
            published += (await fleet.step(nc.jetstream(), step_ticks))["batches"]
            await _until(lambda: _stored_batches(hub) >= published, f"{published} batches stored")
            now = T0 + step * step_ticks * 1_000_000
            if now > drift_at:
                labels = [{"tenant": fleet.tenant, "device": f"b-{i}", "ts_us": t, "label": "normal"}
                          for i in range(4)
                          for t in range(max(drift_at, now - step_ticks * 1_000_000) + MINUTE, now + 1, MINUTE)]
                r = await http.post("/v1/labels", json={"labels": labels, "source": "maintenance"})
                r.raise_for_status()
            summary = await asyncio.to_thread(hub.loop.tick)
            out.rounds.append({"step": step, "now": now, "wall_s": time.perf_counter() - began,
                               **{c["cohort"]: c for c in summary["checks"]}})
            out.runs += [t["run"] for t in summary["triggers"]]
            if out.runs and out.run is None:
                t0 = time.perf_counter()
                out.run = await _until(lambda: (r := hub.pipelines.get(out.runs[0]))["state"] in ("done", "failed")
                                       and r, "the retraining run to finish", timeout=120)
                out.wall["retrain_run_s"] = time.perf_counter() - t0
            if out.run is not None and out.run["state"] == "done":
                rollout_id = _steps(out.run)["rollout"]["outputs"]["rollout_id"]
                out.rollout = hub.rollouts.status(rollout_id, events=False)
                new = _steps(out.run)["register"]["outputs"]["version"]
                versions = fleet.versions()
                if out.fleet_on_new_step is None and all(versions[f"b-{i}"] == new for i in range(4)):
                    out.fleet_on_new_step = step
                if out.rollout["state"] == "complete" and out.rollout_done_step is None:
                    out.rollout_done_step = step
            if out.rollout_done_step is not None and step >= out.rollout_done_step + after_rollout:
                break
            if out.run is not None and out.run["state"] == "failed":
                break
        out.versions = fleet.versions()
    finally:
        out.wall["drill_s"] = time.perf_counter() - began
        await fleet.close()
        await http.aclose()
        await nc.close()
    return out


def register_champion(hub: Any) -> None:
    hub.registry.register(V1, version="1.0.0")
    hub.registry.sign("condition", "1.0.0")
    hub.registry.promote("condition", "1.0.0")


def drill_loop_config(*, lookback_min: int, consecutive: int, baseline_min: int) -> dict:
    """The [loop] settings the drill runs with: rounds on request, a short baseline and lookback."""
    return {
        "interval": "0s", "lookback": f"{lookback_min}m", "grace": "1m", "consecutive": consecutive,
        "baseline": f"{baseline_min}m", "cooldown": "2h", "min_windows": 20, "metric": "accuracy",
        "min_improvement": 0.05, "replay": True, "pipeline_tick": "100ms",
        "rollout": {"stages": [{"percent": 50, "bake_s": 0}, {"percent": 100, "bake_s": 0}],
                    "poll_interval_s": 0.1, "gates": {"min_reporting": 1, "min_windows": 1}},
    }


def _steps(run: dict) -> dict:
    return {s["name"]: s for s in run["steps"]}


def _stored_batches(hub: Any) -> int:
    from hub.storage import metadata as meta

    db = meta.connect_readonly(hub.config.data_dir / "meta.db")
    try:
        return db.execute("SELECT count(*) FROM batches").fetchone()[0]
    finally:
        db.close()


async def _until(predicate, what: str, *, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)
