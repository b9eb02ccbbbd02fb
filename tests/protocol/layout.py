"""The envelope header layout, written out for the tests rather than imported from protocol,
so a change to the wire format fails loudly instead of being followed silently."""

from __future__ import annotations

import struct

HEAD = struct.Struct("<2sBBBBIIQqqIIIBB")
FIELDS = ("magic", "version", "kind", "codec", "flags", "dict_id", "epoch", "seq",
          "t_start_us", "t_end_us", "count", "body_len", "raw_len", "tenant_len", "device_len")


def fields_of(envelope: bytes | bytearray) -> dict[str, object]:
    return dict(zip(FIELDS, HEAD.unpack_from(envelope)))


def patched(envelope: bytes, **changes: object) -> bytes:
    """The envelope with some header fields replaced; the rest of the bytes as they were."""
    fields = fields_of(envelope)
    fields.update(changes)
    return HEAD.pack(*(fields[f] for f in FIELDS)) + envelope[HEAD.size:]
