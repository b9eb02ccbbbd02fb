"""Models on the device: two verified slots with an atomic switch, and resumable artifact downloads."""

from .download import download, download_all
from .slots import InstallFailure, SlotInfo, Slots, load_trusted_keys, verify_artifact

__all__ = [
    "InstallFailure", "SlotInfo", "Slots", "download", "download_all", "load_trusted_keys", "verify_artifact",
]
