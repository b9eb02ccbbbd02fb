"""ed25519 signatures over model manifests, key ids for rotation, and the artifact digest check.

What is signed is `CONTEXT + manifest.to_json()`: the manifest's canonical bytes list every
artifact's sha256 and size, so one signature covers the files as well. The context prefix keeps a
manifest signature from being valid for any other document the same key might ever sign.

A key id is the first 16 hex digits of sha256 over the raw 32-byte public key. A device trusts a
set of keys by id; during a rotation it trusts the old and the new key, the hub signs with the new
one, and the old one is dropped once no model signed by it is still wanted.

Pure: keys travel as bytes (PEM or raw); reading and writing key files is the caller's business.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import (
    ArtifactMismatchError,
    BadSignatureError,
    InvalidKeyError,
    ManifestError,
    TruncatedArtifactError,
    UnknownKeyError,
)
from .manifest import Artifact, Manifest, canonical_json, load_json

ALGORITHM = "ed25519"
CONTEXT = b"edgeloop/model-manifest/v1\x00"
KEY_ID_HEX = 16
_KEY_ID = re.compile(rf"[0-9a-f]{{{KEY_ID_HEX}}}")
_SIG_HEX = re.compile(r"[0-9a-f]{128}")


@dataclass(frozen=True)
class Signature:
    key_id: str
    sig: bytes  # 64 bytes of ed25519 signature

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, str) or not _KEY_ID.fullmatch(self.key_id):
            raise ManifestError("key_id", self.key_id, f"a key id is {KEY_ID_HEX} lowercase hex digits", document="signature")
        if not isinstance(self.sig, bytes) or len(self.sig) != 64:
            raise ManifestError("sig", self.sig, "an ed25519 signature is 64 bytes", document="signature")

    def to_json(self) -> bytes:
        return canonical_json({"alg": ALGORITHM, "key_id": self.key_id, "sig": self.sig.hex()})

    @classmethod
    def from_json(cls, data: bytes | str) -> "Signature":
        obj = load_json("signature", data, max_bytes=4096)
        if not isinstance(obj, dict):
            raise ManifestError(None, obj, "it must be a JSON object", document="signature")
        for key in obj:
            if key not in ("alg", "key_id", "sig"):
                raise ManifestError(key, obj[key], "unknown field", document="signature")
        for key in ("alg", "key_id", "sig"):
            if key not in obj:
                raise ManifestError(key, None, "required field is missing", document="signature")
        if obj["alg"] != ALGORITHM:
            raise ManifestError("alg", obj["alg"], f"this build verifies {ALGORITHM!r} only", document="signature")
        sig = obj["sig"]
        if not isinstance(sig, str) or not _SIG_HEX.fullmatch(sig):
            raise ManifestError("sig", sig, "an ed25519 signature is 128 lowercase hex digits", document="signature")
        return cls(obj["key_id"], bytes.fromhex(sig))


def key_id(public_key: Ed25519PublicKey) -> str:
    return hashlib.sha256(public_key_to_raw(public_key)).hexdigest()[:KEY_ID_HEX]


def trusted_keys(keys: Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    """The `trusted` mapping `verify` takes, each key under its own id."""
    return {key_id(k): k for k in keys}


def sign(manifest: Manifest, private_key: Ed25519PrivateKey) -> Signature:
    return Signature(key_id(private_key.public_key()), private_key.sign(CONTEXT + manifest.to_json()))


def verify(manifest: Manifest, signature: Signature, trusted: Mapping[str, Ed25519PublicKey]) -> None:
    """Return if a trusted key signed exactly this manifest; raise UnknownKeyError or BadSignatureError."""
    key = trusted.get(signature.key_id)
    if key is None:
        raise UnknownKeyError(signature.key_id, tuple(sorted(trusted)))
    try:
        key.verify(signature.sig, CONTEXT + manifest.to_json())
    except InvalidSignature:
        raise BadSignatureError(signature.key_id, manifest.name, manifest.version) from None


def check_artifact(artifact: Artifact, *, sha256: str, size: int) -> None:
    """Compare what was measured of a file with its manifest entry (size first: it names truncation)."""
    if size < artifact.size:
        raise TruncatedArtifactError(artifact.name, artifact.size, size)
    if size != artifact.size:
        raise ArtifactMismatchError(artifact.name, "size", artifact.size, size)
    if sha256 != artifact.sha256:
        raise ArtifactMismatchError(artifact.name, "sha256", artifact.sha256, sha256)


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_to_raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_raw(data: bytes) -> Ed25519PublicKey:
    if len(data) != 32:
        raise InvalidKeyError("raw public key", f"an ed25519 public key is 32 bytes, not {len(data)}")
    return Ed25519PublicKey.from_public_bytes(data)


def public_key_to_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_from_pem(data: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidKeyError("PEM public key", f"it does not parse ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidKeyError("PEM public key", f"it is a {type(key).__name__}, not an ed25519 key")
    return key


def private_key_to_raw(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def private_key_from_raw(data: bytes) -> Ed25519PrivateKey:
    if len(data) != 32:
        raise InvalidKeyError("raw private key", f"an ed25519 private key is 32 bytes, not {len(data)}")
    return Ed25519PrivateKey.from_private_bytes(data)


def private_key_to_pem(private_key: Ed25519PrivateKey, *, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def private_key_from_pem(data: bytes, *, password: bytes | None = None) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # TypeError: a password given for an unencrypted key, or none for an encrypted one.
        raise InvalidKeyError("PEM private key", f"it does not load ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidKeyError("PEM private key", f"it is a {type(key).__name__}, not an ed25519 key")
    return key
