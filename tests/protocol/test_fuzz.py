"""Fuzzing the decoder: whatever the bytes, it returns a Batch or raises a DecodeError.

The hub dead-letters every DecodeError by its `reason`; any other exception would take the
ingest task down. decode_batch converts stray exceptions at its boundary, so these tests also
look at what a DecodeError was raised *from*: a numpy warning (an error under this suite's
filterwarnings) or a MemoryError (an allocation sized by the input rather than by max_raw) is a
bug the boundary would otherwise hide.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    CODEC_NONE,
    CODEC_ZSTD,
    DEFAULT_MAX_RAW,
    Batch,
    DecodeError,
    DictionaryRegistry,
    Kind,
    OversizedError,
    Readings,
    decode_batch,
    encode_batch,
)
from protocol.codec import encode_body
from tests.protocol.layout import FIELDS, HEAD

_UNSIGNED = {"B": 8, "I": 32, "Q": 64}
FORMATS = dict(zip(FIELDS, ["2s", "B", "B", "B", "B", "I", "I", "Q", "q", "q", "I", "I", "I", "B", "B"]))
T0 = 1_700_000_000_000_000
DICT_ID = 7


def _registry() -> DictionaryRegistry:
    rng = np.random.default_rng(5)
    samples = []
    for i in range(200):
        n = 10 + i % 20
        ts = T0 + i * 10**8 + np.arange(n, dtype=np.int64) * 10**6
        values = np.round(rng.normal(20, 3, (n, 2)), 2)
        samples.append(encode_body(Readings.from_columns(["temperature", "humidity"], ts, values)))
    registry = DictionaryRegistry()
    registry.add(DICT_ID, zstandard.train_dictionary(1024, samples).as_bytes())
    return registry


REGISTRY = _registry()


@pytest.fixture(autouse=True, scope="module")
def address_space_cap() -> Iterator[None]:
    """Cap this process's address space while fuzzing, so an absurd allocation is a MemoryError
    (which check_decode reports) on every machine, rather than a lazy overcommit here and the
    OOM killer there."""
    resource = pytest.importorskip("resource")
    with open("/proc/self/statm") as f:
        in_use = int(f.read().split()[0]) * 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = in_use + (2 << 30)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _readings() -> list[Readings]:
    n = 30
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000
    t = np.arange(n, dtype=np.float64)
    return [
        Readings.from_columns(["temperature", "humidity"], ts, np.round(np.column_stack([21 + np.sin(t), 40 + t]), 2)),
        Readings.from_rows([("x", T0, 1.5)]),
        Readings.from_rows([("a", 0, np.nan), ("a", 2**62, -0.0), ("b", 5, np.inf), ("b", 5, 1e-310),
                            ("c.d:e", 7, 0.1 + 0.2)]),
        Readings.from_rows([("w", T0 + i * 70_000, i * 1000.123) for i in range(12)]),
    ]


def _envelopes() -> list[bytes]:
    out = []
    for r in _readings():
        for codec in (CODEC_NONE, CODEC_ZSTD):
            out.append(encode_batch(r, tenant="acme", device="dev-1", kind=Kind.TELEMETRY, epoch=3, seq=9,
                                    codec=codec))
    out.append(encode_batch(_readings()[0], tenant="t", device="d", kind=Kind.ALERT, epoch=1, seq=2,
                            dict_id=DICT_ID, dictionaries=REGISTRY))
    return out


ENVELOPES = _envelopes()
BODIES = [encode_body(r) for r in _readings()]


def check_decode(data: bytes) -> Batch | None:
    """Decode; only a DecodeError may come out, and never one raised from a warning."""
    try:
        batch = decode_batch(data, dictionaries=REGISTRY)
    except DecodeError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        cause = exc.__cause__
        assert not isinstance(cause, Warning), f"{type(exc).__name__} raised from a warning: {cause!r}"
        assert not isinstance(cause, MemoryError), f"{type(exc).__name__} raised from {cause!r}: {exc}"
        return None
    # Anything accepted must be self-consistent.
    assert isinstance(batch, Batch)
    assert len(batch.readings) == batch.header.count > 0
    assert (batch.readings.t_min, batch.readings.t_max) == (batch.header.t_start_us, batch.header.t_end_us)
    return batch


def test_valid_envelopes_decode() -> None:
    for data in ENVELOPES:
        assert check_decode(data) is not None


# --- arbitrary bytes --------------------------------------------------------------------------
def _field_values(name: str) -> st.SearchStrategy[object]:
    fmt = FORMATS[name]
    if fmt == "2s":
        return st.sampled_from([b"EL", b"LE", b"\x00\x00"]) | st.binary(min_size=2, max_size=2)
    if fmt == "q":
        lo, hi = -(2**63), 2**63 - 1
    else:
        lo, hi = 0, 2 ** _UNSIGNED[fmt] - 1
    edges = sorted(e for e in {lo, hi, 0, 1, -1, hi - 1, T0, 2**31, 2**32 - 1} if lo <= e <= hi)
    return st.sampled_from(edges) | st.integers(lo, hi)


@st.composite
def header_shaped(draw: st.DrawFn) -> bytes:
    """Random bytes that at least look like an envelope: magic, version and lengths plausible."""
    fields = {name: draw(_field_values(name)) for name in FIELDS}
    fields |= draw(st.fixed_dictionaries({}, optional={
        "magic": st.just(b"EL"), "version": st.just(1), "flags": st.just(0),
        "kind": st.integers(0, 3), "codec": st.integers(0, 1), "dict_id": st.just(0),
    }))
    tenant = draw(st.binary(max_size=8) | st.just(b"acme"))
    device = draw(st.binary(max_size=8) | st.just(b"dev-1"))
    body = draw(st.binary(max_size=300) | st.sampled_from(BODIES))
    if draw(st.booleans()):
        fields |= {"tenant_len": len(tenant), "device_len": len(device), "body_len": len(body)}
        if fields["codec"] == CODEC_NONE:
            fields["raw_len"] = len(body)
    return HEAD.pack(*(fields[f] for f in FIELDS)) + tenant + device + body


@settings(derandomize=True, deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400) | st.binary(max_size=200).map(lambda b: b"EL\x01" + b) | header_shaped())
def test_arbitrary_bytes(data: bytes) -> None:
    check_decode(data)


# --- mutations of valid envelopes -------------------------------------------------------------
position = st.integers(0, 2**16)
mutation = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(1, 255)),
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), position, st.integers(1, 16)),
    st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just("field"), st.just(f), _field_values(f))),
    st.tuples(st.just("body"), position, st.integers(1, 255)),
    st.tuples(st.just("content_size"), st.sampled_from([0, 1, 2**31, 2**40, 2**63]) | st.integers(0, 2**64 - 1)),
)


def with_content_size(frame: bytes, size: int) -> bytes:
    """The zstd frame with its header's content size replaced (RFC 8878, 3.1.1.1)."""
    if frame[:4] != b"\x28\xb5\x2f\xfd" or len(frame) < 6:
        return frame
    fhd = frame[4]
    single, dict_flag = (fhd >> 5) & 1, fhd & 3
    window = b"" if single else frame[5:6]
    dict_id = frame[5 + len(window):5 + len(window) + (0, 1, 2, 4)[dict_flag]]
    old_end = 5 + len(window) + len(dict_id) + (single, 2, 4, 8)[fhd >> 6]
    # 8-byte content size, and a 1 MiB window descriptor instead of "window = content size".
    new_fhd = 0xC0 | (fhd & 0x1F & ~0x20)
    return frame[:4] + bytes([new_fhd]) + (window or b"\x50") + dict_id + struct.pack("<Q", size) + frame[old_end:]


