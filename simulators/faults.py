"""Fault injection: pure functions that break readings the way real sensors and links do.

Each function returns new Readings and leaves its input alone; row order is kept. `from_us`
/ `to_us` windows are half-open, [from_us, to_us). `malformed_payloads` gives the bytes a
decoder must reject without crashing.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from protocol import Kind, Readings, encode_batch

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _channel_rows(readings: Readings, channel: str) -> np.ndarray:
    """Row indices of `channel`, in time order."""
    try:
        ci = readings.channels.index(channel)
    except ValueError:
        raise ValueError(
            f"Channel {channel!r} is not in these readings; they hold {list(readings.channels)!r}."
        ) from None
    rows = np.flatnonzero(readings.channel == ci)
    return rows[np.argsort(readings.ts_us[rows], kind="stable")]


def _with_values(readings: Readings, value: np.ndarray) -> Readings:
    return Readings(readings.channels, readings.channel.copy(), readings.ts_us.copy(), value)


def stuck(readings: Readings, channel: str, *, from_us: int) -> Readings:
    """From `from_us` on, `channel` repeats the last value it read before then (a frozen sensor).

    With no reading before `from_us`, it repeats its first reading at or after it.
    """
    rows = _channel_rows(readings, channel)
    ts = readings.ts_us[rows]
    hit = rows[ts >= from_us]
    if not len(hit):
        return _with_values(readings, readings.value.copy())
    before = rows[ts < from_us]
    held = readings.value[before[-1]] if len(before) else readings.value[hit[0]]
    value = readings.value.copy()
    value[hit] = held
    return _with_values(readings, value)


def hold(readings: Readings, channel: str, *, from_us: int, value: float) -> Readings:
    """From `from_us` on, `channel` reads `value`: `stuck` with the frozen value given, so a stream
    cut into chunks freezes at the same value in every chunk (the agent's simulated input)."""
    if not np.isfinite(value):
        raise ValueError(f"Held value {value!r} must be finite.")
    rows = _channel_rows(readings, channel)
    out = readings.value.copy()
    out[rows[readings.ts_us[rows] >= from_us]] = value
    return _with_values(readings, out)


def shift(readings: Readings, channel: str, *, from_us: int, offset: float = 0.0, scale: float = 1.0) -> Readings:
    """From `from_us` on, `channel` reads `value * scale + offset`: the world changed (a hotter
    site, a stiffer mounting), not the sensor. Data drift, where `stuck` and `spikes` are faults."""
    if not (np.isfinite(offset) and np.isfinite(scale)):
        raise ValueError(f"Shift offset {offset!r} and scale {scale!r} must be finite.")
    rows = _channel_rows(readings, channel)
    rows = rows[readings.ts_us[rows] >= from_us]
    out = readings.value.copy()
    out[rows] = out[rows] * scale + offset
    return _with_values(readings, out)


def spikes(readings: Readings, channel: str, *, every: int, magnitude: float) -> Readings:
    """Add `magnitude` to every `every`-th reading of `channel` in time order (the every-th, 2·every-th ...)."""
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"Spike interval every={every!r} must be an int >= 1.")
    if not np.isfinite(magnitude):
        raise ValueError(f"Spike magnitude {magnitude!r} must be finite.")
    rows = _channel_rows(readings, channel)[every - 1::every]
    value = readings.value.copy()
    value[rows] += magnitude
    return _with_values(readings, value)


def clock_skew(readings: Readings, skew_us: int) -> Readings:
    """Shift every timestamp by `skew_us` (positive: the device clock runs ahead)."""
    if not isinstance(skew_us, int):
        raise ValueError(f"Clock skew {skew_us!r} must be an int number of µs.")
    if len(readings) and not (_I64_MIN <= readings.t_min + skew_us and readings.t_max + skew_us <= _I64_MAX):
        raise ValueError(
            f"Clock skew {skew_us} µs pushes timestamps {readings.t_min}..{readings.t_max} out of int64."
        )
    return Readings(readings.channels, readings.channel.copy(), readings.ts_us + skew_us, readings.value.copy())


