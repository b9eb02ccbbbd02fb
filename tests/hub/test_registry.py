"""The model registry on a temp dir: register (sha256 checked), sign, rotate keys, aliases per cohort, desired state."""

from __future__ import annotations

import json
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hub.registry import (
    ArtifactRejectedError,
    ArtifactTooLargeError,
    InvalidModelError,
    KeyRing,
    ModelConflictError,
    NotSignedError,
    Registry,
    RegistryError,
    UnknownModelError,
    Upload,
    cohort_key,
    cohort_matches,
    parse_cohort,
)
from protocol import Manifest, UnknownKeyError, signing
from protocol.features import FeatureSpec
from protocol.manifest import canonical_json
from protocol.twin import Desired, DesiredModel

RECIPE_DIR = Path(__file__).resolve().parents[2] / "models" / "condition" / "v1"
RECIPE = json.loads((RECIPE_DIR / "manifest.json").read_text())
T0 = 1_750_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(tmp_path: Path, clock: Clock):
    r = Registry(tmp_path / "hub", clock=clock)
    yield r
    r.close()


def trusted(registry: Registry, *key_ids: str) -> dict:
    pems = {k["key_id"]: k["pem"] for k in registry.keys.public_keys()}
    return signing.trusted_keys(signing.public_key_from_pem(pems[k].encode()) for k in key_ids)


def verify_all(registry: Registry, version: dict, trust: dict) -> None:
    for v in version["variants"]:
        m = Manifest.from_dict(v["manifest"])
        signing.verify(m, signing.Signature.from_json(json.dumps(v["signature"])), trust)


# --- registering ----------------------------------------------------------------------------
def test_register_copies_the_recipe_under_the_registry_version(registry, clock):
    v = registry.register(RECIPE_DIR, version="1.0.0")
    assert (v["name"], v["version"], v["recipe_version"]) == ("condition", "1.0.0", "v1")
    assert [x["artifact"] for x in v["variants"]] == [
        "model.int8.onnx", "model.fp32.onnx", "model.int8.tflite", "model.fp32.tflite"]
    for x in v["variants"]:
        path = registry.artifact_path("condition", "1.0.0", x["artifact"])
        assert path == registry.root / "condition" / "1.0.0" / x["artifact"]
        assert path.read_bytes() == (RECIPE_DIR / x["artifact"]).read_bytes()
        entry = RECIPE["artifacts"][x["artifact"]]
        assert (x["format"], x["quantization"], x["bytes"], x["sha256"]) == (
            entry["format"], entry["precision"], entry["bytes"], entry["sha256"])
        assert (x["signed"], x["manifest"], x["signature"]) == (False, None, None)
    meta = v["metadata"]
    assert meta["training_data"] == RECIPE["recipe"]["train"]
    assert meta["metrics"] == RECIPE["metrics"]
    assert meta["recipe_command"] == RECIPE["recipe"]["command"]
    assert meta["code_version"]
    assert v["registered_at"] == datetime.fromtimestamp(T0, tz=timezone.utc).isoformat(timespec="microseconds")
    assert v["signed_at"] is None and v["key_id"] is None
    assert v["feature_spec"] == RECIPE["feature_spec"]["version"]
    assert registry.list() == [{"name": "condition", "version": "1.0.0", "registered_at": v["registered_at"],
                                "signed_at": None, "variants": sorted(RECIPE["artifacts"]), "key_ids": [], "aliases": []}]


def test_variants_and_training_data_can_be_chosen(registry):
    v = registry.register(RECIPE_DIR, variants=["model.int8.onnx"], metadata={"training_data": "lake://sim/2025-06"})
    assert v["version"] == "v1"  # the recipe's, when none is given
    assert [x["artifact"] for x in v["variants"]] == ["model.int8.onnx"]
    assert v["metadata"]["training_data"] == "lake://sim/2025-06"
    assert sorted(p.name for p in (registry.root / "condition" / "v1").iterdir()) == ["model.int8.onnx"]
    with pytest.raises(UnknownModelError, match="has no artifact 'model.fp32.onnx'"):
        registry.artifact_path("condition", "v1", "model.fp32.onnx")


