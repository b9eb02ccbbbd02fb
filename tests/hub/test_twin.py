"""The hub's twin store: recording what devices report and resolving what they should run.

FakeRegistry, FakeClock and report() are shared with the rollout, API and CLI tests.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest

from hub.registry import NotSignedError, UnknownModelError, cohort_matches, normalize_cohort, specificity
from hub.rollouts import Assignment
from hub.twin import RuleError, TwinStore, UnknownTwinError
from protocol import Artifact, Manifest, ModelFormat, Quantization, RuntimeHints, SelfTest, SelfTestSample
from protocol.errors import InvalidIdError
from protocol.signing import private_key_from_raw, sign
from protocol.twin import (
    DesiredModel,
    FailureReport,
    InferenceReport,
    ModelRef,
    Reported,
    ShadowReport,
    Variant,
)

KEY = private_key_from_raw(bytes(range(32)))


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeRegistry:
    """hub.registry.Registry's methods the twin store and rollouts use, with signed fake manifests."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, str], bool] = {}  # -> signed
        self.alias_rows: dict[tuple[str, str, str], tuple[str, int]] = {}  # (name, alias, cohort) -> (version, seq)
        self.promotes: list[tuple[str, str, str, str]] = []
        self._seq = 0
        self._cache: dict[tuple[str, str], DesiredModel] = {}

    def add(self, name: str, version: str, *, signed: bool = True) -> "FakeRegistry":
        self.versions[(name, version)] = signed
        return self

    def get(self, name: str, version: str) -> dict:
        if (name, version) not in self.versions:
            raise UnknownModelError(f"{name} {version} is not in the registry.")
        return {"name": name, "version": version, "signed": self.versions[(name, version)]}

    def list(self, name: str | None = None) -> list[dict]:
        return [self.get(n, v) for n, v in sorted(self.versions) if name in (None, n)]

    def desired_model(self, name: str, version: str) -> DesiredModel:
        if not self.get(name, version)["signed"]:
            raise NotSignedError(f"{name} {version} is not signed; sign it before devices are sent it.")
        if (name, version) not in self._cache:
            m = Manifest(
                name=name, version=version, created_at=datetime(2025, 1, 2, tzinfo=timezone.utc),
                artifacts=(Artifact.of("model.onnx", f"{name}{version}".encode() * 10),),
                runtime=RuntimeHints(ModelFormat.ONNX, Quantization.INT8, "model.onnx"), feature_spec="1",
                classes=("normal", "wear"),
                self_test=SelfTest((SelfTestSample((0.1, 0.2), (0.9, 0.1)),), tolerance=0.01))
            self._cache[(name, version)] = DesiredModel(name, version, {}, (Variant(m, sign(m, KEY)),),
                                                        f"/v1/models/{name}/{version}/artifacts")
        return self._cache[(name, version)]

    def promote(self, name: str, version: str, alias: str = "champion", cohort: str = "*") -> None:
        self.desired_model(name, version)
        self._seq += 1
        self.alias_rows[(name, alias, normalize_cohort(cohort))] = (version, self._seq)
        self.promotes.append((name, version, alias, normalize_cohort(cohort)))

    def alias_for(self, name: str, alias: str, tags: dict) -> str | None:
        rows = [(specificity(c), seq, v) for (n, a, c), (v, seq) in self.alias_rows.items()
                if (n, a) == (name, alias) and cohort_matches(c, tags)]
        return max(rows)[2] if rows else None


def report(model: str | None = "condition", version: str | None = "1.0.0", *, tags: dict | None = None,
           windows: int = 100, errors: int = 0, p95: float | None = 10.0, classes: dict | None = None,
           failure: tuple[str, str] | None = None, shadow: tuple[str, int, int] | None = None) -> Reported:
    """A device's report: running model/version with these inference figures (None model: runs nothing)."""
    active = None if model is None else ModelRef(model, version, "model.onnx", "0" * 64)
    inference = None if model is None else InferenceReport(
        version, calls=windows, windows=windows, errors=errors, p50_ms=None if p95 is None else p95 / 2, p95_ms=p95,
        classes=classes if classes is not None else {"normal": windows})
    return Reported(
        tags=tags or {}, active=active, inference=inference,
        failure=None if failure is None else FailureReport("self_test_failed", "outputs differ", failure[0],
                                                           failure[1], "2025-01-01T00:00:00Z"),
        shadow=None if shadow is None else ShadowReport(*shadow))


