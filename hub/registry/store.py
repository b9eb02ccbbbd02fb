"""The model registry: versions, their artifacts and signed variants, and aliases per cohort.

Who calls it: the HTTP API (hub/api/models.py, sync routes in FastAPI's threadpool), the twin
and rollouts (desired state, `alias_for`), and tests. One lock serializes every use of the one
SQLite connection; file copies for `register` run outside it so a large upload does not stall
the devices asking for their desired state.

A version is registered once (its files never change after), signed any number of times (each
`sign` replaces every variant's signature, e.g. after a key rotation), and promoted per cohort.
The device manifest of a variant is `models.condition.device_manifest.device_manifest` with the
registry version in place of the recipe's, and `created_at` set to the signing time.

Hazard: the registry version, not the recipe's, is what the manifest says; two registry
versions of one recipe are two models as far as devices are concerned, with the same bytes.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hub import control_db
from models.condition.device_manifest import device_manifest
from protocol import Manifest, ManifestError, signing
from protocol.manifest import load_json
from protocol.twin import DesiredModel, Variant

from .cohort import cohort_matches, normalize_cohort, specificity
from .errors import InvalidModelError, ModelConflictError, NotSignedError, UnknownModelError
from .files import Upload, check_file_name, copy_verified, fsync_dir, remove_tree
from .keys import KeyRing
from .provenance import code_version, version_metadata

RECIPE_FILE = "manifest.json"
MAX_RECIPE_BYTES = 4 << 20
# The manifest's rule for names and versions: they become folder names and URL segments.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RESERVED_VERSIONS = {"aliases"}  # a URL segment of the API: /v1/models/<name>/aliases/<alias>
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    name TEXT NOT NULL, version TEXT NOT NULL, recipe TEXT NOT NULL, metadata TEXT NOT NULL,
    registered_at_us INTEGER NOT NULL, signed_at_us INTEGER, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS model_variants (
    name TEXT NOT NULL, version TEXT NOT NULL, artifact TEXT NOT NULL,
    manifest TEXT, signature TEXT, key_id TEXT, PRIMARY KEY (name, version, artifact));
CREATE TABLE IF NOT EXISTS model_aliases (
    name TEXT NOT NULL, alias TEXT NOT NULL, cohort TEXT NOT NULL, version TEXT NOT NULL,
    at_us INTEGER NOT NULL, PRIMARY KEY (name, alias, cohort));
CREATE TABLE IF NOT EXISTS alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, alias TEXT NOT NULL,
    cohort TEXT NOT NULL, version TEXT NOT NULL, previous TEXT, at_us INTEGER NOT NULL);
"""


