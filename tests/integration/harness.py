"""Running real hubs and agents in tests: in-process or as processes, always stopped after."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tomllib
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from hub.config import HubConfig
from hub.service import Hub
from hub.storage import metadata as meta
from hub.storage.lake import Lake
from hub.storage.query import lake_counts
from tests.servers import await_until, wait_until

REPO = Path(__file__).resolve().parents[2]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


def write_toml(path: Path, data: dict) -> Path:
    """A tiny TOML writer for test configs: top-level tables and arrays of tables."""
    lines: list[str] = []
    for key, value in data.items():
        if not isinstance(value, (dict, list)):
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines.append(f"\n[[{key}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    path.write_text("\n".join(lines) + "\n")
    tomllib.loads(path.read_text())  # fail here, not in the agent, if the writer got it wrong
    return path


def agent_config(
    path: Path, *, device: str, url: str, kind: str = "nats", tenant: str = "t1",
    inputs: list[dict] | None = None, buffer: dict | None = None, uplink: dict | None = None,
    health_interval: str = "1s", profile: str | None = None,
) -> Path:
    data = {
        "device": {"tenant": tenant, "id": device, **({"profile": profile} if profile else {})},
        "buffer": {"path": str(path.parent / f"{device}.db"), "seal_interval": "200ms", **(buffer or {})},
        "uplink": {"kind": kind, "url": url, "ack_timeout": "2s",
                   "backoff": {"initial": "50ms", "max": "500ms"}, **(uplink or {})},
        "health": {"interval": health_interval},
        "shutdown_grace": "3s",
        "inputs": inputs or [{"type": "simulated", "realtime": False, "max_ticks": 2000,
                              "start_us": 1_700_000_000_000_000, "period": "10ms"}],
    }
    return write_toml(path, data)


def hub_config(data_dir: Path, *, nats_url: str | None = None, api: bool = False, api_port: int = 0,
               control: dict | None = None, features: dict | None = None, **ingest: Any) -> HubConfig:
    return HubConfig.model_validate({
        "data_dir": str(data_dir),
        "broker": {"url": nats_url, "embedded": {"port": 0, "mqtt_port": 0, "http_port": 0}},
        "ingest": {"ack_wait": "3s", "fetch_timeout": "200ms", **ingest},
        "api": {"enabled": api, "port": api_port},
        "control": control or {"poll_interval": "200ms", "tick": "100ms"},
        "features": features or {"stream_interval": "200ms"},
    })


@asynccontextmanager
async def running_hub(config: HubConfig) -> AsyncIterator[Hub]:
    """A Hub in this event loop, ready when yielded, stopped after."""
    hub = Hub(config)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    try:
        await await_until(lambda: hub.state.ready.is_set() or task.done(), timeout=30, what="the hub to be ready")
        if task.done():
            await task
        yield hub
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def stored(data_dir: Path) -> dict[str, int]:
    """Telemetry rows in the lake: rows, distinct (tenant, device, channel, ts), duplicate_rows."""
    return lake_counts(Lake(data_dir / "lake"))


def ledger(data_dir: Path, tenant: str, device: str) -> list[meta.StreamLedger]:
    db = meta.connect(data_dir / "meta.db")
    try:
        return meta.ledger(db, tenant, device)
    finally:
        db.close()


def device_counters(db_path: Path) -> dict[str, int]:
    """The agent's own counters, read from its buffer file (works while it runs: WAL)."""
    import sqlite3

    if not db_path.exists():
        return {}
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return dict(con.execute("SELECT name, value FROM counters"))
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


class Proc:
    """A child process (agent or hub) we start and stop by its pid."""

    def __init__(self, args: list[str], *, log: Path, env: dict | None = None) -> None:
        self.log = log
        self._f = open(log, "ab")
        self.p = subprocess.Popen(args, stdout=self._f, stderr=subprocess.STDOUT, cwd=REPO,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    @property
    def pid(self) -> int:
        return self.p.pid

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=30)
        self._f.close()

    def terminate(self, timeout: float = 30) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait(timeout=10)
        self._f.close()
        return rc

    def wait(self, timeout: float) -> int:
        rc = self.p.wait(timeout=timeout)
        self._f.close()
        return rc

    def tail(self, n: int = 3000) -> str:
        return self.log.read_bytes()[-n:].decode(errors="replace")


def start_agent(config: Path, *, until_drained: bool = False) -> Proc:
    args = [sys.executable, "-m", "agent", "--config", str(config)] + (["--until-drained"] if until_drained else [])
    return Proc(args, log=config.with_suffix(".log"))


def start_hub_process(data_dir: Path, *, nats_url: str, config: Path | None = None, api: bool = False) -> tuple[Proc, dict]:
    """`edgeloop hub serve` as a process; returns it with its ready line (urls)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "edgeloop", "hub", "serve", "--data-dir", str(data_dir), "--nats-url", nats_url]
    args += ["--config", str(config)] if config else []
    args += ["--api-port", "0"] if api else ["--no-api"]
    proc = Proc(args, log=data_dir / f"hub-{len(list(data_dir.glob('hub-*.log')))}.log")

    def ready() -> dict | None:
        if proc.p.poll() is not None:
            raise AssertionError(f"hub exited with {proc.p.returncode}:\n{proc.tail()}")
        for line in proc.log.read_text(errors="replace").splitlines():
            if line.startswith('{"event": "ready"'):
                return json.loads(line)
        return None

    info = wait_until(ready, timeout=30, what="the hub process to be ready")
    return proc, info
