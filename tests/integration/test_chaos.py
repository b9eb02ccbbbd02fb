"""Chaos: SIGKILL the agent or the hub, or take the broker away, mid-stream; nothing is lost or stored twice.

Every kill point is drawn from a seeded `random.Random`, so a failure replays with the same
seed; progress is read from the agent's buffer counters and the hub's metadata, never waited
for with a sleep.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from agent.config import load_config
from agent.daemon import Agent
from hub.broker import EmbeddedNats
from tests.integration.harness import (
    Proc,
    agent_config,
    device_counters,
    hub_config,
    ledger,
    running_hub,
    start_agent,
    start_hub_process,
    stored,
    write_toml,
)
from tests.servers import await_until, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

TENANT = "t1"
START_US = 1_700_000_000_000_000
CHANNELS = 4  # simulators.signals.default_channels


def _finite_input(ticks: int) -> list[dict]:
    """A deterministic source: as fast as the buffer takes it, checkpointed with every append."""
    return [{"type": "simulated", "realtime": False, "max_ticks": ticks, "start_us": START_US, "period": "10ms"}]


def _now_us() -> int:
    return time.time_ns() // 1000


def _alive(proc: Proc, what: str) -> None:
    if proc.p.poll() is not None:
        raise AssertionError(f"{what} exited with {proc.p.returncode} unexpectedly:\n{proc.tail()}")


def _stored_readings(data_dir: Path, device: str) -> int:
    """Readings (any kind) the hub has committed for `device`: a cheap SQLite read, unlike the lake."""
    return sum(s.readings for s in ledger(data_dir, TENANT, device))


def _pending_batches(data_dir: Path) -> int:
    """Batches claimed by a commit that has not finished (hub/storage/store.py): a kill mid-commit leaves some."""
    db = sqlite3.connect(f"file:{data_dir / 'meta.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM lake_pending").fetchone()[0]
    finally:
        db.close()


class _Received(NamedTuple):
    seq: int
    t_start_us: int
    t_end_us: int
    received_us: int


def _received_batches(data_dir: Path, device: str) -> list[_Received]:
    """The hub's record of each telemetry batch: its readings' time span and when it was committed."""
    db = sqlite3.connect(f"file:{data_dir / 'meta.db'}?mode=ro", uri=True)
    try:
        return [_Received(*r) for r in db.execute(
            "SELECT seq, t_start_us, t_end_us, received_us FROM batches"
            " WHERE tenant = ? AND device = ? AND kind = 'telemetry' ORDER BY received_us, seq",
            (TENANT, device),
        )]
    finally:
        db.close()


def _assert_complete_ledger(data_dir: Path, device: str) -> None:
    """One epoch, every seq from 1 to the high-water mark stored exactly once, no gaps."""
    streams = ledger(data_dir, TENANT, device)
    assert len(streams) == 1, streams  # the epoch lives in the agent's buffer file and survives restarts
    (s,) = streams
    assert s.gaps == [], s
    assert s.batches == s.hwm, s


# --- 1. the agent is SIGKILLed ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["nats", "mqtt"])
async def test_agent_sigkill_at_random_points_loses_nothing(
    tmp_path: Path, nats_server: EmbeddedNats, kind: str
) -> None:
    rng = random.Random(f"agent-sigkill-{kind}")
    ticks = 30_000
    total = ticks * CHANNELS
    device = f"sigkill-{kind}"
    # max_in_flight 1 and small batches make the send phase gradual (~1k batches, one at a
    # time), so every kill point below lands while batches are still flowing.
    config = agent_config(
        tmp_path / "agent.toml", device=device, kind=kind,
        url=nats_server.url if kind == "nats" else nats_server.mqtt_url,
        inputs=_finite_input(ticks), buffer={"batch_max_readings": 100}, uplink={"max_in_flight": 1},
    )
    db = tmp_path / f"{device}.db"
    hub_dir = tmp_path / "hub"

    def counter(name: str) -> int:
        return device_counters(db).get(name, 0)

    async with running_hub(hub_config(hub_dir, nats_url=nats_server.url)):
        # First kill while the input is still appending (best effort: generating everything
        # takes ~0.1 s), so a restart resumes from the input's checkpoint, not from the start.
        # Then one kill in each of three slices of the send phase, so they never bunch up.
        plan = [("appended.telemetry", rng.uniform(0.1, 0.6))]
        plan += [("sent.telemetry", rng.uniform(lo, lo + 0.25)) for lo in (0.05, 0.3, 0.55)]
        kills: list[tuple[str, float, int, int]] = []
        # --until-drained every time: each run would exit 0 once all is acked, had it not been killed.
        proc = start_agent(config, until_drained=True)
        try:
            for name, fraction in plan:
                threshold = int(fraction * total)

                def crossed(name: str = name, threshold: int = threshold) -> bool:
                    _alive(proc, "the agent")
                    return counter(name) >= threshold

                await await_until(crossed, timeout=30, interval=0.005, what=f"{name} >= {threshold}")
                proc.kill()
                kills.append((name, fraction, counter("appended.telemetry"), counter("sent.telemetry")))
                proc = start_agent(config, until_drained=True)
            rc = await asyncio.to_thread(proc.wait, 30)
            assert rc == 0, proc.tail()
        finally:
            proc.kill()

        # Every send-phase kill hit a stream still in motion, or the test proved nothing.
        assert all(sent < total for name, _, _, sent in kills if name == "sent.telemetry"), kills
        assert counter("appended.telemetry") == total, (kills, device_counters(db))
        assert counter("sent.telemetry") == total, (kills, device_counters(db))

        async def all_stored() -> dict[str, int] | None:
            counts = await asyncio.to_thread(stored, hub_dir)
            return counts if counts["distinct"] >= total else None

        counts = await await_until(all_stored, timeout=30, interval=0.1, what=f"{total} distinct readings stored")

    assert counts["distinct"] == total, counts
    # A kill after the broker's ack but before the agent deleted the batch sends it again;
    # the hub counts that as a ledger duplicate and drops it. The lake never holds it twice.
    assert counts["rows"] == counts["distinct"], (counts, kills)
    _assert_complete_ledger(hub_dir, device)


# --- 2. the hub is SIGKILLed ------------------------------------------------------------------
def test_hub_sigkill_during_ingest_loses_nothing(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    rng = random.Random("hub-sigkill")
    ticks = 25_000
    total = ticks * CHANNELS
    device = "hubkill"
    hub_dir = tmp_path / "hub"
    # Small fetches make ingest gradual (one commit per 4 batches) so a kill lands mid-ingest;
    # a short ack_wait brings what the dead hub had fetched but not acked back quickly.
    hub_toml = write_toml(tmp_path / "hub.toml", {
        "ingest": {"ack_wait": "2s", "fetch_timeout": "200ms", "fetch_batch": 4},
    })
    config = agent_config(
        tmp_path / "agent.toml", device=device, url=nats_server.url,
        inputs=_finite_input(ticks), buffer={"batch_max_readings": 250},
    )

    hub, _ = start_hub_process(hub_dir, nats_url=nats_server.url, config=hub_toml)
    agent = start_agent(config, until_drained=True)
    kills: list[tuple[float, int, int]] = []  # (planned fraction, readings stored then, pending batches left)
    try:
        # Two kills, each at a random point of what is still to be stored.
        for lo, hi in ((0.1, 0.4), (0.5, 0.8)):
            threshold = int(rng.uniform(lo, hi) * total)

            def crossed(threshold: int = threshold) -> bool:
                _alive(hub, "the hub")
                return _stored_readings(hub_dir, device) >= threshold

            wait_until(crossed, timeout=30, interval=0.005, what=f"the hub to store {threshold} readings")
            hub.kill()
            kills.append((threshold / total, _stored_readings(hub_dir, device), _pending_batches(hub_dir)))
            hub, _ = start_hub_process(hub_dir, nats_url=nats_server.url, config=hub_toml)

        assert agent.wait(timeout=30) == 0, agent.tail()

        def all_stored() -> dict[str, int] | None:
            _alive(hub, "the hub")
            counts = stored(hub_dir)
            return counts if counts["distinct"] >= total else None

        counts = wait_until(all_stored, timeout=30, interval=0.1, what=f"{total} distinct readings stored")
        assert hub.terminate() == 0, hub.tail()
    finally:
        hub.kill()
        agent.kill()

    assert all(stored_then < total for _, stored_then, _ in kills), kills  # every kill was mid-ingest
    assert counts["distinct"] == total, counts
    assert counts["rows"] == counts["distinct"], (counts, kills)
    assert _pending_batches(hub_dir) == 0, "recovery left pending batches behind"
    _assert_complete_ledger(hub_dir, device)


# --- 3. the broker goes away and comes back ---------------------------------------------------
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_broker_restart_mid_stream_no_loss_backlog_drains_live_first(
    tmp_path: Path, nats_server: EmbeddedNats, how: str
) -> None:
    """SIGTERM is a broker restart; SIGKILL is a crash mid-stream (every PubAck'd batch must
    survive it: the agent has already deleted those)."""
    device = "outage"
    hub_dir = tmp_path / "hub"
    rate = 800  # readings/s: 4 channels every 5 ms
    config = load_config(agent_config(
        tmp_path / "agent.toml", device=device, url=nats_server.url,
        inputs=[{"type": "simulated", "period": "5ms", "emit_interval": "50ms"}],
        # live_window 1s: what was sealed in the last second goes first, the rest is backlog,
        # and the backlog is paced (2 batches/s) so live data visibly overtakes it.
        buffer={"live_window": "1s"}, uplink={"backlog_batches_per_s": 2},
    ))
    agent = Agent(config)
    stop = asyncio.Event()

    async with running_hub(hub_config(hub_dir, nats_url=nats_server.url)) as hub:
        task = asyncio.create_task(agent.run(stop), name="agent")
        try:
            await await_until(lambda: task.done() or hub.pipeline.stats.stored_readings > 0,
                              timeout=30, what="the first readings to reach the hub")
            assert not task.done(), task

            await asyncio.to_thread(nats_server.stop if how == "sigterm" else nats_server.kill)
            down_us = _now_us()

            async def backlog() -> bool:
                assert not task.done(), task
                return (await agent.buffer.stats()).pending_readings >= 3 * rate

            await await_until(backlog, timeout=30, what="three seconds of readings to pile up in the agent")
            up_begin_us = _now_us()
            await asyncio.to_thread(nats_server.start)
            up_us = _now_us()

            async def backlog_gone() -> bool:
                assert not task.done(), task
                oldest = (await agent.buffer.stats()).oldest_unsent_us
                return oldest is None or oldest > up_us

            await await_until(backlog_gone, timeout=30, what="the agent to drain what it buffered in the outage")
            stop.set()
            await asyncio.wait_for(task, timeout=30)
        finally:
            stop.set()
            if not task.done():
                task.cancel()

        final = agent.final_stats
        assert final is not None
        appended, sent = final.counters["appended.telemetry"], final.counters["sent.telemetry"]

        async def all_stored() -> dict[str, int] | None:
            counts = await asyncio.to_thread(stored, hub_dir)
            return counts if counts["distinct"] >= sent else None

        counts = await await_until(all_stored, timeout=30, interval=0.1, what=f"{sent} distinct readings stored")

    # Live first. Backlog: batches whose readings were all taken before the broker came back,
    # and that reached the hub after it did (they sat in the agent's buffer through the outage).
    # Fresh: batches whose readings were all taken after the broker was up again. If the agent
    # sent strictly oldest-first, every backlog batch would be received before any fresh one
    # (received_us is per hub commit, so a tie also fails). Live-first means fresh data reached
    # the lake while the backlog was still draining: the first fresh batch beats the last backlog one.
    rows = _received_batches(hub_dir, device)
    backlog_rows = [r for r in rows if r.t_end_us < up_begin_us and r.received_us > up_begin_us]
    fresh_rows = [r for r in rows if r.t_start_us > up_us]
    assert any(r.t_start_us >= down_us for r in backlog_rows), ("no batch was sealed during the outage", rows)
    assert fresh_rows, ("no batch was sealed after the restart", rows)
    last_backlog = max(r.received_us for r in backlog_rows)
    first_fresh = min(r.received_us for r in fresh_rows)
    assert first_fresh < last_backlog, (
        f"fresh data first received {(first_fresh - up_us) / 1e6:.2f}s after the restart, but the backlog"
        f" ({len(backlog_rows)} batches) had finished {(last_backlog - up_us) / 1e6:.2f}s after it"
    )

    # No loss: the agent flushed everything on stop, and the lake holds each reading once.
    assert final.pending_readings == 0, final
    assert sent == appended, final.counters
    assert counts["distinct"] == appended, counts
    assert counts["rows"] == counts["distinct"], counts
    _assert_complete_ledger(hub_dir, device)
