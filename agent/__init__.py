"""The edgeloop agent: reads sensors, buffers in SQLite, sends numbered batches to the hub."""

from .config import AgentConfig, load_config
from .daemon import Agent

__all__ = ["Agent", "AgentConfig", "load_config"]
