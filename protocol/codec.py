"""The columnar body of a batch: per-channel delta timestamps and values, byte-shuffled, zstd.

Body layout (little-endian), one block per channel, channels sorted by name, rows by time:

    u16 n_channels
    per channel:
      u8  name_len, name (UTF-8)
      u32 n                      readings in this channel (n >= 1)
      i64 ts0                    first timestamp, µs since the Unix epoch
      u8  ts_width               bytes per timestamp delta: 1, 2, 4 or 8
      (n-1) deltas               signed ints, byte-shuffled (all first bytes, then all second ...)
      u8  value_mode             0 = float64, 1 = decimal
      mode 0: n float64          byte-shuffled
      mode 1: u8 scale, i64 v0, u8 width, (n-1) signed deltas, byte-shuffled
              value = int / 10**scale, exact for every value (checked at encode time)

Regularly sampled sensors give constant timestamp deltas and small value deltas; byte
shuffling puts the equal high bytes next to each other, so zstd removes almost all of them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import zstandard as zstd

from .errors import EncodeError, MalformedError, UnknownCodecError, UnknownDictionaryError
from .readings import Readings, check_channel

CODEC_NONE = 0
CODEC_ZSTD = 1
CODECS = (CODEC_NONE, CODEC_ZSTD)
_MAX_SCALE = 6
_WIDTHS = ((1, np.int8), (2, np.int16), (4, np.int32), (8, np.int64))
_DTYPE = {w: np.dtype(t).newbyteorder("<") for w, t in _WIDTHS}


@dataclass
class DictionaryRegistry:
    """zstd dictionaries by id; id 0 means none. Ids are versions: a dictionary never changes."""

    _dicts: dict[int, zstd.ZstdCompressionDict] = field(default_factory=dict)

    def add(self, dict_id: int, data: bytes) -> None:
        if not 0 < dict_id < 2**32:
            raise ValueError(f"Dictionary id {dict_id!r} must be in 1..2**32-1.")
        self._dicts[dict_id] = zstd.ZstdCompressionDict(data)

    def get(self, dict_id: int) -> zstd.ZstdCompressionDict | None:
        if dict_id == 0:
            return None
        try:
            return self._dicts[dict_id]
        except KeyError:
            raise UnknownDictionaryError(dict_id) from None


def _shuffle(arr: np.ndarray) -> bytes:
    w = arr.dtype.itemsize
    if w == 1:
        return arr.tobytes()
    return np.ascontiguousarray(arr.view(np.uint8).reshape(-1, w).T).tobytes()


def _unshuffle(buf: memoryview, pos: int, n: int, dtype: np.dtype) -> tuple[np.ndarray, int]:
    w = dtype.itemsize
    end = pos + n * w
    if end > len(buf):
        raise MalformedError(f"Body truncated: need {end} bytes, have {len(buf)}.")
    raw = np.frombuffer(buf, np.uint8, n * w, pos)
    if w > 1:
        raw = np.ascontiguousarray(raw.reshape(w, n).T)
    return raw.view(dtype).reshape(n), end


def _int_width(deltas: np.ndarray) -> int:
    if not len(deltas):
        return 1
    lo, hi = int(deltas.min()), int(deltas.max())
    for w, t in _WIDTHS:
        info = np.iinfo(t)
        if info.min <= lo and hi <= info.max:
            return w
    return 8


def _decimal_scale(values: np.ndarray) -> int | None:
    if not np.all(np.isfinite(values)) or np.any(np.abs(values) >= 2**53):
        return None  # decimal mode cannot hold these; checking first also avoids overflow
    for k in range(_MAX_SCALE + 1):
        p = 10.0**k
        ints = np.round(values * p)
        if np.all(np.abs(ints) < 2**53) and np.array_equal(ints / p, values):
            return k
    return None


def encode_body(readings: Readings) -> bytes:
    r = readings.canonical()
    if len(r) == 0:
        raise EncodeError("A batch must hold at least one reading.")
    out = [struct.pack("<H", len(r.channels))]
    bounds = np.searchsorted(r.channel, np.arange(len(r.channels) + 1))
    for ci, name in enumerate(r.channels):
        lo, hi = int(bounds[ci]), int(bounds[ci + 1])
        ts, val = r.ts_us[lo:hi], r.value[lo:hi]
        n = hi - lo
        raw_name = name.encode()
        dts = np.diff(ts)
        tw = _int_width(dts)
        out.append(struct.pack("<B", len(raw_name)))
        out.append(raw_name)
        out.append(struct.pack("<IqB", n, int(ts[0]), tw))
        out.append(_shuffle(dts.astype(_DTYPE[tw])))
        scale = _decimal_scale(val)
        if scale is None:
            out.append(b"\x00")
            out.append(_shuffle(val.astype("<f8")))
        else:
            ints = np.round(val * 10.0**scale).astype(np.int64)
            dv = np.diff(ints)
            vw = _int_width(dv)
            out.append(struct.pack("<BBqB", 1, scale, int(ints[0]), vw))
            out.append(_shuffle(dv.astype(_DTYPE[vw])))
    return b"".join(out)


def _undelta(first: int, deltas: np.ndarray) -> np.ndarray:
    """[first, first + d0, first + d0 + d1, …] in int64 (wrapping like the encoder's diff)."""
    out = np.empty(len(deltas) + 1, np.int64)
    out[0] = first
    np.cumsum(deltas, dtype=np.int64, out=out[1:])
    out[1:] += first
    return out


def decode_body(body: bytes) -> Readings:
    buf = memoryview(body)
    try:
        (k,) = struct.unpack_from("<H", buf, 0)
        pos = 2
        names: list[str] = []
        chans, tss, vals = [], [], []
        for ci in range(k):
            (nl,) = struct.unpack_from("<B", buf, pos)
            pos += 1
            name = bytes(buf[pos:pos + nl]).decode()
            pos += nl
            check_channel(name)
            n, ts0, tw = struct.unpack_from("<IqB", buf, pos)
            pos += 13
            if n == 0 or tw not in _DTYPE:
                raise MalformedError(f"Channel {name!r}: count {n} or timestamp width {tw} is invalid.")
            if n > len(buf):  # every reading costs at least one byte: cheap bound before allocating
                raise MalformedError(f"Channel {name!r} claims {n} readings in a {len(buf)}-byte body.")
            d, pos = _unshuffle(buf, pos, n - 1, _DTYPE[tw])
            ts = _undelta(ts0, d)
            (mode,) = struct.unpack_from("<B", buf, pos)
            pos += 1
            if mode == 0:
                v, pos = _unshuffle(buf, pos, n, np.dtype("<f8"))
                v = v.astype(np.float64)
            elif mode == 1:
                scale, v0, vw = struct.unpack_from("<BqB", buf, pos)
                pos += 10
                if scale > _MAX_SCALE or vw not in _DTYPE:
                    raise MalformedError(f"Channel {name!r}: decimal scale {scale} or width {vw} is invalid.")
                dv, pos = _unshuffle(buf, pos, n - 1, _DTYPE[vw])
                v = _undelta(v0, dv).astype(np.float64) / 10.0**scale
            else:
                raise MalformedError(f"Channel {name!r}: value mode {mode} is unknown.")
            names.append(name)
            chans.append(np.full(n, ci, np.uint16))
            tss.append(ts)
            vals.append(v)
        if pos != len(buf):
            raise MalformedError(f"Body has {len(buf) - pos} trailing bytes.")
        if len(set(names)) != len(names):
            raise MalformedError("Body names a channel twice.")
    except struct.error as exc:
        raise MalformedError(f"Body truncated: {exc}.") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, MalformedError):
            raise
        raise MalformedError(f"Body is not valid: {exc}.") from exc
    if not names:
        raise MalformedError("Body holds no channels.")
    return Readings(tuple(names), np.concatenate(chans), np.concatenate(tss), np.concatenate(vals))


