"""The agent's TOML config, loaded once into frozen typed models that reject unknown keys."""

from __future__ import annotations

import enum
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from protocol import check_id, parse_duration

from .errors import ConfigError

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?", re.I)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}
PROFILE_DIR = Path(__file__).resolve().parent.parent / "firmware-configs"


def _size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])
    raise ValueError(f"{value!r} is not a size (write it like 268435456, '256MiB' or '1GB')")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(_size)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class WhenFull(enum.Enum):
    """What the buffer does when its byte cap is reached (see docs/operations.md for trade-offs)."""

    BLOCK = "block"  # inputs wait for acks; nothing dropped, sources may overflow upstream
    DROP_OLDEST = "drop_oldest"  # evict the oldest data, lowest lane first
    DROP_NEWEST = "drop_newest"  # refuse what arrives
    DOWNSAMPLE_OLDEST = "downsample_oldest"  # halve the oldest data's resolution, then evict


class Synchronous(enum.Enum):
    FULL = "full"  # fsync the WAL at every commit: survives power loss
    NORMAL = "normal"  # survives a process crash; a power cut may lose the last commits


class DeviceConfig(_Model):
    tenant: str
    id: str
    profile: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("tenant", "id")
    @classmethod
    def _ids(cls, v: str, info: Any) -> str:
        return check_id(info.field_name if info.field_name != "id" else "device", v)


class BufferConfig(_Model):
    path: Path = Path("buffer.db")
    max_bytes: ByteSize = 256 * 2**20
    when_full: WhenFull = WhenFull.DROP_OLDEST
    batch_max_readings: int = Field(5000, ge=1, le=100_000)
    seal_interval: Duration = timedelta(seconds=1)
    live_window: Duration = timedelta(seconds=5)
    synchronous: Synchronous = Synchronous.FULL
    compression_level: int = Field(3, ge=1, le=19)
    disk_reserve: ByteSize = 16 * 2**20  # free disk kept for SQLite's WAL; below it, when_full applies


class TlsConfig(_Model):
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure_skip_verify: bool = False


class BackoffConfig(_Model):
    initial: Duration = timedelta(milliseconds=200)
    max: Duration = timedelta(seconds=30)
    multiplier: float = Field(2.0, ge=1.0)
    jitter: float = Field(0.3, ge=0.0, le=1.0)


class UplinkKind(enum.Enum):
    NATS = "nats"
    MQTT = "mqtt"


class UplinkConfig(_Model):
    kind: UplinkKind = UplinkKind.NATS
    url: str = "nats://127.0.0.1:4222"
    max_in_flight: int = Field(32, ge=1, le=1024)
    ack_timeout: Duration = timedelta(seconds=5)
    backlog_batches_per_s: float = Field(0.0, ge=0.0)  # 0 = as fast as the broker acks
    username: str | None = None
    password: str | None = Field(None, repr=False)
    tls: TlsConfig | None = None
    backoff: BackoffConfig = BackoffConfig()

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.fullmatch(r"(nats|tls|mqtt|mqtts)://[^\s/]+(:\d+)?", v):
            raise ValueError(f"{v!r} is not a broker URL like nats://host:4222 or mqtt://host:1883")
        return v


class HealthConfig(_Model):
    interval: Duration = timedelta(seconds=10)
    disk_path: Path | None = None  # default: the buffer's folder


class SimulatedDrift(_Model):
    channel: str
    from_us: int
    offset: float = 0.0
    scale: float = 1.0


class SimulatedStuck(_Model):
    channel: str
    from_us: int


class SimulatedInputConfig(_Model):
    type: Literal["simulated"]
    name: str = "sim"
    period: Duration = timedelta(seconds=1)
    emit_interval: Duration = timedelta(milliseconds=100)
    realtime: bool = True  # False: generate as fast as the buffer takes it (bench, tests)
    max_ticks: int | None = Field(None, ge=1)  # stop after this many ticks (tests)
    start_us: int | None = None  # fixed signal start; default: first run's clock
    wear_rate: float = Field(0.0, ge=0.0)
    seed_base: int = 0
    clock_skew_ms: int = 0  # fault injection: this device's clock is off by this much
    # Drills (simulators/faults.py): the world changes from from_us on (value * scale + offset),
    # or a sensor freezes at the value it read at from_us.
    drift: list[SimulatedDrift] = []
    stuck: list[SimulatedStuck] = []


class JsonlInputConfig(_Model):
    type: Literal["jsonl"]
    name: str = "jsonl"
    path: str  # a file path, or "-" for stdin
    follow: bool = True  # keep reading as the file grows
    poll_interval: Duration = timedelta(milliseconds=200)
    lines_per_append: int = Field(1000, ge=1)


