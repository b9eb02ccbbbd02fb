"""Errors raised by the wire contract.

    ProtocolError
     ├── InvalidIdError          a tenant, device or channel id breaks the id rules
     ├── InvalidTopicError       an MQTT topic / NATS subject is not el/<tenant>/<device>/<kind>
     ├── EncodeError             readings that cannot be put on the wire (too many, bad names)
     └── DecodeError             bytes from the wire that must not be stored; `.reason` is a slug
          ├── MalformedError             truncated, inconsistent or undecodable bytes
          ├── OversizedError             envelope or its decompressed body is over the limit
          ├── UnsupportedVersionError    envelope version this build does not speak
          ├── UnknownCodecError          codec byte this build does not know
          ├── UnknownDictionaryError     zstd dictionary id not in the registry
          └── TopicMismatchError         envelope names another tenant/device/kind than its topic

The hub dead-letters every DecodeError with its `reason`; nothing else may escape the decoder.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error the protocol package raises."""


class InvalidIdError(ProtocolError, ValueError):
    def __init__(self, field: str, value: object, rule: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"Invalid {field} {value!r}: {rule}.")


class InvalidTopicError(ProtocolError, ValueError):
    def __init__(self, topic: str, why: str) -> None:
        self.topic = topic
        super().__init__(f"Invalid topic {topic!r}: {why}.")


class EncodeError(ProtocolError, ValueError):
    """Readings that cannot be encoded; the message says which value and why."""


class DecodeError(ProtocolError):
    reason = "malformed"


class MalformedError(DecodeError):
    reason = "malformed"


class OversizedError(DecodeError):
    reason = "oversized"

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(f"The {what} is {size} bytes, over the limit of {limit} bytes.")


class UnsupportedVersionError(DecodeError):
    reason = "unsupported_version"

    def __init__(self, version: int, supported: tuple[int, ...]) -> None:
        self.version = version
        self.supported = supported
        super().__init__(f"Envelope version {version} is not supported (this build speaks {supported}).")


class UnknownCodecError(DecodeError):
    reason = "unknown_codec"

    def __init__(self, codec: int) -> None:
        self.codec = codec
        super().__init__(f"Codec {codec} is not known.")


class UnknownDictionaryError(DecodeError):
    reason = "unknown_dictionary"

    def __init__(self, dict_id: int) -> None:
        self.dict_id = dict_id
        super().__init__(f"Compression dictionary {dict_id} is not in the registry.")


class TopicMismatchError(DecodeError):
    reason = "topic_mismatch"

    def __init__(self, field: str, topic_value: str, envelope_value: str) -> None:
        self.field = field
        self.topic_value = topic_value
        self.envelope_value = envelope_value
        super().__init__(
            f"The topic says {field} {topic_value!r} but the envelope says {envelope_value!r}."
        )
