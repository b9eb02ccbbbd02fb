"""Uplinks: the broker protocols a device can send batches over."""

from __future__ import annotations

from ..config import UplinkConfig, UplinkKind
from .base import Uplink


def make_uplink(settings: UplinkConfig, *, tenant: str, device: str) -> Uplink:
    name = f"el-{tenant}-{device}"
    if settings.kind is UplinkKind.NATS:
        from .nats import NatsUplink

        return NatsUplink(settings, client_name=name)
    from .mqtt import MqttUplink

    return MqttUplink(settings, client_id=name)


__all__ = ["Uplink", "make_uplink"]