@pytest.mark.parametrize("damage, what", [
    (lambda b: bytes([b[0] ^ 1]) + b[1:], "sha256"),
    (lambda b: b[:-10], "size"),
    (lambda b: b + b"x", "size"),
])
def test_a_corrupted_copy_is_refused_and_leaves_nothing(registry, tmp_path, damage, what):
    copy = tmp_path / "recipe"
    shutil.copytree(RECIPE_DIR, copy)
    target = copy / "model.fp32.tflite"
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(ArtifactRejectedError, match=rf"'model.fp32.tflite' has {what}") as exc:
        registry.register(copy, version="1.0.0")
    assert exc.value.status == 422
    with pytest.raises(UnknownModelError):
        registry.get("condition", "1.0.0")
    assert list((registry.root / "condition").iterdir()) == []  # no version folder, no temp folder
    registry.register(RECIPE_DIR, version="1.0.0")  # the good copy still goes in


def test_registering_a_version_twice_is_a_conflict(registry):
    registry.register(RECIPE_DIR, version="1.0.0")
    with pytest.raises(ModelConflictError, match="condition 1.0.0 is registered already") as exc:
        registry.register(RECIPE_DIR, version="1.0.0")
    assert exc.value.status == 409


@pytest.mark.parametrize("kwargs, match", [
    ({"version": "../etc"}, "Model version '../etc'"),
    ({"version": "aliases"}, "'aliases' is reserved"),
    ({"variants": ["model.bin"]}, "Variant 'model.bin' is not an artifact"),
    ({"variants": ["../manifest.json"]}, "Artifact name '../manifest.json'"),
])
def test_bad_names_are_refused(registry, kwargs, match):
    with pytest.raises(InvalidModelError, match=match):
        registry.register(RECIPE_DIR, **kwargs)


def test_unknown_versions_are_named(registry):
    with pytest.raises(UnknownModelError, match="no model 'condition' is registered") as exc:
        registry.get("condition", "9.9.9")
    assert exc.value.status == 404
    registry.register(RECIPE_DIR, version="1.0.0")
    with pytest.raises(UnknownModelError, match=r"has no version '9.9.9'; it has \['1.0.0'\]"):
        registry.sign("condition", "9.9.9")


# --- signing and keys -----------------------------------------------------------------------
def test_signed_manifests_verify_against_the_active_public_key(registry, clock):
    registry.register(RECIPE_DIR, version="1.0.0")
    clock.t += 60
    v = registry.sign("condition", "1.0.0")
    kid = registry.keys.active_id()
    assert v["key_id"] == kid and v["signed_at"] == datetime.fromtimestamp(clock.t, tz=timezone.utc).isoformat(
        timespec="microseconds")
    verify_all(registry, v, trusted(registry, kid))
    for x in v["variants"]:
        m = Manifest.from_dict(x["manifest"])
        assert (m.name, m.version, m.runtime.model) == ("condition", "1.0.0", x["artifact"])
        assert m.created_at == datetime.fromtimestamp(clock.t, tz=timezone.utc)
        assert m.artifact(x["artifact"]).sha256 == RECIPE["artifacts"][x["artifact"]]["sha256"]
        assert x["digest"] == m.digest and x["signed"] and x["key_id"] == kid


def test_rotation_keeps_old_public_keys_and_re_signing_uses_the_new_key(registry, clock):
    registry.register(RECIPE_DIR, version="1.0.0")
    old = registry.sign("condition", "1.0.0")
    old_id = registry.keys.active_id()
    clock.t += 3600
    new_id = registry.keys.rotate()
    assert new_id != old_id and registry.keys.active_id() == new_id
    keys = registry.keys.public_keys()
    assert [(k["key_id"], k["active"]) for k in keys] == [(old_id, False), (new_id, True)]
    verify_all(registry, old, trusted(registry, old_id))  # devices trusting the old key still verify
    new = registry.sign("condition", "1.0.0")
    assert new["key_id"] == new_id and {x["key_id"] for x in new["variants"]} == {new_id}
    verify_all(registry, new, trusted(registry, old_id, new_id))
    with pytest.raises(UnknownKeyError):
        verify_all(registry, new, trusted(registry, old_id))


