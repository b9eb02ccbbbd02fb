"""The columnar codec and the envelope around it: round trips, sizes, and every decode error."""

from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    CODEC_NONE,
    CODEC_ZSTD,
    DEFAULT_MAX_RAW,
    VERSION,
    DecodeError,
    DictionaryRegistry,
    EncodeError,
    Kind,
    MalformedError,
    OversizedError,
    Readings,
    Topic,
    TopicMismatchError,
    UnknownCodecError,
    UnknownDictionaryError,
    UnsupportedVersionError,
    decode_batch,
    decode_header,
    encode_batch,
)
from protocol.codec import encode_body
from tests.protocol.layout import HEAD, fields_of, patched

T0 = 1_700_000_000_000_000  # 2023-11-14, in µs


def body_layout(raw: bytes) -> list[dict[str, object]]:
    """Walk an uncompressed body per the layout in protocol/codec.py's docstring."""
    (k,) = struct.unpack_from("<H", raw, 0)
    pos, out = 2, []
    for _ in range(k):
        nl = raw[pos]
        name = raw[pos + 1:pos + 1 + nl].decode()
        pos += 1 + nl
        n, _ts0, tw = struct.unpack_from("<IqB", raw, pos)
        pos += 13 + (n - 1) * tw
        mode = raw[pos]
        pos += 1
        entry = {"name": name, "n": n, "ts_width": tw, "mode": mode}
        if mode == 0:
            pos += 8 * n
        else:
            scale, _v0, vw = struct.unpack_from("<BqB", raw, pos)
            pos += 10 + (n - 1) * vw
            entry |= {"scale": scale, "value_width": vw}
        out.append(entry)
    assert pos == len(raw)
    return out


def encode(readings: Readings, **kwargs: object) -> bytes:
    args: dict[str, object] = {"tenant": "acme", "device": "dev-1", "kind": Kind.TELEMETRY, "epoch": 7, "seq": 1}
    args.update(kwargs)
    return encode_batch(readings, **args)  # type: ignore[arg-type]


def sample_readings(n: int = 50) -> Readings:
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000
    t = np.arange(n, dtype=np.float64)
    values = np.column_stack([np.round(21 + np.sin(t / 10), 2), np.sin(t) * np.pi])
    return Readings.from_columns(["temperature", "vibration.raw"], ts, values)


# --- strategies -------------------------------------------------------------------------------
channel_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", fullmatch=True)
any_floats = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
specials = st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf, 5e-324, -5e-324, 2.2250738585072014e-308,
                            1.7976931348623157e308, -1.7976931348623157e308, 2.0**53, 2.0**53 + 2, 1e22])
decimals = st.builds(round, st.floats(-1e9, 1e9), st.integers(0, 6))
small_decimals = st.builds(lambda i, k: i / 10**k, st.integers(-10**6, 10**6), st.integers(0, 6))


@st.composite
def timestamps(draw: st.DrawFn) -> st.SearchStrategy[int]:
    # A span per example, so every delta width (1, 2, 4, 8 bytes) gets its share of examples.
    span = draw(st.sampled_from([2**6, 2**14, 2**30, 2**62]))
    base = draw(st.integers(0, 2**62 - span))
    return st.integers(base, base + span - 1)


@st.composite
def readings_rows(draw: st.DrawFn) -> list[tuple[str, int, float]]:
    names = draw(st.lists(channel_names, min_size=1, max_size=5, unique=True))
    ts = draw(timestamps())
    # Per example: all decimal (value mode 1 likely), all float (mode 0), or a mix.
    values = draw(st.sampled_from([
        decimals, small_decimals, any_floats, specials,
        st.one_of(decimals, small_decimals, any_floats, specials),
    ]))
    return draw(st.lists(st.tuples(st.sampled_from(names), ts, values), min_size=1, max_size=60))


