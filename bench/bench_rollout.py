"""Rollouts over a simulated fleet: a 4-stage rollout to the end, and a failing gate back to the champion.

Run: python bench/bench_rollout.py [--devices 200] [--poll 0.5] [--bake 1.0] [--quick]

The issue: "A 200-device simulated fleet: time to finish a 4-stage rollout, and time from a
failing gate to the last device back on the champion."

Rig (the pattern of tests/integration/test_rollouts_fleet.py): a Hub in this event loop
(embedded nats-server, registry, twins, rollout controller ticking every 100 ms, HTTP API on a
free port, twin answers asking devices to poll every `--poll`), v1's `model.fp32.onnx`
registered, signed and promoted as champion "1.0.0", and a `simulators.model_fleet.ModelFleet`
of `--devices` virtual devices, each running the agent's real ModelManager (twin exchange over
HTTP, download, signature + sha256 checks, two slots on disk, onnxruntime self-test, switch,
rollback) and a real InferencePipeline fed labelled windows. Each device has its own
httpx.AsyncClient, as real devices do (`--shared-client` puts them all on one pool of `--pool`
connections instead: httpcore's pool bookkeeping is O(connections) per request, which made a
200-device round ~2x slower in the first runs of this bench). The fleet runs ModelFleet.run's
loop (one round of every online device - infer a batch, exchange, reconcile - then a sleep of
`--poll`), with a stopwatch on each round. Everything - hub, HTTP API, controller, devices and
their onnxruntime sessions - shares this process, its GIL and the machine's cores.

Every operator action (promote, rollout start) is taken right after a fleet round ends, so each
figure starts at the same phase of the devices' cycle: devices ask again `--poll` later.

When a device switched model is stamped from its ModelManager's `changed` event (set after every
switch and rollback; this bench clears it and reads that device's active slot); every "all on X"
is then confirmed with fleet.versions(), which reads every device's slots from disk. Sampling
fleet.versions() itself in a tight loop is not done: it costs ~0.5 ms a device on this event
loop (see `fleet_versions_ms`), which would slow down the fleet being timed.

Figures, each beside a reference measured in the same run:

  initial install        nothing -> every device on 1.0.0                  ref: one-step promote
  one-step promote       `registry.promote(1.1.0)`, no rollout -> all on it  ref: idle round + --poll
  4-stage rollout        1.2.0 (good), 5/25/50/100 % with `--bake` each:
                         start -> state complete; start -> every device on 1.2.0   ref: one-step promote
  failing gate           1.3.0-bad (divergent: passes its self-test, predictions diverge) and
                         1.4.0-broken (does not load: the self-test refuses it), bake 30 s:
                         start -> `halted` event; halted -> last device back on the champion,
                         and halted -> `rolled_back` event                  ref: one-step promote
  idle round             one fleet.tick() with nothing to change (median of 5)   ref: --poll
  exchange only          every device's ModelManager.round() alone (median of 3)  ref: idle round
  controller tick        Rollouts.tick() in a thread, as the controller runs it (median of 5),
                         with the bench's ended rollouts still watched (deadline_s 120)
                                                                ref: the controller's 100 ms period
  GET /v1/rollouts/{id}  over HTTP (median of 20)      ref: Rollouts.status() in-process

The last four are measured at the end, with the fleet's ticker stopped.

The issue sets no numeric goal: every figure's goal is "report" and meets_goal is null.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from figures import emit, note
from rig import serving

import httpx

from hub.config import HubConfig
from hub.rollouts import RolloutPlan
from hub.service import Hub
from simulators.model_faults import V1, build_candidate
from simulators.model_fleet import ModelFleet

MODEL = "condition"
VARIANT = "model.fp32.onnx"
GOAL = "report (the issue gives no numeric goal)"
GATES = {"min_reporting": 2, "min_windows": 8, "max_failures": 0, "max_p95_ratio": 8.0, "max_divergence": 0.35}
PERCENTS = (5, 25, 50, 100)
BAD_BAKE_S = 30.0
SAMPLE_S = 0.05  # how often the bench looks at the switch stamps and the rollout's state
TIMEOUT_S = 150.0  # per wait; a wait that runs past it fails the bench
GOOD_ATTEMPTS = 2  # a good rollout halted by a noisy gate is retried once (and the halt is reported)


# --- the hub ------------------------------------------------------------------------------------
def hub_config(data_dir: Path, *, poll_s: float) -> HubConfig:
    """tests/integration/harness.py's hub_config(api=True, control=...), built here (benches import no tests)."""
    return HubConfig.model_validate({
        "data_dir": str(data_dir),
        "broker": {"embedded": {"port": 0, "mqtt_port": None, "http_port": 0}},
        "ingest": {"ack_wait": "3s", "fetch_timeout": "200ms"},
        "api": {"enabled": True, "port": 0},  # 0: a free port; the hub reports it in state.api_url
        "control": {"poll_interval": f"{round(poll_s * 1000)}ms", "tick": "100ms"},
        "log_level": "warning",
    })




