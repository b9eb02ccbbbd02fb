"""Artifact files on the hub's disk: verified copies into the registry, and uploads being staged.

Every file that becomes part of a registry version is written to a temporary name, hashed as it
is written, checked against the recipe's size and sha256, fsynced, and only then renamed into
place, so a crash or a bad upload never leaves a half-written artifact under a served name.
Uploads (`PUT .../artifacts/<file>`) land in a separate staging tree and are copied (verified)
by `register`; nothing in staging is ever served.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from protocol import Artifact, ManifestError

from .errors import ArtifactRejectedError, ArtifactTooLargeError, InvalidModelError

CHUNK = 1 << 20
MAX_ARTIFACT_BYTES = 2 << 30  # an upload past this is refused (413): a model this big is a mistake


def check_file_name(file: object) -> str:
    """The manifest's file-name rule (no '/', no leading '.'): what keeps every path inside its folder."""
    try:
        Artifact(file, "0" * 64, 0)  # type: ignore[arg-type]
    except ManifestError:
        raise InvalidModelError(
            f"Artifact name {file!r} is not a plain file name of 1-128 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit."
        ) from None
    return file  # type: ignore[return-value]


def copy_verified(src: Path, dest: Path, *, sha256: str, size: int) -> None:
    """Copy `src` to `dest` only if its bytes are the ones the recipe names; ArtifactRejectedError if not."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    digest = hashlib.sha256()
    copied = 0
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(CHUNK):
                copied += len(chunk)
                if copied > size:
                    break  # stop reading a file that is already too long
                digest.update(chunk)
                fout.write(chunk)
            if copied != size:
                raise ArtifactRejectedError(dest.name, "size", f"{size} bytes",
                                            f"more than {size} bytes" if copied > size else f"{copied} bytes")
            if digest.hexdigest() != sha256:
                raise ArtifactRejectedError(dest.name, "sha256", sha256, digest.hexdigest())
            fout.flush()
            os.fsync(fout.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)


class Upload:
    """One artifact arriving in chunks: `write` each, then `commit` (or `abort`); hashed on the way."""

    def __init__(self, dest: Path, *, limit: int = MAX_ARTIFACT_BYTES) -> None:
        self.dest = dest
        self.limit = limit
        self.size = 0
        self._sha = hashlib.sha256()
        self._tmp = dest.with_name(f".{dest.name}.upload")
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp, "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.abort()
            raise ArtifactTooLargeError(f"Artifact {self.dest.name!r} is over the limit of {self.limit} bytes.")
        self._sha.update(chunk)
        self._file.write(chunk)

    def commit(self) -> dict:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.dest)
        return {"file": self.dest.name, "bytes": self.size, "sha256": self._sha.hexdigest()}

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
