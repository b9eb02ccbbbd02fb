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
rollback) and a real InferencePipeline fed labelled windows. All devices share one
httpx.AsyncClient whose pool holds a connection per device. The fleet ticks every `--poll`
seconds: one round of every online device (infer a batch, exchange, reconcile), then a sleep of
`--poll` (ModelFleet.run's loop, with a stopwatch on each round). Everything - hub, HTTP API,
devices, their onnxruntime sessions - shares this process and its cores.

Figures, each beside a reference measured in the same run:

  initial install       nothing -> every device on 1.0.0                 ref: one-step promote
  one-step promote      `registry.promote(1.1.0)`, no rollout -> all on it   ref: one idle round + poll
  4-stage rollout       1.2.0 (good), 5/25/50/100 % with `--bake` each:
                        start -> state complete; start -> every device on 1.2.0   ref: one-step promote
  failing gate          1.3.0-bad (divergent: passes its self-test, predictions diverge) and
                        1.4.0-broken (does not load: the self-test refuses it), bake 30 s:
                        start -> `halted` event; halted -> last device back on the champion
                        (sampled from the devices' slots), and halted -> `rolled_back` event
                                                                          ref: one-step promote
  idle round            one fleet.tick() with nothing to change (median of 5)   ref: --poll
  exchange only         every device's ModelManager.round() alone (median of 5) ref: idle round
  GET /v1/rollouts/{id} over HTTP (median of 20)      ref: Rollouts.status() in-process

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
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from figures import emit, note

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
SAMPLE_S = 0.05  # how often convergence is sampled from the devices' slots
TIMEOUT_S = 120.0  # per wait; a wait that runs past it fails the bench


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


@contextlib.asynccontextmanager
async def running_hub(config: HubConfig, ready_timeout: float = 30.0) -> AsyncIterator[Hub]:
    """A Hub in this loop, ready (API listening) when yielded; stopped after, its nats-server killed if it lingers."""
    hub = Hub(config)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop), name="bench-hub")
    ready = asyncio.create_task(hub.state.ready.wait())
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            await task
            raise RuntimeError("The hub stopped before it was ready.")
        if ready not in done:
            raise TimeoutError(f"The hub was not ready within {ready_timeout}s.")
        yield hub
    finally:
        ready.cancel()
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=30)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            if hub.broker is not None and hub.broker.running:
                hub.broker.kill()


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
    """ModelFleet.run's loop (one round of every device, then sleep `interval`), timing each round."""

    def __init__(self, fleet: ModelFleet, interval: float) -> None:
        self.fleet, self.interval = fleet, interval
        self.rounds: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            await self.fleet.tick()
            self.rounds.append(time.perf_counter() - t)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="fleet-ticker")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout=60)
            self._task = None

    def check(self) -> None:
        if self._task is not None and self._task.done():
            self._task.result()  # raise what stopped it
            raise RuntimeError("The fleet ticker stopped by itself.")


async def until(predicate: Callable[[], bool], what: str, ticker: Ticker, *, timeout: float = TIMEOUT_S,
                each: Callable[[], None] | None = None) -> tuple[float, float]:
    """Sample `predicate` every SAMPLE_S until true; returns (perf_counter, time.time) of that sample."""
    deadline = time.monotonic() + timeout
    while True:
        if each is not None:
            each()
        if predicate():
            return time.perf_counter(), time.time()
        ticker.check()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Timed out after {timeout:g}s waiting for {what}.")
        await asyncio.sleep(SAMPLE_S)


def all_on(fleet: ModelFleet, version: str) -> Callable[[], bool]:
    n = len(fleet.devices)
    return lambda: fleet.versions() == {version: n}


async def until_state(hub: Hub, rid: str, states: tuple[str, ...], ticker: Ticker) -> dict:
    await until(lambda: hub.rollouts.status(rid, events=False)["state"] in states, f"rollout {rid} to reach {states}",
                ticker)
    return hub.rollouts.status(rid)


def event_at(status: dict, to: str) -> float:
    """time.time() of the first event into state `to`."""
    at = [e["at_us"] for e in status["events"] if e["to"] == to]
    if not at:
        raise RuntimeError(f"Rollout {status['id']} has no {to!r} event: {[e['to'] for e in status['events']]}")
    return at[0] / 1e6


def rounds_during(ticker: Ticker, since: int) -> dict[str, float]:
    r = ticker.rounds[since:]
    return {"rounds": len(r), "round_median_s": statistics.median(r) if r else 0.0, "round_max_s": max(r, default=0.0)}


