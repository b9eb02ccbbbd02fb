"""The hub's signing keys: ed25519 private keys on disk, one active, the older ones kept for rotation.

Layout under `keys_dir` (0700):

    <key_id>.pem   PKCS#8 private key, unencrypted, mode 0600, never rewritten
    active         the active key id, replaced atomically (write, fsync, rename)

The first use generates a key. `rotate()` makes a new active key and keeps the old ones, so
their public keys stay listed: a device trusting the old and the new key verifies models signed
before and after the rotation. A key's `created_at` is its file's mtime, set from the ring's
clock when it is written (so tests can drive it); copying the folder without `-p` loses it.

Hazard: the private keys are plain files. Anyone who reads `keys_dir` can sign models that every
device trusting these keys installs. Nothing here logs or returns private key material; only
public keys leave this module, except through `active()`, which the registry signs with.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import signing

from .errors import UnknownModelError

_ACTIVE = "active"
_KEY_FILE = re.compile(rf"([0-9a-f]{{{signing.KEY_ID_HEX}}})\.pem")


class KeyRing:
    def __init__(self, keys_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(keys_dir)
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded: dict[str, Ed25519PrivateKey] = {}

    def active_id(self) -> str:
        """The id of the key new signatures use; generates the first key on first use."""
        with self._lock:
            return self._active_id()

    def active(self) -> Ed25519PrivateKey:
        with self._lock:
            return self._load(self._active_id())

    def rotate(self) -> str:
        """Make a new key the active one and return its id; the old keys stay (and stay listed)."""
        with self._lock:
            self._prepare_dir()
            return self._generate()

    def public_keys(self) -> list[dict]:
        """Every key's public half, oldest first: [{key_id, pem, active, created_at}]."""
        with self._lock:
            active = self._active_id()
            out = []
            for kid in self._ids():
                mtime = (self.dir / f"{kid}.pem").stat().st_mtime
                pem = signing.public_key_to_pem(self._load(kid).public_key()).decode("ascii")
                created = datetime.fromtimestamp(mtime, tz=timezone.utc).isoformat(timespec="seconds")
                out.append((mtime, {"key_id": kid, "pem": pem, "active": kid == active, "created_at": created}))
            return [k for _, k in sorted(out, key=lambda p: (p[0], p[1]["active"], p[1]["key_id"]))]

    def public_key(self, key_id: str) -> bytes:
        """One key's public PEM; UnknownModelError when the ring has no such key."""
        with self._lock:
            if key_id not in self._ids():
                raise UnknownModelError(f"Signing key {key_id!r} is not in {self.dir}.")
            return signing.public_key_to_pem(self._load(key_id).public_key())

    def export_public(self, path: Path, key_id: str | None = None) -> Path:
        """Write a public key (the active one by default) as PEM, for provisioning devices."""
        pem = self.public_key(key_id or self.active_id())
        path = Path(path)
        _write_atomic(path, pem, mode=0o644)
        return path

    # --- under the lock -----------------------------------------------------------------
    def _active_id(self) -> str:
        self._prepare_dir()
        try:
            kid = (self.dir / _ACTIVE).read_text("ascii").strip()
        except FileNotFoundError:
            # First use, or a crash between writing a key and naming it active: a fresh key is
            # always safe (an orphaned one is only listed, never used).
            return self._generate()
        if not (self.dir / f"{kid}.pem").is_file():
            raise UnknownModelError(f"{self.dir / _ACTIVE} names the key {kid!r}, but {kid}.pem is missing.")
        return kid

    def _ids(self) -> list[str]:
        self._prepare_dir()
        return sorted(m[1] for p in self.dir.iterdir() if (m := _KEY_FILE.fullmatch(p.name)))

    def _load(self, kid: str) -> Ed25519PrivateKey:
        key = self._loaded.get(kid)
        if key is None:
            key = signing.private_key_from_pem((self.dir / f"{kid}.pem").read_bytes())
            self._loaded[kid] = key
        return key

    def _generate(self) -> str:
        key = signing.generate_private_key()
        kid = signing.key_id(key.public_key())
        path = self.dir / f"{kid}.pem"
        _write_atomic(path, signing.private_key_to_pem(key), mode=0o600)
        now = self._clock()
        os.utime(path, (now, now))
        _write_atomic(self.dir / _ACTIVE, f"{kid}\n".encode("ascii"), mode=0o600)
        self._loaded[kid] = key
        return kid

    def _prepare_dir(self) -> None:
        if not self.dir.is_dir():
            self.dir.mkdir(parents=True, mode=0o700, exist_ok=True)
            os.chmod(self.dir, 0o700)  # mkdir's mode is masked by the umask


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Write, fsync, rename, fsync the folder; the file is created with `mode` (never wider first)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask; a leftover tmp keeps its old mode
        f.write(data)
        f.flush()
        os.fsync(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
