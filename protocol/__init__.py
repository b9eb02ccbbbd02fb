"""edgeloop's wire contract: topics, the batch envelope, the columnar codec, signed model manifests.

Pure: no sockets, no files. The agent and the hub meet only through this package.
Signing (ed25519, needs `cryptography`) is imported on its own: `from protocol import signing`,
so a device that never installs a model pays nothing for it.
"""

from .codec import CODEC_NONE, CODEC_ZSTD, DictionaryRegistry
from .duration import parse_duration
from .envelope import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_RAW,
    VERSION,
    Batch,
    BatchHeader,
    decode_batch,
    decode_header,
    encode_batch,
    msg_id,
)
from .errors import (
    ArtifactMismatchError,
    BadSignatureError,
    DecodeError,
    EncodeError,
    InvalidIdError,
    InvalidKeyError,
    InvalidTopicError,
    MalformedError,
    ManifestError,
    OversizedError,
    ProtocolError,
    TopicMismatchError,
    TruncatedArtifactError,
    UnknownCodecError,
    UnknownDictionaryError,
    UnknownKeyError,
    UnsupportedVersionError,
    VerificationError,
)
from .manifest import Artifact, Manifest, ModelFormat, Quantization, RuntimeHints, SelfTest, SelfTestSample
from .readings import Readings, check_channel
from .topic import Kind, Topic, check_id, mqtt_filter, subject_filter

__all__ = [
    "CODEC_NONE", "CODEC_ZSTD", "DEFAULT_MAX_PAYLOAD", "DEFAULT_MAX_RAW", "VERSION",
    "Batch", "BatchHeader", "DecodeError", "DictionaryRegistry", "EncodeError", "InvalidIdError",
    "InvalidTopicError", "Kind", "MalformedError", "OversizedError", "ProtocolError", "Readings",
    "Topic", "TopicMismatchError", "UnknownCodecError", "UnknownDictionaryError",
    "UnsupportedVersionError", "check_channel", "check_id", "decode_batch", "decode_header",
    "encode_batch", "mqtt_filter", "msg_id", "parse_duration", "subject_filter",
    # signed model manifests
    "Artifact", "ArtifactMismatchError", "BadSignatureError", "InvalidKeyError", "Manifest",
    "ManifestError", "ModelFormat", "Quantization", "RuntimeHints", "SelfTest", "SelfTestSample", "TruncatedArtifactError", "UnknownKeyError", "VerificationError",
]