def test_keys_are_private_files_and_survive_a_restart(tmp_path, clock):
    ring = KeyRing(tmp_path / "keys", clock=clock)
    kid = ring.active_id()
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "keys" / f"{kid}.pem").stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "active").read_text().strip() == kid
    assert KeyRing(tmp_path / "keys").active_id() == kid
    assert ring.public_keys()[0]["created_at"] == datetime.fromtimestamp(T0, tz=timezone.utc).isoformat(timespec="seconds")
    pem = ring.export_public(tmp_path / "trusted.pem").read_bytes()
    assert signing.key_id(signing.public_key_from_pem(pem)) == kid
    assert b"PRIVATE" not in json.dumps(ring.public_keys()).encode()
    with pytest.raises(UnknownModelError, match="'0000000000000000'"):
        ring.public_key("0000000000000000")


# --- aliases and cohorts --------------------------------------------------------------------
def test_cohort_strings_are_normalized_and_validated():
    assert parse_cohort("*") == {}
    assert parse_cohort("site=north, hardware=rpi4") == {"hardware": "rpi4", "site": "north"}
    assert cohort_key({"site": "north", "hardware": "rpi4"}) == "hardware=rpi4,site=north"
    assert cohort_key({}) == "*"
    assert cohort_matches("*", {}) and cohort_matches("site=north", {"site": "north", "hardware": "x"})
    assert not cohort_matches("site=north,hardware=rpi4", {"site": "north"})
    for bad, match in [("site", "not k=v"), ("site=a,site=b", "twice"), ("bad name=x", "tag name 'bad name'"),
                       ("site=", "value ''"), ("", "not k=v")]:
        with pytest.raises(InvalidModelError, match=match):
            parse_cohort(bad)


def test_promote_per_cohort_and_the_most_specific_alias_wins(registry, clock):
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        registry.register(RECIPE_DIR, version=version)
        registry.sign("condition", version)
    registry.promote("condition", "1.0.0")
    clock.t += 1
    registry.promote("condition", "2.0.0", cohort="site=north")
    clock.t += 1
    registry.promote("condition", "3.0.0", cohort="site=north , hardware=rpi4")
    assert registry.alias("condition", "champion") == "1.0.0"
    assert registry.alias("condition", "champion", "hardware=rpi4,site=north") == "3.0.0"
    assert registry.alias("condition", "champion", "hardware=rpi4") is None  # exact cohort only
    assert registry.alias_for("condition", "champion", {"site": "north", "hardware": "rpi4"}) == "3.0.0"
    assert registry.alias_for("condition", "champion", {"site": "north", "hardware": "jetson"}) == "2.0.0"
    assert registry.alias_for("condition", "champion", {"site": "south"}) == "1.0.0"
    assert registry.alias_for("condition", "challenger", {"site": "south"}) is None
    assert [(a["cohort"], a["version"]) for a in registry.aliases("condition")] == [
        ("*", "1.0.0"), ("hardware=rpi4,site=north", "3.0.0"), ("site=north", "2.0.0")]
    clock.t += 1
    registry.promote("condition", "2.0.0")
    assert [(h["cohort"], h["version"], h["previous"]) for h in registry.alias_history("condition")] == [
        ("*", "1.0.0", None), ("site=north", "2.0.0", None), ("hardware=rpi4,site=north", "3.0.0", None),
        ("*", "2.0.0", "1.0.0")]
    assert registry.get("condition", "2.0.0")["aliases"] == [
        {"alias": "champion", "cohort": "*", "at": registry.aliases("condition")[0]["at"]},
        {"alias": "champion", "cohort": "site=north", "at": registry.aliases("condition")[2]["at"]}]


