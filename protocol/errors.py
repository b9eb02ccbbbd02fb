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
     ├── ManifestError           a model manifest or signature document breaks a rule; names field and value
     ├── InvalidKeyError         bytes that are not an ed25519 key in the expected encoding
     └── VerificationError       a model that must not be installed; `.reason` is a slug
          ├── UnknownKeyError            signed by a key id that is not trusted
          ├── BadSignatureError          the signature does not match the manifest's canonical bytes
          ├── ArtifactMismatchError      a file's sha256 (or size, when longer) is not the manifest's
          └── TruncatedArtifactError     a file is shorter than the manifest says

The hub dead-letters every DecodeError with its `reason`; nothing else may escape the decoder.
A device refuses a model on any VerificationError and reports its `reason`.
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


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


class ManifestError(ProtocolError, ValueError):
    def __init__(self, field: str | None, value: object, why: str, *, document: str = "manifest") -> None:
        self.field = field
        self.value = value
        self.document = document
        where = f"{document} field {field}" if field else document
        super().__init__(f"Invalid {where} {_short(value)}: {why}.")


class InvalidKeyError(ProtocolError, ValueError):
    def __init__(self, what: str, why: str) -> None:
        self.what = what
        super().__init__(f"The {what} is not usable: {why}.")


class VerificationError(ProtocolError):
    reason = "unverified"


class UnknownKeyError(VerificationError):
    reason = "unknown_key"

    def __init__(self, key_id: str, trusted: tuple[str, ...]) -> None:
        self.key_id = key_id
        self.trusted = trusted
        super().__init__(
            f"The model is signed by key {key_id!r}, which is not trusted (trusted: {', '.join(trusted) or 'none'})."
        )


class BadSignatureError(VerificationError):
    reason = "bad_signature"

    def __init__(self, key_id: str, model: str, version: str) -> None:
        self.key_id = key_id
        self.model = model
        self.version = version
        super().__init__(
            f"The signature by key {key_id!r} does not match the manifest of {model} {version}: "
            "the manifest or the signature was altered."
        )


class ArtifactMismatchError(VerificationError):
    reason = "artifact_mismatch"

    def __init__(self, name: str, what: str, expected: str | int, actual: str | int) -> None:
        self.name = name
        self.what = what  # "sha256" or "size"
        self.expected = expected
        self.actual = actual
        super().__init__(f"Artifact {name!r} has {what} {actual!r} where the manifest says {expected!r}.")


class TruncatedArtifactError(VerificationError):
    reason = "truncated_artifact"

    def __init__(self, name: str, expected_size: int, actual_size: int) -> None:
        self.name = name
        self.expected_size = expected_size
        self.actual_size = actual_size
        super().__init__(
            f"Artifact {name!r} is truncated: {actual_size} bytes where the manifest says {expected_size}."
        )