class StubRollouts:
    def __init__(self) -> None:
        self.assignments: dict[tuple[str, str], Assignment] = {}

    def assignment(self, tenant: str, device: str, tags: dict) -> Assignment | None:
        return self.assignments.get((tenant, device))


@pytest.fixture
def registry() -> FakeRegistry:
    reg = FakeRegistry()
    for v in ("1.0.0", "1.1.0", "1.2.0", "2.0.0"):
        reg.add("condition", v)
    reg.add("condition", "9.9.9", signed=False)
    reg.add("other", "0.1.0")
    reg.promote("condition", "1.0.0")
    return reg


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def twins(tmp_path, registry, clock):
    store = TwinStore(tmp_path, registry, StubRollouts(), clock=clock, poll_interval_s=45.0)
    yield store
    store.close()


def version_of(twins: TwinStore, device: str, **kw) -> str | None:
    d = twins.exchange("acme", device, report(**kw))
    return None if d.model is None else d.model.version


def test_exchange_records_reported_and_returns_the_champion(twins, clock):
    d = twins.exchange("acme", "d1", report(tags={"site": "north"}))
    assert (d.model.name, d.model.version, d.shadow, d.rollout, d.poll_interval_s) == ("condition", "1.0.0", None, None, 45.0)
    clock.advance(10)
    twins.exchange("acme", "d1", report(tags={"site": "north"}, windows=7))
    t = twins.get("acme", "d1")
    assert t["tags"] == {"site": "north"} and t["reported"]["inference"]["windows"] == 7
    assert t["last_seen_us"] - t["first_seen_us"] == 10_000_000 and t["exchanges"] == 2
    assert t["desired"] | {"error": None} == {"model": "condition", "version": "1.0.0", "shadow": None, "rollout": None,
                                              "source": "champion", "config_version": None, "error": None}
    assert [x["device"] for x in twins.list()] == ["d1"]
    assert twins.reports([("acme", "d1"), ("acme", "nope")]) == {("acme", "d1"): report(tags={"site": "north"}, windows=7)}


def test_resolution_order_device_rule_rollout_cohort_fleet_champion(twins, registry):
    twins.rollouts.assignments[("acme", "d1")] = Assignment("1.1.0", "condition-1.1.0-1", "condition", 5.0)
    twins.set_rule("fleet", model=("condition", "1.2.0"))
    twins.set_rule("cohort", cohort="site=north", model=("condition", "2.0.0"))
    twins.set_rule("cohort", cohort="hw=rpi4,site=north", model=("condition", "1.0.0"))
    twins.set_rule("device", tenant="acme", device="d1", model=("condition", "2.0.0"), config_version="c7")
    north_rpi = {"site": "north", "hw": "rpi4"}
    assert version_of(twins, "d1", tags=north_rpi) == "2.0.0"  # device rule beats the rollout
    twins.set_rule("device", tenant="acme", device="d1")  # removes it
    d = twins.exchange("acme", "d1", report(tags=north_rpi))
    assert (d.model.version, d.rollout, d.poll_interval_s) == ("1.1.0", "condition-1.1.0-1", 5.0)
    assert version_of(twins, "d2", tags=north_rpi) == "1.0.0"  # the cohort pinning two tags wins
    assert version_of(twins, "d2", tags={"site": "north"}) == "2.0.0"
    assert version_of(twins, "d2", tags={"site": "south"}) == "1.2.0"  # fleet rule
    twins.set_rule("fleet")
    assert version_of(twins, "d2", tags={"site": "south"}) == "1.0.0"  # champion alias
    assert twins.get("acme", "d2")["desired"]["source"] == "champion"