# --- round trips ------------------------------------------------------------------------------
@settings(derandomize=True, deadline=None, max_examples=400)
@given(
    rows=readings_rows(),
    tenant=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True),
    kind=st.sampled_from(Kind),
    epoch=st.integers(0, 2**32 - 1),
    seq=st.integers(0, 2**64 - 1),
    codec=st.sampled_from([CODEC_NONE, CODEC_ZSTD]),
)
def test_batch_round_trip(
    rows: list[tuple[str, int, float]], tenant: str, kind: Kind, epoch: int, seq: int, codec: int
) -> None:
    original = Readings.from_rows(rows)
    data = encode(original, tenant=tenant, device="dev-1", kind=kind, epoch=epoch, seq=seq, codec=codec)
    batch = decode_batch(data, topic=Topic(tenant, "dev-1", kind))
    assert batch.readings.equals(original)
    h = batch.header
    assert (h.tenant, h.device, h.kind, h.epoch, h.seq) == (tenant, "dev-1", kind, epoch, seq)
    assert h.count == len(rows)
    assert h.t_start_us == min(t for _, t, _ in rows)
    assert h.t_end_us == max(t for _, t, _ in rows)
    assert (h.codec, h.dict_id, h.version) == (codec, 0, VERSION)
    assert h.topic == Topic(tenant, "dev-1", kind)
    assert h.msg_id == f"{tenant}/dev-1/{epoch}:{seq}"


def test_float_mode_is_bit_exact() -> None:
    # Channels that fall back to float64 keep every bit: NaN payloads, the sign of zero,
    # subnormals. (A decimal-mode channel writes -0.0 back as 0.0; equals() treats them alike.)
    nan_payload = np.frombuffer(struct.pack("<Q", 0x7FF8_0000_DEAD_BEEF), np.float64)[0]
    cases = {
        "nan_payload": [nan_payload, 1.0, np.inf],
        "negative_zero": [-0.0, np.nan, 0.0],
        "subnormals": [5e-324, -5e-324, -0.0, 0.1 + 0.2],
    }
    for name, values in cases.items():
        original = Readings.from_rows([("x", T0 + i, v) for i, v in enumerate(values)])
        decoded = decode_batch(encode(original)).readings.canonical()
        assert decoded.value.view(np.uint64).tolist() == original.canonical().value.view(np.uint64).tolist(), name


@pytest.mark.parametrize(
    ("step", "width"), [(1_000, 2), (100, 1), (1_000_000, 4), (2**40, 8), (0, 1), (-1, 1)]
)
def test_timestamp_delta_widths(step: int, width: int) -> None:
    # Rows sorted by time inside a channel, so a negative step only reverses the input.
    ts = T0 + np.arange(20, dtype=np.int64) * step
    if step > 0:
        ts[5] += step // 4  # irregular, but still inside the width
    original = Readings.from_columns(["c"], ts, np.arange(20.0))
    assert body_layout(encode_body(original))[0]["ts_width"] == width
    assert decode_batch(encode(original)).readings.equals(original)


def test_timestamp_extremes() -> None:
    original = Readings.from_rows([("c", 0, 1.0), ("c", 2**62 - 1, 2.0), ("c", 2**62 - 1, 3.0), ("d", 2**61, 0.5)])
    batch = decode_batch(encode(original))
    assert batch.readings.equals(original)
    assert (batch.header.t_start_us, batch.header.t_end_us) == (0, 2**62 - 1)


@pytest.mark.parametrize(
    ("values", "mode", "scale", "width"),
    [
        ([20.0, 21.0, 19.0], 1, 0, 1),
        ([21.37, 21.38, 21.36], 1, 2, 1),
        ([0.000001, 0.000002], 1, 6, 1),
        ([0.1, 1000.1], 1, 1, 2),
        ([1.5, 1e6 + 0.5], 1, 1, 4),
        ([0.0, 2.0**52], 1, 0, 8),
        ([0.1 + 0.2, 1.0], 0, None, None),  # 0.30000000000000004 has no short decimal form
        ([0.0000001, 0.0], 0, None, None),  # scale 7 is past the limit
        ([1.0, np.nan], 0, None, None),
        ([1.0, np.inf], 0, None, None),
        ([2.0**53, 1.0], 0, None, None),
        ([1e300, 1.0], 0, None, None),
    ],
)
def test_value_modes(values: list[float], mode: int, scale: int | None, width: int | None) -> None:
    original = Readings.from_rows([("c", T0 + i, v) for i, v in enumerate(values)])
    layout = body_layout(encode_body(original))[0]
    assert layout["mode"] == mode
    if mode == 1:
        assert (layout["scale"], layout["value_width"]) == (scale, width)
    assert decode_batch(encode(original)).readings.equals(original)


def test_huge_values_encode_without_numpy_warnings() -> None:
    # The decimal-scale probe multiplies by 10**k; values near the float64 limit overflow to
    # inf there, and numpy's RuntimeWarning is an error under this suite's filterwarnings.
    original = Readings.from_rows([("c", T0, 1e305), ("c", T0 + 1, -1.7976931348623157e308)])
    assert decode_batch(encode(original)).readings.equals(original)