def test_equally_specific_cohorts_go_to_the_latest_promote(registry, clock):
    for version in ("1.0.0", "2.0.0"):
        registry.register(RECIPE_DIR, version=version)
        registry.sign("condition", version)
    registry.promote("condition", "2.0.0", cohort="site=north")
    clock.t += 1
    registry.promote("condition", "1.0.0", cohort="hardware=rpi4")
    assert registry.alias_for("condition", "champion", {"site": "north", "hardware": "rpi4"}) == "1.0.0"


def test_unsigned_versions_cannot_be_promoted_or_sent(registry):
    registry.register(RECIPE_DIR, version="1.0.0")
    with pytest.raises(NotSignedError, match="condition 1.0.0 is not signed"):
        registry.promote("condition", "1.0.0")
    with pytest.raises(RegistryError, match="condition 1.0.0 is not signed"):
        registry.desired_model("condition", "1.0.0")
    with pytest.raises(InvalidModelError, match="Alias 'a b'"):
        registry.promote("condition", "1.0.0", alias="a b")


# --- desired state --------------------------------------------------------------------------
def test_desired_model_carries_signed_variants_and_feature_params(registry, clock):
    registry.register(RECIPE_DIR, version="1.0.0")
    registry.sign("condition", "1.0.0")
    dm = registry.desired_model("condition", "1.0.0")
    assert isinstance(dm, DesiredModel)
    assert dm.artifacts_url == "/v1/models/condition/1.0.0/artifacts"
    assert [v.manifest.runtime.model for v in dm.variants] == [
        "model.int8.onnx", "model.fp32.onnx", "model.int8.tflite", "model.fp32.tflite"]
    spec_version = FeatureSpec.from_params(dm.feature_params).version
    assert all(v.manifest.feature_spec == spec_version for v in dm.variants)
    trust = trusted(registry, registry.keys.active_id())
    for v in dm.variants:
        signing.verify(v.manifest, v.signature, trust)
    wire = canonical_json(Desired(model=dm, poll_interval_s=15.0).to_dict())
    assert Desired.from_json(wire).model == dm
    assert registry.desired_model("condition", "1.0.0") is dm  # cached while the signatures stand
    clock.t += 1
    registry.keys.rotate()
    registry.sign("condition", "1.0.0")
    again = registry.desired_model("condition", "1.0.0")
    assert again is not dm and {v.signature.key_id for v in again.variants} == {registry.keys.active_id()}


def test_the_registry_survives_a_restart(tmp_path, clock):
    first = Registry(tmp_path / "hub", clock=clock)
    first.register(RECIPE_DIR, version="1.0.0")
    signed = first.sign("condition", "1.0.0")
    first.promote("condition", "1.0.0")
    first.close()
    second = Registry(tmp_path / "hub", clock=clock)
    try:
        assert second.get("condition", "1.0.0") == {**signed, "aliases": second.get("condition", "1.0.0")["aliases"]}
        assert second.alias("condition", "champion") == "1.0.0"
        assert second.keys.active_id() == signed["key_id"]
    finally:
        second.close()


def test_uploads_are_staged_apart_and_capped(registry, tmp_path):
    up = registry.open_upload("condition", "1.0.0", "model.int8.onnx")
    data = (RECIPE_DIR / "model.int8.onnx").read_bytes()
    up.write(data)
    assert up.commit()["sha256"] == RECIPE["artifacts"]["model.int8.onnx"]["sha256"]
    assert registry.staged_files("condition", "1.0.0") == {"model.int8.onnx": registry.staging / "condition" / "1.0.0" /
                                                          "model.int8.onnx"}
    small = Upload(tmp_path / "big.bin", limit=10)
    small.write(b"12345")
    with pytest.raises(ArtifactTooLargeError, match="'big.bin' is over the limit of 10 bytes") as exc:
        small.write(b"123456")
    assert exc.value.status == 413 and list(tmp_path.glob("*big.bin*")) == []
    with pytest.raises(InvalidModelError, match="Artifact name '.hidden'"):
        registry.open_upload("condition", "1.0.0", ".hidden")
