"""Model manifests and their ed25519 signatures: canonical bytes, strict parsing, keys and rotation."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protocol import (
    Artifact,
    ArtifactMismatchError,
    BadSignatureError,
    InvalidKeyError,
    Manifest,
    ManifestError,
    ModelFormat,
    ProtocolError,
    Quantization,
    RuntimeHints,
    SelfTest,
    SelfTestSample,
    TruncatedArtifactError,
    UnknownKeyError,
    VerificationError,
)
from protocol.signing import (
    Signature,
    check_artifact,
    generate_private_key,
    key_id,
    private_key_from_pem,
    private_key_from_raw,
    private_key_to_pem,
    private_key_to_raw,
    public_key_from_pem,
    public_key_from_raw,
    public_key_to_pem,
    public_key_to_raw,
    sign,
    trusted_keys,
    verify,
)

MODEL = b"\x08\x07onnx-model-bytes" * 50
LABELS = b"normal\nbearing_wear\nsensor_fault\n"


def make_manifest(**changes: object) -> Manifest:
    m = Manifest(
        name="condition",
        version="1.0.0",
        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        artifacts=(Artifact.of("model.onnx", MODEL), Artifact.of("labels.txt", LABELS)),
        runtime=RuntimeHints(ModelFormat.ONNX, Quantization.INT8, "model.onnx"),
        feature_spec="1",
        classes=("normal", "bearing_wear", "sensor_fault"),
        self_test=SelfTest((SelfTestSample((0.1, 0.2, 3), (0.9, 0.05, 0.05)),), tolerance=0.01),
    )
    return dataclasses.replace(m, **changes)


@pytest.fixture(scope="module")
def key():
    return private_key_from_raw(bytes(range(32)))


@pytest.fixture(scope="module")
def other_key():
    return private_key_from_raw(bytes(range(1, 33)))


# --- manifest -------------------------------------------------------------------------------


def test_canonical_bytes_are_sorted_compact_and_round_trip():
    m = make_manifest()
    raw = m.to_json()
    obj = json.loads(raw)
    assert raw == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    assert obj["created_at"] == "2025-01-02T03:04:05.000000Z"
    assert obj["self_test"]["samples"][0]["inputs"] == [0.1, 0.2, 3.0]  # ints written as floats
    assert list(obj["artifacts"]) == ["labels.txt", "model.onnx"]
    assert Manifest.from_json(raw) == m
    assert Manifest.from_json(raw).to_json() == raw


def test_a_reformatted_manifest_parses_to_the_same_canonical_bytes():
    m = make_manifest()
    obj = json.loads(m.to_json())
    obj["created_at"] = "2025-01-02T05:04:05+02:00"  # the same instant in another zone
    obj["self_test"]["tolerance"] = 0.01
    pretty = json.dumps(obj, indent=2, sort_keys=False)
    assert Manifest.from_json(pretty).to_json() == m.to_json()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("extra",), 1, "extra"),
        (("runtime", "device"), "gpu", "runtime.device"),
        (("artifacts", "model.onnx", "mtime"), 0, "artifacts['model.onnx'].mtime"),
        (("artifacts", "model.onnx", "size"), True, "artifacts['model.onnx'].size"),
        (("artifacts", "model.onnx", "size"), -1, "artifacts['model.onnx'].size"),
        (("artifacts", "model.onnx", "sha256"), "AB" * 32, "artifacts['model.onnx'].sha256"),
        (("runtime", "format"), "pytorch", "runtime.format"),
        (("runtime", "model"), "weights.bin", "runtime.model"),
        (("created_at",), "2025-01-02T03:04:05", "created_at"),
        (("version",), "1.0 beta", "version"),
        (("manifest_version",), 2, "manifest_version"),
        (("classes",), ["a", "a"], "classes"),
        (("self_test", "tolerance"), -0.5, "self_test.tolerance"),
        (("self_test", "samples"), [], "self_test.samples"),
    ],
)
def test_strict_parsing_names_the_field_and_value(path, value, field):
    obj = json.loads(make_manifest().to_json())
    node = obj
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises(ManifestError) as err:
        Manifest.from_json(json.dumps(obj))
    assert err.value.field == field
    assert repr(value)[:20] in str(err.value)
    assert isinstance(err.value, ProtocolError)


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", ".hidden", "a/b", ""])
def test_artifact_names_cannot_leave_the_slot(name):
    obj = json.loads(make_manifest().to_json())
    obj["artifacts"][name] = obj["artifacts"].pop("labels.txt")
    with pytest.raises(ManifestError, match="plain file name"):
        Manifest.from_json(json.dumps(obj))


def test_missing_fields_duplicate_keys_nan_and_bad_json_are_refused():
    obj = json.loads(make_manifest().to_json())
    del obj["classes"]
    with pytest.raises(ManifestError, match="required field is missing") as err:
        Manifest.from_json(json.dumps(obj))
    assert err.value.field == "classes"
    raw = make_manifest().to_json().decode()
    with pytest.raises(ManifestError, match="appears twice"):
        Manifest.from_json(raw[:-1] + ',"version":"6.6.6"}')
    with pytest.raises(ManifestError, match="JSON does not allow"):
        Manifest.from_json(raw.replace('"tolerance":0.01', '"tolerance":NaN'))
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_json(raw[:-5])
    with pytest.raises(ManifestError, match="over the limit"):
        Manifest.from_json(b" " * (2 << 20))


def test_self_test_samples_must_agree_in_shape():
    with pytest.raises(ManifestError) as err:
        SelfTest((SelfTestSample((1.0, 2.0), (1.0,)), SelfTestSample((1.0,), (1.0,))), tolerance=0.0)
    assert err.value.field == "self_test.samples[1].inputs"


# --- signatures -----------------------------------------------------------------------------


def test_sign_verify_round_trip(key):
    m = make_manifest()
    sig = sign(m, key)
    assert sig.key_id == key_id(key.public_key())
    verify(m, sig, trusted_keys([key.public_key()]))
    # and after both documents travel as bytes
    verify(Manifest.from_json(m.to_json()), Signature.from_json(sig.to_json()), trusted_keys([key.public_key()]))


@pytest.mark.parametrize(
    "change",
    [
        {"version": "1.0.1"},
        {"classes": ("normal", "bearing_wear", "fault")},
        {"self_test": SelfTest((SelfTestSample((0.1, 0.2, 3.0), (0.9, 0.05, 0.05)),), tolerance=10.0)},
        {"created_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc) + timedelta(microseconds=1)},
    ],
)
def test_a_tampered_manifest_is_refused(key, change):
    sig = sign(make_manifest(), key)
    with pytest.raises(BadSignatureError) as err:
        verify(make_manifest(**change), sig, trusted_keys([key.public_key()]))
    assert err.value.key_id == sig.key_id
    assert err.value.reason == "bad_signature"


def test_a_tampered_artifact_digest_is_refused(key):
    sig = sign(make_manifest(), key)
    evil = Artifact.of("model.onnx", MODEL + b"backdoor")
    tampered = make_manifest(artifacts=(evil, Artifact.of("labels.txt", LABELS)))
    with pytest.raises(BadSignatureError):
        verify(tampered, sig, trusted_keys([key.public_key()]))


def test_a_flipped_signature_bit_is_refused(key):
    m = make_manifest()
    sig = sign(m, key)
    flipped = Signature(sig.key_id, bytes([sig.sig[0] ^ 1]) + sig.sig[1:])
    with pytest.raises(BadSignatureError):
        verify(m, flipped, trusted_keys([key.public_key()]))


def test_an_unknown_key_is_refused_by_id(key, other_key):
    m = make_manifest()
    sig = sign(m, other_key)
    with pytest.raises(UnknownKeyError) as err:
        verify(m, sig, trusted_keys([key.public_key()]))
    assert err.value.key_id == key_id(other_key.public_key())
    assert err.value.trusted == (key_id(key.public_key()),)
    assert key_id(other_key.public_key()) in str(err.value)
    assert isinstance(err.value, VerificationError)


def test_a_borrowed_key_id_does_not_help_a_wrong_key(key, other_key):
    m = make_manifest()
    forged = Signature(key_id(key.public_key()), sign(m, other_key).sig)
    with pytest.raises(BadSignatureError):
        verify(m, forged, trusted_keys([key.public_key()]))


def test_rotation_trusts_old_and_new_until_the_old_is_dropped(key, other_key):
    old, new = key, other_key
    m_old, m_new = make_manifest(version="1.0.0"), make_manifest(version="2.0.0")
    s_old, s_new = sign(m_old, old), sign(m_new, new)
    during = trusted_keys([old.public_key(), new.public_key()])
    verify(m_old, s_old, during)
    verify(m_new, s_new, during)
    after = trusted_keys([new.public_key()])
    verify(m_new, s_new, after)
    with pytest.raises(UnknownKeyError):
        verify(m_old, s_old, after)


def test_key_id_is_stable():
    # Fixed here so a change to how ids are derived breaks every fleet's trust store loudly.
    sk = private_key_from_raw(bytes(range(32)))
    pk_raw = bytes.fromhex("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
    assert public_key_to_raw(sk.public_key()) == pk_raw
    assert key_id(sk.public_key()) == "56475aa75463474c"
    assert key_id(public_key_from_raw(pk_raw)) == "56475aa75463474c"
    assert key_id(public_key_from_pem(public_key_to_pem(sk.public_key()))) == "56475aa75463474c"


def test_signing_is_deterministic(key):
    assert sign(make_manifest(), key) == sign(make_manifest(), key)  # ed25519 has no nonce to vary


def test_key_encodings_round_trip():
    sk = generate_private_key()
    pk_id = key_id(sk.public_key())
    assert key_id(private_key_from_raw(private_key_to_raw(sk)).public_key()) == pk_id
    assert key_id(private_key_from_pem(private_key_to_pem(sk)).public_key()) == pk_id
    locked = private_key_to_pem(sk, password=b"hunter22")
    assert b"ENCRYPTED" in locked
    assert key_id(private_key_from_pem(locked, password=b"hunter22").public_key()) == pk_id
    with pytest.raises(InvalidKeyError):
        private_key_from_pem(locked)


def test_bad_key_bytes_are_refused():
    with pytest.raises(InvalidKeyError, match="32 bytes, not 31"):
        public_key_from_raw(b"\x00" * 31)
    with pytest.raises(InvalidKeyError, match="does not parse"):
        public_key_from_pem(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InvalidKeyError, match="not an ed25519 key"):
        public_key_from_pem(ec_pem)


def test_signature_documents_are_strict(key):
    sig = sign(make_manifest(), key)
    obj = json.loads(sig.to_json())
    assert obj == {"alg": "ed25519", "key_id": sig.key_id, "sig": sig.sig.hex()}
    for field, value, match in [
        ("alg", "rsa", "ed25519"),
        ("sig", "zz" * 64, "128 lowercase hex"),
        ("key_id", "KEY", "16 lowercase hex"),
        ("note", "hi", "unknown field"),
    ]:
        bad = dict(obj, **{field: value})
        with pytest.raises(ManifestError, match=match) as err:
            Signature.from_json(json.dumps(bad))
        assert err.value.document == "signature"


# --- artifacts ------------------------------------------------------------------------------


def test_check_artifact_names_file_expected_and_actual():
    a = Artifact.of("model.onnx", MODEL)
    check_artifact(a, sha256=a.sha256, size=a.size)
    other = Artifact.of("model.onnx", MODEL[:-1] + b"X")
    with pytest.raises(ArtifactMismatchError) as err:
        check_artifact(a, sha256=other.sha256, size=a.size)
    assert (err.value.name, err.value.what, err.value.expected, err.value.actual) == (
        "model.onnx", "sha256", a.sha256, other.sha256)
    assert "model.onnx" in str(err.value) and a.sha256 in str(err.value) and other.sha256 in str(err.value)
    with pytest.raises(TruncatedArtifactError) as err2:
        check_artifact(a, sha256=other.sha256, size=a.size - 10)
    assert (err2.value.expected_size, err2.value.actual_size) == (a.size, a.size - 10)
    assert err2.value.reason == "truncated_artifact"
    with pytest.raises(ArtifactMismatchError, match="size"):
        check_artifact(a, sha256=other.sha256, size=a.size + 1)
