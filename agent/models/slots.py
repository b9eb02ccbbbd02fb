"""Two model slots on disk and the `active` pointer that switches between them atomically.

Layout under `root`:

    root/active               {"active": "a", "previous": "b"}: the one source of truth
    root/a/artifacts/<name>   the model's files, named as in the manifest
    root/a/signature.json
    root/a/manifest.json      canonical manifest bytes, written last: its presence seals the slot
    root/b/...
    root/last_failure.json    why the last install was refused (removed by the next success)

Install, in order (nothing before step 6 changes which model serves):

    1. verify the signature against the trusted keys, then every staged artifact's size and sha256;
    2. if the pointer keeps the target (inactive) slot as `previous`, rewrite it without it;
    3. unseal the target (delete manifest.json, fsync the folder), then empty it;
    4. copy the artifacts in, hashing what is written (a staged file that changed since step 1
       is refused), fsync each file and the folder; run the self-test on the copies;
    5. seal: write signature.json and manifest.json (temp, fsync, os.replace, fsync the folder);
    6. switch: write the pointer {"active": target, "previous": old} to a temp file, fsync it,
       os.replace it over `active`, fsync `root`.

Why a SIGKILL at any point leaves the old or the new model active, never a half-copied one:
os.replace is atomic, so a reader sees the whole old pointer or the whole new one. Until step
6's replace the old pointer names the old slot, which steps 2-5 never touch; after it, the
pointer names a slot whose files were fsynced before its seal, and whose seal was fsynced before
the pointer. A pointer never names an unsealed slot as `previous` either (step 2 comes before
step 3). Nothing is cleaned up on the way out of a failure: leftovers (a half-filled inactive
slot, `active.tmp`) are unreferenced and are cleared by the next install, so there is no cleanup
path that a kill could interrupt halfway.

Rollback points the pointer at `previous` after re-hashing its files, and leaves `previous`
empty: the model rolled back from is the one just judged broken, and a second rollback must not
bring it back. The signature is not checked again on rollback (it was at install, and trusted keys
may have rotated since); the files are, against the manifest sealed with them.

One Slots object per root; its methods are blocking (hashing, fsync): call them off the loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol import (
    Artifact,
    ArtifactMismatchError,
    BadSignatureError,
    InvalidKeyError,
    Manifest,
    ManifestError,
    TruncatedArtifactError,
    UnknownKeyError,
)
from protocol.signing import Signature, check_artifact, public_key_from_pem, trusted_keys, verify

from ..errors import (
    ConfigError,
    InstallError,
    RollbackError,
    SelfTestFailedError,
    SlotStateError,
    SlotWriteError,
    TamperedModelError,
    TruncatedModelError,
    UntrustedKeyError,
)

SLOTS = ("a", "b")
POINTER = "active"
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
ARTIFACTS = "artifacts"
LAST_FAILURE = "last_failure.json"
_CHUNK = 1 << 20

# The inference backend's check, called with the folder holding the copied artifacts and the
# manifest: load the model, run `manifest.self_test.samples`, raise anything to refuse the model.
# It runs in the caller's thread, before the switch; it must not keep the files open after it returns.
SelfTest = Callable[[Path, Manifest], None]


@dataclass(frozen=True)
class SlotInfo:
    """A sealed slot: its manifest, signature and files."""

    slot: str  # "a" or "b"
    path: Path
    manifest: Manifest
    signature: Signature

    @property
    def artifacts_dir(self) -> Path:
        return self.path / ARTIFACTS

    @property
    def model_path(self) -> Path:
        """The file the inference backend loads (`manifest.runtime.model`)."""
        return self.artifacts_dir / self.manifest.runtime.model

    def artifact(self, name: str) -> Path:
        self.manifest.artifact(name)  # KeyError for a name the manifest does not list
        return self.artifacts_dir / name


@dataclass(frozen=True)
class InstallFailure:
    """Why the last install was refused, kept for health reports until an install succeeds."""

    reason: str  # InstallError.reason
    message: str
    model: str
    version: str
    at: datetime


class Slots:
    def __init__(self, root: Path, *, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.root = Path(root)
        self._clock = clock
        self._lock = threading.Lock()

    # --- reading -----------------------------------------------------------------------------

    @property
    def active(self) -> SlotInfo | None:
        slot = self._pointer()["active"]
        return None if slot is None else self._read_slot(slot)

    @property
    def previous(self) -> SlotInfo | None:
        slot = self._pointer()["previous"]
        return None if slot is None else self._read_slot(slot)

    @property
    def last_failure(self) -> InstallFailure | None:
        try:
            d = json.loads((self.root / LAST_FAILURE).read_bytes())
            return InstallFailure(d["reason"], d["message"], d["model"], d["version"], datetime.fromisoformat(d["at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a torn record is only a lost health detail; the pointer is what matters

    # --- changing ----------------------------------------------------------------------------

    def install(
        self,
        staged_dir: Path,
        manifest: Manifest,
        signature: Signature,
        trusted: Mapping[str, Ed25519PublicKey],
        *,
        self_test: SelfTest,
    ) -> SlotInfo:
        """Verify, copy into the inactive slot, self-test, switch. On failure nothing serves differently."""
        with self._lock:
            try:
                return self._install(Path(staged_dir), manifest, signature, trusted, self_test)
            except InstallError as exc:
                self._record_failure(exc)
                raise

    def rollback(self) -> SlotInfo:
        """Make the previous model active again (after a failed health gate); see the module doc."""
        with self._lock:
            pointer = self._pointer()
            prev = pointer["previous"]
            if prev is None:
                raise RollbackError("There is no previous model to roll back to.")
            info = self._read_slot(prev)
            for a in info.manifest.artifacts:
                try:
                    verify_artifact(info.artifacts_dir / a.name, a)
                except (OSError, ArtifactMismatchError, TruncatedArtifactError) as exc:
                    raise RollbackError(
                        f"The previous model {info.manifest.name} {info.manifest.version} in slot {prev!r} "
                        f"no longer verifies: {exc}"
                    ) from exc
            try:
                self._write_pointer(prev, None)
            except OSError as exc:
                raise RollbackError(f"The pointer could not be switched to slot {prev!r}: {exc}.") from exc
            return info

    # --- install steps -----------------------------------------------------------------------

    def _install(
        self, staged: Path, manifest: Manifest, signature: Signature,
        trusted: Mapping[str, Ed25519PublicKey], self_test: SelfTest,
    ) -> SlotInfo:
        name, version = manifest.name, manifest.version
        try:
            verify(manifest, signature, trusted)
        except UnknownKeyError as exc:
            raise UntrustedKeyError(name, version, str(exc)) from exc
        except BadSignatureError as exc:
            raise TamperedModelError(name, version, str(exc)) from exc
        for a in manifest.artifacts:
            self._check_staged(staged / a.name, a, manifest)

        pointer = self._pointer()
        target = "b" if pointer["active"] == "a" else "a"
        slot = self.root / target
        try:
            if pointer["previous"] == target:
                self._write_pointer(pointer["active"], None)
            self._unseal(slot)
            if slot.exists():
                shutil.rmtree(slot)  # leftovers of an install that was refused or killed
            (slot / ARTIFACTS).mkdir(parents=True)
            for a in manifest.artifacts:
                self._copy(staged / a.name, slot / ARTIFACTS / a.name, a, manifest)
            _fsync_dir(slot / ARTIFACTS)
            _fsync_dir(slot)
        except OSError as exc:
            raise SlotWriteError(name, version, f"slot {target!r} could not be written ({exc}).") from exc

        try:
            self_test(slot / ARTIFACTS, manifest)
        except Exception as exc:  # the backend's whole failure surface: load errors, wrong outputs
            raise SelfTestFailedError(name, version, f"its self-test failed ({type(exc).__name__}: {exc}).") from exc

        try:
            _write_atomic(slot / SIGNATURE, signature.to_json())
            _write_atomic(slot / MANIFEST, manifest.to_json())  # the seal
            self._write_pointer(target, pointer["active"])
        except OSError as exc:
            raise SlotWriteError(name, version, f"slot {target!r} could not be switched to ({exc}).") from exc
        try:
            (self.root / LAST_FAILURE).unlink(missing_ok=True)
        except OSError:
            pass  # only a stale health detail; the install itself is done and durable
        return SlotInfo(target, slot, manifest, signature)

    def _check_staged(self, path: Path, a: Artifact, manifest: Manifest) -> None:
        try:
            verify_artifact(path, a)
        except FileNotFoundError:
            raise TruncatedModelError(
                manifest.name, manifest.version, f"artifact {a.name!r} is missing from {path.parent}."
            ) from None
        except TruncatedArtifactError as exc:
            raise TruncatedModelError(manifest.name, manifest.version, str(exc)) from exc
        except ArtifactMismatchError as exc:
            raise TamperedModelError(manifest.name, manifest.version, str(exc)) from exc
        except OSError as exc:
            raise InstallError(manifest.name, manifest.version, f"artifact {a.name!r} could not be read ({exc}).") from exc

    def _copy(self, src: Path, dst: Path, a: Artifact, manifest: Manifest) -> None:
        h, n = hashlib.sha256(), 0
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            while chunk := fin.read(_CHUNK):
                h.update(chunk)
                n += len(chunk)
                fout.write(chunk)
            fout.flush()
            _fsync(fout.fileno())
        try:
            check_artifact(a, sha256=h.hexdigest(), size=n)
        except (ArtifactMismatchError, TruncatedArtifactError) as exc:
            # Verified a moment ago, different now: someone is writing the staged folder.
            raise TamperedModelError(manifest.name, manifest.version, f"it changed while being copied: {exc}") from exc

    def _unseal(self, slot: Path) -> None:
        seal = slot / MANIFEST
        if seal.exists():
            seal.unlink()
            _fsync_dir(slot)

    # --- pointer and records -----------------------------------------------------------------

    def _pointer(self) -> dict[str, str | None]:
        path = self.root / POINTER
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {"active": None, "previous": None}
        except OSError as exc:
            raise SlotStateError(str(path), f"it cannot be read ({exc})") from exc
        try:
            d = json.loads(raw)
            active, previous = d["active"], d["previous"]
        except (ValueError, KeyError, TypeError):
            raise SlotStateError(str(path), f"it holds {raw[:80]!r}, not a slot pointer") from None
        if active not in SLOTS or previous not in (*SLOTS, None) or previous == active:
            raise SlotStateError(str(path), f"it names active={active!r}, previous={previous!r}")
        return {"active": active, "previous": previous}

    def _write_pointer(self, active: str, previous: str | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.root / POINTER, json.dumps({"active": active, "previous": previous}).encode())

    def _read_slot(self, slot: str) -> SlotInfo:
        path = self.root / slot
        try:
            manifest = Manifest.from_json((path / MANIFEST).read_bytes())
            signature = Signature.from_json((path / SIGNATURE).read_bytes())
        except (OSError, ManifestError) as exc:
            raise SlotStateError(str(self.root / POINTER), f"it names slot {slot!r}, which is not sealed ({exc})") from exc
        return SlotInfo(slot, path, manifest, signature)

    def _record_failure(self, exc: InstallError) -> None:
        at = self._clock()
        record = {"reason": exc.reason, "message": str(exc), "model": exc.model, "version": exc.version,
                  "at": at.isoformat()}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.root / LAST_FAILURE, json.dumps(record).encode())
        except OSError:
            pass  # the refusal itself is raised to the caller; a disk too full to record it changes nothing


def verify_artifact(path: Path, artifact: Artifact) -> None:
    """Hash `path` and compare it with its manifest entry; raises protocol's verification errors."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    check_artifact(artifact, sha256=h.hexdigest(), size=n)


def load_trusted_keys(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    """Read the fleet's trusted ed25519 public keys (PEM files), keyed by key id."""
    keys = []
    for path in paths:
        try:
            keys.append(public_key_from_pem(Path(path).read_bytes()))
        except OSError as exc:
            raise ConfigError(str(path), [f"the trusted key cannot be read: {exc}"]) from exc
        except InvalidKeyError as exc:
            raise ConfigError(str(path), [str(exc)]) from exc
    return trusted_keys(keys)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        _fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# The two durability points, by name, so tests can stop a run at each of them like a SIGKILL.
def _fsync(fd: int) -> None:
    os.fsync(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