def _body_start(data: bytes) -> int:
    fields = dict(zip(FIELDS, HEAD.unpack_from(data)))
    return HEAD.size + fields["tenant_len"] + fields["device_len"]


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    buf = bytearray(data)
    for op in ops:
        kind = op[0]
        if kind == "flip" and buf:
            buf[op[1] % len(buf)] ^= op[2]
        elif kind == "truncate":
            del buf[op[1] % (len(buf) + 1):]
        elif kind == "extend":
            buf += op[1]
        elif kind == "insert":
            at = op[1] % (len(buf) + 1)
            buf[at:at] = op[2]
        elif kind == "delete" and buf:
            at = op[1] % len(buf)
            del buf[at:at + op[2]]
        elif kind == "field" and len(buf) >= HEAD.size:
            fields = dict(zip(FIELDS, HEAD.unpack_from(buf)))
            fields[op[1]] = op[2]
            buf[:HEAD.size] = HEAD.pack(*(fields[f] for f in FIELDS))
        elif kind == "body" and len(buf) >= HEAD.size:
            start = min(_body_start(bytes(buf)), len(buf))
            if start < len(buf):
                buf[start + op[1] % (len(buf) - start)] ^= op[2]
        elif kind == "content_size" and len(buf) >= HEAD.size:
            start = _body_start(bytes(buf))
            body = with_content_size(bytes(buf[start:]), op[1])
            fields = dict(zip(FIELDS, HEAD.unpack_from(buf)))
            fields["body_len"] = len(body)
            buf = bytearray(HEAD.pack(*(fields[f] for f in FIELDS)) + buf[HEAD.size:start] + body)
    return bytes(buf)


