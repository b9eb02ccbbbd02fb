"""The input contract: where readings come from.

Who calls it: the agent's supervisor starts `run(sink)` once per configured input, as a named
task, and restarts it with backoff if it raises. `run` returns when its source is exhausted
(a finite file, `max_ticks`) and otherwise runs until cancelled.

What an input must do: hand readings to `sink.append` in batches, passing its checkpoint
(file offset, next tick) so readings and position commit in one transaction — after a crash
an input resumes exactly after what the buffer holds. Bad data is never an exception: the
input calls `sink.dead_letter(source, reason, raw)` and goes on. No package-level state: the
same input type may run twice with different settings.
"""

from __future__ import annotations

import json
import math
import time
from typing import Protocol

from protocol import Kind, Readings, check_channel

from ..buffer import AppendResult


class Sink(Protocol):
    async def append(
        self, readings: Readings, *, kind: Kind = Kind.TELEMETRY, checkpoint: tuple[str, str] | None = None
    ) -> AppendResult: ...

    async def append_groups(
        self, groups: list[tuple[Kind, Readings]], *, checkpoint: tuple[str, str] | None = None
    ) -> AppendResult: ...

    async def checkpoint(self, source: str) -> str | None: ...

    async def dead_letter(self, source: str, reason: str, data: bytes | None) -> None: ...


class Input(Protocol):
    name: str

    async def run(self, sink: Sink) -> None: ...


class RecordError(ValueError):
    """One JSON record that cannot become readings; the message names the bad value."""


_RESERVED = {"ts", "ts_us", "kind", "channel", "value"}


def parse_record(obj: object, *, default_channel: str | None = None) -> tuple[Kind, list[tuple[str, int, float]]]:
    """One JSON record → readings. Accepted shapes:

    {"channel": "temperature", "value": 21.5, "ts": 1732611234.5}    (ts in s, or "ts_us" in µs)
    {"ts": 1732611234.5, "temperature": 21.5, "humidity": 40.1}      (wide: one reading per key)
    {"value": 21.5} or 21.5 with `default_channel` (MQTT: the topic's last level)
    Optional "kind": "telemetry" | "alert". Missing timestamps take the agent's clock.
    """
    if isinstance(obj, (int, float)) and not isinstance(obj, bool) and default_channel:
        obj = {"value": obj}
    if not isinstance(obj, dict):
        raise RecordError(f"Record {obj!r} is not a JSON object.")
    try:
        kind = Kind(obj.get("kind", "telemetry"))
    except ValueError:
        raise RecordError(f"kind {obj.get('kind')!r} is not one of {', '.join(k.value for k in Kind)}.") from None
    if "ts_us" in obj:
        ts = obj["ts_us"]
        if not isinstance(ts, int) or isinstance(ts, bool):
            raise RecordError(f"ts_us {ts!r} is not an integer.")
    elif "ts" in obj:
        t = obj["ts"]
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
            raise RecordError(f"ts {t!r} is not a number of seconds.")
        ts = round(t * 1e6)
    else:
        ts = time.time_ns() // 1000
    if not 0 <= ts < 2**62:
        raise RecordError(f"timestamp {ts!r} µs is out of range.")
    if "value" in obj:
        channel = obj.get("channel", default_channel)
        pairs = [(channel, obj["value"])]
    else:
        pairs = [(k, v) for k, v in obj.items() if k not in _RESERVED]
        if not pairs:
            raise RecordError(f"Record {json.dumps(obj)[:200]} holds no values.")
    rows = []
    for channel, value in pairs:
        try:
            check_channel(channel)
        except ValueError as exc:
            raise RecordError(str(exc)) from None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RecordError(f"Value {value!r} of channel {channel!r} is not a number.")
        rows.append((channel, ts, float(value)))
    return kind, rows


def group_rows(parsed: list[tuple[Kind, list[tuple[str, int, float]]]]) -> dict[Kind, Readings]:
    by_kind: dict[Kind, list[tuple[str, int, float]]] = {}
    for kind, rows in parsed:
        by_kind.setdefault(kind, []).extend(rows)
    return {k: Readings.from_rows(rows) for k, rows in by_kind.items()}