def test_channels_travel_sorted_by_name() -> None:
    original = Readings.from_rows([("zeta", T0, 1.0), ("alpha", T0, 2.0), ("mid.x", T0, 3.0)])
    assert [c["name"] for c in body_layout(encode_body(original))] == ["alpha", "mid.x", "zeta"]


def test_codec_none_and_zstd() -> None:
    original = sample_readings()
    raw = encode_body(original)
    plain = encode(original, codec=CODEC_NONE)
    packed = encode(original, codec=CODEC_ZSTD)
    assert plain.endswith(raw)
    assert fields_of(plain)["body_len"] == fields_of(plain)["raw_len"] == len(raw)
    assert fields_of(packed)["raw_len"] == len(raw)
    assert fields_of(packed)["body_len"] < len(raw)
    for data, codec in ((plain, CODEC_NONE), (packed, CODEC_ZSTD)):
        batch = decode_batch(data)
        assert batch.header.codec == codec
        assert batch.readings.equals(original)


def test_zstd_level_does_not_change_the_readings() -> None:
    original = sample_readings()
    for level in (1, 3, 19):
        assert decode_batch(encode(original, level=level)).readings.equals(original)


def test_encode_rejects() -> None:
    good = sample_readings()
    with pytest.raises(EncodeError):
        encode(Readings.empty())
    with pytest.raises(EncodeError, match="99"):
        encode(good, codec=99)
    with pytest.raises(EncodeError):
        encode(good, seq=2**64)
    with pytest.raises(EncodeError):
        encode(good, epoch=-1)
    with pytest.raises(ValueError, match="dev.1"):
        encode(good, device="dev.1")


# --- dictionaries -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained() -> bytes:
    rng = np.random.default_rng(3)
    samples = []
    for i in range(300):
        n = 20 + i % 30
        ts = T0 + i * 10**8 + np.arange(n, dtype=np.int64) * 10**6
        values = np.round(rng.normal(20, 3, (n, 2)), 2)
        samples.append(encode_body(Readings.from_columns(["temperature", "humidity"], ts, values)))
    return zstandard.train_dictionary(2048, samples).as_bytes()


def test_dictionary_round_trip(trained: bytes) -> None:
    registry = DictionaryRegistry()
    registry.add(7, trained)
    ts = T0 + np.arange(25, dtype=np.int64) * 10**6
    original = Readings.from_columns(["temperature", "humidity"], ts, np.round(np.linspace(18, 24, 50), 2))
    data = encode(original, dict_id=7, dictionaries=registry)
    assert fields_of(data)["dict_id"] == 7
    batch = decode_batch(data, dictionaries=registry)
    assert batch.header.dict_id == 7
    assert batch.readings.equals(original)
    assert len(data) < len(encode(original))  # what the dictionary is for

    with pytest.raises(UnknownDictionaryError) as info:
        decode_batch(data)
    assert info.value.dict_id == 7
    assert "7" in str(info.value)
    other = DictionaryRegistry()
    other.add(8, trained)
    with pytest.raises(UnknownDictionaryError):
        decode_batch(data, dictionaries=other)


def test_encoding_with_an_unregistered_dictionary_fails() -> None:
    with pytest.raises(UnknownDictionaryError):
        encode(sample_readings(), dict_id=7)


@pytest.mark.parametrize("dict_id", [0, -1, 2**32])
def test_registry_rejects_ids_out_of_range(dict_id: int, trained: bytes) -> None:
    with pytest.raises(ValueError, match=str(dict_id)):
        DictionaryRegistry().add(dict_id, trained)


# --- decode errors ----------------------------------------------------------------------------
def test_oversized_envelope() -> None:
    data = encode(sample_readings())
    with pytest.raises(OversizedError) as info:
        decode_batch(data, max_payload=len(data) - 1)
    assert (info.value.what, info.value.size, info.value.limit) == ("envelope", len(data), len(data) - 1)
    assert str(len(data)) in str(info.value)
    assert decode_batch(data, max_payload=len(data)).readings.equals(sample_readings())
    with pytest.raises(OversizedError):
        decode_header(data, max_payload=len(data) - 1)


