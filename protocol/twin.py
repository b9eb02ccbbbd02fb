"""The device twin on the wire: what a device reports, and what the hub wants it to run.

One exchange, started by the device (so it works the same behind NAT, over either uplink, and
after any outage): the device POSTs its `Reported` state to the hub's
`/v1/twin/<tenant>/<device>` and gets the `Desired` state back. A device that was offline
reconciles on its first exchange after it returns; nothing is pushed to a device that is away.

    Reported  tags, config version, the active and previous model, the last refused install,
              inference figures for the active model (since it was loaded), shadow agreement.
    Desired   the model to run (name, version, feature params, one signed manifest per variant),
              a shadow challenger or none, the config version, and when to ask again.

What is trusted: nothing in `Desired` is trusted by itself. A device installs a model only when a
variant's manifest verifies against its own trusted keys (protocol.signing) and the artifacts
match it; `feature_params` is accepted only when `FeatureSpec.from_params(...).version` equals the
signed manifest's `feature_spec`, so the params are covered by the signature through their hash.

JSON, strict like the manifest: unknown fields, duplicate keys and NaN are refused, and every
error names the field and the value (ManifestError with document "twin").
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ManifestError
from .manifest import Manifest, load_json

if TYPE_CHECKING:  # signing needs `cryptography`; a device that only reports figures never loads it
    from .signing import Signature

TWIN_VERSION = 1
MAX_TWIN_BYTES = 4 << 20
_DOC = "twin"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _err(field_: str | None, value: object, why: str) -> ManifestError:
    return ManifestError(field_, value, why, document=_DOC)


def _obj(where: str, value: object, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _err(where or None, value, "it must be a JSON object")
    for k in value:
        if k not in required and k not in optional:
            raise _err(f"{where}.{k}".lstrip("."), value[k], "unknown field")
    for k in required:
        if k not in value:
            raise _err(f"{where}.{k}".lstrip("."), None, "required field is missing")
    return value


def _str(where: str, value: object, pattern: re.Pattern[str] | None = _VERSION, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        rule = "a string" if pattern is None else f"a string matching {pattern.pattern}"
        raise _err(where, value, f"it must be {rule}")
    return value


def _count(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _err(where, value, "it must be a whole number, 0 or more")
    return value


def _ms(where: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1e12:
        raise _err(where, value, "it must be a number of milliseconds, 0 or more, or null")
    return float(value)


def _tags(where: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _err(where, value, "it must be an object of tag name to value")
    for k, v in value.items():
        _str(f"{where}.{k}", k, _TAG)
        _str(f"{where}.{k}", v, None)
        if not 0 < len(v) <= 128:
            raise _err(f"{where}.{k}", v, "a tag value is 1-128 characters")
    return dict(value)


@dataclass(frozen=True)
class ModelRef:
    """A model a device holds: registry name and version, the variant (artifact) it runs, its manifest digest."""

    name: str
    version: str
    variant: str
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "variant": self.variant, "digest": self.digest}

    @classmethod
    def from_dict(cls, where: str, obj: object) -> "ModelRef":
        d = _obj(where, obj, ("name", "version", "variant", "digest"))
        return cls(_str(f"{where}.name", d["name"]), _str(f"{where}.version", d["version"]),
                   _str(f"{where}.variant", d["variant"], None), _str(f"{where}.digest", d["digest"], re.compile(r"[0-9a-f]{64}")))

    @classmethod
    def of(cls, manifest: Manifest) -> "ModelRef":
        return cls(manifest.name, manifest.version, manifest.runtime.model, manifest.digest)


@dataclass(frozen=True)
class FailureReport:
    """Why the device last refused or left a model: `reason` is the agent's slug (tampered,
    untrusted_key, truncated, self_test_failed, download_failed, health_gate, ...)."""

    reason: str
    message: str
    name: str
    version: str
    at: str  # ISO 8601, the device's clock

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, "name": self.name, "version": self.version, "at": self.at}

    @classmethod
    def from_dict(cls, where: str, obj: object) -> "FailureReport":
        d = _obj(where, obj, ("reason", "message", "name", "version", "at"))
        return cls(_str(f"{where}.reason", d["reason"]), _str(f"{where}.message", d["message"], None),
                   _str(f"{where}.name", d["name"]), _str(f"{where}.version", d["version"]),
                   _str(f"{where}.at", d["at"], None))


@dataclass(frozen=True)
class InferenceReport:
    """Figures for the active model since it was loaded (they restart with every model)."""

    version: str  # the model version these figures are for
    calls: int  # predict calls
    windows: int  # feature windows predicted
    errors: int  # windows whose predict failed
    p50_ms: float | None  # per predict call, over the last calls (agent.inference.LatencyRing)
    p95_ms: float | None
    classes: dict[str, int] = field(default_factory=dict)  # predicted class -> windows

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "calls": self.calls, "windows": self.windows, "errors": self.errors,
                "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "classes": dict(self.classes)}

    @classmethod
    def from_dict(cls, where: str, obj: object) -> "InferenceReport":
        d = _obj(where, obj, ("version", "calls", "windows", "errors", "p50_ms", "p95_ms", "classes"))
        classes = d["classes"]
        if not isinstance(classes, dict):
            raise _err(f"{where}.classes", classes, "it must be an object of class name to count")
        return cls(_str(f"{where}.version", d["version"]), _count(f"{where}.calls", d["calls"]),
                   _count(f"{where}.windows", d["windows"]), _count(f"{where}.errors", d["errors"]),
                   _ms(f"{where}.p50_ms", d["p50_ms"]), _ms(f"{where}.p95_ms", d["p95_ms"]),
                   {_str(f"{where}.classes", k, None): _count(f"{where}.classes.{k}", v) for k, v in classes.items()})


@dataclass(frozen=True)
class ShadowReport:
    """A challenger run beside the champion on the same windows; never acted on by the device."""

    version: str
    windows: int  # windows both models predicted
    agreed: int  # of those, where both chose the same class
    errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "windows": self.windows, "agreed": self.agreed, "errors": self.errors}

    @classmethod
    def from_dict(cls, where: str, obj: object) -> "ShadowReport":
        d = _obj(where, obj, ("version", "windows", "agreed", "errors"))
        r = cls(_str(f"{where}.version", d["version"]), _count(f"{where}.windows", d["windows"]),
                _count(f"{where}.agreed", d["agreed"]), _count(f"{where}.errors", d["errors"]))
        if r.agreed > r.windows:
            raise _err(f"{where}.agreed", r.agreed, f"it is more than the {r.windows} windows")
        return r


@dataclass(frozen=True)
class Reported:
    tags: dict[str, str] = field(default_factory=dict)
    config_version: str | None = None
    active: ModelRef | None = None
    previous: ModelRef | None = None
    failure: FailureReport | None = None
    inference: InferenceReport | None = None
    shadow: ShadowReport | None = None

    def to_dict(self) -> dict[str, Any]:
        def opt(x: Any) -> Any:
            return None if x is None else x.to_dict()

        return {"twin_version": TWIN_VERSION, "tags": dict(self.tags), "config_version": self.config_version,
                "active": opt(self.active), "previous": opt(self.previous), "failure": opt(self.failure),
                "inference": opt(self.inference), "shadow": opt(self.shadow)}

    @classmethod
    def from_json(cls, data: bytes | str) -> "Reported":
        return cls.from_dict(load_json(_DOC, data, max_bytes=MAX_TWIN_BYTES))

    @classmethod
    def from_dict(cls, obj: object) -> "Reported":
        d = _obj("", obj, ("twin_version", "tags"),
                 ("config_version", "active", "previous", "failure", "inference", "shadow"))
        _version(d["twin_version"])

        def opt(key: str, parse: Any) -> Any:
            return None if d.get(key) is None else parse(key, d[key])

        return cls(
            tags=_tags("tags", d["tags"]),
            config_version=_str("config_version", d.get("config_version"), optional=True),
            active=opt("active", ModelRef.from_dict), previous=opt("previous", ModelRef.from_dict),
            failure=opt("failure", FailureReport.from_dict), inference=opt("inference", InferenceReport.from_dict),
            shadow=opt("shadow", ShadowReport.from_dict),
        )


@dataclass(frozen=True)
class Variant:
    """One runnable form of a model version (one artifact) with its signature."""

    manifest: Manifest
    signature: Signature

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": self.manifest.to_dict(), "signature": _sig_dict(self.signature)}


def _sig_dict(sig: Signature) -> dict[str, Any]:
    return {"alg": "ed25519", "key_id": sig.key_id, "sig": sig.sig.hex()}


@dataclass(frozen=True)
class DesiredModel:
    name: str
    version: str
    feature_params: dict[str, Any]  # protocol.features.FeatureSpec params; hash = manifest.feature_spec
    variants: tuple[Variant, ...]  # the device runs the first its runtimes and preferences allow
    artifacts_url: str  # path on the hub's API: GET <artifacts_url>/<artifact name>, Range supported

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "feature_params": self.feature_params,
                "variants": [v.to_dict() for v in self.variants], "artifacts_url": self.artifacts_url}

    @classmethod
    def from_dict(cls, where: str, obj: object) -> "DesiredModel":
        import json

        from .manifest import canonical_json
        from .signing import Signature

        d = _obj(where, obj, ("name", "version", "feature_params", "variants", "artifacts_url"))
        if not isinstance(d["feature_params"], dict):
            raise _err(f"{where}.feature_params", d["feature_params"], "it must be an object")
        if not isinstance(d["variants"], list) or not d["variants"]:
            raise _err(f"{where}.variants", d["variants"], "it must be a non-empty array")
        variants = []
        for i, v in enumerate(d["variants"]):
            vd = _obj(f"{where}.variants[{i}]", v, ("manifest", "signature"))
            try:
                m = Manifest.from_dict(vd["manifest"])
                s = Signature.from_json(canonical_json(vd["signature"]))
            except ManifestError as exc:
                raise _err(f"{where}.variants[{i}]", json.dumps(v)[:80], str(exc)) from exc
            if (m.name, m.version) != (d["name"], d["version"]):
                raise _err(f"{where}.variants[{i}].manifest", f"{m.name} {m.version}",
                           f"it is not {d['name']} {d['version']}")
            variants.append(Variant(m, s))
        url = _str(f"{where}.artifacts_url", d["artifacts_url"], re.compile(r"/[A-Za-z0-9._+/-]{0,255}"))
        return cls(_str(f"{where}.name", d["name"]), _str(f"{where}.version", d["version"]),
                   d["feature_params"], tuple(variants), url)


@dataclass(frozen=True)
class Desired:
    model: DesiredModel | None = None  # None: the hub has no model for this device; keep what runs
    shadow: DesiredModel | None = None  # None: run no challenger
    config_version: str | None = None
    poll_interval_s: float = 30.0
    rollout: str | None = None  # the rollout that chose `model`, for logs and reports

    def to_dict(self) -> dict[str, Any]:
        return {"twin_version": TWIN_VERSION,
                "model": None if self.model is None else self.model.to_dict(),
                "shadow": None if self.shadow is None else self.shadow.to_dict(),
                "config_version": self.config_version, "poll_interval_s": self.poll_interval_s,
                "rollout": self.rollout}

    @classmethod
    def from_json(cls, data: bytes | str) -> "Desired":
        return cls.from_dict(load_json(_DOC, data, max_bytes=MAX_TWIN_BYTES))

    @classmethod
    def from_dict(cls, obj: object) -> "Desired":
        d = _obj("", obj, ("twin_version",), ("model", "shadow", "config_version", "poll_interval_s", "rollout"))
        _version(d["twin_version"])
        poll = d.get("poll_interval_s", 30.0)
        if isinstance(poll, bool) or not isinstance(poll, numbers.Real) or not 0.01 <= poll <= 86400:
            raise _err("poll_interval_s", poll, "it must be a number of seconds from 0.01 to 86400")
        return cls(
            model=None if d.get("model") is None else DesiredModel.from_dict("model", d["model"]),
            shadow=None if d.get("shadow") is None else DesiredModel.from_dict("shadow", d["shadow"]),
            config_version=_str("config_version", d.get("config_version"), optional=True),
            poll_interval_s=float(poll),
            rollout=_str("rollout", d.get("rollout"), None, optional=True),
        )


def _version(v: object) -> None:
    if v != TWIN_VERSION or isinstance(v, bool):
        raise _err("twin_version", v, f"this build speaks twin version {TWIN_VERSION}")
