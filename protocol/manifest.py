"""The model manifest: what a model is made of, how to run it, and how to test it, as signed bytes.

A manifest is the one document a device needs to accept a model. Its canonical form (sorted
keys, no whitespace, ASCII, `allow_nan=False`) is what `protocol.signing` signs; because it lists
every artifact's sha256 and size, one signature covers the artifacts too.

    {"artifacts": {"model.onnx": {"sha256": "<64 hex>", "size": 40960}},
     "classes": ["normal", "bearing_wear", "sensor_fault"],
     "created_at": "2025-01-02T03:04:05.000000Z",
     "feature_spec": "1",
     "manifest_version": 1,
     "name": "condition",
     "runtime": {"format": "onnx", "model": "model.onnx", "quantization": "int8"},
     "self_test": {"samples": [{"expected": [0.9, 0.05, 0.05], "inputs": [0.1, 0.2]}],
                   "tolerance": 0.01},
     "version": "1.0.0"}

Hazard: the canonical form is defined by this module, not by RFC 8785. Floats are written as
Python's shortest round-trip repr and every number in a float field is written as a float
(`1` becomes `1.0`); a verifier in another language must reproduce exactly these bytes. Parsing is
strict so that what a device verifies is what the hub meant: unknown fields, duplicate keys,
NaN/Infinity, booleans in number fields, naive timestamps and path-like artifact names are refused.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import numbers
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import ManifestError

MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20  # self-test samples live here; a bigger manifest is a mistake
# Names and versions end up in file names, topics and logs: no separators, no whitespace.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_NAME_RULE = "1-64 characters of A-Z a-z 0-9 . _ + -, starting with a letter or digit"
# Artifact names become file names inside a slot: no '/', no leading '.', so never '..'.
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FILE_RULE = "a plain file name of 1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelFormat(enum.Enum):
    ONNX = "onnx"
    TFLITE = "tflite"


class Quantization(enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


@dataclass(frozen=True)
class Artifact:
    """One file of a model, named as it lies in the slot, with the digest the signature covers."""

    name: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        _check_file(f"artifacts[{self.name!r}]", self.name)
        _check_sha256(f"artifacts[{self.name!r}].sha256", self.sha256)
        _check_int(f"artifacts[{self.name!r}].size", self.size)

    @classmethod
    def of(cls, name: str, data: bytes) -> "Artifact":
        """The artifact entry for these bytes (the hub's side of the check a device makes)."""
        return cls(name, hashlib.sha256(data).hexdigest(), len(data))


@dataclass(frozen=True)
class RuntimeHints:
    """How to run the model: its format, its quantization, and which artifact the backend loads."""

    format: ModelFormat
    quantization: Quantization
    model: str

    def __post_init__(self) -> None:
        _check_enum("runtime.format", self.format, ModelFormat)
        _check_enum("runtime.quantization", self.quantization, Quantization)
        _check_file("runtime.model", self.model)


@dataclass(frozen=True)
class SelfTestSample:
    """One flat feature vector and the outputs the model must produce for it."""

    inputs: tuple[float, ...]
    expected: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "expected", tuple(self.expected))


