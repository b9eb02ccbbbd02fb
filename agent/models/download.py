"""Resumable, chunked HTTP download of model artifacts into a staging folder, verified at the end.

Bytes land in `<dest>.part`, fetched in ranges of `chunk_size` (`Range: bytes=<have>-<end>`), each
request under its own deadline, so a slow or stalled link costs one bounded request and not the
whole download. A request cut off mid-range keeps what arrived; the next one asks for the rest,
in this call or in a later one after a restart (the `.part` is the only state). A request that
brings nothing counts as a failure and waits on the backoff; `max_failures` in a row give up.

When the `.part` holds `artifact.size` bytes it is hashed and compared with the manifest. Bytes
that do not match are deleted (resuming from them could never succeed) and refused with
CorruptDownloadError; matching bytes are fsynced and renamed to `dest`. A server that ignores
Range (answers 200) is handled by starting over from byte 0, but then each attempt must fetch the
whole file within one request's deadline.

`.part` writes are not fsynced as they go: after a power cut the tail may be lost or zero-filled,
and the final sha256 check catches either.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from protocol import Artifact, ArtifactMismatchError, Manifest, TruncatedArtifactError

from ..backoff import Backoff
from ..config import BackoffConfig
from ..errors import CorruptDownloadError, DownloadError
from .slots import verify_artifact

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


async def download(
    url: str,
    dest: Path,
    artifact: Artifact,
    *,
    client: httpx.AsyncClient,
    chunk_size: int = 1 << 20,
    request_timeout: float = 30.0,
    max_failures: int = 5,
    backoff: Backoff | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Path:
    """Fetch `url` into `dest` unless `dest` already verifies; resume from `<dest>.part`."""
    dest = Path(dest)
    if dest.exists():
        try:
            await asyncio.to_thread(verify_artifact, dest, artifact)
            return dest
        except (ArtifactMismatchError, TruncatedArtifactError):
            dest.unlink()
    part = dest.with_name(dest.name + ".part")
    backoff = backoff or Backoff(BackoffConfig())
    failures = 0
    while (have := _size(part)) != artifact.size:
        if have > artifact.size:
            part.unlink()
            continue
        end = min(have + chunk_size, artifact.size) - 1
        try:
            async with asyncio.timeout(request_timeout):
                await _fetch(client, url, part, have, end, artifact)
            error: Exception | None = None
        except (httpx.TransportError, TimeoutError, _Retryable) as exc:
            error = exc
        except httpx.HTTPError as exc:  # not worth retrying (a body that does not decode, ...)
            raise DownloadError(url, f"{type(exc).__name__}: {exc}.") from exc
        if _size(part) > have:
            failures = 0
            backoff.reset()
            continue
        failures += 1
        if failures >= max_failures:
            raise DownloadError(url, f"{failures} requests in a row brought no bytes (last: {_describe(error)}).")
        await sleep(backoff.next_delay())
    try:
        await asyncio.to_thread(_verify_and_commit, part, dest, artifact)
    except (ArtifactMismatchError, TruncatedArtifactError) as exc:
        part.unlink(missing_ok=True)
        raise CorruptDownloadError(url, f"the downloaded bytes were refused and deleted: {exc}",
                                   reason="truncated" if isinstance(exc, TruncatedArtifactError) else "tampered") from exc
    return dest


async def download_all(
    base_url: str,
    manifest: Manifest,
    staged_dir: Path,
    *,
    client: httpx.AsyncClient,
    request_timeout: float = 30.0,
    max_failures: int = 5,
) -> Path:
    """Fetch every artifact of `manifest` from `<base_url>/<name>` into `staged_dir`, for Slots.install."""
    staged_dir = Path(staged_dir)
    staged_dir.mkdir(parents=True, exist_ok=True)
    for a in manifest.artifacts:
        await download(
            f"{base_url.rstrip('/')}/{a.name}", staged_dir / a.name, a,
            client=client, request_timeout=request_timeout, max_failures=max_failures,
        )
    return staged_dir


class _Retryable(Exception):
    """A server answer worth asking again (503 and friends)."""


async def _fetch(client: httpx.AsyncClient, url: str, part: Path, start: int, end: int, artifact: Artifact) -> None:
    async with client.stream("GET", url, headers={"Range": f"bytes={start}-{end}"}) as r:
        if r.status_code == 206:
            m = _CONTENT_RANGE.fullmatch(r.headers.get("content-range", ""))
            if not m or int(m[1]) != start:
                raise DownloadError(url, f"the server answered range {r.headers.get('content-range')!r} to bytes={start}-{end}.")
            if m[3] != "*" and int(m[3]) != artifact.size:
                part.unlink(missing_ok=True)
                raise CorruptDownloadError(
                    url, f"the server's file is {m[3]} bytes where the manifest says {artifact.size} for {artifact.name!r}.",
                    reason="truncated" if int(m[3]) < artifact.size else "tampered",
                )
            await _append(r, part, "ab", end - start + 1)
        elif r.status_code == 200:  # Range ignored: the whole file, from byte 0
            await _append(r, part, "wb", artifact.size + 1)  # one byte over, so a longer file is caught
            if _size(part) > artifact.size:
                part.unlink()
                raise CorruptDownloadError(
                    url, f"the server's file is longer than the {artifact.size} bytes the manifest says for {artifact.name!r}."
                )
        elif r.status_code == 416:
            part.unlink(missing_ok=True)
            raise CorruptDownloadError(
                url, f"the server's file ends before byte {start}, yet the manifest says {artifact.size} bytes.",
                reason="truncated",
            )
        elif r.status_code in _RETRYABLE:
            raise _Retryable(f"HTTP {r.status_code}")
        else:
            raise DownloadError(url, f"the server answered HTTP {r.status_code}.")


async def _append(r: httpx.Response, part: Path, mode: str, limit: int) -> None:
    # Writes are small and buffered; closing the file on any exit keeps what arrived for a resume.
    with open(part, mode) as f:
        async for chunk in r.aiter_bytes():
            chunk = chunk[:limit]
            f.write(chunk)
            limit -= len(chunk)
            if limit <= 0:
                break


def _verify_and_commit(part: Path, dest: Path, artifact: Artifact) -> None:
    verify_artifact(part, artifact)
    with open(part, "rb") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _describe(exc: Exception | None) -> str:
    if exc is None:
        return "an empty answer"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
