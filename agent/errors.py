"""Errors raised by the agent.

    AgentError
     ├── ConfigError            a config file, key or value is wrong; names all three
     ├── BufferError_           the SQLite buffer cannot do what was asked
     │    └── BufferFullError   `when_full = "block"` and no room: the caller waits for acks
     ├── UplinkError            the broker did not take a batch (not connected, timeout, refused)
     └── InputError             an input cannot start (missing file, bad broker URL)

Bad *data* is never an exception that stops the agent: it is counted and dead-lettered.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of the agent's own errors."""


class ConfigError(AgentError):
    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{file}: {len(problems)} problem(s):\n{lines}")


class BufferError_(AgentError):
    pass


class BufferFullError(BufferError_):
    def __init__(self, needed: int, used: int, limit: int) -> None:
        self.needed, self.used, self.limit = needed, used, limit
        super().__init__(f"The buffer is full: {used} of {limit} bytes used, {needed} more needed.")


class UplinkError(AgentError):
    pass


class InputError(AgentError):
    pass
