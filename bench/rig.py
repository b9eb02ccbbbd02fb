"""The bench rig: a hub in this event loop, an agent in-process or as a process, raw JetStream publishing.

Everything here starts real things (nats-server, SQLite, Parquet) and stops what it started, by
PID, with deadlines: a benchmark that hangs or leaks a process is worse than none.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nats
from figures import ROOT

from hub.broker import EmbeddedNats, EmbeddedNatsSettings
from hub.config import ApiConfig, BrokerConfig, EmbeddedBrokerConfig, HubConfig, IngestConfig, StreamConfig
from hub.ingest.jetstream import ensure_streams
from hub.service import Hub

AGENT_MAX_IN_FLIGHT = 32  # agent.config.UplinkConfig.max_in_flight's default: the reference uses the same window


# --- the hub ------------------------------------------------------------------------------------
def hub_config(data_dir: Path, *, workers: int = 1) -> HubConfig:
    return HubConfig(
        data_dir=data_dir,
        broker=BrokerConfig(embedded=EmbeddedBrokerConfig(port=0, mqtt_port=None, http_port=0)),
        ingest=IngestConfig(workers=workers),
        api=ApiConfig(enabled=False),
        log_level="warning",
    )


@contextlib.asynccontextmanager
async def running_hub(data_dir: Path, *, workers: int = 1, ready_timeout: float = 30.0) -> AsyncIterator[Hub]:
    """A Hub (embedded nats-server, ingest workers, lake) running in this loop until the block ends."""
    async with serving(hub_config(data_dir, workers=workers), ready_timeout=ready_timeout) as hub:
        yield hub


@contextlib.asynccontextmanager
async def serving(config: HubConfig, *, ready_timeout: float = 30.0) -> AsyncIterator[Hub]:
    """A Hub of this config in this loop, ready when yielded; stopped after, its nats-server killed if it lingers."""
    hub = Hub(config)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop), name="bench-hub")
    ready = asyncio.create_task(hub.state.ready.wait())
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            await task  # raises what stopped it
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
            # Last resort: never leave a nats-server behind, even if the hub's own stop failed.
            if hub.broker is not None and hub.broker.running:
                hub.broker.kill()


def stored_telemetry(data_dir: Path) -> int:
    """Telemetry readings the hub has committed (its ledger in meta.db; read-only, WAL readers don't block)."""
    path = data_dir / "meta.db"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT COALESCE(SUM(count), 0) FROM batches WHERE kind = 'telemetry'").fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet
        return 0
    finally:
        db.close()


async def wait_stored(data_dir: Path, n: int, *, timeout: float, interval: float = 0.02,
                      alive: "AgentProcess | asyncio.Task | None" = None) -> float:
    """Poll the hub's ledger until `n` telemetry readings are stored; returns time.perf_counter() then."""
    deadline = time.monotonic() + timeout
    while True:
        got = stored_telemetry(data_dir)
        if got >= n:
            return time.perf_counter()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"The hub stored {got} of {n} telemetry readings within {timeout}s.")
        if isinstance(alive, asyncio.Task) and alive.done():
            alive.result()  # raise its error; a clean finish may still be waiting on the hub
            alive = None
        elif isinstance(alive, AgentProcess) and alive.poll() not in (None, 0):
            raise RuntimeError(f"The agent process exited with {alive.poll()}:\n{alive.log_tail()}")
        await asyncio.sleep(interval)


async def agent_until_stored(config, data_dir: Path, n: int, *, timeout: float) -> tuple[float, float]:
    """Run an in-process agent until the hub has stored `n` readings and the agent drained.
    Returns (started, done) perf_counter stamps; always stops the agent."""
    from agent.daemon import Agent

    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(Agent(config).run(stop, until_drained=True), name="bench-agent")
    try:
        done = await wait_stored(data_dir, n, timeout=timeout, alive=task)
        await asyncio.wait_for(task, timeout=30)
    finally:
        stop.set()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return started, done


async def lake_summary(hub: Hub) -> dict[str, int]:
    """Telemetry rows in the lake (DuckDB), rows stored twice, and the Parquet files of the latest version."""
    from hub.storage.query import lake_counts  # duckdb: only the benches that count the lake need it

    counts = await asyncio.to_thread(lake_counts, hub.store.lake)
    counts["files"] = len(await asyncio.to_thread(hub.store.lake.files))
    return counts


