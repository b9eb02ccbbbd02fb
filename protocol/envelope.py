"""The batch envelope: a fixed binary header naming who sent what, then the compressed body.

Header (little-endian, 52 bytes + ids):

    2s  magic  b"EL"          u8  version (1)        u8  kind code   u8  codec   u8  flags (0)
    u32 dict_id (0 = none)    u32 epoch              u64 seq
    i64 t_start_us            i64 t_end_us           u32 count
    u32 body_len (bytes on the wire)                 u32 raw_len (bytes after decompression)
    u8  tenant_len, u8 device_len, tenant, device (ASCII ids)
    body_len bytes of body

`epoch` is a random number a device draws when its buffer is created; `(device, epoch, seq)`
names a batch for ever, so a device whose storage is wiped does not collide with its past.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .codec import CODEC_ZSTD, CODECS, DictionaryRegistry, compress, decode_body, decompress, encode_body
from .errors import (
    DecodeError,
    EncodeError,
    InvalidIdError,
    MalformedError,
    OversizedError,
    TopicMismatchError,
    UnknownCodecError,
    UnsupportedVersionError,
)
from .readings import Readings
from .topic import Kind, Topic, check_id

MAGIC = b"EL"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
_HEAD = struct.Struct("<2sBBBBIIQqqIIIBB")
HEADER_SIZE = _HEAD.size
DEFAULT_MAX_PAYLOAD = 1024 * 1024  # NATS' default max_payload
DEFAULT_MAX_RAW = 16 * 1024 * 1024


@dataclass(frozen=True)
class BatchHeader:
    tenant: str
    device: str
    kind: Kind
    epoch: int
    seq: int
    t_start_us: int
    t_end_us: int
    count: int
    codec: int = CODEC_ZSTD
    dict_id: int = 0
    version: int = VERSION

    @property
    def topic(self) -> Topic:
        return Topic(self.tenant, self.device, self.kind)

    @property
    def msg_id(self) -> str:
        return msg_id(self.tenant, self.device, self.epoch, self.seq)


def msg_id(tenant: str, device: str, epoch: int, seq: int) -> str:
    """JetStream de-duplication id (`Nats-Msg-Id`) of a batch: unique per tenant, device and epoch."""
    return f"{tenant}/{device}/{epoch}:{seq}"


@dataclass(frozen=True)
class Batch:
    header: BatchHeader
    readings: Readings


def encode_batch(
    readings: Readings,
    *,
    tenant: str,
    device: str,
    kind: Kind,
    epoch: int,
    seq: int,
    codec: int = CODEC_ZSTD,
    level: int = 3,
    dict_id: int = 0,
    dictionaries: DictionaryRegistry | None = None,
) -> bytes:
    check_id("tenant", tenant)
    check_id("device", device)
    if not 0 <= seq < 2**64 or not 0 <= epoch < 2**32:
        raise EncodeError(f"seq {seq!r} or epoch {epoch!r} is out of range.")
    if codec not in CODECS:
        raise EncodeError(f"Codec {codec!r} is not known.")
    dictionary = (dictionaries or DictionaryRegistry()).get(dict_id) if dict_id else None
    raw = encode_body(readings)
    body = compress(raw, codec, level=level, dictionary=dictionary)
    t, d = tenant.encode(), device.encode()
    head = _HEAD.pack(
        MAGIC, VERSION, kind.code, codec, 0, dict_id, epoch, seq,
        readings.t_min, readings.t_max, len(readings), len(body), len(raw), len(t), len(d),
    )
    return b"".join((head, t, d, body))


def decode_header(data: bytes, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[BatchHeader, int, int]:
    """Header, body offset and raw length; checks sizes and version before touching the body."""
    if len(data) > max_payload:
        raise OversizedError("envelope", len(data), max_payload)
    if len(data) < HEADER_SIZE:
        raise MalformedError(f"Envelope is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header.")
    (magic, version, kind_code, codec, flags, dict_id, epoch, seq,
     t0, t1, count, body_len, raw_len, tl, dl) = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise MalformedError(f"Envelope starts with {magic!r}, not {MAGIC!r}.")
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(version, SUPPORTED_VERSIONS)
    if codec not in CODECS:
        raise UnknownCodecError(codec)
    try:
        kind = Kind.from_code(kind_code)
    except KeyError:
        raise MalformedError(f"Kind code {kind_code} is unknown.") from None
    if flags:
        raise MalformedError(f"Flags {flags:#x} are reserved and must be 0.")
    pos = HEADER_SIZE + tl + dl
    if pos + body_len != len(data):
        raise MalformedError(f"Envelope is {len(data)} bytes; its header accounts for {pos + body_len}.")
    try:
        tenant = check_id("tenant", data[HEADER_SIZE:HEADER_SIZE + tl].decode("ascii"))
        device = check_id("device", data[HEADER_SIZE + tl:pos].decode("ascii"))
    except (UnicodeDecodeError, InvalidIdError) as exc:
        raise MalformedError(f"Envelope ids are not valid: {exc}") from exc
    if count == 0 or t0 > t1:
        raise MalformedError(f"Envelope count {count} or time range {t0}..{t1} is invalid.")
    header = BatchHeader(tenant, device, kind, epoch, seq, t0, t1, count, codec, dict_id, version)
    return header, pos, raw_len


def decode_batch(
    data: bytes,
    *,
    topic: Topic | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    max_raw: int = DEFAULT_MAX_RAW,
    dictionaries: DictionaryRegistry | None = None,
) -> Batch:
    """Decode and validate one envelope. Raises only DecodeError subclasses."""
    try:
        header, pos, raw_len = decode_header(data, max_payload=max_payload)
        if topic is not None:
            for name in ("tenant", "device"):
                if getattr(topic, name) != getattr(header, name):
                    raise TopicMismatchError(name, getattr(topic, name), getattr(header, name))
            if topic.kind is not header.kind:
                raise TopicMismatchError("kind", topic.kind.value, header.kind.value)
        if raw_len > max_raw:
            raise OversizedError("decompressed body", raw_len, max_raw)
        dictionary = (dictionaries or DictionaryRegistry()).get(header.dict_id)
        raw = decompress(data[pos:], header.codec, raw_len=raw_len, dictionary=dictionary)
        readings = decode_body(raw)
    except DecodeError:
        raise
    except Exception as exc:  # the boundary: nothing but DecodeError may leave the decoder
        raise MalformedError(f"Envelope could not be decoded: {type(exc).__name__}: {exc}") from exc
    if len(readings) != header.count:
        raise MalformedError(f"Envelope says {header.count} readings; the body holds {len(readings)}.")
    if readings.t_min != header.t_start_us or readings.t_max != header.t_end_us:
        raise MalformedError(
            f"Envelope time range {header.t_start_us}..{header.t_end_us} differs from the body's "
            f"{readings.t_min}..{readings.t_max}."
        )
    return Batch(header, readings)
