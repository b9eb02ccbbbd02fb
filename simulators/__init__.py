"""Virtual devices: deterministic, resumable sensor signals and the faults to break them with."""

from .faults import clock_skew, dropout, malformed_payloads, spikes, stuck
from .signals import (
    ChannelSpec,
    DailyCycle,
    Frame,
    HumiditySpec,
    PowerSpec,
    SignalModel,
    TemperatureSpec,
    VibrationSpec,
    default_channels,
    device_model,
    device_seed,
    quantise,
)

__all__ = [
    "ChannelSpec", "DailyCycle", "Frame", "HumiditySpec", "PowerSpec", "SignalModel",
    "TemperatureSpec", "VibrationSpec", "clock_skew", "default_channels", "device_model",
    "device_seed", "dropout", "malformed_payloads", "quantise", "spikes", "stuck",
]