# --- the scenarios ------------------------------------------------------------------------------
async def one_step(hub: Hub, fleet: ModelFleet, ticker: Ticker, tmp: Path) -> dict:
    register(hub, build_candidate(tmp / "c-1.1.0", "good", version="1.1.0"), "1.1.0")
    r0 = len(ticker.rounds)
    t0 = time.perf_counter()
    hub.registry.promote(MODEL, "1.1.0")
    t1, _ = await until(all_on(fleet, "1.1.0"), "every device on 1.1.0 after a one-step promote", ticker)
    return {"seconds": t1 - t0, **rounds_during(ticker, r0)}


async def staged_good(hub: Hub, fleet: ModelFleet, ticker: Ticker, tmp: Path, *, bake_s: float, poll_s: float) -> dict:
    version = "1.2.0"
    register(hub, build_candidate(tmp / f"c-{version}", "good", version=version), version)
    r0 = len(ticker.rounds)
    w0, t0 = time.time(), time.perf_counter()
    rid = hub.rollouts.start(plan(version, bake_s=bake_s, poll_s=poll_s))["id"]
    status = await until_state(hub, rid, ("complete", "halted", "rolled_back"), ticker)
    t_complete = time.perf_counter()
    if status["state"] != "complete":
        raise RuntimeError(f"The good rollout ended {status['state']}: {status['reason']}")
    t_conv, _ = await until(all_on(fleet, version), f"every device on {version}", ticker)
    # Each stage's time, from the events: canary at the first tick, stage k+1 when k passed, complete last.
    marks = [e["at_us"] / 1e6 for e in status["events"] if e["to"] in ("canary", "stage", "complete")]
    stage_s = [b - a for a, b in zip(marks, marks[1:])]
    return {"id": rid, "complete_s": t_complete - t0, "converged_s": t_conv - t0,
            "complete_s_from_events": event_at(status, "complete") - w0,
            "pending_to_canary_s": event_at(status, "canary") - w0,
            "stage_s": [round(s, 3) for s in stage_s], "stage_sizes": status["events"][1]["details"].get("stage_sizes"),
            "champion_after": hub.registry.alias(MODEL, "champion"), **rounds_during(ticker, r0)}


async def failing(hub: Hub, fleet: ModelFleet, ticker: Ticker, tmp: Path, kind: str, version: str, *,
                  champion: str, poll_s: float) -> dict:
    register(hub, build_candidate(tmp / f"c-{version}", kind, version=version), version)
    n = len(fleet.devices)
    peak = {"on_candidate": 0}

    def watch() -> None:
        peak["on_candidate"] = max(peak["on_candidate"], fleet.versions().get(version, 0))

    r0 = len(ticker.rounds)
    w0, t0 = time.time(), time.perf_counter()
    rid = hub.rollouts.start(plan(version, bake_s=BAD_BAKE_S, poll_s=poll_s))["id"]
    await until(lambda: hub.rollouts.status(rid, events=False)["state"] in ("halted", "rolled_back", "complete"),
                f"rollout {rid} to halt", ticker, each=watch)
    w_seen_halt = time.time()
    status = hub.rollouts.status(rid)
    if status["state"] == "complete":
        raise RuntimeError(f"The {kind} candidate went through every stage: {status['reason']}")
    w_halt = event_at(status, "halted")
    halt = next(e for e in status["events"] if e["to"] == "halted")
    on_candidate_at_halt = fleet.versions().get(version, 0)
    _, w_back = await until(all_on(fleet, champion), f"every device back on {champion}", ticker, each=watch)
    status = await until_state(hub, rid, ("rolled_back",), ticker)
    w_rolled = event_at(status, "rolled_back")
    failures = sorted({d.manager.reported().failure.reason for d in fleet.devices
                       if d.manager.reported().failure is not None})
    return {"id": rid, "halt_s": w_halt - w0, "back_s": max(w_back - w_halt, 0.0),
            "rolled_back_event_s": w_rolled - w_halt, "halt_observed_lag_s": w_seen_halt - w_halt,
            "halted_stage": halt["stage"], "halt_reason": halt["reason"], "canary_devices":
            status["events"][1]["details"].get("stage_sizes", [None])[0], "peak_on_candidate": peak["on_candidate"],
            "on_candidate_at_halt": on_candidate_at_halt, "device_failure_reasons": failures,
            "champion_after": hub.registry.alias(MODEL, "champion"), "total_s": time.perf_counter() - t0,
            **rounds_during(ticker, r0)}