def register(hub: Hub, recipe: Path, version: str, *, champion: bool = False) -> None:
    hub.registry.register(recipe, version=version, variants=[VARIANT])
    hub.registry.sign(MODEL, version)
    if champion:
        hub.registry.promote(MODEL, version)


def plan(version: str, *, bake_s: float, poll_s: float) -> RolloutPlan:
    return RolloutPlan.from_dict({
        "model": MODEL, "version": version, "stages": [{"percent": p, "bake_s": bake_s} for p in PERCENTS],
        "gates": GATES, "deadline_s": 120, "stage_timeout_s": 120, "poll_interval_s": poll_s})


# --- the fleet ----------------------------------------------------------------------------------
class Ticker:
    """ModelFleet.run's loop (one round of every online device, then sleep `interval`), timing each round."""

    def __init__(self, fleet: ModelFleet, interval: float) -> None:
        self.fleet, self.interval = fleet, interval
        self.rounds: list[tuple[float, float | None]] = []  # (start, duration) in perf_counter seconds
        self._stop = asyncio.Event()
        self._ended = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            self.rounds.append((t, None))
            await self.fleet.tick()
            self.rounds[-1] = (t, time.perf_counter() - t)
            self._ended.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="fleet-ticker")

    async def after_round(self) -> None:
        """Return right after the next round ends (the devices then sleep `interval`)."""
        self._ended.clear()
        await asyncio.wait_for(self._ended.wait(), timeout=TIMEOUT_S)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout=120)
            self._task = None

    def check(self) -> None:
        if self._task is not None and self._task.done():
            self._task.result()  # raise what stopped it
            raise RuntimeError("The fleet ticker stopped by itself.")

    def between(self, t0: float, t1: float) -> dict[str, float]:
        """Rounds started in [t0, t1] (perf_counter) and how long the finished ones took."""
        r = [d for s, d in self.rounds if t0 <= s <= t1]
        done = [d for d in r if d is not None]
        return {"rounds": len(r), "round_median_s": statistics.median(done) if done else 0.0,
                "round_max_s": max(done, default=0.0)}