def test_a_tenant_fleet_rule_beats_the_global_one_and_config_resolves_on_its_own(twins):
    twins.set_rule("fleet", model=("condition", "1.1.0"), config_version="c1")
    twins.set_rule("fleet", tenant="acme", model=("condition", "1.2.0"))
    twins.set_rule("cohort", cohort="site=north", config_version="c2")
    d = twins.exchange("acme", "d1", report(tags={"site": "north"}))
    assert (d.model.version, d.config_version) == ("1.2.0", "c2")
    d = twins.exchange("other", "d1", report(tags={"site": "south"}))
    assert (d.model.version, d.config_version) == ("1.1.0", "c1")
    assert [r["scope"] for r in twins.rules()] == ["fleet", "fleet", "cohort"]


def test_shadow_is_the_challenger_when_it_differs(twins, registry):
    registry.promote("condition", "1.1.0", alias="challenger")
    d = twins.exchange("acme", "d1", report())
    assert (d.model.version, d.shadow.version) == ("1.0.0", "1.1.0")
    twins.set_rule("device", tenant="acme", device="d1", model=("condition", "1.1.0"))
    assert twins.exchange("acme", "d1", report()).shadow is None


def test_cohort_champion_alias_is_more_specific_than_the_fleet(twins, registry):
    registry.promote("condition", "1.2.0", cohort="site=north")
    assert version_of(twins, "d1", tags={"site": "north"}) == "1.2.0"
    assert version_of(twins, "d2", tags={"site": "south"}) == "1.0.0"


def test_model_name_for_a_device_that_runs_nothing(twins, registry):
    assert version_of(twins, "d1", model=None) == "1.0.0"  # the only model with a champion
    registry.promote("other", "0.1.0")
    assert twins.exchange("acme", "d1", report(model=None)).model is None  # two: no guess
    d = twins.exchange("acme", "d2", report(model="other", version="0.1.0"))
    assert (d.model.name, d.model.version) == ("other", "0.1.0")  # the model it reports


def test_a_version_the_registry_cannot_send_is_skipped_and_recorded(twins, registry):
    twins.set_rule("fleet", model=("condition", "1.1.0"))
    registry.versions[("condition", "1.1.0")] = False  # unsigned after the rule was set
    assert version_of(twins, "d1") == "1.0.0"
    t = twins.get("acme", "d1")
    assert "fleet rule * wants condition 1.1.0" in t["desired"]["error"] and "not signed" in t["desired"]["error"]
    assert twins.stats["registry_errors"] == 1


def test_rules_are_checked_and_errors_name_the_value(twins):
    cases = [
        (dict(scope="planet"), "'planet'"),
        (dict(scope="device", tenant="acme", device="bad id"), "'bad id'"),
        (dict(scope="cohort", cohort="site"), "'site'"),
        (dict(scope="cohort", cohort="*"), "'*'"),
        (dict(scope="fleet", cohort="site=north"), "'site=north'"),
        (dict(scope="fleet", device="d1"), "'d1'"),
        (dict(scope="fleet", model=("condition", "9.9.9")), "9.9.9"),
        (dict(scope="fleet", model=("condition", "7.7.7")), "7.7.7"),
        (dict(scope="fleet", config_version="no spaces"), "'no spaces'"),
    ]
    for kw, named in cases:
        with pytest.raises(RuleError) as info:
            twins.set_rule(kw.pop("scope"), **kw)
        assert named in str(info.value)
    assert twins.rules() == []


def test_unknown_twin_and_bad_ids(twins):
    with pytest.raises(UnknownTwinError, match="acme/ghost"):
        twins.get("acme", "ghost")
    with pytest.raises(InvalidIdError, match="'a/b'"):
        twins.exchange("acme", "a/b", report())


def test_devices_of_a_cohort_and_state_survives_a_new_store(tmp_path, registry, clock, twins):
    twins.exchange("acme", "d1", report(tags={"site": "north"}))
    twins.exchange("acme", "d2", report(tags={"site": "south"}))
    twins.set_rule("fleet", config_version="c3")
    again = TwinStore(tmp_path, registry, clock=clock)
    try:
        assert again.devices("site=north") == [("acme", "d1")]
        assert again.devices() == [("acme", "d1"), ("acme", "d2")]
        assert again.exchange("acme", "d3", dataclasses.replace(report(), tags={})).config_version == "c3"
    finally:
        again.close()