def test_raw_len_over_max_raw() -> None:
    data = encode(sample_readings())
    raw_len = fields_of(data)["raw_len"]
    assert isinstance(raw_len, int)
    with pytest.raises(OversizedError) as info:
        decode_batch(data, max_raw=raw_len - 1)
    assert (info.value.what, info.value.size, info.value.limit) == ("decompressed body", raw_len, raw_len - 1)
    assert decode_batch(data, max_raw=raw_len).readings.equals(sample_readings())


def test_raw_len_huge_is_refused_before_allocating() -> None:
    data = patched(encode(sample_readings()), raw_len=2**31)
    with pytest.raises(OversizedError) as info:
        decode_batch(data)
    assert (info.value.size, info.value.limit) == (2**31, DEFAULT_MAX_RAW)


def test_zstd_frame_cannot_outgrow_raw_len() -> None:
    # A decompression bomb: a 16 MiB body of zeros is ~600 bytes of zstd, and its frame
    # header states its true size while the envelope claims a tiny raw_len. The decoder
    # must not materialise more than max_raw bytes on the way to rejecting it.
    bomb = zstandard.ZstdCompressor().compress(bytes(16 << 20))
    good = encode(sample_readings())
    fields = fields_of(good)
    head_end = HEAD.size + int(fields["tenant_len"]) + int(fields["device_len"])  # type: ignore[call-overload]
    data = patched(good[:head_end], body_len=len(bomb), raw_len=100) + bomb
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(MalformedError):
            decode_batch(data, max_raw=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"decoding a {len(data)}-byte envelope peaked at {peak} bytes"


def test_bytes_after_the_zstd_frame_are_rejected() -> None:
    # decode_body rejects trailing bytes; the compressed body must be as strict, or two
    # different envelopes carry the same batch.
    good = encode(sample_readings())
    data = patched(good, body_len=fields_of(good)["body_len"] + 4) + b"junk"  # type: ignore[operator]
    with pytest.raises(MalformedError):
        decode_batch(data)


def test_wrong_version() -> None:
    data = bytearray(encode(sample_readings()))
    data[2] = 2
    with pytest.raises(UnsupportedVersionError) as info:
        decode_batch(bytes(data))
    assert info.value.version == 2
    assert info.value.supported == (1,)
    assert "2" in str(info.value)


def test_unknown_codec() -> None:
    with pytest.raises(UnknownCodecError) as info:
        decode_batch(patched(encode(sample_readings()), codec=9))
    assert info.value.codec == 9


@pytest.mark.parametrize(
    ("topic", "field", "topic_value", "envelope_value"),
    [
        (Topic("other", "dev-1", Kind.TELEMETRY), "tenant", "other", "acme"),
        (Topic("acme", "dev-2", Kind.TELEMETRY), "device", "dev-2", "dev-1"),
        (Topic("acme", "dev-1", Kind.ALERT), "kind", "alert", "telemetry"),
    ],
)
def test_topic_mismatch(topic: Topic, field: str, topic_value: str, envelope_value: str) -> None:
    with pytest.raises(TopicMismatchError) as info:
        decode_batch(encode(sample_readings()), topic=topic)
    err = info.value
    assert (err.field, err.topic_value, err.envelope_value) == (field, topic_value, envelope_value)
    assert repr(topic_value) in str(err) and repr(envelope_value) in str(err)


def test_reasons() -> None:
    good = encode(sample_readings())
    raw_len = fields_of(good)["raw_len"]
    cases = {
        "malformed": lambda: decode_batch(good[:-1]),
        "oversized": lambda: decode_batch(good, max_raw=raw_len - 1),  # type: ignore[operator]
        "unsupported_version": lambda: decode_batch(patched(good, version=9)),
        "unknown_codec": lambda: decode_batch(patched(good, codec=9)),
        "unknown_dictionary": lambda: decode_batch(patched(good, dict_id=5)),
        "topic_mismatch": lambda: decode_batch(good, topic=Topic("acme", "dev-1", Kind.HEALTH)),
    }
    for reason, call in cases.items():
        with pytest.raises(DecodeError) as info:
            call()
        assert info.value.reason == reason
        assert type(info.value).reason == reason
    assert DecodeError.reason == MalformedError.reason == "malformed"


@pytest.mark.parametrize(
    ("field", "value"),
    [("magic", b"LE"), ("kind", 4), ("flags", 1), ("count", 0), ("count", 51), ("t_start_us", T0 + 1),
     ("t_end_us", T0), ("raw_len", 1), ("body_len", 1), ("tenant_len", 0)],
)
def test_header_inconsistencies_are_malformed(field: str, value: object) -> None:
    with pytest.raises(MalformedError):
        decode_batch(patched(encode(sample_readings()), **{field: value}))


# --- the product promise ----------------------------------------------------------------------
def test_compresses_ten_times_better_than_json_lines() -> None:
    rng = np.random.default_rng(1)
    n = 1000
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000
    t = np.arange(n, dtype=np.float64)
    values = np.column_stack([
        np.round(21 + 2 * np.sin(t / 100) + rng.normal(0, 0.05, n), 2),
        np.round(45 + 5 * np.cos(t / 300) + rng.normal(0, 0.2, n), 1),
        np.round(1013.25 + rng.normal(0, 0.05, n).cumsum(), 2),
        np.round(np.abs(rng.normal(0, 1, n)), 3),
    ])
    readings = Readings.from_columns(["temperature", "humidity", "pressure", "vibration.rms"], ts, values)
    lines = "\n".join(
        json.dumps({"channel": c, "ts_us": t, "value": v}) for c, t, v in readings.rows()
    ).encode()
    envelope = encode(readings)
    assert len(envelope) * 10 < len(lines), f"{len(envelope)} bytes on the wire vs {len(lines)} as JSON lines"


# --- Readings ---------------------------------------------------------------------------------
@settings(derandomize=True, deadline=None, max_examples=200)
@given(rows=readings_rows())
def test_staging_bytes_round_trip(rows: list[tuple[str, int, float]]) -> None:
    original = Readings.from_rows(rows)
    back = Readings.from_bytes(original.to_bytes())
    assert back.channels == original.channels
    assert back.channel.tolist() == original.channel.tolist()
    assert back.ts_us.tolist() == original.ts_us.tolist()
    assert back.value.view(np.uint64).tolist() == original.value.view(np.uint64).tolist()


def test_staging_bytes_of_empty() -> None:
    assert len(Readings.from_bytes(Readings.empty().to_bytes())) == 0


@settings(derandomize=True, deadline=None, max_examples=200)
@given(parts=st.lists(readings_rows() | st.just([]), min_size=0, max_size=4))
def test_concat_keeps_every_row_with_its_channel(parts: list[list[tuple[str, int, float]]]) -> None:
    readings = [Readings.from_rows(p) for p in parts]
    joined = Readings.concat(readings)
    expected = [row for p in readings for row in p.rows()]
    got = joined.rows()
    assert len(got) == len(expected)
    for (gc, gt, gv), (ec, et, ev) in zip(got, expected):
        assert (gc, gt) == (ec, et)
        assert gv == ev or (gv != gv and ev != ev)
    assert len(set(joined.channels)) == len(joined.channels)
    assert set(joined.channels) == {c for c, _, _ in expected}


def test_concat_remaps_channel_indexes() -> None:
    a = Readings.from_rows([("x", 1, 1.0), ("y", 2, 2.0)])
    b = Readings.from_rows([("y", 3, 3.0), ("z", 4, 4.0), ("x", 5, 5.0)])
    joined = Readings.concat([a, Readings.empty(), b])
    assert joined.channels == ("x", "y", "z")
    assert joined.channel.tolist() == [0, 1, 1, 2, 0]
    assert joined.rows() == [("x", 1, 1.0), ("y", 2, 2.0), ("y", 3, 3.0), ("z", 4, 4.0), ("x", 5, 5.0)]
    assert len(Readings.concat([])) == 0
    assert len(Readings.concat([Readings.empty(), Readings.empty()])) == 0


def test_from_columns_layout() -> None:
    r = Readings.from_columns(["a", "b", "c"], np.array([10, 20]), np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    assert r.channels == ("a", "b", "c")
    assert r.rows() == [
        ("a", 10, 1.0), ("b", 10, 2.0), ("c", 10, 3.0),
        ("a", 20, 4.0), ("b", 20, 5.0), ("c", 20, 6.0),
    ]
    assert (r.channel.dtype, r.ts_us.dtype, r.value.dtype) == (np.uint16, np.int64, np.float64)


def test_from_columns_checks_channel_names() -> None:
    with pytest.raises(ValueError, match="bad name"):
        Readings.from_columns(["ok", "bad name"], np.array([1]), np.array([[1.0, 2.0]]))


def test_column_lengths_must_agree() -> None:
    with pytest.raises(EncodeError):
        Readings(("a",), np.zeros(2, np.uint16), np.zeros(1, np.int64), np.zeros(2, np.float64))