class MqttInputConfig(_Model):
    type: Literal["mqtt"]
    name: str = "mqtt"
    url: str = "mqtt://127.0.0.1:1883"
    topics: tuple[str, ...] = ("sensors/#",)
    append_interval: Duration = timedelta(milliseconds=100)
    queue_max: int = Field(10_000, ge=1)


InputConfig = Annotated[
    Union[SimulatedInputConfig, JsonlInputConfig, MqttInputConfig], Field(discriminator="type")
]


class GateConfig(_Model):
    """The device's own health gate on a newly installed model: judged over its first `windows`
    feature windows, then closed. A breach rolls back to the previous model by itself."""

    windows: int = Field(20, ge=1, le=1_000_000)
    max_error_rate: float | None = Field(0.5, ge=0.0, le=1.0)  # None: not judged
    max_p95_ms: float | None = Field(None, gt=0.0)  # per predict call; None: not judged


_FORMAT = re.compile(r"(onnx|tflite):(fp32|fp16|int8)")


class ModelsConfig(_Model):
    """Model slots, the fleet's trusted signing keys, and the twin exchange with the hub."""

    dir: Path = Path("models")  # the two slots, staging and the refusal record
    trusted_keys: tuple[Path, ...] = Field(min_length=1)  # PEM public keys, provisioned out of band
    hub_url: str | None = None  # the hub's HTTP API; None: no twin, the active slot just serves
    poll_interval: Duration = timedelta(seconds=30)  # until the hub's answer says otherwise
    request_timeout: Duration = timedelta(seconds=30)
    formats: tuple[str, ...] = ("onnx:int8", "onnx:fp32", "tflite:int8", "tflite:fp32")
    gate: GateConfig = GateConfig()

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for f in v:
            if not _FORMAT.fullmatch(f):
                raise ValueError(f"{f!r} is not a model format like 'onnx:int8' or 'tflite:fp32'")
        if not v:
            raise ValueError("at least one model format is needed")
        return v

    @field_validator("hub_url")
    @classmethod
    def _hub_url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s/]+(:\d+)?/?", v):
            raise ValueError(f"{v!r} is not an HTTP URL like http://hub:8700")
        return v if v is None else v.rstrip("/")


class InferenceConfig(_Model):
    """How this device runs models (agent.inference.InferenceSettings); profiles set it per board."""

    backend: Literal["onnx", "litert"] | None = None  # None: follow the model's format
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = Field(1, ge=1, le=64)
    delegate: Literal["none", "xnnpack", "edgetpu"] = "xnnpack"
    queue_windows: int = Field(1024, ge=1, le=1_000_000)  # closed windows waiting; full: oldest dropped
    send_features: bool = True  # send the features fed to the model as feat.* predictions (hub consistency check)


class AgentConfig(_Model):
    device: DeviceConfig
    buffer: BufferConfig = BufferConfig()
    uplink: UplinkConfig = UplinkConfig()
    health: HealthConfig = HealthConfig()
    models: ModelsConfig | None = None  # None: no models on this device
    inference: InferenceConfig = InferenceConfig()
    config_version: str | None = None  # reported in the twin, so the hub sees config drift
    inputs: tuple[InputConfig, ...] = Field(min_length=1)
    shutdown_grace: Duration = timedelta(seconds=5)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _problems(exc: ValidationError, data: dict) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in ("simulated", "jsonl", "mqtt")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            out.append(f"{loc}: unknown key")
        elif err["type"] == "missing":
            out.append(f"{loc}: required key is missing")
        else:
            out.append(f"{loc}: {err.get('input')!r}: {msg}")
    return out


def load_config(path: str | Path, *, profile_dir: Path = PROFILE_DIR) -> AgentConfig:
    """Read, merge with its device profile, and validate; never touches the network."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), ["the file does not exist"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from exc
    profile = data.get("device", {}).get("profile")
    if profile is not None:
        ppath = profile_dir / f"{profile}.toml"
        if not ppath.is_file():
            known = sorted(p.stem for p in profile_dir.glob("*.toml"))
            raise ConfigError(str(path), [f"device.profile: {profile!r}: no such profile (known: {', '.join(known)})"])
        pdata = tomllib.loads(ppath.read_text())
        pdata.pop("device", None)
        data = _merge(pdata, data)
    buf = data.get("buffer", {})
    if isinstance(buf, dict) and "path" in buf and not Path(buf["path"]).is_absolute():
        buf["path"] = str(path.parent / buf["path"])  # relative to the config file, not the cwd
    mod = data.get("models")
    if isinstance(mod, dict):  # same rule for the model folder and the trusted keys
        if "dir" in mod and not Path(mod["dir"]).is_absolute():
            mod["dir"] = str(path.parent / mod["dir"])
        if isinstance(mod.get("trusted_keys"), list):
            mod["trusted_keys"] = [k if not isinstance(k, str) or Path(k).is_absolute() else str(path.parent / k)
                                   for k in mod["trusted_keys"]]
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(path), _problems(exc, data)) from None