class Registry:
    def __init__(self, data_dir: Path, *, clock: Callable[[], float] = time.time, keys: KeyRing | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "registry"
        self.staging = self.data_dir / "registry-staging"
        self.keys = keys or KeyRing(self.data_dir / "keys", clock=clock)
        self._clock = clock
        self._lock = threading.RLock()
        self._db = control_db.connect(self.data_dir / control_db.FILENAME)
        self._db.executescript(_SCHEMA)
        self._desired: dict[tuple[str, str], tuple[int, DesiredModel]] = {}
        self._code_version: str | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- registering ----------------------------------------------------------------------
    def register(self, recipe_dir: Path, *, version: str | None = None, variants: list[str] | None = None,
                 metadata: dict | None = None) -> dict:
        """Register a recipe folder (its manifest.json and artifacts) as `version` (default: the recipe's)."""
        recipe_dir = Path(recipe_dir)
        try:
            recipe = load_json("recipe", (recipe_dir / RECIPE_FILE).read_bytes(), max_bytes=MAX_RECIPE_BYTES)
        except FileNotFoundError:
            raise InvalidModelError(f"{recipe_dir} has no {RECIPE_FILE}; is it a model recipe's output folder?") from None
        except ManifestError as exc:
            raise InvalidModelError(f"{recipe_dir / RECIPE_FILE} is not a recipe manifest: {exc}") from exc
        if not isinstance(recipe, dict) or not isinstance(recipe.get("artifacts"), dict):
            raise InvalidModelError(f"{recipe_dir / RECIPE_FILE} has no 'artifacts' object.")
        files = {a: recipe_dir / a for a in recipe["artifacts"] if isinstance(a, str)}
        return self.register_files(recipe.get("name"), version or recipe.get("version"), recipe, files,  # type: ignore[arg-type]
                                   metadata, variants=variants)

    def register_files(self, name: str, version: str, recipe: dict, files: Mapping[str, Path],
                       metadata: dict | None = None, *, variants: list[str] | None = None) -> dict:
        """Copy and check the variants' files, then record the version; the API's path after uploads."""
        chosen = self._check_recipe(name, version, recipe, variants)
        self._refuse_existing(name, version)
        for a in chosen:
            if a not in files or not Path(files[a]).is_file():
                raise InvalidModelError(f"Artifact {a!r} of {name} {version} was not supplied (uploaded or in the folder).")
        tmp = self.root / name / f".{version}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir(parents=True)
        try:
            for a in chosen:
                entry = recipe["artifacts"][a]
                copy_verified(Path(files[a]), tmp / a, sha256=entry["sha256"], size=entry["bytes"])
            fsync_dir(tmp)
            meta = version_metadata(recipe, chosen, metadata or {}, code=self._code())
            now = self._now_us()
            with self._lock:
                self._refuse_existing(name, version)
                final = self.root / name / version
                remove_tree(final)  # a leftover of a crash between the rename and the insert
                tmp.replace(final)
                fsync_dir(final.parent)
                with self._tx():
                    self._db.execute(
                        "INSERT INTO model_versions(name, version, recipe, metadata, registered_at_us) VALUES (?,?,?,?,?)",
                        (name, version, json.dumps(recipe), json.dumps(meta), now))
                    self._db.executemany("INSERT INTO model_variants(name, version, artifact) VALUES (?,?,?)",
                                         [(name, version, a) for a in chosen])
        finally:
            remove_tree(tmp)
        remove_tree(self.staging / name / version)
        return self.get(name, version)

    def open_upload(self, name: str, version: str, file: str) -> Upload:
        """Stage one artifact for a later `register_files` (the API's PUT); nothing staged is served."""
        _check_name("name", name)
        _check_name("version", version)
        check_file_name(file)
        self._refuse_existing(name, version)
        return Upload(self.staging / name / version / file)

    def staged_files(self, name: str, version: str) -> dict[str, Path]:
        _check_name("name", name)
        _check_name("version", version)
        folder = self.staging / name / version
        return {p.name: p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")} if folder.is_dir() else {}

    # --- signing --------------------------------------------------------------------------
    def sign(self, name: str, version: str) -> dict:
        """Sign every variant with the active key, replacing earlier signatures (a rotation re-signs)."""
        with self._lock:
            row = self._version_row(name, version)
            recipe = json.loads(row["recipe"])
            key = self.keys.active()
            now = self._now_us()
            created = _EPOCH + timedelta(microseconds=now)
            signed = []
            for (artifact,) in self._db.execute(
                    "SELECT artifact FROM model_variants WHERE name=? AND version=?", (name, version)).fetchall():
                m = replace(device_manifest(recipe, artifact, created_at=created), version=version)
                sig = signing.sign(m, key)
                signed.append((m.to_json().decode("ascii"), sig.to_json().decode("ascii"), sig.key_id,
                               name, version, artifact))
            with self._tx():
                self._db.executemany("UPDATE model_variants SET manifest=?, signature=?, key_id=? "
                                     "WHERE name=? AND version=? AND artifact=?", signed)
                self._db.execute("UPDATE model_versions SET signed_at_us=? WHERE name=? AND version=?",
                                 (now, name, version))
        return self.get(name, version)

    # --- reading --------------------------------------------------------------------------
    def get(self, name: str, version: str) -> dict:
        """One version: metadata, variants (manifest and signature once signed), aliases pointing at it."""
        with self._lock:
            row = self._version_row(name, version)
            variants = self._db.execute("SELECT * FROM model_variants WHERE name=? AND version=?",
                                        (name, version)).fetchall()
            aliases = self._db.execute("SELECT alias, cohort, at_us FROM model_aliases WHERE name=? AND version=? "
                                       "ORDER BY alias, cohort", (name, version)).fetchall()
        recipe, meta = json.loads(row["recipe"]), json.loads(row["metadata"])
        out_variants = []
        for v in sorted(variants, key=lambda v: _variant_order(recipe, v["artifact"])):
            info = meta["variants"][v["artifact"]]
            manifest = None if v["manifest"] is None else json.loads(v["manifest"])
            out_variants.append({
                "artifact": v["artifact"], **info, "signed": v["signature"] is not None, "key_id": v["key_id"],
                "digest": None if v["manifest"] is None else Manifest.from_dict(manifest).digest,
                "manifest": manifest, "signature": None if v["signature"] is None else json.loads(v["signature"]),
            })
        key_ids = {v["key_id"] for v in variants}
        return {
            "name": name, "version": version, "recipe_version": recipe.get("version"),
            "feature_spec": recipe["feature_spec"]["version"], "classes": recipe["classes"],
            "registered_at": _iso(row["registered_at_us"]), "signed_at": _iso(row["signed_at_us"]),
            "key_id": key_ids.pop() if len(key_ids) == 1 else None,
            "metadata": meta, "variants": out_variants,
            "aliases": [{"alias": a["alias"], "cohort": a["cohort"], "at": _iso(a["at_us"])} for a in aliases],
        }

    def list(self, name: str | None = None) -> list[dict]:
        """Every version (of `name`, or of all models), oldest first, with its variants and aliases."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, version, registered_at_us, signed_at_us FROM model_versions "
                "WHERE ?1 IS NULL OR name=?1 ORDER BY name, registered_at_us, version", (name,)).fetchall()
            variants = self._db.execute("SELECT name, version, artifact, key_id FROM model_variants "
                                        "WHERE ?1 IS NULL OR name=?1 ORDER BY artifact", (name,)).fetchall()
            aliases = self._db.execute("SELECT name, version, alias, cohort FROM model_aliases "
                                       "WHERE ?1 IS NULL OR name=?1 ORDER BY alias, cohort", (name,)).fetchall()
        out = []
        for r in rows:
            mine = [v for v in variants if (v["name"], v["version"]) == (r["name"], r["version"])]
            out.append({
                "name": r["name"], "version": r["version"], "registered_at": _iso(r["registered_at_us"]),
                "signed_at": _iso(r["signed_at_us"]), "variants": [v["artifact"] for v in mine],
                "key_ids": sorted({v["key_id"] for v in mine if v["key_id"]}),
                "aliases": [f"{a['alias']}@{a['cohort']}" for a in aliases
                            if (a["name"], a["version"]) == (r["name"], r["version"])],
            })
        return out

    def artifact_path(self, name: str, version: str, file: str) -> Path:
        """The registered file to serve; UnknownModelError unless it is a variant of this version."""
        _check_name("name", name)
        _check_name("version", version)
        check_file_name(file)
        with self._lock:
            self._version_row(name, version)
            if self._db.execute("SELECT 1 FROM model_variants WHERE name=? AND version=? AND artifact=?",
                                (name, version, file)).fetchone() is None:
                raise UnknownModelError(f"{name} {version} has no artifact {file!r}.")
        path = self.root / name / version / file
        if not path.is_file() or not path.resolve().is_relative_to(self.root.resolve()):
            raise UnknownModelError(f"The file of {name} {version} artifact {file!r} is missing from {self.root}.")
        return path

    def desired_model(self, name: str, version: str) -> DesiredModel:
        """What a device is sent to install: signed variants, int8 onnx first. Cached until re-signed."""
        with self._lock:
            row = self._version_row(name, version)
            if row["signed_at_us"] is None:
                raise NotSignedError(f"{name} {version} is not signed; sign it before devices are sent it.")
            cached = self._desired.get((name, version))
            if cached is not None and cached[0] == row["signed_at_us"]:
                return cached[1]
            variants = self._db.execute("SELECT artifact, manifest, signature FROM model_variants "
                                        "WHERE name=? AND version=? AND signature IS NOT NULL",
                                        (name, version)).fetchall()
            recipe = json.loads(row["recipe"])
            # Hazard: the cached object (feature_params included) is shared by every caller; never mutate it.
            dm = DesiredModel(
                name=name, version=version, feature_params=recipe["feature_spec"]["params"],
                variants=tuple(Variant(Manifest.from_json(v["manifest"]), signing.Signature.from_json(v["signature"]))
                               for v in sorted(variants, key=lambda v: _variant_order(recipe, v["artifact"]))),
                artifacts_url=f"/v1/models/{name}/{version}/artifacts",
            )
            self._desired[(name, version)] = (row["signed_at_us"], dm)
            return dm

    # --- aliases --------------------------------------------------------------------------
    def promote(self, name: str, version: str, alias: str = "champion", cohort: str = "*") -> None:
        """Point `alias` at a signed `version` for `cohort`; every promote is kept in alias_history."""
        if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
            raise InvalidModelError(f"Alias {alias!r} is not 1-64 characters of A-Z a-z 0-9 . _ -, "
                                    "starting with a letter or digit.")
        cohort = normalize_cohort(cohort)
        with self._lock:
            if self._version_row(name, version)["signed_at_us"] is None:
                raise NotSignedError(f"{name} {version} is not signed; sign it before promoting it to {alias!r}.")
            now = self._now_us()
            with self._tx():
                prev = self._db.execute("SELECT version FROM model_aliases WHERE name=? AND alias=? AND cohort=?",
                                        (name, alias, cohort)).fetchone()
                self._db.execute("INSERT OR REPLACE INTO model_aliases(name, alias, cohort, version, at_us) "
                                 "VALUES (?,?,?,?,?)", (name, alias, cohort, version, now))
                self._db.execute("INSERT INTO alias_history(name, alias, cohort, version, previous, at_us) "
                                 "VALUES (?,?,?,?,?,?)", (name, alias, cohort, version, prev and prev[0], now))

    def alias(self, name: str, alias: str, cohort: str = "*") -> str | None:
        """The version `alias` names for exactly this cohort (no fallback to wider cohorts)."""
        cohort = normalize_cohort(cohort)
        with self._lock:
            row = self._db.execute("SELECT version FROM model_aliases WHERE name=? AND alias=? AND cohort=?",
                                   (name, alias, cohort)).fetchone()
        return None if row is None else row[0]

    def alias_for(self, name: str, alias: str, tags: Mapping[str, str]) -> str | None:
        """The alias's version for the most specific cohort these tags match, else `*`'s, else None.

        Two matching cohorts pinning as many tags (site=north and hardware=rpi4): the one promoted
        last wins, so the answer is deterministic and follows the operator's latest intent.
        """
        with self._lock:
            rows = self._db.execute("SELECT cohort, version, at_us FROM model_aliases WHERE name=? AND alias=?",
                                    (name, alias)).fetchall()
        best = max((r for r in rows if cohort_matches(r["cohort"], tags)),
                   key=lambda r: (specificity(r["cohort"]), r["at_us"], r["cohort"]), default=None)
        return None if best is None else best["version"]

    def aliases(self, name: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT alias, cohort, version, at_us FROM model_aliases WHERE name=? "
                                    "ORDER BY alias, cohort", (name,)).fetchall()
        return [{"alias": r["alias"], "cohort": r["cohort"], "version": r["version"], "at": _iso(r["at_us"])}
                for r in rows]

    def alias_history(self, name: str) -> list[dict]:
        """Every promote of `name`, oldest first, with the version each one replaced."""
        with self._lock:
            rows = self._db.execute("SELECT alias, cohort, version, previous, at_us FROM alias_history "
                                    "WHERE name=? ORDER BY id", (name,)).fetchall()
        return [{"alias": r["alias"], "cohort": r["cohort"], "version": r["version"], "previous": r["previous"],
                 "at": _iso(r["at_us"])} for r in rows]

    # --- internals ------------------------------------------------------------------------
    def _check_recipe(self, name: object, version: object, recipe: object, variants: list[str] | None) -> list[str]:
        _check_name("name", name)
        _check_name("version", version)
        if not isinstance(recipe, dict) or not isinstance(recipe.get("artifacts"), dict) or not recipe["artifacts"]:
            raise InvalidModelError(f"The recipe of {name} {version} has no 'artifacts' object.")
        if recipe.get("name") != name:
            raise InvalidModelError(f"The recipe is for model {recipe.get('name')!r}, not {name!r}.")
        chosen = sorted(recipe["artifacts"]) if variants is None else list(dict.fromkeys(variants))
        if not chosen:
            raise InvalidModelError(f"No variant of {name} {version} was chosen; a version has at least one.")
        spec = recipe.get("feature_spec")
        if not isinstance(spec, dict) or not isinstance(spec.get("params"), dict):
            raise InvalidModelError(f"The recipe of {name} {version} has no feature_spec.params object.")
        probe = _EPOCH + timedelta(microseconds=self._now_us())
        for a in chosen:
            check_file_name(a)
            if a not in recipe["artifacts"]:
                raise InvalidModelError(f"Variant {a!r} is not an artifact of the recipe; it has {sorted(recipe['artifacts'])}.")
            try:  # build the device manifest now, so a recipe that cannot be signed is refused at once
                replace(device_manifest(recipe, a, created_at=probe), version=version)
            except (ManifestError, ValueError, KeyError, TypeError, IndexError) as exc:
                raise InvalidModelError(f"The recipe of {name} {version} cannot make a manifest for {a!r}: "
                                        f"{type(exc).__name__}: {exc}") from exc
        return chosen

    def _refuse_existing(self, name: str, version: str) -> None:
        with self._lock:
            if self._db.execute("SELECT 1 FROM model_versions WHERE name=? AND version=?",
                                (name, version)).fetchone() is not None:
                raise ModelConflictError(f"{name} {version} is registered already; register a new version instead.")

    def _version_row(self, name: str, version: str) -> Any:
        row = self._db.execute("SELECT * FROM model_versions WHERE name=? AND version=?", (name, version)).fetchone()
        if row is None:
            known = [r[0] for r in self._db.execute("SELECT version FROM model_versions WHERE name=? ORDER BY version",
                                                    (name,))]
            raise UnknownModelError(f"Model {name!r} has no version {version!r}" +
                                    (f"; it has {known}." if known else f"; no model {name!r} is registered."))
        return row

    def _code(self) -> str:
        if self._code_version is None:
            self._code_version = code_version()
        return self._code_version

    def _now_us(self) -> int:
        return int(round(self._clock() * 1_000_000))

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return control_db.immediate(self._db, self._lock)


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or (what == "version" and value in _RESERVED_VERSIONS):
        raise InvalidModelError(f"Model {what} {value!r} is not 1-64 characters of A-Z a-z 0-9 . _ + -, starting "
                                "with a letter or digit" + (" (and 'aliases' is reserved)." if what == "version" else "."))


def _variant_order(recipe: dict, artifact: str) -> tuple[bool, bool, str]:
    """int8 onnx, fp32 onnx, then tflite int8, fp32: the order devices try them in."""
    entry = recipe["artifacts"][artifact]
    return (entry.get("format") != "onnx", entry.get("precision") != "int8", artifact)


def _iso(us: int | None) -> str | None:
    return None if us is None else (_EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds")
