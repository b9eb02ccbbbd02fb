"""Rollouts over 50 virtual devices against a real hub: good models reach everyone, bad ones roll back.

The hub runs for real (embedded nats-server, registry, twins, rollout controller, HTTP API on a
fixed port so devices find it again after a restart). Each virtual device runs the agent's own
ModelManager: twin exchange over HTTP, resumable download, ed25519 + sha256 checks, two slots on
disk, self-test on onnxruntime, switch, rollback. Candidates are real ONNX files built by
simulators.model_faults: one good, one that does not load, one slow, one whose predictions
diverge.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from hub.rollouts import RolloutPlan
from simulators.model_faults import V1, build_candidate
from simulators.model_fleet import ModelFleet
from tests.servers import await_until, free_port

from .harness import hub_config, running_hub

pytestmark = pytest.mark.integration

MODEL = "condition"
DEVICES = 50
FAST_STAGES = [{"percent": 10, "bake_s": 0.3}, {"percent": 25, "bake_s": 0.3},
               {"percent": 50, "bake_s": 0.3}, {"percent": 100, "bake_s": 0.3}]
GATES = {"min_reporting": 2, "min_windows": 8, "max_failures": 0, "max_error_rate": 0.05,
         "max_p95_ratio": 10.0, "max_divergence": 0.35}


def _plan(version: str, *, stages=FAST_STAGES, **extra) -> RolloutPlan:
    return RolloutPlan.from_dict({"model": MODEL, "version": version, "stages": stages, "gates": GATES,
                                  "deadline_s": 60, "stage_timeout_s": 60, "poll_interval_s": 0.2, **extra})


def _register(hub, recipe: Path, version: str, *, champion: bool = False) -> None:
    hub.registry.register(recipe, version=version, variants=["model.fp32.onnx"])
    hub.registry.sign(MODEL, version)
    if champion:
        hub.registry.promote(MODEL, version)


@contextlib.asynccontextmanager
async def _ticking(fleet: ModelFleet):
    stop = asyncio.Event()
    task = asyncio.create_task(fleet.run(stop, interval_s=0.1))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def _state(hub, rid: str, *states: str, timeout: float = 60) -> dict:
    await await_until(lambda: hub.rollouts.status(rid, events=False)["state"] in states, timeout=timeout,
                      what=f"rollout {rid} to reach {states}")
    return hub.rollouts.status(rid)


async def _all_on(fleet: ModelFleet, version: str, *, timeout: float = 60) -> None:
    await await_until(lambda: fleet.versions() == {version: len(fleet.devices)}, timeout=timeout,
                      what=f"every device on {version} (now {dict(fleet.versions())})")


@pytest.fixture
async def rig(tmp_path: Path):
    port = free_port()
    cfg = hub_config(tmp_path / "hub", api=True, api_port=port,
                     control={"poll_interval": "200ms", "tick": "100ms"})
    async with running_hub(cfg) as hub:
        key = hub.registry.keys.export_public(tmp_path / "fleet-key.pem")
        _register(hub, V1, "1.0.0", champion=True)
        fleet = ModelFleet(tmp_path / "devices", hub_url=hub.state.api_url, trusted_keys=(key,), size=DEVICES)
        await fleet.start()  # each device with its own HTTP client, as in the field
        try:
            yield hub, fleet, cfg, tmp_path
        finally:
            await fleet.close()


async def test_good_model_reaches_everyone_and_offline_devices_converge_on_return(rig) -> None:
    hub, fleet, _, tmp = rig
    async with _ticking(fleet):
        await _all_on(fleet, "1.0.0")
        away = [d.name for d in fleet.devices[:3]]
        fleet.set_online(away, False)
        _register(hub, build_candidate(tmp / "good", "good", version="1.1.0"), "1.1.0")
        rid = hub.rollouts.start(_plan("1.1.0"))["id"]
        status = await _state(hub, rid, "complete", "halted", "rolled_back")
        assert status["state"] == "complete", status["reason"]
        # Stages went in order, each recorded.
        path = [(e["from"], e["to"], e["stage"]) for e in status["events"]]
        assert [p[1] for p in path][:2] == ["pending", "canary"] or path[0][1] == "canary"
        assert path[-1][1] == "complete"
        assert hub.registry.alias(MODEL, "champion") == "1.1.0"
        # `complete` means every stage passed its gates; devices converge on their next exchange,
        # except the three that are away.
        await await_until(lambda: fleet.versions() == {"1.1.0": DEVICES - 3, "1.0.0": 3}, timeout=60,
                          what=f"all online devices on 1.1.0 (now {dict(fleet.versions())})")
        assert hub.rollouts.status(rid, events=False)["converged"] <= DEVICES - 3
        fleet.set_online(away, True)
        await _all_on(fleet, "1.1.0")
        await await_until(lambda: hub.rollouts.status(rid, events=False)["converged"] == DEVICES, timeout=30,
                          what="the rollout to count every device converged")


@pytest.mark.parametrize("kind", ["broken", "slow", "divergent"])
async def test_bad_model_halts_at_canary_and_every_device_returns_to_the_champion(rig, kind: str) -> None:
    hub, fleet, _, tmp = rig
    async with _ticking(fleet):
        await _all_on(fleet, "1.0.0")
        version = f"1.1.0-{kind}"
        _register(hub, build_candidate(tmp / kind, kind, version=version), version)
        # A long canary bake: the gate must catch the model while it is on the canary devices.
        stages = [{"percent": 10, "bake_s": 30}, {"percent": 50, "bake_s": 30}, {"percent": 100, "bake_s": 30}]
        rid = hub.rollouts.start(_plan(version, stages=stages))["id"]
        status = await _state(hub, rid, "rolled_back", "complete")
        assert status["state"] == "rolled_back", status
        halt = [e for e in status["events"] if e["to"] == "halted"]
        assert len(halt) == 1 and halt[0]["from"] == "canary" and halt[0]["stage"] == 0, status["events"]
        # Which gate caught it says the model was judged for the right reason.
        expected_gate = {"broken": "max_failures", "slow": "max_p95_ratio", "divergent": "max_divergence"}[kind]
        assert expected_gate in halt[0]["reason"], halt[0]["reason"]
        await _all_on(fleet, "1.0.0")
        assert hub.registry.alias(MODEL, "champion") == "1.0.0"
        if kind == "broken":  # never installed anywhere; the canary devices said why
            failures = {d.manager.reported().failure.reason for d in fleet.devices
                        if d.manager.reported().failure is not None}
            assert failures == {"self_test_failed"}


async def test_hub_restart_mid_rollout_resumes_where_it_was(tmp_path: Path) -> None:
    cfg = hub_config(tmp_path / "hub", api=True, api_port=free_port(),
                     control={"poll_interval": "200ms", "tick": "100ms"})
    stages = [{"percent": 10, "bake_s": 0.3}, {"percent": 50, "bake_s": 3600}, {"percent": 100, "bake_s": 0.3}]
    async with running_hub(cfg) as hub:
        key = hub.registry.keys.export_public(tmp_path / "fleet-key.pem")
        _register(hub, V1, "1.0.0", champion=True)
        fleet = ModelFleet(tmp_path / "devices", hub_url=hub.state.api_url, trusted_keys=(key,), size=DEVICES)
        await fleet.start()
        async with _ticking(fleet):
            await _all_on(fleet, "1.0.0")
            _register(hub, build_candidate(tmp_path / "good", "good", version="1.1.0"), "1.1.0")
            rid = hub.rollouts.start(_plan("1.1.0", stages=stages))["id"]
            await await_until(lambda: hub.rollouts.status(rid, events=False)["stage"] == 1, timeout=60,
                              what="the rollout to reach its second stage")
            await await_until(lambda: fleet.versions().get("1.1.0") == DEVICES // 2, timeout=60,
                              what="half the fleet on the candidate")
        before = hub.rollouts.status(rid)
    # The hub is down; devices keep asking (and failing) while it is.
    async with _ticking(fleet):
        await await_until(lambda: all(d.manager.twin.failures for d in fleet.devices), timeout=30,
                          what="every device to notice the hub is gone")
        async with running_hub(cfg) as hub2:
            after = hub2.rollouts.status(rid)
            assert (after["state"], after["stage"]) == (before["state"], before["stage"]) == ("stage", 1)
            assert after["events"] == before["events"]  # nothing replayed, nothing lost
            # Devices kept what they had, and the next exchanges agree with the resumed state.
            exchanges = {d.name: d.manager.twin.exchanges for d in fleet.devices}
            await await_until(lambda: all(d.manager.twin.exchanges > exchanges[d.name] for d in fleet.devices),
                              timeout=30, what="every device to exchange with the restarted hub")
            assert fleet.versions() == {"1.1.0": DEVICES // 2, "1.0.0": DEVICES - DEVICES // 2}
            # And the resumed controller still acts: an abort sends everyone back.
            hub2.rollouts.abort(rid, "drill: abort after the restart")
            final = await _state(hub2, rid, "rolled_back")
            assert [e["to"] for e in final["events"]][-2:] == ["halted", "rolled_back"]
            await _all_on(fleet, "1.0.0")
    await fleet.close()


@pytest.mark.parametrize(("kind", "agreeing"), [("good", True), ("divergent", False)])
async def test_challenger_runs_in_shadow_and_its_agreement_reaches_the_hub(rig, kind: str, agreeing: bool) -> None:
    hub, fleet, _, tmp = rig
    async with _ticking(fleet):
        await _all_on(fleet, "1.0.0")
        version = f"1.1.0-{kind}"
        _register(hub, build_candidate(tmp / kind, kind, version=version), version)
        hub.registry.promote(MODEL, version, alias="challenger")

        def shadows() -> list:
            return [r["reported"].get("shadow") for r in hub.twins.list()]

        await await_until(lambda: all(s and s["version"] == version and s["windows"] >= 16 for s in shadows()),
                          timeout=60, what="every device to report shadow figures for the challenger")
        windows = sum(s["windows"] for s in shadows())
        agreement = sum(s["agreed"] for s in shadows()) / windows
        # The good challenger is v1's graph: it agrees on every window. The divergent one calls
        # nearly everything a sensor fault, so it agrees only where the champion says so too.
        assert agreement == 1.0 if agreeing else agreement < 0.6, agreement
        # Shadow mode never acts: every device still serves the champion.
        assert fleet.versions() == {"1.0.0": DEVICES}
        assert {d.manager.reported().inference.version for d in fleet.devices} == {"1.0.0"}
