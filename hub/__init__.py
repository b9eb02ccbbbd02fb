"""The edgeloop hub: embedded broker, exactly-once ingest into the lake, loss ledger, HTTP API."""

from .config import HubConfig, load_config

__all__ = ["HubConfig", "load_config"]