class Switches:
    """Each device's active version and when it last switched, from ModelManager.changed."""

    def __init__(self, fleet: ModelFleet) -> None:
        self.fleet = fleet
        self.version: dict[str, str | None] = {}
        self.at: dict[str, float] = {}  # time.time() of the device's last switch
        self.log: list[tuple[float, str, str | None]] = []  # (time.time(), device, version) of every switch
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        for d in self.fleet.devices:
            d.manager.changed.clear()
            self.version[d.name] = self._read(d)
            self._tasks.append(asyncio.create_task(self._watch(d), name=f"switches-{d.name}"))

    @staticmethod
    def _read(d) -> str | None:
        a = d.manager.slots.active
        return None if a is None else a.manifest.version

    async def _watch(self, d) -> None:
        while True:
            await d.manager.changed.wait()
            now = time.time()
            d.manager.changed.clear()
            v = self._read(d)
            self.version[d.name], self.at[d.name] = v, now
            self.log.append((now, d.name, v))

    def counts(self) -> Counter[str | None]:
        return Counter(self.version.values())

    def counts_at(self, at: float) -> Counter[str | None]:
        """Versions the devices ran at time.time() `at`, replayed from the log."""
        first = {d.name: None for d in self.fleet.devices}
        state = dict(first)
        for t, name, v in self.log:
            if t > at:
                break
            state[name] = v
        return Counter(state.values())

    def last_switch_after(self, t0: float) -> float | None:
        later = [t for t, _, _ in self.log if t >= t0]
        return max(later, default=None)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Rig:
    def __init__(self, hub: Hub, fleet: ModelFleet, ticker: Ticker, switches: Switches, tmp: Path, poll_s: float):
        self.hub, self.fleet, self.ticker, self.switches, self.tmp, self.poll_s = hub, fleet, ticker, switches, tmp, poll_s
        self.confirm_s: list[float] = []  # what each fleet.versions() confirmation cost

    @property
    def n(self) -> int:
        return len(self.fleet.devices)

    async def until(self, predicate: Callable[[], bool], what: str, *, timeout: float = TIMEOUT_S,
                    each: Callable[[], None] | None = None) -> tuple[float, float]:
        """Sample `predicate` every SAMPLE_S until true; (perf_counter, time.time()) of that sample."""
        deadline = time.monotonic() + timeout
        while True:
            if each is not None:
                each()
            if predicate():
                return time.perf_counter(), time.time()
            self.ticker.check()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Timed out after {timeout:g}s waiting for {what} "
                                   f"(devices: {dict(self.switches.counts())}).")
            await asyncio.sleep(SAMPLE_S)

    async def all_on(self, version: str, since: float) -> tuple[float, float]:
        """Wait until every device runs `version`, confirmed from disk by fleet.versions(); returns
        (time.time() of the last switch since `since`, or `since` if nobody had to switch; detection time)."""
        while True:
            _, seen = await self.until(lambda: self.switches.counts() == {version: self.n},
                                       f"every device on {version}")
            t = time.perf_counter()
            on_disk = self.fleet.versions()
            self.confirm_s.append(time.perf_counter() - t)
            if on_disk == {version: self.n}:
                return self.switches.last_switch_after(since) or since, seen
            note(f"switch stamps say all on {version}, the slots say {dict(on_disk)}; waiting on")
            await asyncio.sleep(SAMPLE_S)

    async def state(self, rid: str, states: tuple[str, ...], each: Callable[[], None] | None = None) -> dict:
        await self.until(lambda: self.hub.rollouts.status(rid, events=False)["state"] in states,
                         f"rollout {rid} to reach {states}", each=each)
        return self.hub.rollouts.status(rid)


def event_at(status: dict, to: str) -> float:
    """time.time() of the first event into state `to`."""
    at = [e["at_us"] for e in status["events"] if e["to"] == to]
    if not at:
        raise RuntimeError(f"Rollout {status['id']} has no {to!r} event: {[e['to'] for e in status['events']]}")
    return at[0] / 1e6


def candidate_figures(rig: "Rig", version: str) -> list[dict]:
    """What the devices running `version` would report now: predict calls, windows, p95."""
    out = []
    for d in rig.fleet.devices:
        if rig.switches.version.get(d.name) != version:
            continue
        inf, _ = d.pipeline.report()
        if inf is not None and inf.version == version:
            out.append({"device": d.name, "calls": inf.calls, "windows": inf.windows, "p95_ms": inf.p95_ms})
    return out


# --- the scenarios ------------------------------------------------------------------------------
async def initial(rig: Rig) -> dict:
    p0, w0 = time.perf_counter(), time.time()
    rig.ticker.start()
    last, seen = await rig.all_on("1.0.0", w0)
    return {"seconds": last - w0, "detected_s": seen - w0, **rig.ticker.between(p0, time.perf_counter())}


