"""Readings: the record schema, held column-wise (channel index, timestamp in µs, float value)."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import EncodeError, InvalidIdError

# Channel names may carry dots ("drops.full", "cpu.percent"): they never enter a topic.
_CHANNEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_CHANNELS = 65535


def check_channel(name: object) -> str:
    if not isinstance(name, str) or not _CHANNEL.fullmatch(name):
        raise InvalidIdError("channel", name, "1-64 characters of A-Z a-z 0-9 _ . : -, starting with a letter or digit")
    return name


@dataclass(frozen=True, eq=False)
class Readings:
    """A column-wise set of readings from one device.

    `channel[i]` indexes `channels`; `ts_us[i]` is microseconds since the Unix epoch (UTC);
    `value[i]` is float64. Order is not significant: `canonical()` sorts by (channel name, ts).
    """

    channels: tuple[str, ...]
    channel: np.ndarray  # uint16
    ts_us: np.ndarray  # int64
    value: np.ndarray  # float64

    def __post_init__(self) -> None:
        n = len(self.channel)
        if len(self.ts_us) != n or len(self.value) != n:
            raise EncodeError(f"Column lengths differ: channel={n}, ts={len(self.ts_us)}, value={len(self.value)}.")
        if len(self.channels) > MAX_CHANNELS:
            raise EncodeError(f"{len(self.channels)} channels in one batch; the limit is {MAX_CHANNELS}.")

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def empty(cls) -> "Readings":
        return cls((), np.empty(0, np.uint16), np.empty(0, np.int64), np.empty(0, np.float64))

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, int, float]]) -> "Readings":
        index: dict[str, int] = {}
        chans, tss, vals = [], [], []
        for name, ts, value in rows:
            i = index.get(name)
            if i is None:
                i = index[name] = len(index)
                check_channel(name)
            chans.append(i)
            tss.append(ts)
            vals.append(value)
        return cls(
            tuple(index),
            np.asarray(chans, np.uint16),
            np.asarray(tss, np.int64),
            np.asarray(vals, np.float64),
        )

    @classmethod
    def from_columns(cls, channel_names: Sequence[str], ts_us: np.ndarray, values: np.ndarray) -> "Readings":
        """Readings where channel `j` has timestamps `ts_us` and values `values[:, j]` (a frame)."""
        for name in channel_names:
            check_channel(name)
        k, n = len(channel_names), len(ts_us)
        values = np.asarray(values, np.float64).reshape(n, k)
        return cls(
            tuple(channel_names),
            np.tile(np.arange(k, dtype=np.uint16), n),
            np.repeat(np.asarray(ts_us, np.int64), k),
            values.reshape(-1).copy(),
        )

    @classmethod
    def concat(cls, parts: Sequence["Readings"]) -> "Readings":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        index: dict[str, int] = {}
        chans = []
        for p in parts:
            remap = np.asarray([index.setdefault(c, len(index)) for c in p.channels], np.uint16)
            chans.append(remap[p.channel] if len(remap) else p.channel)
        return cls(
            tuple(index),
            np.concatenate(chans),
            np.concatenate([p.ts_us for p in parts]),
            np.concatenate([p.value for p in parts]),
        )

    # --- views ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.channel)

    @property
    def t_min(self) -> int:
        return int(self.ts_us.min()) if len(self) else 0

    @property
    def t_max(self) -> int:
        return int(self.ts_us.max()) if len(self) else 0

    def rows(self) -> list[tuple[str, int, float]]:
        names = self.channels
        return [(names[c], int(t), float(v)) for c, t, v in zip(self.channel.tolist(), self.ts_us.tolist(), self.value.tolist())]

    def take(self, idx: np.ndarray) -> "Readings":
        return Readings(self.channels, self.channel[idx], self.ts_us[idx], self.value[idx])

    def canonical(self) -> "Readings":
        """Same readings with channels renumbered by name and rows sorted by (channel, ts)."""
        order_names = sorted(range(len(self.channels)), key=self.channels.__getitem__)
        remap = np.empty(len(self.channels), np.uint16)
        remap[order_names] = np.arange(len(order_names), dtype=np.uint16)
        chan = remap[self.channel] if len(self.channels) else self.channel
        order = np.lexsort((self.ts_us, chan))
        return Readings(tuple(self.channels[i] for i in order_names), chan[order], self.ts_us[order], self.value[order])

    def equals(self, other: "Readings") -> bool:
        a, b = self.canonical(), other.canonical()
        return (
            a.channels == b.channels
            and np.array_equal(a.channel, b.channel)
            and np.array_equal(a.ts_us, b.ts_us)
            and np.array_equal(a.value, b.value, equal_nan=True)
        )

    # --- staging format (agent buffer; not the wire) --------------------------------------
    def to_bytes(self) -> bytes:
        """Uncompressed, fast serialization used by the agent buffer for readings not yet sealed."""
        names = json.dumps(self.channels, separators=(",", ":")).encode()
        return b"".join((
            struct.pack("<II", len(names), len(self)),
            names,
            self.channel.astype("<u2", copy=False).tobytes(),
            self.ts_us.astype("<i8", copy=False).tobytes(),
            self.value.astype("<f8", copy=False).tobytes(),
        ))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Readings":
        name_len, n = struct.unpack_from("<II", data)
        pos = 8
        names = tuple(json.loads(data[pos:pos + name_len]))
        pos += name_len
        chan = np.frombuffer(data, "<u2", n, pos)
        pos += 2 * n
        ts = np.frombuffer(data, "<i8", n, pos)
        pos += 8 * n
        val = np.frombuffer(data, "<f8", n, pos)
        return cls(names, chan, ts, val)