def compress(raw: bytes, codec: int, *, level: int = 3, dictionary: zstd.ZstdCompressionDict | None = None) -> bytes:
    if codec == CODEC_NONE:
        return raw
    if codec == CODEC_ZSTD:
        return zstd.ZstdCompressor(level=level, dict_data=dictionary, write_checksum=True).compress(raw)
    raise UnknownCodecError(codec)


def decompress(data: bytes, codec: int, *, raw_len: int, dictionary: zstd.ZstdCompressionDict | None = None) -> bytes:
    if codec == CODEC_NONE:
        out = data
    elif codec == CODEC_ZSTD:
        try:
            # python-zstandard sizes its output from the frame's content size when the frame
            # states one and then ignores max_output_size: check that size against raw_len
            # before anything is allocated. Bytes after the frame are refused like any others.
            size = zstd.frame_content_size(data)
            if size not in (-1, raw_len):
                raise MalformedError(f"zstd frame holds {size} bytes; the header says {raw_len}.")
            out = zstd.ZstdDecompressor(dict_data=dictionary).decompress(
                data, max_output_size=raw_len, allow_extra_data=False
            )
        except zstd.ZstdError as exc:
            raise MalformedError(f"zstd could not decompress the body: {exc}.") from exc
    else:
        raise UnknownCodecError(codec)
    if len(out) != raw_len:
        raise MalformedError(f"Body decompressed to {len(out)} bytes; the header says {raw_len}.")
    return out
