"""Topics and subjects: el/<tenant>/<device>/<kind> over MQTT, el.<tenant>.<device>.<kind> over NATS."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .errors import InvalidIdError, InvalidTopicError

ROOT = "el"
# Ids become MQTT topic levels and NATS subject tokens, so '.', '/', '+', '#', '*', '>' and
# whitespace are out; NATS maps '.' in an MQTT topic to '//', which would break the 1:1 mapping.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_ID_RULE = "1-64 characters of A-Z a-z 0-9 _ -, starting with a letter or digit"


class Kind(enum.Enum):
    """What a batch carries; also its priority lane in the agent buffer (lower lane sends first)."""

    ALERT = "alert"
    HEALTH = "health"
    PREDICTION = "prediction"  # a model's output per feature window (agent/inference)
    TELEMETRY = "telemetry"

    @property
    def lane(self) -> int:
        return _LANES[self]

    @property
    def code(self) -> int:
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> "Kind":
        return _BY_CODE[code]


# Lanes are the agent's send order and, reversed, its eviction order. Predictions go ahead of
# telemetry: a window's prediction is a few readings distilled from hundreds of raw ones, and a
# model's output is what the fleet acts on, so after an outage it should arrive first and be
# the last thing a full buffer gives up before the device's own health and alerts.
# Lanes are device-local (the agent's buffer stores them; agent/buffer.py migrates old files);
# codes are on the wire for ever: a new kind takes the next code, never an old one.
_LANES = {Kind.ALERT: 0, Kind.HEALTH: 1, Kind.PREDICTION: 2, Kind.TELEMETRY: 3}
_CODES = {Kind.TELEMETRY: 0, Kind.HEALTH: 1, Kind.ALERT: 2, Kind.PREDICTION: 3}
_BY_CODE = {v: k for k, v in _CODES.items()}


def check_id(field: str, value: object) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidIdError(field, value, _ID_RULE)
    return value


@dataclass(frozen=True)
class Topic:
    tenant: str
    device: str
    kind: Kind

    def __post_init__(self) -> None:
        check_id("tenant", self.tenant)
        check_id("device", self.device)
        if not isinstance(self.kind, Kind):
            raise InvalidTopicError(str(self.kind), "kind must be a protocol.Kind")

    @property
    def mqtt(self) -> str:
        return f"{ROOT}/{self.tenant}/{self.device}/{self.kind.value}"

    @property
    def subject(self) -> str:
        return f"{ROOT}.{self.tenant}.{self.device}.{self.kind.value}"

    @classmethod
    def parse_mqtt(cls, topic: str) -> "Topic":
        return cls._parse(topic, "/")

    @classmethod
    def parse_subject(cls, subject: str) -> "Topic":
        return cls._parse(subject, ".")

    @classmethod
    def _parse(cls, text: str, sep: str) -> "Topic":
        parts = text.split(sep)
        if len(parts) != 4 or parts[0] != ROOT:
            raise InvalidTopicError(text, f"expected {ROOT}{sep}<tenant>{sep}<device>{sep}<kind>")
        try:
            kind = Kind(parts[3])
        except ValueError:
            known = ", ".join(k.value for k in Kind)
            raise InvalidTopicError(text, f"kind {parts[3]!r} is not one of {known}") from None
        try:
            return cls(parts[1], parts[2], kind)
        except InvalidIdError as exc:
            raise InvalidTopicError(text, str(exc).rstrip(".")) from exc


def mqtt_filter(tenant: str = "+") -> str:
    """MQTT subscription filter for every device of a tenant (or of all tenants)."""
    return f"{ROOT}/{tenant}/+/+"


def subject_filter() -> str:
    return f"{ROOT}.>"