@dataclass(frozen=True)
class SelfTest:
    """Samples a device runs before switching to a model; outputs must match within `tolerance`."""

    samples: tuple[SelfTestSample, ...]
    tolerance: float  # largest absolute difference allowed on any output

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples", tuple(self.samples))
        if not self.samples:
            raise ManifestError("self_test.samples", [], "a model ships at least one self-test sample")
        n_in, n_out = len(self.samples[0].inputs), len(self.samples[0].expected)
        for i, s in enumerate(self.samples):
            for part, values, n in (("inputs", s.inputs, n_in), ("expected", s.expected, n_out)):
                where = f"self_test.samples[{i}].{part}"
                if not values:
                    raise ManifestError(where, list(values), "it must hold at least one number")
                if len(values) != n:
                    raise ManifestError(where, list(values), f"it has {len(values)} numbers where sample 0 has {n}")
                for j, v in enumerate(values):
                    _check_float(f"{where}[{j}]", v)
        _check_float("self_test.tolerance", self.tolerance)
        if self.tolerance < 0:
            raise ManifestError("self_test.tolerance", self.tolerance, "it must not be negative")


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    created_at: datetime
    artifacts: tuple[Artifact, ...]  # sorted by name, names unique
    runtime: RuntimeHints
    feature_spec: str  # version of the feature functions whose output the model takes
    classes: tuple[str, ...]
    self_test: SelfTest

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        _check_name("version", self.version)
        _check_name("feature_spec", self.feature_spec)
        if not isinstance(self.created_at, datetime) or self.created_at.utcoffset() is None:
            raise ManifestError("created_at", self.created_at, "it must be a datetime with a time zone")
        if not self.artifacts:
            raise ManifestError("artifacts", {}, "a model has at least one artifact")
        names = [a.name for a in self.artifacts]
        if len(set(names)) != len(names):
            raise ManifestError("artifacts", names, "artifact names must be unique")
        # Sorted so that two equal manifests compare equal however they were built.
        object.__setattr__(self, "artifacts", tuple(sorted(self.artifacts, key=lambda a: a.name)))
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.runtime.model not in names:
            raise ManifestError("runtime.model", self.runtime.model, f"it is not one of the artifacts {sorted(names)}")
        if not self.classes:
            raise ManifestError("classes", [], "a model has at least one class")
        for i, c in enumerate(self.classes):
            if not isinstance(c, str) or not 0 < len(c) <= 64:
                raise ManifestError(f"classes[{i}]", c, "a class is a string of 1-64 characters")
        if len(set(self.classes)) != len(self.classes):
            raise ManifestError("classes", list(self.classes), "class names must be unique")

    def artifact(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise KeyError(name)

    @property
    def digest(self) -> str:
        """sha256 of the canonical bytes: names this exact manifest in registries and health."""
        return hashlib.sha256(self.to_json()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest_version": MANIFEST_VERSION,
            "name": self.name,
            "version": self.version,
            "created_at": _format_time(self.created_at),
            "artifacts": {a.name: {"sha256": a.sha256, "size": a.size} for a in self.artifacts},
            "runtime": {
                "format": self.runtime.format.value,
                "quantization": self.runtime.quantization.value,
                "model": self.runtime.model,
            },
            "feature_spec": self.feature_spec,
            "classes": list(self.classes),
            "self_test": {
                "tolerance": float(self.self_test.tolerance),
                "samples": [
                    {"inputs": [float(v) for v in s.inputs], "expected": [float(v) for v in s.expected]}
                    for s in self.self_test.samples
                ],
            },
        }

    def to_json(self) -> bytes:
        """The canonical bytes: the only serialization, and the one that is signed."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> "Manifest":
        return cls.from_dict(load_json("manifest", data, max_bytes=MAX_MANIFEST_BYTES))

    @classmethod
    def from_dict(cls, obj: object) -> "Manifest":
        d = _fields("", obj, required=(
            "manifest_version", "name", "version", "created_at", "artifacts", "runtime",
            "feature_spec", "classes", "self_test",
        ))
        if d["manifest_version"] != MANIFEST_VERSION or isinstance(d["manifest_version"], bool):
            raise ManifestError("manifest_version", d["manifest_version"], f"this build reads version {MANIFEST_VERSION}")
        arts = d["artifacts"]
        if not isinstance(arts, dict):
            raise ManifestError("artifacts", arts, "it must be an object of file name to {sha256, size}")
        artifacts = []
        for name, entry in arts.items():
            _check_file(f"artifacts[{name!r}]", name)
            e = _fields(f"artifacts[{name!r}].", entry, required=("sha256", "size"))
            artifacts.append(Artifact(name, e["sha256"], e["size"]))
        r = _fields("runtime.", d["runtime"], required=("format", "quantization", "model"))
        runtime = RuntimeHints(
            _enum("runtime.format", r["format"], ModelFormat),
            _enum("runtime.quantization", r["quantization"], Quantization),
            r["model"],
        )
        t = _fields("self_test.", d["self_test"], required=("samples", "tolerance"))
        samples = []
        for i, s in enumerate(_list("self_test.samples", t["samples"])):
            sd = _fields(f"self_test.samples[{i}].", s, required=("inputs", "expected"))
            samples.append(SelfTestSample(
                _floats(f"self_test.samples[{i}].inputs", sd["inputs"]),
                _floats(f"self_test.samples[{i}].expected", sd["expected"]),
            ))
        return cls(
            name=d["name"],
            version=d["version"],
            created_at=_parse_time(d["created_at"]),
            artifacts=tuple(artifacts),
            runtime=runtime,
            feature_spec=d["feature_spec"],
            classes=tuple(_list("classes", d["classes"])),
            self_test=SelfTest(tuple(samples), _number("self_test.tolerance", t["tolerance"])),
        )


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def load_json(document: str, data: bytes | str, *, max_bytes: int) -> object:
    """Strict JSON: size-capped, no duplicate keys, no NaN/Infinity. Errors name the document."""
    if len(data) > max_bytes:
        raise ManifestError(None, f"{len(data)} bytes", f"it is over the limit of {max_bytes} bytes", document=document)

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        out: dict[str, object] = {}
        for k, v in pairs:
            if k in out:
                raise ManifestError(k, v, "the key appears twice", document=document)
            out[k] = v
        return out

    def no_constants(name: str) -> object:
        raise ManifestError(None, name, "it holds a number JSON does not allow", document=document)

    try:
        return json.loads(data, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(None, _preview(data), f"it is not valid JSON ({exc})", document=document) from exc


def _preview(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text if len(text) <= 80 else text[:77] + "..."


def _fields(prefix: str, obj: object, *, required: tuple[str, ...]) -> dict[str, Any]:
    where = prefix.rstrip(".") or None
    if not isinstance(obj, dict):
        raise ManifestError(where, obj, "it must be a JSON object")
    for key in obj:
        if key not in required:
            raise ManifestError(f"{prefix}{key}", obj[key], "unknown field")
    for key in required:
        if key not in obj:
            raise ManifestError(f"{prefix}{key}", None, "required field is missing")
    return obj


def _list(field: str, value: object) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestError(field, value, "it must be a JSON array")
    return value


def _floats(field: str, value: object) -> tuple[float, ...]:
    return tuple(_number(f"{field}[{i}]", v) for i, v in enumerate(_list(field, value)))


def _number(field: str, value: object) -> float:
    _check_float(field, value)
    return float(value)  # type: ignore[arg-type]


def _enum(field: str, value: object, kind: type[enum.Enum]) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ManifestError(field, value, f"it must be one of {[m.value for m in kind]}") from None


def _check_enum(field: str, value: object, kind: type[enum.Enum]) -> None:
    if not isinstance(value, kind):
        raise ManifestError(field, value, f"it must be a {kind.__name__}")


def _check_name(field: str, value: object) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ManifestError(field, value, _NAME_RULE)


def _check_file(field: str, value: object) -> None:
    if not isinstance(value, str) or not _FILE.fullmatch(value):
        raise ManifestError(field, value, _FILE_RULE)


def _check_sha256(field: str, value: object) -> None:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ManifestError(field, value, "a sha256 is 64 lowercase hex digits")


def _check_int(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManifestError(field, value, "it must be a whole number of bytes, 0 or more")


def _check_float(field: str, value: object) -> None:
    # numbers.Real takes numpy scalars too (the hub builds samples from arrays); bool is refused.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ManifestError(field, value, "it must be a finite number")


def _format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ManifestError("created_at", value, "it must be an ISO 8601 string with a time zone")
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ManifestError("created_at", value, "it is not an ISO 8601 date and time") from None
    if t.utcoffset() is None:
        raise ManifestError("created_at", value, "it has no time zone (write it like 2025-01-02T03:04:05Z)")
    return t.astimezone(timezone.utc)