async def idle_costs(hub: Hub, fleet: ModelFleet, client: httpx.AsyncClient, rid: str) -> dict:
    """With the ticker stopped: one whole round, the exchanges alone, and GET /v1/rollouts/{id}."""
    tick = []
    for _ in range(5):
        t = time.perf_counter()
        await fleet.tick()
        tick.append(time.perf_counter() - t)
    exch = []
    for _ in range(5):
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
    t = time.perf_counter()
    for _ in range(5):
        fleet.versions()
    versions_s = (time.perf_counter() - t) / 5
    return {"tick_s": statistics.median(tick), "tick_all_s": tick, "exchange_s": statistics.median(exch),
            "exchange_all_s": exch, "get_status_ms": statistics.median(http) * 1e3,
            "status_direct_ms": statistics.median(direct) * 1e3, "versions_sample_ms": versions_s * 1e3}


def machine() -> str:
    return (f"{platform.machine()} {os.cpu_count()} cpu(s) ({len(os.sched_getaffinity(0))} usable, shared), "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}; hub, HTTP API, "
            f"controller and every virtual device (onnxruntime) in one process")


# --- main ---------------------------------------------------------------------------------------
async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--poll", type=float, default=0.5, help="seconds between fleet rounds (and the hub's poll interval)")
    p.add_argument("--bake", type=float, default=1.0, help="bake seconds of each stage of the good rollout")
    p.add_argument("--quick", action="store_true", help="50 devices")
    p.add_argument("--dir", type=Path, default=None, help="where stores go (default: a temp dir)")
    args = p.parse_args()
    n = 50 if args.quick else args.devices
    logging.basicConfig(level=logging.ERROR)  # devices log every install/rollback at INFO/WARNING
    logging.getLogger("simulators.model_fleet").setLevel(logging.ERROR)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-rollout-") as tmp_name:
        tmp = Path(tmp_name)
        async with running_hub(hub_config(tmp / "hub", poll_s=args.poll)) as hub:
            key = hub.registry.keys.export_public(tmp / "fleet-key.pem")
            register(hub, V1, "1.0.0", champion=True)
            limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:
                fleet = ModelFleet(tmp / "devices", hub_url=hub.state.api_url, trusted_keys=(key,), size=n,
                                   poll_interval_s=args.poll)
                ticker = Ticker(fleet, args.poll)
                try:
                    t = time.perf_counter()
                    await fleet.start(client)
                    fleet_start_s = time.perf_counter() - t
                    note(f"{n} devices started in {fleet_start_s:.1f}s; hub at {hub.state.api_url}")

                    t0 = time.perf_counter()
                    ticker.start()
                    t1, _ = await until(all_on(fleet, "1.0.0"), "every device on 1.0.0", ticker)
                    initial = {"seconds": t1 - t0, **rounds_during(ticker, 0)}
                    note(f"initial install: all {n} on 1.0.0 in {initial['seconds']:.2f}s")

                    ref = await one_step(hub, fleet, ticker, tmp)
                    note(f"one-step promote: all {n} on 1.1.0 in {ref['seconds']:.2f}s")

                    good = await staged_good(hub, fleet, ticker, tmp, bake_s=args.bake, poll_s=args.poll)
                    note(f"4-stage rollout of 1.2.0: complete in {good['complete_s']:.2f}s, all {n} on it "
                         f"in {good['converged_s']:.2f}s (stages {good['stage_s']})")

                    bad = {}
                    for kind, version in (("divergent", "1.3.0-bad"), ("broken", "1.4.0-broken")):
                        bad[kind] = await failing(hub, fleet, ticker, tmp, kind, version, champion="1.2.0",
                                                  poll_s=args.poll)
                        note(f"{kind} {version}: halted {bad[kind]['halt_s']:.2f}s after start "
                             f"({bad[kind]['halt_reason'][:80]}); all back on 1.2.0 {bad[kind]['back_s']:.2f}s "
                             f"after the halt; rolled_back event {bad[kind]['rolled_back_event_s']:.2f}s after it")

                    await ticker.stop()
                    idle = await idle_costs(hub, fleet, client, good["id"])
                    note(f"idle round {idle['tick_s']:.3f}s, exchanges alone {idle['exchange_s']:.3f}s, "
                         f"GET status {idle['get_status_ms']:.1f}ms, fleet.versions() {idle['versions_sample_ms']:.1f}ms")
                finally:
                    with contextlib.suppress(Exception):
                        await ticker.stop()
                    await fleet.close()
                    errors = sum(d.errors for d in fleet.devices)
    total_s = time.perf_counter() - started
    note(f"total {total_s:.1f}s")

    common = {"devices": n, "poll_s": args.poll, "controller_tick_s": 0.1, "sample_s": SAMPLE_S,
              "device_round_errors": errors, "bench_total_s": total_s, "machine": machine()}
    one = ref["seconds"]
    one_ref = "one_step_promote_s (registry.promote of 1.1.0, no rollout: every device on it)"
    period = idle["tick_s"] + args.poll
    emit("rollout_initial_install_s", initial["seconds"], "s", reference=one_ref, reference_value=one,
         goal=GOAL, meets_goal=None, fleet_start_s=fleet_start_s,
         install_rounds=initial["rounds"], install_round_median_s=initial["round_median_s"],
         install_round_max_s=initial["round_max_s"], **common)
    emit("rollout_one_step_promote_s", one, "s",
         reference="one idle fleet round + poll interval (median fleet.tick() with nothing to change + --poll)",
         reference_value=period, goal=GOAL, meets_goal=None, rounds=ref["rounds"],
         round_median_s=ref["round_median_s"], round_max_s=ref["round_max_s"], **common)
    stages = f"{'/'.join(map(str, PERCENTS))} % bake {args.bake:g}s"
    emit("rollout_4stage_complete_s", good["complete_s"], "s", reference=one_ref, reference_value=one,
         goal=GOAL, meets_goal=None, stages=stages, stage_sizes=good["stage_sizes"], stage_s=good["stage_s"],
         pending_to_canary_s=good["pending_to_canary_s"], complete_s_from_events=good["complete_s_from_events"],
         bake_total_s=args.bake * len(PERCENTS), gates=GATES, champion_after=good["champion_after"], **common)
    emit("rollout_4stage_converged_s", good["converged_s"], "s", reference=one_ref, reference_value=one,
         goal=GOAL, meets_goal=None, stages=stages, after_complete_s=good["converged_s"] - good["complete_s"],
         rounds=good["rounds"], round_median_s=good["round_median_s"], round_max_s=good["round_max_s"], **common)
    for kind, b in bad.items():
        extra = {"candidate": kind, "stages": f"{'/'.join(map(str, PERCENTS))} % bake {BAD_BAKE_S:g}s",
                 "halted_stage": b["halted_stage"], "halt_reason": b["halt_reason"],
                 "canary_devices": b["canary_devices"], "peak_on_candidate": b["peak_on_candidate"],
                 "on_candidate_at_halt": b["on_candidate_at_halt"],
                 "device_failure_reasons": b["device_failure_reasons"], "champion_after": b["champion_after"]}
        emit(f"rollout_gate_to_halt_s[{kind}]", b["halt_s"], "s", reference=one_ref, reference_value=one,
             goal=GOAL, meets_goal=None, **extra, **common)
        emit(f"rollout_halt_to_all_on_champion_s[{kind}]", b["back_s"], "s", reference=one_ref, reference_value=one,
             goal=GOAL, meets_goal=None, rolled_back_event_after_halt_s=b["rolled_back_event_s"],
             halt_observed_lag_s=b["halt_observed_lag_s"], rounds=b["rounds"], round_median_s=b["round_median_s"],
             **extra, **common)
    emit("fleet_idle_round_s", idle["tick_s"], "s", reference="--poll (the sleep between rounds)",
         reference_value=args.poll, goal=GOAL, meets_goal=None, all_s=[round(x, 4) for x in idle["tick_all_s"]],
         per_device_ms=idle["tick_s"] / n * 1e3, **common)
    emit("fleet_exchange_only_s", idle["exchange_s"], "s",
         reference="fleet_idle_round_s (the same round with each device's inference batch)",
         reference_value=idle["tick_s"], goal=GOAL, meets_goal=None,
         all_s=[round(x, 4) for x in idle["exchange_all_s"]], per_device_ms=idle["exchange_s"] / n * 1e3, **common)
    emit("rollout_status_http_ms", idle["get_status_ms"], "ms",
         reference="Rollouts.status() called in-process (no HTTP)", reference_value=idle["status_direct_ms"],
         goal=GOAL, meets_goal=None, fleet_versions_sample_ms=idle["versions_sample_ms"], **common)


if __name__ == "__main__":
    asyncio.run(main())
