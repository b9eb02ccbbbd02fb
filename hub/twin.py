"""Device twins on the hub: what each device reported, and the model and config it should run.

Every device exchange (POST /v1/twin/<tenant>/<device>) lands in `TwinStore.exchange`: the
reported state and last-seen time are recorded, the desired state is resolved, recorded and
returned. Resolution, first match wins (docs/models.md, "Hub twin"):

    1. a rule for this device
    2. a rollout that has reached the device (candidate while running, champion once halted)
    3. a rule for a cohort the device's tags match (most tags first), then a fleet rule
    4. the registry's `champion` alias for the most specific cohort matching the device, then `*`

A device runs one model name: the first step that names one decides it; step 4 uses the model the
device reports active, else the only model with a champion. The shadow is the `challenger` alias
when it differs from the model. A step whose version the registry cannot send (unknown, unsigned)
is skipped with the error recorded on the twin, so one bad rule never leaves a device without answer.

    TwinError (hub.errors.HubError)  `status` is the HTTP status
     ├── RuleError         422: a desired-state rule breaks a rule; names the field and the value
     └── UnknownTwinError  404: the device has never exchanged its twin
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import check_id
from protocol.errors import InvalidIdError
from protocol.twin import Desired, Reported

from .control_db import FILENAME, connect
from .errors import HubError
from .registry import RegistryError, cohort_matches, normalize_cohort, specificity

if TYPE_CHECKING:
    from .rollouts.machine import Rollouts

log = logging.getLogger(__name__)

SCOPES = ("device", "cohort", "fleet")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")  # protocol/twin.py's rule

_SCHEMA = """
CREATE TABLE IF NOT EXISTS twins (
    tenant TEXT NOT NULL, device TEXT NOT NULL, tags TEXT NOT NULL, reported TEXT NOT NULL,
    last_seen_us INTEGER NOT NULL, first_seen_us INTEGER NOT NULL, exchanges INTEGER NOT NULL DEFAULT 0,
    desired_model TEXT, desired_version TEXT, desired_shadow TEXT, desired_rollout TEXT, desired_source TEXT,
    desired_config TEXT, desired_error TEXT,
    PRIMARY KEY (tenant, device)
);
CREATE TABLE IF NOT EXISTS desired_rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT, scope TEXT NOT NULL, tenant TEXT, device TEXT, cohort TEXT,
    model_name TEXT, model_version TEXT, config_version TEXT, at_us INTEGER NOT NULL
);
"""


class TwinError(HubError):
    status = 500


class RuleError(TwinError, ValueError):
    status = 422


class UnknownTwinError(TwinError, LookupError):
    status = 404

    def __init__(self, tenant: str, device: str) -> None:
        super().__init__(f"Device {tenant}/{device} has never exchanged its twin with the hub.")


class TwinStore:
    def __init__(self, data_dir: Path, registry: Any, rollouts: "Rollouts | None" = None, *,
                 clock: Callable[[], float] = time.time, poll_interval_s: float = 30.0) -> None:
        self.registry = registry
        self.rollouts = rollouts
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.stats = {"exchanges": 0, "bad_reports": 0, "registry_errors": 0}
        self._lock = threading.Lock()  # one connection, one lock; never held while asking rollouts or registry
        self._con = connect(Path(data_dir) / FILENAME)
        self._con.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def count_bad_report(self) -> None:
        with self._lock:
            self.stats["bad_reports"] += 1

    # --- the exchange -------------------------------------------------------------------------------
    def exchange(self, tenant: str, device: str, reported: Reported) -> Desired:
        """Record what the device reported and answer what it should run."""
        check_id("tenant", tenant)
        check_id("device", device)
        now = int(self.clock() * 1e6)
        with self._lock:
            self._con.execute(
                "INSERT INTO twins (tenant, device, tags, reported, last_seen_us, first_seen_us, exchanges)"
                " VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT (tenant, device) DO UPDATE SET tags = excluded.tags,"
                " reported = excluded.reported, last_seen_us = excluded.last_seen_us, exchanges = exchanges + 1",
                (tenant, device, json.dumps(reported.tags), json.dumps(reported.to_dict()), now, now))
            self.stats["exchanges"] += 1
            rules = self._applicable_rules(tenant, device, reported.tags)
        assignment = None if self.rollouts is None else self.rollouts.assignment(tenant, device, reported.tags)
        desired, source, errors = self._resolve(rules, assignment, reported)
        with self._lock:
            self.stats["registry_errors"] += len(errors)
            self._con.execute(
                "UPDATE twins SET desired_model = ?, desired_version = ?, desired_shadow = ?, desired_rollout = ?,"
                " desired_source = ?, desired_config = ?, desired_error = ? WHERE tenant = ? AND device = ?",
                (None if desired.model is None else desired.model.name,
                 None if desired.model is None else desired.model.version,
                 None if desired.shadow is None else desired.shadow.version, desired.rollout, source,
                 desired.config_version, "; ".join(errors) or None, tenant, device))
        return desired

    def _applicable_rules(self, tenant: str, device: str, tags: dict[str, str]) -> list[dict]:
        """Rules that apply to the device, most specific first: device, cohorts (most tags, then this
        tenant's), fleet (this tenant's, then everyone's); newest first among equals."""
        rows = [dict(r) for r in self._con.execute(
            "SELECT * FROM desired_rules WHERE (tenant IS NULL OR tenant = ?) AND (device IS NULL OR device = ?)"
            " ORDER BY at_us DESC, id DESC", (tenant, device))]
        rank = {"device": 0, "cohort": 1, "fleet": 2}
        ok = [r for r in rows if r["scope"] != "cohort" or cohort_matches(r["cohort"], tags)]
        return sorted(ok, key=lambda r: (rank[r["scope"]], -specificity(r["cohort"] or "*"), r["tenant"] is None))

    def _resolve(self, rules: list[dict], assignment: Any, reported: Reported) -> tuple[Desired, str | None, list[str]]:
        tags, errors = reported.tags, []
        steps: list[tuple[str, str, str | None, str]] = []  # (model, version, rollout id, source)
        steps += [(r["model_name"], r["model_version"], None, "device rule")
                  for r in rules if r["scope"] == "device" and r["model_name"]]
        if assignment is not None:
            steps.append((assignment.model, assignment.version, assignment.rollout_id, "rollout"))
        steps += [(r["model_name"], r["model_version"], None, f"{r['scope']} rule {r['cohort'] or '*'}")
                  for r in rules if r["scope"] != "device" and r["model_name"]]
        name = self._champion_model(reported, [s[0] for s in steps])
        if name is not None and (champion := self.registry.alias_for(name, "champion", tags)) is not None:
            steps.append((name, champion, None, "champion"))
        model = shadow = None
        rollout = source = None
        for name, version, rid, src in steps:
            try:
                model = self.registry.desired_model(name, version)
            except RegistryError as exc:
                errors.append(f"{src} wants {name} {version}: {exc}")
                continue
            rollout, source = rid, src
            break
        if model is not None:
            challenger = self.registry.alias_for(model.name, "challenger", tags)
            if challenger is not None and challenger != model.version:
                try:
                    shadow = self.registry.desired_model(model.name, challenger)
                except RegistryError as exc:
                    errors.append(f"challenger {model.name} {challenger}: {exc}")
        config = next((r["config_version"] for r in rules if r["config_version"] is not None), None)
        poll = self.poll_interval_s
        if assignment is not None and assignment.poll_interval_s is not None:
            poll = min(poll, assignment.poll_interval_s)  # devices in a running rollout ask more often
        if errors:
            log.warning("twin: %s", "; ".join(errors))
        return Desired(model=model, shadow=shadow, config_version=config, poll_interval_s=poll,
                       rollout=rollout), source, errors

    def _champion_model(self, reported: Reported, named: list[str]) -> str | None:
        """Step 4's model: the one a rule or rollout names, else the device's active one, else the only
        model the registry has a champion for (for this device's tags)."""
        if named:
            return named[0]  # step 4 runs only when every earlier step failed: fall back to that model's champion
        if reported.active is not None:
            return reported.active.name
        names = sorted({v["name"] for v in self.registry.list()})
        with_champion = [n for n in names if self.registry.alias_for(n, "champion", reported.tags) is not None]
        return with_champion[0] if len(with_champion) == 1 else None

    # --- desired-state rules --------------------------------------------------------------------------
    def set_rule(self, scope: str, *, tenant: str | None = None, device: str | None = None,
                 cohort: str | None = None, model: tuple[str, str] | None = None,
                 config_version: str | None = None) -> dict:
        """Replace the rule for one device, cohort or the fleet; no model and no config removes it."""
        if scope not in SCOPES:
            raise RuleError(f"Scope {scope!r} is not one of {', '.join(SCOPES)}.")
        try:
            if tenant is not None or scope == "device":
                check_id("tenant", tenant)
            if scope == "device":
                check_id("device", device)
        except InvalidIdError as exc:
            raise RuleError(str(exc)) from None
        if scope != "device" and device is not None:
            raise RuleError(f"A {scope} rule names no device, and this one names {device!r}.")
        if scope == "cohort":
            try:
                cohort = normalize_cohort(cohort) if cohort is not None else None
            except RegistryError as exc:
                raise RuleError(str(exc)) from None
            if cohort in (None, "*"):
                raise RuleError(f"A cohort rule needs a cohort like 'site=north', not {cohort!r}; "
                                "for the whole fleet use the fleet scope.")
        elif cohort is not None:
            raise RuleError(f"A {scope} rule names no cohort, and this one names {cohort!r}.")
        if config_version is not None and (not isinstance(config_version, str)
                                           or not _VERSION.fullmatch(config_version)):
            raise RuleError(f"Config version {config_version!r} is not a string matching {_VERSION.pattern}.")
        if model is not None:
            name, version = model
            try:
                self.registry.desired_model(name, version)  # refuse now what could never be sent
            except RegistryError as exc:
                raise RuleError(f"Model {name} {version} cannot be sent to devices: {exc}") from exc
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                self._con.execute("DELETE FROM desired_rules WHERE scope = ? AND tenant IS ? AND device IS ?"
                                  " AND cohort IS ?", (scope, tenant, device, cohort))
                if model is not None or config_version is not None:
                    self._con.execute(
                        "INSERT INTO desired_rules (scope, tenant, device, cohort, model_name, model_version,"
                        " config_version, at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (scope, tenant, device, cohort, None if model is None else model[0],
                         None if model is None else model[1], config_version, int(self.clock() * 1e6)))
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
        rule = {"scope": scope, "tenant": tenant, "device": device, "cohort": cohort,
                "model": None if model is None else {"name": model[0], "version": model[1]},
                "config_version": config_version}
        return {**rule, "removed": model is None and config_version is None}

    def rules(self) -> list[dict]:
        with self._lock:
            rows = self._con.execute("SELECT * FROM desired_rules ORDER BY id").fetchall()
        return [{"scope": r["scope"], "tenant": r["tenant"], "device": r["device"], "cohort": r["cohort"],
                 "model": None if r["model_name"] is None else {"name": r["model_name"], "version": r["model_version"]},
                 "config_version": r["config_version"], "at_us": r["at_us"]} for r in rows]

    # --- reading ----------------------------------------------------------------------------------------
    def get(self, tenant: str, device: str) -> dict:
        with self._lock:
            row = self._con.execute("SELECT * FROM twins WHERE tenant = ? AND device = ?", (tenant, device)).fetchone()
        if row is None:
            raise UnknownTwinError(tenant, device)
        return _twin(row)

    def list(self) -> list[dict]:
        with self._lock:
            rows = self._con.execute("SELECT * FROM twins ORDER BY tenant, device").fetchall()
        return [_twin(r) for r in rows]

    def devices(self, cohort: str = "*") -> list[tuple[str, str]]:
        """Every device of the cohort the hub has exchanged a twin with (the rollouts' snapshot)."""
        with self._lock:
            rows = self._con.execute("SELECT tenant, device, tags FROM twins ORDER BY tenant, device").fetchall()
        return [(r["tenant"], r["device"]) for r in rows if cohort_matches(cohort, json.loads(r["tags"]))]

    def reports(self, devices: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Reported]:
        """The last reported state of each of these devices that has one (for the rollout controller)."""
        wanted = set(devices)
        with self._lock:
            rows = self._con.execute("SELECT tenant, device, reported FROM twins").fetchall()
        return {(r["tenant"], r["device"]): Reported.from_json(r["reported"])
                for r in rows if (r["tenant"], r["device"]) in wanted}

    def seen(self, devices: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """When each of these devices last exchanged its twin (µs since the epoch)."""
        wanted = set(devices)
        with self._lock:
            rows = self._con.execute("SELECT tenant, device, last_seen_us FROM twins").fetchall()
        return {(r["tenant"], r["device"]): r["last_seen_us"] for r in rows if (r["tenant"], r["device"]) in wanted}


def _twin(r: Any) -> dict:
    return {"tenant": r["tenant"], "device": r["device"], "tags": json.loads(r["tags"]),
            "reported": json.loads(r["reported"]), "last_seen_us": r["last_seen_us"],
            "first_seen_us": r["first_seen_us"], "exchanges": r["exchanges"],
            "desired": {"model": r["desired_model"], "version": r["desired_version"], "shadow": r["desired_shadow"],
                        "rollout": r["desired_rollout"], "source": r["desired_source"],
                        "config_version": r["desired_config"], "error": r["desired_error"]}}
