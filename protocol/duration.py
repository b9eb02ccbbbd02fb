"""Durations as written in edgeloop's TOML files: "250ms", "5s", "2m", "1h30m", or plain seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|s|m|h|d)")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> timedelta:
    """Parse a duration; raise ValueError naming the value when it is not one."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"duration {value!r} is not a finite number of seconds")
        if value < 0:
            raise ValueError(f"duration {value!r} is negative")
        return _seconds(value, value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, total = 0, 0.0
        for m in _PART.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if text and pos == len(text):
            return _seconds(total, value)
    raise ValueError(f"{value!r} is not a duration (write it like '250ms', '5s', '2m' or '1h30m')")


def _seconds(seconds: float, value: object) -> timedelta:
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {value!r} is longer than a timedelta can hold") from None
