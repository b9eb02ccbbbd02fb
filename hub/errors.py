"""Errors raised by the hub.

    HubError
     ├── ConfigError        the hub's TOML config is wrong; names file, key and value
     ├── BrokerError        the embedded nats-server cannot start, or the broker is unreachable
     └── StorageError       the lake or metadata store cannot take a write (disk full, corrupt)

Bad *input* from devices is never a HubError: it is a protocol.DecodeError, dead-lettered.
"""

from __future__ import annotations


class HubError(Exception):
    """Base of the hub's own errors."""


class ConfigError(HubError):
    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{file}: {len(problems)} problem(s):\n{lines}")


class BrokerError(HubError):
    pass


class StorageError(HubError):
    pass