async def one_step(rig: Rig) -> dict:
    register(rig.hub, build_candidate(rig.tmp / "c-1.1.0", "good", version="1.1.0"), "1.1.0")
    await rig.ticker.after_round()
    p0, w0 = time.perf_counter(), time.time()
    rig.hub.registry.promote(MODEL, "1.1.0")
    last, seen = await rig.all_on("1.1.0", w0)
    return {"seconds": last - w0, "detected_s": seen - w0, **rig.ticker.between(p0, time.perf_counter())}


async def staged_good(rig: Rig, *, bake_s: float) -> dict:
    version = "1.2.0"
    register(rig.hub, build_candidate(rig.tmp / f"c-{version}", "good", version=version), version)
    halts = []
    for attempt in range(1, GOOD_ATTEMPTS + 1):
        await rig.ticker.after_round()
        p0, w0 = time.perf_counter(), time.time()
        rid = rig.hub.rollouts.start(plan(version, bake_s=bake_s, poll_s=rig.poll_s))["id"]
        seen_cand: list[dict] = []
        status = await rig.state(rid, ("complete", "halted", "rolled_back"),
                                 each=lambda: seen_cand.__setitem__(slice(None), candidate_figures(rig, version)))
        if status["state"] == "complete":
            break
        halts.append({"attempt": attempt, "reason": status["reason"], "candidate_devices": seen_cand})
        note(f"the good rollout {rid} halted: {status['reason']}; candidate devices then: {seen_cand}")
        champion = status["champion"]
        await rig.all_on(champion, time.time())
        await rig.state(rid, ("rolled_back",))
    else:
        raise RuntimeError(f"The good rollout halted {GOOD_ATTEMPTS} times: {halts}")
    w_complete = event_at(status, "complete")
    last, seen = await rig.all_on(version, w0)
    # Each stage's time, from the events: canary at the first tick, stage k+1 when k passed, complete last.
    moves = [e for e in status["events"] if e["to"] in ("canary", "stage", "complete")]
    stage_s = [(b["at_us"] - a["at_us"]) / 1e6 for a, b in zip(moves, moves[1:])]
    sizes = moves[0]["details"].get("stage_sizes")
    passed = []  # when each stage passed: how many devices ran the candidate, and how many the gate counted
    for k, e in enumerate(moves[1:]):
        reporting = next((g["value"] for g in e["details"].get("gates", []) if g["name"] == "min_reporting"), None)
        passed.append({"stage": k, "assigned": sizes[k] if sizes else None, "min_reporting_value": reporting,
                       "on_candidate": rig.switches.counts_at(e["at_us"] / 1e6).get(version, 0)})
    return {"id": rid, "attempts": attempt, "halts": halts, "complete_s": w_complete - w0, "converged_s": last - w0,
            "detected_s": seen - w0, "pending_to_canary_s": event_at(status, "canary") - w0,
            "stage_s": [round(s, 3) for s in stage_s], "stage_sizes": sizes, "stage_passed": passed,
            "on_candidate_at_complete": rig.switches.counts_at(w_complete).get(version, 0),
            "champion_after": rig.hub.registry.alias(MODEL, "champion"),
            **rig.ticker.between(p0, time.perf_counter())}


