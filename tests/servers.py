"""Real brokers for tests: free ports, waits with deadlines, and a Mosquitto process on a free port."""

from __future__ import annotations

import asyncio
import getpass
import inspect
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

T = TypeVar("T")

_MOSQUITTO_PATHS = ("/usr/sbin/mosquitto",)
_LOG_TAIL_BYTES = 4096


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (another process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], T], *, timeout: float, interval: float = 0.02, what: str = "the condition"
) -> T:
    """Poll a sync predicate until it is truthy and return its value; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def await_until(
    predicate: Callable[[], T | Awaitable[T]], *, timeout: float, interval: float = 0.02, what: str
) -> T:
    """Poll a sync or async predicate until it is truthy and return its value; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            try:
                value = await asyncio.wait_for(value, max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def mosquitto_available() -> str | None:
    """The mosquitto binary's path, or None when it is not installed."""
    for path in _MOSQUITTO_PATHS:
        if Path(path).is_file():
            return path
    return shutil.which("mosquitto")


class _ServerProcess:
    """A server run from a config file in `directory`, on 127.0.0.1, stopped by pid.

    Subclasses name the program (`NAME`, `_binary_path()`), write `config()`, give the paths
    (`config_path`, `log_path`, `output_path`), the command line (`_argv(binary)`) and the
    readiness probe (`_ready()`); the start, stop, kill and wait-until-ready logic is here."""

    NAME = "server"
    _proc: subprocess.Popen[bytes] | None
    _ready_timeout: float

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and return once it is ready."""
        if self.running:
            raise RuntimeError(f"{self.NAME} is already running as pid {self.pid}; stop it first.")
        binary = self._binary_path()
        self._prepare()
        self.config_path.write_text(self.config(), encoding="utf-8")
        offsets = {p: p.stat().st_size if p.exists() else 0 for p in (self.log_path, self.output_path)}
        with self.output_path.open("ab") as out:
            self._proc = subprocess.Popen(
                self._argv(binary),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(offsets)
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the server saves what it persists), then SIGKILL after `timeout` seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL now and wait for the exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def restart(self, timeout: float = 10.0) -> None:
        """stop() then start() on the same port and directory."""
        self.stop(timeout)
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_ready(self, offsets: dict[Path, int]) -> None:
        deadline = time.monotonic() + self._ready_timeout
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"{self.NAME} exited with code {code} before it was ready:\n{self._tails(offsets)}"
                )
            if self._ready():
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{self.NAME} was not ready on port {self.port} within "  # type: ignore[attr-defined]
                    f"{self._ready_timeout}s:\n{self._tails(offsets)}"
                )
            time.sleep(0.02)

    def _tails(self, offsets: dict[Path, int]) -> str:
        parts = []
        for path, offset in offsets.items():
            try:
                with path.open("rb") as f:
                    f.seek(max(offset, f.seek(0, 2) - _LOG_TAIL_BYTES))
                    parts.append(f"--- {path}\n{f.read().decode('utf-8', 'replace').strip()}")
            except OSError as exc:
                parts.append(f"--- {path} unreadable: {exc}")
        return "\n".join(parts)


class Mosquitto(_ServerProcess):
    """A mosquitto process on 127.0.0.1 with persistence and unlimited queues; restarts keep its port.

    Hazard: mosquitto writes its persistence file on SIGTERM and every `autosave_interval` (30 min
    by default), so kill() loses whatever a persistent session queued since the last save, which
    is what a real power cut does to a stock mosquitto too.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int = 0,
        binary: str | None = None,
        ready_timeout: float = 10.0,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.tls = tls  # (CA, server certificate, server key): a second listener, TLS only
        self.tls_port = free_port("127.0.0.1") if tls else None
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self._binary = binary
        self._ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str | None:
        return f"mqtts://{self.host}:{self.tls_port}" if self.tls else None

    @property
    def config_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def output_path(self) -> Path:
        """stdout/stderr: config errors land here, before mosquitto opens its log file."""
        return self.directory / "mosquitto.out"

    def config(self) -> str:
        persistence = self.directory / "data"
        return "\n".join(
            [
                f"listener {self.port} {self.host}",
                *([f"listener {self.tls_port} {self.host}", f"cafile {self.tls[0]}", f"certfile {self.tls[1]}",
                   f"keyfile {self.tls[2]}"] if self.tls else []),
                "allow_anonymous true",
                # Run as whoever runs the tests: as root, mosquitto would otherwise switch to the
                # `mosquitto` user, which cannot write into a pytest tmp_path.
                f"user {getpass.getuser()}",
                "persistence true",
                f"persistence_location {persistence}/",
                # 0 is "no maximum" for both (mosquitto.conf(5)): a persistent session queues
                # everything while its subscriber is away. Unlimited in-flight gives up mosquitto's
                # in-order guarantee on redelivery (only max_inflight_messages 1 keeps it).
                "max_queued_messages 0",
                "max_inflight_messages 0",
                f"log_dest file {self.log_path}",
                "log_type all",
                "",
            ]
        )

    NAME = "mosquitto"

    def _binary_path(self) -> str:
        binary = self._binary or mosquitto_available()
        if binary is None:
            raise FileNotFoundError(f"mosquitto was not found (looked in {_MOSQUITTO_PATHS[0]} and PATH).")
        return binary

    def _prepare(self) -> None:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)

    def _argv(self, binary: str) -> list[str]:
        return [binary, "-c", str(self.config_path)]

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False


_REDIS_SERVER_PATHS = ("/usr/bin/redis-server",)


def redis_server_available() -> str | None:
    """The redis-server binary's path, or None when it is not installed."""
    for path in _REDIS_SERVER_PATHS:
        if Path(path).is_file():
            return path
    return shutil.which("redis-server")


class RedisServer(_ServerProcess):
    """A redis-server on 127.0.0.1 with no persistence (no RDB, no AOF), stopped by pid.

    Ready once it answers PING (a raw RESP exchange: tests/servers.py needs no Redis client).
    """

    def __init__(self, directory: Path, *, port: int = 0, binary: str | None = None,
                 ready_timeout: float = 10.0) -> None:
        self.directory = Path(directory).absolute()
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self._binary = binary
        self._ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def config_path(self) -> Path:
        return self.directory / "redis.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def output_path(self) -> Path:
        """stdout/stderr: config errors land here, before redis-server opens its log file."""
        return self.directory / "redis.out"

    def config(self) -> str:
        return "\n".join(
            [
                f"bind {self.host}",
                f"port {self.port}",
                "daemonize no",
                f'dir "{self.directory}"',
                f'logfile "{self.log_path}"',
                'save ""',
                "appendonly no",
                "",
            ]
        )

    def ping(self, timeout: float = 0.5) -> bool:
        """True when the server answers PING with PONG within `timeout` seconds."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    NAME = "redis-server"

    def _binary_path(self) -> str:
        binary = self._binary or redis_server_available()
        if binary is None:
            raise FileNotFoundError(f"redis-server was not found (looked in {_REDIS_SERVER_PATHS[0]} and PATH).")
        return binary

    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def _argv(self, binary: str) -> list[str]:
        return [binary, str(self.config_path)]

    def _ready(self) -> bool:
        return self.ping()