# --- the agent ----------------------------------------------------------------------------------
def agent_toml(*, buffer_path: Path, url: str, max_ticks: int, period: str, start_us: int,
               realtime: bool = False, tenant: str = "bench", device: str = "dev-1",
               synchronous: str = "full", log_level: str = "warning") -> str:
    return f"""\
log_level = "{log_level}"

[device]
tenant = "{tenant}"
id = "{device}"

[buffer]
path = "{buffer_path}"
synchronous = "{synchronous}"

[uplink]
kind = "nats"
url = "{url}"

[[inputs]]
type = "simulated"
realtime = {str(realtime).lower()}
{f"max_ticks = {max_ticks}" if max_ticks else ""}
start_us = {start_us}
period = "{period}"
"""


class AgentProcess:
    """`python -m agent --config FILE`, its output in a log file; stopped by PID, SIGTERM then SIGKILL."""

    def __init__(self, config_path: Path, *, until_drained: bool, log_path: Path) -> None:
        self.log_path = log_path
        args = [sys.executable, "-m", "agent", "--config", str(config_path)]
        if until_drained:
            args.append("--until-drained")
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode("utf-8", "replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"The agent (pid {self.pid}) did not exit within {timeout}s.")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


# --- the reference: raw JetStream publishing of the same payloads -------------------------------
@dataclass(frozen=True)
class Message:
    subject: str
    msg_id: str
    payload: bytes


@dataclass(frozen=True)
class RawPublish:
    seconds: float
    method: str


async def _publish_concurrent(js, messages: Sequence[Message], window: int) -> None:
    """`window` tasks, each awaiting its PubAck before the next: what the agent's sender does."""
    it = iter(messages)

    async def worker() -> None:
        for m in it:
            ack = await js.publish(m.subject, m.payload, timeout=30, headers={"Nats-Msg-Id": m.msg_id})
            if ack.duplicate:
                raise RuntimeError(f"JetStream called {m.msg_id} a duplicate in a fresh stream.")

    await asyncio.gather(*(worker() for _ in range(window)))


async def _publish_async(js, messages: Sequence[Message]) -> None:
    """nats-py's publish_async, its pending window bounded by the JetStream context."""
    futures = [await js.publish_async(m.subject, m.payload, headers={"Nats-Msg-Id": m.msg_id}, wait_stall=30)
               for m in messages]
    await asyncio.wait_for(asyncio.gather(*futures), timeout=60)


async def raw_publish(messages: Sequence[Message], store_dir: Path, *, window: int = AGENT_MAX_IN_FLIGHT,
                      method: str = "concurrent") -> RawPublish:
    """Publish `messages` to a fresh embedded nats-server with the hub's broker and stream settings
    (sync_interval always, the hub's `EL` stream with its duplicate window); time from the first
    publish to the last PubAck. Connecting and creating the stream are not timed."""
    settings = EmbeddedNatsSettings(store_dir=store_dir, mqtt_port=None,
                                    sync_always=EmbeddedBrokerConfig().sync_always)
    async with EmbeddedNats(settings) as server:
        nc = await nats.connect(server.url, allow_reconnect=False, connect_timeout=10)
        try:
            js = nc.jetstream(timeout=30, publish_async_max_pending=window)
            await ensure_streams(js, StreamConfig())
            started = time.perf_counter()
            if method == "concurrent":
                await _publish_concurrent(js, messages, window)
            elif method == "publish_async":
                await _publish_async(js, messages)
            else:
                raise ValueError(f"Publish method {method!r} is not 'concurrent' or 'publish_async'.")
            elapsed = time.perf_counter() - started
            stored = (await js.stream_info(StreamConfig().name)).state.messages
            if stored != len(messages):
                raise RuntimeError(f"The stream holds {stored} messages; {len(messages)} were published.")
        finally:
            await nc.close()
    return RawPublish(elapsed, f"{method}, window {window}")


async def best_raw_publish(messages: Sequence[Message], tmp: Path, *, rounds: int = 3
                           ) -> tuple[RawPublish, dict[str, float]]:
    """Each publish style `rounds` times on fresh servers (alternating, so noise hits both); the
    faster style's median is the reference (the stricter one). Also returns every style's median."""
    runs: dict[str, list[float]] = {"concurrent": [], "publish_async": []}
    for r in range(rounds):
        for method in runs:
            done = await raw_publish(messages, tmp / f"raw-{method}-{r}" / "store", method=method)
            runs[method].append(done.seconds)
            shutil.rmtree(tmp / f"raw-{method}-{r}", ignore_errors=True)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    best = min(medians, key=medians.__getitem__)
    return RawPublish(medians[best], f"{best}, window {AGENT_MAX_IN_FLIGHT}, median of {rounds}"), \
        {f"raw_{k}_s": v for k, v in medians.items()}