async def failing(rig: Rig, kind: str, version: str) -> dict:
    register(rig.hub, build_candidate(rig.tmp / f"c-{version}", kind, version=version), version)
    await rig.ticker.after_round()
    p0, w0 = time.perf_counter(), time.time()
    rid = rig.hub.rollouts.start(plan(version, bake_s=BAD_BAKE_S, poll_s=rig.poll_s))["id"]
    status = await rig.state(rid, ("halted", "rolled_back", "complete"))
    w_seen_halt = time.time()
    if status["state"] == "complete":
        raise RuntimeError(f"The {kind} candidate went through every stage: {status['reason']}")
    w_halt = event_at(status, "halted")
    halt = next(e for e in status["events"] if e["to"] == "halted")
    champion = status["champion"]
    last, seen = await rig.all_on(champion, w_halt)
    status = await rig.state(rid, ("rolled_back",))
    w_rolled = event_at(status, "rolled_back")
    took = {name for t, name, v in rig.switches.log if v == version and t >= w0}
    failures = sorted({d.manager.reported().failure.reason for d in rig.fleet.devices
                       if d.manager.reported().failure is not None})
    return {"id": rid, "halt_s": w_halt - w0, "back_s": max(last - w_halt, 0.0), "detected_s": seen - w_halt,
            "rolled_back_event_s": w_rolled - w_halt, "halt_observed_lag_s": w_seen_halt - w_halt,
            "halted_stage": halt["stage"], "halt_reason": halt["reason"],
            "canary_devices": (status["events"][1]["details"].get("stage_sizes") or [None])[0],
            "devices_took_candidate": len(took), "on_candidate_at_halt": rig.switches.counts_at(w_halt).get(version, 0),
            "device_failure_reasons": failures, "champion_after": rig.hub.registry.alias(MODEL, "champion"),
            **rig.ticker.between(p0, time.perf_counter())}


async def idle_costs(rig: Rig, client: httpx.AsyncClient, rid: str) -> dict:
    """With the ticker stopped: one whole round, the exchanges alone, GET /v1/rollouts/{id}, fleet.versions()."""
    fleet, hub = rig.fleet, rig.hub
    tick = []
    for _ in range(5):
        t = time.perf_counter()
        await fleet.tick()
        tick.append(time.perf_counter() - t)
    exch = []
    for _ in range(3):
        t = time.perf_counter()
        await asyncio.gather(*(d.manager.round() for d in fleet.devices))
        exch.append(time.perf_counter() - t)
    url = f"{hub.state.api_url}/v1/rollouts/{rid}"
    http, direct = [], []
    for _ in range(20):
        t = time.perf_counter()
        r = await client.get(url)
        http.append(time.perf_counter() - t)
        r.raise_for_status()
        t = time.perf_counter()
        hub.rollouts.status(rid)
        direct.append(time.perf_counter() - t)
    versions = []
    for _ in range(5):
        t = time.perf_counter()
        fleet.versions()
        versions.append(time.perf_counter() - t)
    ctl = []
    for _ in range(5):
        t = time.perf_counter()
        await asyncio.to_thread(hub.rollouts.tick, hub.twins)
        ctl.append(time.perf_counter() - t)
    watched = sum(1 for r in hub.rollouts.list() if r["state"] in ("complete", "rolled_back", "halted"))
    return {"tick_s": statistics.median(tick), "tick_all_s": tick, "exchange_s": statistics.median(exch),
            "exchange_all_s": exch, "get_status_ms": statistics.median(http) * 1e3,
            "status_direct_ms": statistics.median(direct) * 1e3, "versions_ms": statistics.median(versions) * 1e3,
            "controller_tick_ms": statistics.median(ctl) * 1e3, "controller_all_ms": [x * 1e3 for x in ctl],
            "ended_rollouts_watched": watched}


def machine() -> str:
    return (f"{platform.machine()} {os.cpu_count()} cpu(s) ({len(os.sched_getaffinity(0))} usable, shared), "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}; hub, HTTP API, "
            f"controller and every virtual device (onnxruntime) in one process and one event loop")