@settings(derandomize=True, deadline=None, max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(envelope=st.sampled_from(ENVELOPES), ops=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_envelopes(envelope: bytes, ops: list[tuple]) -> None:
    check_decode(mutate(envelope, ops))


# --- mutations of a valid body inside a consistent envelope -----------------------------------
# A flipped byte in a zstd body mostly fails the frame checksum; to reach the body parser, mutate
# the uncompressed body and wrap it in a header whose lengths agree with it.
def wrap(raw: bytes, codec: int, *, count: int, t0: int, t1: int) -> bytes:
    body = raw if codec == CODEC_NONE else zstandard.ZstdCompressor().compress(raw)
    head = HEAD.pack(b"EL", 1, 0, codec, 0, 0, 1, 1, t0, t1, count, len(body), len(raw), 4, 5)
    return head + b"acme" + b"dev-1" + body


body_mutation = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(1, 255)),
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), position, st.integers(1, 16)),
    st.tuples(st.just("set"), position, st.sampled_from([0, 1, 2, 3, 4, 7, 8, 9, 0x7F, 0x80, 0xFF])),
)


@settings(derandomize=True, deadline=None, max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(BODIES) - 1), codec=st.sampled_from([CODEC_NONE, CODEC_ZSTD]),
       ops=st.lists(body_mutation, min_size=1, max_size=4))
def test_mutated_bodies(which: int, codec: int, ops: list[tuple]) -> None:
    readings = _readings()[which]
    raw = bytearray(BODIES[which])
    for op in ops:
        if op[0] == "set" and raw:
            raw[op[1] % len(raw)] = op[2]
        else:
            raw = bytearray(mutate(bytes(raw), [op]))
    check_decode(wrap(bytes(raw), codec, count=len(readings), t0=readings.t_min, t1=readings.t_max))


# --- allocation -------------------------------------------------------------------------------
@pytest.mark.parametrize("index", range(len(ENVELOPES)))
def test_huge_raw_len_is_refused_not_attempted(index: int) -> None:
    data = ENVELOPES[index]
    fields = dict(zip(FIELDS, HEAD.unpack_from(data)))
    fields["raw_len"] = 2**31
    with pytest.raises(OversizedError) as info:
        decode_batch(HEAD.pack(*(fields[f] for f in FIELDS)) + data[HEAD.size:], dictionaries=REGISTRY)
    assert (info.value.size, info.value.limit) == (2**31, DEFAULT_MAX_RAW)
    assert info.value.reason == "oversized"


def test_zstd_content_size_is_checked_against_raw_len_before_allocating() -> None:
    # raw_len passed the max_raw check, but the zstd frame header claims 1 TiB: the decoder
    # must compare the two, not hand the frame's number to the allocator.
    data = mutate(ENVELOPES[1], [("content_size", 2**40)])
    assert zstandard.frame_content_size(data[_body_start(data):]) == 2**40
    assert check_decode(data) is None


def test_huge_count_in_body_is_refused_cheaply() -> None:
    # A body that claims 2**32-1 readings in one channel must fail before numpy allocates them.
    raw = struct.pack("<HB", 1, 1) + b"x" + struct.pack("<IqB", 2**32 - 1, T0, 8) + bytes(64)
    with pytest.raises(DecodeError):
        decode_batch(wrap(raw, CODEC_NONE, count=1, t0=T0, t1=T0))
