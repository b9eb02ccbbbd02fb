"""Stream processor errors, all StreamError subclasses.

    StreamError
    ├── StreamConfigError   bad window/lateness parameters, or a state file written with others (also a ValueError)
    └── StreamKeyError      a key that cannot be stored (not JSON: str, int, float, bool, None, tuples of those) (also a ValueError)
"""

from __future__ import annotations

__all__ = ["StreamConfigError", "StreamError", "StreamKeyError"]


class StreamError(Exception):
    """Base of every error the streaming package raises."""


class StreamConfigError(StreamError, ValueError):
    pass


class StreamKeyError(StreamError, ValueError):
    pass