# --- main ---------------------------------------------------------------------------------------
async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--poll", type=float, default=0.5, help="seconds between fleet rounds (and the hub's poll interval)")
    p.add_argument("--bake", type=float, default=1.0, help="bake seconds of each stage of the good rollout")
    p.add_argument("--quick", action="store_true", help="50 devices")
    p.add_argument("--shared-client", action="store_true", help="one httpx pool for every device")
    p.add_argument("--pool", type=int, default=None,
                   help="connections in the shared httpx pool (default: devices + 10, so no request queues)")
    p.add_argument("--dir", type=Path, default=None, help="where stores go (default: a temp dir)")
    args = p.parse_args()
    n = 50 if args.quick else args.devices
    # Devices log every refusal and rollback; the drill makes them on purpose.
    logging.basicConfig(level=logging.CRITICAL)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-rollout-") as tmp_name:
        tmp = Path(tmp_name)
        async with serving(hub_config(tmp / "hub", poll_s=args.poll)) as hub:
            key = hub.registry.keys.export_public(tmp / "fleet-key.pem")
            register(hub, V1, "1.0.0", champion=True)
            pool = args.pool or n + 10
            limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:
                fleet = ModelFleet(tmp / "devices", hub_url=hub.state.api_url, trusted_keys=(key,), size=n,
                                   poll_interval_s=args.poll)
                ticker = Ticker(fleet, args.poll)
                switches = Switches(fleet)
                rig = Rig(hub, fleet, ticker, switches, tmp, args.poll)
                try:
                    t = time.perf_counter()
                    await fleet.start(client if args.shared_client else None)
                    fleet_start_s = time.perf_counter() - t
                    switches.start()
                    note(f"{n} devices started in {fleet_start_s:.1f}s; hub at {hub.state.api_url}")

                    init = await initial(rig)
                    note(f"initial install: all {n} on 1.0.0 in {init['seconds']:.2f}s ({init['rounds']} round(s))")
                    ref = await one_step(rig)
                    note(f"one-step promote: all {n} on 1.1.0 in {ref['seconds']:.2f}s ({ref['rounds']} round(s))")
                    good = await staged_good(rig, bake_s=args.bake)
                    note(f"4-stage rollout of 1.2.0: complete in {good['complete_s']:.2f}s, all {n} on it "
                         f"in {good['converged_s']:.2f}s (stages {good['stage_s']}, attempt {good['attempts']})")
                    bad = {}
                    for kind, version in (("divergent", "1.3.0-bad"), ("broken", "1.4.0-broken")):
                        bad[kind] = b = await failing(rig, kind, version)
                        note(f"{kind} {version}: halted {b['halt_s']:.2f}s after start ({b['halt_reason'][:70]}...); "
                             f"all back on the champion {b['back_s']:.2f}s after the halt; rolled_back event "
                             f"{b['rolled_back_event_s']:.2f}s after it")
                    await ticker.stop()
                    idle = await idle_costs(rig, client, good["id"])
                    note(f"idle round {idle['tick_s']:.3f}s, exchanges alone {idle['exchange_s']:.3f}s, "
                         f"GET status {idle['get_status_ms']:.1f}ms, fleet.versions() {idle['versions_ms']:.1f}ms, "
                         f"controller tick {idle['controller_tick_ms']:.1f}ms")
                finally:
                    with contextlib.suppress(Exception):
                        await ticker.stop()
                    await switches.stop()
                    await fleet.close()
                errors = sum(d.errors for d in fleet.devices)
    total_s = time.perf_counter() - started
    note(f"total {total_s:.1f}s")

    common = {"devices": n, "poll_s": args.poll, "controller_tick_s": 0.1, "http_pool": pool if args.shared_client else "one client per device", "device_round_errors": errors,
              "fleet_versions_ms": idle["versions_ms"], "bench_total_s": total_s, "machine": machine()}
    one = ref["seconds"]
    one_ref = "one_step_promote_s (registry.promote of 1.1.0, no rollout: until every device runs it)"
    period = idle["tick_s"] + args.poll
    emit("rollout_initial_install_s", init["seconds"], "s", reference=one_ref, reference_value=one,
         goal=GOAL, meets_goal=None, detected_s=init["detected_s"], fleet_start_s=fleet_start_s,
         rounds=init["rounds"], round_median_s=init["round_median_s"], round_max_s=init["round_max_s"], **common)
    emit("rollout_one_step_promote_s", one, "s",
         reference="one idle fleet round + --poll (median fleet.tick() with nothing to change, plus the sleep)",
         reference_value=period, goal=GOAL, meets_goal=None, detected_s=ref["detected_s"], rounds=ref["rounds"],
         round_median_s=ref["round_median_s"], round_max_s=ref["round_max_s"], **common)
    stages = f"{'/'.join(map(str, PERCENTS))} % bake {args.bake:g}s"
    emit("rollout_4stage_complete_s", good["complete_s"], "s", reference=one_ref, reference_value=one,
         goal=GOAL, meets_goal=None, stages=stages, stage_sizes=good["stage_sizes"], stage_s=good["stage_s"],
         stage_passed=good["stage_passed"], on_candidate_at_complete=good["on_candidate_at_complete"],
         pending_to_canary_s=good["pending_to_canary_s"], bake_total_s=args.bake * len(PERCENTS), gates=GATES,
         attempts=good["attempts"], halted_attempts=good["halts"], champion_after=good["champion_after"], **common)
    emit("rollout_4stage_converged_s", good["converged_s"], "s", reference=one_ref, reference_value=one,
         goal=GOAL, meets_goal=None, stages=stages, after_complete_s=good["converged_s"] - good["complete_s"],
         detected_s=good["detected_s"], rounds=good["rounds"], round_median_s=good["round_median_s"],
         round_max_s=good["round_max_s"], attempts=good["attempts"], **common)
    for kind, b in bad.items():
        extra = {"candidate": kind, "stages": f"{'/'.join(map(str, PERCENTS))} % bake {BAD_BAKE_S:g}s",
                 "halted_stage": b["halted_stage"], "halt_reason": b["halt_reason"],
                 "canary_devices": b["canary_devices"], "devices_took_candidate": b["devices_took_candidate"],
                 "on_candidate_at_halt": b["on_candidate_at_halt"],
                 "device_failure_reasons": b["device_failure_reasons"], "champion_after": b["champion_after"]}
        emit(f"rollout_start_to_halt_s[{kind}]", b["halt_s"], "s", reference=one_ref, reference_value=one,
             goal=GOAL, meets_goal=None, **extra, **common)
        emit(f"rollout_halt_to_all_on_champion_s[{kind}]", b["back_s"], "s", reference=one_ref, reference_value=one,
             goal=GOAL, meets_goal=None, rolled_back_event_after_halt_s=b["rolled_back_event_s"],
             detected_s=b["detected_s"], halt_observed_lag_s=b["halt_observed_lag_s"], rounds=b["rounds"],
             round_median_s=b["round_median_s"], **extra, **common)
    emit("fleet_idle_round_s", idle["tick_s"], "s", reference="--poll (the sleep between rounds)",
         reference_value=args.poll, goal=GOAL, meets_goal=None, all_s=[round(x, 4) for x in idle["tick_all_s"]],
         per_device_ms=idle["tick_s"] / n * 1e3, **common)
    emit("fleet_exchange_only_s", idle["exchange_s"], "s",
         reference="fleet_idle_round_s (the same round plus each device's inference batch)",
         reference_value=idle["tick_s"], goal=GOAL, meets_goal=None,
         all_s=[round(x, 4) for x in idle["exchange_all_s"]], per_device_ms=idle["exchange_s"] / n * 1e3, **common)
    emit("rollout_controller_tick_ms", idle["controller_tick_ms"], "ms",
         reference="the controller's tick period (control.tick)", reference_value=100.0, goal=GOAL, meets_goal=None,
         all_ms=[round(x, 2) for x in idle["controller_all_ms"]],
         ended_rollouts_watched=idle["ended_rollouts_watched"], **common)
    emit("rollout_status_http_ms", idle["get_status_ms"], "ms",
         reference="Rollouts.status() called in-process (no HTTP)", reference_value=idle["status_direct_ms"],
         goal=GOAL, meets_goal=None, **common)


if __name__ == "__main__":
    asyncio.run(main())
