"""Inputs: the sources of readings an agent can run (see base.py for the contract)."""

from __future__ import annotations

from ..config import DeviceConfig, InputConfig, JsonlInputConfig, MqttInputConfig, SimulatedInputConfig
from .base import Input, Sink


def make_input(settings: InputConfig, *, device: DeviceConfig) -> Input:
    if isinstance(settings, SimulatedInputConfig):
        from .simulated import SimulatedInput

        return SimulatedInput(settings, device=device.id)
    if isinstance(settings, JsonlInputConfig):
        from .jsonl import JsonlInput

        return JsonlInput(settings)
    if isinstance(settings, MqttInputConfig):
        from .mqtt import MqttInput

        return MqttInput(settings, client_id=f"el-in-{device.tenant}-{device.id}-{settings.name}")
    raise TypeError(f"Unknown input settings {type(settings).__name__}.")


__all__ = ["Input", "Sink", "make_input"]
