"""Rollouts end to end on a simulated fleet: stages, gates, halts, rollbacks, restarts (fake clock)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hub.rollouts import (
    ControllerStats,
    Gates,
    PlanError,
    RolloutPlan,
    Rollouts,
    RolloutStateError,
    Stage,
    UnknownRolloutError,
    evaluate,
    parse_stages,
    run_controller,
    stage_sizes,
    tv_distance,
)
from hub.twin import TwinStore
from protocol.twin import Desired

from .test_twin import FakeClock, FakeRegistry, report

CHAMPION, CANDIDATE = "1.0.0", "1.1.0"


@dataclass
class Behaviour:
    p95: float = 10.0
    classes: dict = field(default_factory=lambda: {"normal": 80, "wear": 20})
    fails: bool = False  # the install is refused (self test), the device stays on what it runs


class Sim:
    """Devices that exchange their twin, install what they are told (unless it fails), report figures."""

    def __init__(self, twins: TwinStore, n: int = 50, *, tags=lambda i: {"site": "north" if i % 2 else "south"}):
        self.twins = twins
        self.behaviour = {CHAMPION: Behaviour(), CANDIDATE: Behaviour()}
        self.devices = {f"d{i:03d}": {"active": CHAMPION, "failure": None, "tags": tags(i)} for i in range(n)}
        self.offline: set[str] = set()
        self.last: dict[str, Desired] = {}

    def add(self, name: str, tags: dict) -> None:
        self.devices[name] = {"active": CHAMPION, "failure": None, "tags": tags}

    def exchange(self, name: str) -> Desired:
        d = self.devices[name]
        b = self.behaviour[d["active"]]
        desired = self.twins.exchange("acme", name, report(version=d["active"], tags=d["tags"], p95=b.p95,
                                                           classes=b.classes, failure=d["failure"]))
        self.last[name] = desired
        want = desired.model.version
        if want != d["active"]:
            if self.behaviour[want].fails:
                d["failure"] = ("condition", want)
            else:
                d["active"] = want
        return desired

    def round(self) -> None:
        for name in self.devices:
            if name not in self.offline:
                self.exchange(name)

    def on(self, version: str) -> set[str]:
        return {n for n, d in self.devices.items() if d["active"] == version}


@dataclass
class World:
    tmp_path: object
    clock: FakeClock
    registry: FakeRegistry
    rollouts: Rollouts
    twins: TwinStore
    sim: Sim

    def step(self, seconds: float = 30.0, rounds: int = 1) -> list[dict]:
        for _ in range(rounds):  # exchanges take time: a later round is seen later
            self.sim.round()
            self.clock.advance(seconds / rounds)
        return self.rollouts.tick(self.twins)

    def run_until(self, rid: str, states: tuple[str, ...], limit: int = 200) -> list[dict]:
        moves: list[dict] = []
        for _ in range(limit):
            moves += self.step()
            if self.rollouts.status(rid)["state"] in states:
                return moves
        raise AssertionError(f"{rid} never reached {states}: {self.rollouts.status(rid)}")

    def restart(self) -> None:
        self.rollouts.close()
        self.twins.close()
        self.rollouts = Rollouts(self.tmp_path, self.registry, clock=self.clock)
        self.twins = TwinStore(self.tmp_path, self.registry, self.rollouts, clock=self.clock)
        self.sim.twins = self.twins


@pytest.fixture
def world(tmp_path):
    clock, registry = FakeClock(), FakeRegistry().add("condition", CHAMPION).add("condition", CANDIDATE)
    registry.promote("condition", CHAMPION)
    rollouts = Rollouts(tmp_path, registry, clock=clock)
    twins = TwinStore(tmp_path, registry, rollouts, clock=clock)
    w = World(tmp_path, clock, registry, rollouts, twins, Sim(twins))
    w.sim.round()  # the hub knows the fleet before the rollout starts
    yield w
    w.rollouts.close()
    w.twins.close()


def plan(**kw) -> RolloutPlan:
    kw.setdefault("stages", parse_stages("5:60,25:60,50:60,100:60"))
    kw.setdefault("gates", Gates(min_reporting=2, max_p95_ratio=1.5, max_divergence=0.2, max_error_rate=0.05))
    return RolloutPlan("condition", CANDIDATE, deadline_s=600, **kw)


def chain(rollouts: Rollouts, rid: str) -> list[tuple]:
    return [(e["from"], e["to"], e["stage"]) for e in rollouts.status(rid)["events"]]


def test_a_good_candidate_goes_through_four_stages_and_becomes_champion(world):
    rid = world.rollouts.start(plan())["id"]
    assert world.rollouts.status(rid)["state"] == "pending"
    world.step()
    s = world.rollouts.status(rid)
    assert (s["state"], s["stage"], s["devices"]) == ("canary", 0, 50)
    assert [x["assigned"] for x in s["stages"]] == [3, 10, 12, 25] and stage_sizes([5, 25, 50, 100], 50) == [3, 13, 25, 50]
    world.step()
    assert len(world.sim.on(CANDIDATE)) == 3  # only the canary
    moves = world.run_until(rid, ("complete",))
    s = world.rollouts.status(rid)
    assert chain(world.rollouts, rid) == [(None, "pending", 0), ("pending", "canary", 0), ("canary", "stage", 1),
                                          ("stage", "stage", 2), ("stage", "stage", 3), ("stage", "complete", 3)]
    assert [(m["from"], m["to"]) for m in moves][-1] == ("stage", "complete")
    assert world.registry.promotes[-1] == ("condition", CANDIDATE, "champion", "*")
    assert world.registry.alias_for("condition", "champion", {}) == CANDIDATE
    assert s["events"][-1]["details"]["promoted"]["version"] == CANDIDATE
    assert {g["name"]: g["passed"] for g in s["gates"]} == {"min_reporting": True, "min_reporting_stage": True,
                                                            "max_failures": True, "max_error_rate": True,
                                                            "max_p95_ratio": True, "max_divergence": True}
    world.step()
    s = world.rollouts.status(rid)
    assert world.sim.on(CANDIDATE) == set(world.sim.devices) and s["converged"] == 50
    assert sum(x["on_candidate"] for x in s["stages"]) == 50 and s["time_in_stage_s"] is None


def test_stages_wait_for_their_bake(world):
    rid = world.rollouts.start(plan(stages=(Stage(10, 300), Stage(100, 0))))["id"]
    world.step()
    for _ in range(8):  # 240 s of a 300 s bake
        assert world.step() == []
    assert world.rollouts.status(rid)["time_in_stage_s"] == 240.0
    assert [m["to"] for m in world.step(seconds=60)] == ["stage"]


def test_a_candidate_that_fails_to_load_halts_at_the_canary_and_rolls_back(world):
    world.sim.behaviour[CANDIDATE].fails = True
    rid = world.rollouts.start(plan(stages=parse_stages("5:600,100:600")))["id"]
    world.step()  # the canary begins
    world.step()  # the canary devices refuse the candidate ...
    moves = world.step()  # ... and say so: halted, without waiting for the bake
    assert [(m["from"], m["to"]) for m in moves] == [("canary", "halted")]
    s = world.rollouts.status(rid)
    assert "gate max_failures failed: 3" in s["reason"] and s["stages"][0]["failed"] == 3
    canary = [n for n, d in world.sim.devices.items() if d["failure"]]
    assert len(canary) == 3
    for n in canary:
        d = world.sim.exchange(n)
        assert (d.model.version, d.rollout) == (CHAMPION, rid)
    assert [m["to"] for m in world.step()] == ["rolled_back"]
    assert world.registry.alias_for("condition", "champion", {}) == CHAMPION
    assert chain(world.rollouts, rid)[-2:] == [("canary", "halted", 0), ("halted", "rolled_back", 0)]


def test_failures_left_from_an_earlier_rollout_do_not_halt_the_next(world):
    world.sim.behaviour[CANDIDATE].fails = True
    first = world.rollouts.start(plan(stages=parse_stages("20:0,100:0")))["id"]
    world.run_until(first, ("rolled_back",))
    stale = {n for n, d in world.sim.devices.items() if d["failure"]}
    assert len(stale) == 10
    world.sim.behaviour[CANDIDATE].fails = False  # a fixed download, say; the devices still report the old refusal
    second = world.rollouts.start(plan(stages=parse_stages("20:0,100:0")))["id"]
    world.run_until(second, ("complete",))
    world.step(rounds=2)
    assert stale <= world.sim.on(CANDIDATE) == set(world.sim.devices)


def test_a_slow_candidate_halts_and_rolls_back_once_devices_run_the_champion_again(world):
    world.sim.behaviour[CANDIDATE].p95 = 30.0
    rid = world.rollouts.start(plan())["id"]
    world.step()
    world.step()  # the canary installs the candidate
    moves = world.step()  # ... and reports its p95
    assert [m["to"] for m in moves] == ["halted"]
    s = world.rollouts.status(rid)
    assert "max_p95_ratio" in s["reason"]
    assert next(g for g in s["gates"] if g["name"] == "max_p95_ratio")["value"] == 3.0
    assert len(world.sim.on(CANDIDATE)) == 3 and s["converged"] == 47
    assert [m["to"] for m in world.step(rounds=2)] == ["rolled_back"]
    assert world.sim.on(CANDIDATE) == set() and world.rollouts.status(rid)["converged"] == 50


def test_divergent_predictions_halt(world):
    world.sim.behaviour[CANDIDATE].classes = {"normal": 10, "wear": 90}
    rid = world.rollouts.start(plan())["id"]
    world.run_until(rid, ("halted",))
    s = world.rollouts.status(rid)
    div = next(g for g in s["gates"] if g["name"] == "max_divergence")
    assert (div["passed"], div["value"]) == (False, 0.7) and "max_divergence" in s["reason"]


def test_a_stage_that_cannot_gather_reports_halts_after_its_timeout(world):
    world.sim.behaviour[CANDIDATE].fails = True
    rid = world.rollouts.start(plan(gates=Gates(min_reporting=2, max_failures=None), stage_timeout_s=120))["id"]
    world.run_until(rid, ("halted",))
    assert world.rollouts.status(rid)["reason"] == "stage 0 gathered 0 reporting device(s) of 2 needed in 120s"


def test_offline_devices_converge_when_they_return_after_complete(world):
    world.sim.offline = {"d001", "d002", "d003", "d004"}
    rid = world.rollouts.start(plan(stages=parse_stages("50:0,100:0")))["id"]
    world.run_until(rid, ("complete",))
    world.step()
    assert world.rollouts.status(rid)["converged"] == 46
    world.sim.offline = {"d004"}
    world.step(rounds=2)  # the first exchange hands out the candidate, the second reports it
    assert world.sim.on(CANDIDATE) == set(world.sim.devices) - {"d004"}
    assert world.rollouts.status(rid)["converged"] == 49 and world.rollouts.status(rid)["unconverged"] is None
    world.step(seconds=600)  # the deadline passes: the watch ends and lists who is still off target
    assert world.rollouts.status(rid)["unconverged"] == ["acme/d004"]
    world.sim.offline = set()
    world.step()
    assert world.sim.devices["d004"]["active"] == CANDIDATE  # the champion now, for anyone who returns


def test_a_device_that_took_the_candidate_and_vanished_is_listed_after_the_deadline(world):
    world.sim.behaviour[CANDIDATE].p95 = 30.0
    rid = world.rollouts.start(plan())["id"]
    world.step()
    world.step()  # canary devices take the candidate
    gone = sorted(world.sim.on(CANDIDATE))[0]
    world.sim.offline = {gone}
    world.run_until(rid, ("halted",))
    for _ in range(5):
        assert world.rollouts.status(rid)["state"] == "halted"  # waits for the one that is away
        world.step()
    moves = world.step(seconds=600)
    assert [m["to"] for m in moves] == ["rolled_back"] and "deadline" in moves[0]["reason"]
    s = world.rollouts.status(rid)
    assert s["unconverged"] == [f"acme/{gone}"]
    world.sim.offline = set()
    assert world.sim.exchange(gone).model.version == CHAMPION  # it converges on its return
    assert world.sim.devices[gone]["active"] == CHAMPION


def test_devices_first_seen_mid_rollout_join_the_last_stage(world):
    rid = world.rollouts.start(plan(stages=parse_stages("10:0,50:60,100:0")))["id"]
    world.step()
    world.sim.add("late", {"site": "north"})
    world.step()
    assert world.sim.last["late"].model.version == CHAMPION
    world.run_until(rid, ("complete",))
    assert world.sim.devices["late"]["active"] == CANDIDATE
    assert world.rollouts.status(rid)["stages"][-1]["assigned"] == 26  # 25 of the snapshot + the newcomer


def test_pause_resume_abort(world):
    rid = world.rollouts.start(plan(stages=parse_stages("5:60,100:60")))["id"]
    with pytest.raises(RolloutStateError, match="pending"):
        world.rollouts.pause(rid)
    world.step()
    assert world.rollouts.pause(rid)["state"] == "paused"
    for _ in range(10):
        assert world.step() == []  # the bake is long over, but nothing moves
    assert len(world.sim.on(CANDIDATE)) == 3  # the canary keeps the candidate while paused
    s = world.rollouts.resume(rid)
    assert (s["state"], s["time_in_stage_s"]) == ("canary", 0.0)  # the bake restarts
    assert world.step() == [] and [m["to"] for m in world.step()] == ["stage"]
    with pytest.raises(RolloutStateError, match="not paused"):
        world.rollouts.resume(rid)
    assert world.rollouts.abort(rid, "operator saw noise")["reason"] == "operator saw noise"
    assert world.step() == [] and world.sim.on(CANDIDATE) == set()  # told to go back; not yet reported
    assert [m["to"] for m in world.step()] == ["rolled_back"]
    assert [e["to"] for e in world.rollouts.status(rid)["events"]] == \
        ["pending", "canary", "paused", "canary", "stage", "halted", "rolled_back"]
    with pytest.raises(RolloutStateError, match="nothing to abort"):
        world.rollouts.abort(rid, "again")
    with pytest.raises(UnknownRolloutError, match="'nope'"):
        world.rollouts.status("nope")


def test_a_restarted_hub_resumes_exactly_where_it_was(world):
    rid = world.rollouts.start(plan(stages=parse_stages("5:60,25:90,100:60")))["id"]
    world.run_until(rid, ("stage",))
    world.step()
    before = world.rollouts.status(rid)
    world.restart()
    after = world.rollouts.status(rid)
    assert {k: after[k] for k in ("state", "stage", "time_in_stage_s", "stages", "events")} == \
        {k: before[k] for k in ("state", "stage", "time_in_stage_s", "stages", "events")}
    assert world.step() == []  # 60 s of a 90 s bake: no reset, no early advance
    world.run_until(rid, ("complete",))
    assert [e["to"] for e in world.rollouts.status(rid)["events"]] == ["pending", "canary", "stage", "stage", "complete"]


def test_every_transition_is_an_event(world):
    rid = world.rollouts.start(plan())["id"]
    moves = world.run_until(rid, ("complete",))
    events = world.rollouts.status(rid)["events"]
    assert [(m["from"], m["to"], m["stage"], m["reason"]) for m in moves] == \
        [(e["from"], e["to"], e["stage"], e["reason"]) for e in events[1:]]
    assert all(e["at_us"] for e in events) and world.rollouts.list()[0]["id"] == rid


def test_start_refuses_what_cannot_roll_out(world):
    with pytest.raises(PlanError, match="'7.7.7'"):
        world.rollouts.start(RolloutPlan("condition", "7.7.7"))
    with pytest.raises(PlanError, match="already the champion"):
        world.rollouts.start(RolloutPlan("condition", CHAMPION))
    world.registry.add("other", "1.0.0")
    with pytest.raises(PlanError, match="no champion"):
        world.rollouts.start(RolloutPlan("other", "1.0.0"))
    world.rollouts.start(plan())
    with pytest.raises(RolloutStateError, match="condition-1.1.0-1 of condition is pending"):
        world.rollouts.start(plan())


@pytest.mark.parametrize("change, field, value", [
    ({"stages": [{"percent": 50, "bake_s": 0}, {"percent": 25, "bake_s": 0}]}, "stages[1].percent", 25),
    ({"stages": [{"percent": 5, "bake_s": 0}, {"percent": 90, "bake_s": 0}]}, "stages[1].percent", 90),
    ({"stages": [{"percent": 100, "bake_s": -1}]}, "stages[0].bake_s", -1),
    ({"stages": [{"percent": 0, "bake_s": 1}]}, "stages[0].percent", 0),
    ({"stages": []}, "stages", []),
    ({"gates": {"max_divergence": 2}}, "gates.max_divergence", 2),
    ({"gates": {"min_reporting": 1.5}}, "gates.min_reporting", 1.5),
    ({"gates": {"max_latency": 3}}, "gates.max_latency", 3),
    ({"deadline_s": -5}, "deadline_s", -5),
    ({"cohort": "site"}, "cohort", "site"),
    ({"version": "1 1"}, "version", "1 1"),
    ({"colour": "red"}, "colour", "red"),
])
def test_plan_errors_name_the_field_and_the_value(change, field, value):
    with pytest.raises(PlanError) as info:
        RolloutPlan.from_dict({"model": "condition", "version": CANDIDATE, **change})
    assert (info.value.field, info.value.value) == (field, value)
    assert f"{field} = {value!r}" in str(info.value)


def test_plans_round_trip_and_stages_parse():
    p = RolloutPlan.from_dict({"model": "condition", "version": "2.0", "cohort": "site = north",
                               "stages": [{"percent": 10, "bake_s": 5}, {"percent": 100}], "gates": {"max_p95_ms": 40}})
    assert p.cohort == "site=north" and RolloutPlan.from_dict(p.to_dict()) == p
    assert parse_stages("5:10m,100") == (Stage(5, 600), Stage(100, 0))
    with pytest.raises(PlanError, match="'soon'"):
        parse_stages("5:soon,100:0")


def test_gates_are_pure_functions_of_reports():
    assert tv_distance({"a": 1}, {"b": 3}) == 1.0 and tv_distance({"a": 1, "b": 1}, {"a": 2, "b": 2}) == 0.0
    assert tv_distance({}, {"a": 1}) is None
    cand = [report(version=CANDIDATE, p95=20, errors=5, shadow=None), report(version=CANDIDATE, windows=0)]
    champ = [report(p95=10, shadow=(CANDIDATE, 100, 90))]
    out = {g.name: g for g in evaluate(Gates(min_reporting=3, max_error_rate=0.01, max_p95_ms=15, max_p95_ratio=3,
                                             min_shadow_agreement=0.95, min_accuracy=0.9),
                                       model="condition", candidate=CANDIDATE, champion=CHAMPION,
                                       assigned=cand, others=champ)}
    assert (out["min_reporting"].value, out["min_reporting"].threshold, out["min_reporting"].passed) == (1, 2, False)
    assert (out["max_error_rate"].value, out["max_error_rate"].passed) == (0.05, False)
    assert (out["max_p95_ms"].passed, out["max_p95_ratio"].value, out["max_p95_ratio"].passed) == (False, 2.0, True)
    assert (out["min_shadow_agreement"].value, out["min_shadow_agreement"].passed) == (0.9, False)
    assert (out["min_accuracy"].passed, out["min_accuracy"].detail) == (None, "no labels reported")
    lone = evaluate(Gates(max_p95_ratio=2), model="condition", candidate=CANDIDATE, champion=CHAMPION,
                    assigned=cand, others=[])
    assert lone[-1].passed is None and "not evaluated" in lone[-1].detail


class FlakyRollouts:
    def __init__(self, stop: asyncio.Event) -> None:
        self.calls, self.stop = 0, stop

    def tick(self, twins) -> list[dict]:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("database is locked")
        if self.calls == 4:
            self.stop.set()
        return [{"rollout": "r", "from": "canary", "to": "stage"}]


async def test_the_controller_counts_errors_and_keeps_ticking():
    stop = asyncio.Event()
    stats = ControllerStats()
    fake = FlakyRollouts(stop)
    assert await run_controller(fake, None, stop, tick_s=0, stats=stats) is stats
    assert (fake.calls, stats.ticks, stats.errors, stats.transitions) == (4, 4, 1, 3)
    assert stats.last_error == "RuntimeError: database is locked"


def test_with_the_real_registry_sharing_control_db(tmp_path):
    """Registry, twins and rollouts on one control.db, each with its own connection."""
    from hub.registry import Registry

    recipe = Path(__file__).resolve().parents[2] / "models" / "condition" / "v1"
    clock = FakeClock()
    registry = Registry(tmp_path, clock=clock)
    for v in (CHAMPION, CANDIDATE):
        registry.register(recipe, version=v)
        registry.sign("condition", v)
    registry.promote("condition", CHAMPION)
    rollouts = Rollouts(tmp_path, registry, clock=clock)
    twins = TwinStore(tmp_path, registry, rollouts, clock=clock)
    try:
        w = World(tmp_path, clock, registry, rollouts, twins, Sim(twins, n=12))
        w.sim.round()
        rid = rollouts.start(plan(stages=parse_stages("25:0,100:0")))["id"]
        w.run_until(rid, ("complete",))
        assert registry.alias("condition", "champion") == CANDIDATE
        assert w.sim.last["d000"].model.variants[0].manifest.version in (CHAMPION, CANDIDATE)
        w.step(rounds=2)
        assert w.sim.on(CANDIDATE) == set(w.sim.devices) and rollouts.status(rid)["converged"] == 12
    finally:
        twins.close()
        rollouts.close()
        registry.close()


def test_a_stage_waits_for_its_own_new_devices_to_report(world):
    """Bake elapsed and the earlier stages' devices reporting are not enough: the stage's own new
    devices must run the candidate and report before the rollout moves on."""
    rid = world.rollouts.start(plan(stages=parse_stages("5:0,25:0,100:0")))["id"]
    world.step()
    world.run_until(rid, ("stage",))
    assert world.rollouts.status(rid)["stage"] == 1
    world.step()  # stage 1's devices are handed the candidate; none has reported on it yet
    s = world.rollouts.status(rid)
    mine = next(g for g in s["gates"] if g["name"] == "min_reporting_stage")
    assert (s["state"], s["stage"]) == ("stage", 1), "a zero bake must not pass on the canary's evidence"
    assert mine["passed"] is False and mine["threshold"] == 2 and "new in stage 1" in mine["detail"], mine
    world.run_until(rid, ("complete",))
