"""Runs the SQLite buffer on one worker thread so the event loop never blocks on disk."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from protocol import Kind, Readings

from .buffer import AppendResult, Buffer, BufferStats, SealedBatch
from .config import BufferConfig
from .errors import BufferFullError

T = TypeVar("T")


class AsyncBuffer:
    """The Buffer's async face. `append` waits for room under `when_full = block`."""

    def __init__(self, settings: BufferConfig, *, tenant: str, device: str) -> None:
        self._settings = settings
        self._tenant, self._device = tenant, device
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._buffer: Buffer | None = None
        self._room = asyncio.Event()
        self.in_flight: set[int] = set()  # seqs being published; never evicted or re-sent

    async def _call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kw))

    @property
    def sync(self) -> Buffer:
        assert self._buffer is not None, "AsyncBuffer used before open()"
        return self._buffer

    async def open(self) -> "AsyncBuffer":
        self._buffer = await self._call(Buffer, self._settings, tenant=self._tenant, device=self._device)
        return self

    async def close(self) -> None:
        if self._buffer is not None:
            await self._call(self._buffer.close)
            self._buffer = None
        self._pool.shutdown(wait=True)

    async def __aenter__(self) -> "AsyncBuffer":
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def epoch(self) -> int:
        return self.sync.epoch

    async def append(
        self, readings: Readings, *, kind: Kind = Kind.TELEMETRY, checkpoint: tuple[str, str] | None = None
    ) -> AppendResult:
        return await self.append_groups([(kind, readings)], checkpoint=checkpoint)

    async def append_groups(
        self, groups: list[tuple[Kind, Readings]], *, checkpoint: tuple[str, str] | None = None
    ) -> AppendResult:
        """Several kinds from one input chunk, with its checkpoint, in one transaction."""
        while True:
            self._room.clear()
            try:
                return await self._call(
                    self.sync.append_groups, groups, checkpoint=checkpoint, in_flight=tuple(self.in_flight)
                )
            except BufferFullError:
                if self._settings.when_full.value != "block" and not self.in_flight:
                    raise
                # Wait for an ack to free room; the timeout re-checks in case the event was missed.
                try:
                    await asyncio.wait_for(self._room.wait(), timeout=1.0)
                except TimeoutError:
                    pass

    async def report(self, build: Callable[[BufferStats], Readings], *, kind: Kind = Kind.HEALTH) -> AppendResult:
        """Append a report built from the buffer's own stats, taken after any room was made."""
        def store() -> AppendResult:
            b = self.sync
            return b.append(build(b.stats()), kind=kind, in_flight=tuple(self.in_flight), rebuild=build)

        return await self._call(store)

    async def seal(self, *, force: bool = False) -> int:
        made = await self._call(self.sync.seal, force=force)
        if made:
            self._room.set()  # sealing compresses: an input waiting under `block` may fit now
        return made

    async def next_batches(self, limit: int) -> list[SealedBatch]:
        return await self._call(self.sync.next_batches, limit, exclude=tuple(self.in_flight))

    async def ack(self, seqs: list[int]) -> int:
        n = await self._call(self.sync.ack, seqs)
        self._room.set()
        return n

    async def stats(self) -> BufferStats:
        return await self._call(self.sync.stats)

    async def checkpoint(self, source: str) -> str | None:
        return await self._call(self.sync.checkpoint, source)

    async def dead_letter(self, source: str, reason: str, data: bytes | None) -> None:
        await self._call(self.sync.dead_letter, source, reason, data)