def dropout(readings: Readings, channel: str, *, from_us: int, to_us: int) -> Readings:
    """Remove the readings of `channel` in [from_us, to_us) (a sensor or link that went quiet)."""
    if to_us < from_us:
        raise ValueError(f"Dropout window {from_us}..{to_us} ends before it starts.")
    rows = _channel_rows(readings, channel)
    ts = readings.ts_us[rows]
    gone = rows[(ts >= from_us) & (ts < to_us)]
    keep = np.ones(len(readings), bool)
    keep[gone] = False
    return readings.take(np.flatnonzero(keep))


# --- decoder food ----------------------------------------------------------------------------
# The envelope header, field by field, as protocol/envelope.py documents it. Kept here rather
# than imported: these payloads test that module, so they must not share its mistakes.
_HEAD = struct.Struct("<2sBBBBIIQqqIIIBB")
_FIELDS = ("magic", "version", "kind", "codec", "flags", "dict_id", "epoch", "seq",
           "t_start_us", "t_end_us", "count", "body_len", "raw_len", "tenant_len", "device_len")


def _noise(seed: int, label: str, n: int) -> bytes:
    # shake_256 is stable across Python and numpy versions, unlike a seeded Generator's stream.
    return hashlib.shake_256(f"{seed}:{label}".encode()).digest(n)


def _valid_envelope() -> bytes:
    ts = 1_700_000_000_000_000 + np.arange(8, dtype=np.int64) * 1_000_000
    values = np.round(21.0 + np.sin(np.arange(8.0)), 2).reshape(8, 1)
    readings = Readings.from_columns(["temperature"], ts, values)
    return encode_batch(readings, tenant="acme", device="sim-0001", kind=Kind.TELEMETRY, epoch=7, seq=1)


def _patched(envelope: bytes, **changes: object) -> bytes:
    fields = dict(zip(_FIELDS, _HEAD.unpack_from(envelope)))
    fields.update(changes)
    return _HEAD.pack(*(fields[f] for f in _FIELDS)) + envelope[_HEAD.size:]


def malformed_payloads(seed: int) -> list[tuple[str, bytes]]:
    """(label, bytes) pairs a batch decoder must reject with a DecodeError, deterministic in `seed`.

    Garbage (empty, random, b"EL" + random) and near misses: a real envelope truncated, with one
    header field wrong, or with its body corrupted. Labels are unique.
    """
    good = _valid_envelope()
    head = dict(zip(_FIELDS, _HEAD.unpack_from(good)))
    ids_end = _HEAD.size + head["tenant_len"] + head["device_len"]
    body = good[ids_end:]
    corrupt = bytes(b ^ 0xFF for b in body[:4]) + body[4:]  # the zstd frame magic, inverted
    out = [
        ("empty", b""),
        ("one_byte", b"E"),
        ("magic_only", b"EL"),
        ("random_small", _noise(seed, "random_small", 17)),
        ("random_large", _noise(seed, "random_large", 4096)),
        ("magic_then_random", b"EL" + _noise(seed, "magic_then_random", 200)),
        ("zeros", bytes(_HEAD.size + 16)),
        ("truncated_header", good[:_HEAD.size - 1]),
        ("header_without_ids", good[:_HEAD.size]),
        ("truncated_body", good[:-3]),
        ("trailing_bytes", good + b"\x00"),
        ("bad_magic", _patched(good, magic=b"LE")),
        ("unsupported_version", _patched(good, version=250)),
        ("unknown_kind", _patched(good, kind=200)),
        ("unknown_codec", _patched(good, codec=200)),
        ("reserved_flags", _patched(good, flags=1)),
        ("unknown_dictionary", _patched(good, dict_id=0xDEAD)),
        ("body_len_too_long", _patched(good, body_len=head["body_len"] + 1)),
        ("zero_count", _patched(good, count=0)),
        ("count_mismatch", _patched(good, count=head["count"] + 1)),
        ("inverted_time_range", _patched(good, t_start_us=head["t_end_us"] + 1)),
        ("time_range_mismatch", _patched(good, t_end_us=head["t_end_us"] + 1)),
        ("raw_len_huge", _patched(good, raw_len=2**32 - 1)),
        ("raw_len_wrong", _patched(good, raw_len=head["raw_len"] + 1)),
        ("bad_device_id", good[:ids_end - 1] + b"\xff" + body),
        ("corrupt_body", good[:ids_end] + corrupt),
        ("random_body", good[:ids_end] + _noise(seed, "random_body", len(body))),
        ("oversized", b"EL" + _noise(seed, "oversized", 1024 * 1024)),
    ]
    return out
