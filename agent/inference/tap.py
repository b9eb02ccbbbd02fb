"""The inference tap: a Sink in front of the buffer that turns appended telemetry into predictions.

Contract (`InferenceTap`):

* **Who calls it.** Inputs, exactly as they call the buffer (agent/inputs/base.py `Sink`): the
  daemon hands them the tap instead of the buffer. The daemon runs `run()` as a supervised task
  (until cancelled) and awaits `flush()` at shutdown, before the last seal.
* **Durability first.** Every call goes to the real sink first; only after it returned are the
  group's TELEMETRY readings fed to the `FeatureWindower`. If the sink raises, nothing is fed, and
  the input's retry feeds the readings once. Readings are fed only while the pipeline has a
  model (`pipeline.spec`); a new spec starts the windows over.
* **The queue.** Closed windows wait in a queue bounded at `max_queued_windows`. Full policy:
  drop the *oldest* windows (counted in the pipeline's `inference.dropped_windows`): a backlog
  means inference cannot keep up, and the newest windows describe the machine now. `run()` wakes
  on an event, takes up to `max_batch_windows` windows of one spec per call, predicts them off the
  loop (`asyncio.to_thread(pipeline.predict, ...)`), and appends the readings it gets with
  `kind=Kind.PREDICTION`. No polling.
* **What errors mean.** A failed batch is counted by the pipeline and skipped. An error from the
  sink while storing predictions propagates out of `run()` (the supervisor restarts it; that
  batch is lost). Windows open or queued at a crash are lost too: predictions are derived data,
  not checkpointed, and the hub can recompute them from the telemetry.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import numpy as np

from protocol import Kind, Readings
from protocol.features import FeatureSpec

from ..buffer import AppendResult
from ..inputs.base import Sink
from .pipeline import InferencePipeline
from .windows import FeatureWindower

__all__ = ["InferenceTap"]


@dataclass
class _Windows:
    spec: FeatureSpec
    starts_us: np.ndarray
    features: np.ndarray

    def __len__(self) -> int:
        return len(self.starts_us)

    def split(self, n: int) -> tuple["_Windows", "_Windows"]:
        return (_Windows(self.spec, self.starts_us[:n], self.features[:n]),
                _Windows(self.spec, self.starts_us[n:], self.features[n:]))


class InferenceTap:
    def __init__(
        self,
        sink: Sink,
        pipeline: InferencePipeline,
        *,
        grace_us: int = 0,
        max_open_windows: int = 3,
        max_queued_windows: int = 4096,
        max_batch_windows: int = 256,
    ) -> None:
        for name, value in (("max_queued_windows", max_queued_windows), ("max_batch_windows", max_batch_windows)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"InferenceTap {name} is {value!r}; it must be an int >= 1.")
        self._sink = sink
        self._pipeline = pipeline
        self._grace_us, self._max_open = grace_us, max_open_windows
        self._max_queued, self._max_batch = max_queued_windows, max_batch_windows
        self._windower: FeatureWindower | None = None
        self._fed_spec: FeatureSpec | None = None  # the spec the windower holds windows of, None: idle
        self._late_seen = 0
        self._queue: deque[_Windows] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = asyncio.Lock()  # run() and flush() never predict concurrently
        self.predicted_windows = 0  # windows whose prediction readings were stored

    @property
    def queued_windows(self) -> int:
        return self._queued

    @property
    def windower(self) -> FeatureWindower | None:
        return self._windower

    # --- the Sink face ------------------------------------------------------------------------------
    async def append(
        self, readings: Readings, *, kind: Kind = Kind.TELEMETRY, checkpoint: tuple[str, str] | None = None
    ) -> AppendResult:
        result = await self._sink.append(readings, kind=kind, checkpoint=checkpoint)
        self._observe([(kind, readings)])
        return result

    async def append_groups(
        self, groups: list[tuple[Kind, Readings]], *, checkpoint: tuple[str, str] | None = None
    ) -> AppendResult:
        result = await self._sink.append_groups(groups, checkpoint=checkpoint)
        self._observe(groups)
        return result

    async def checkpoint(self, source: str) -> str | None:
        return await self._sink.checkpoint(source)

    async def dead_letter(self, source: str, reason: str, data: bytes | None) -> None:
        await self._sink.dead_letter(source, reason, data)

    # --- the task -----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Predict closed windows as they come, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._predict_queued()

    async def flush(self) -> None:
        """Close every open window and predict everything queued, here and now (shutdown, tests)."""
        if self._windower is not None and self._fed_spec is not None:
            self._enqueue(*self._windower.flush())
        await self._predict_queued()

    async def wait_idle(self) -> None:
        """Return once the queue is empty and no batch is being predicted (with `run()` going)."""
        await self._idle.wait()

    # --- internals ----------------------------------------------------------------------------------
    def _observe(self, groups: list[tuple[Kind, Readings]]) -> None:
        spec = self._pipeline.spec
        if spec is None:
            self._fed_spec = None  # what arrives now is never fed: the next model starts over
            return
        if self._windower is None:
            # float64 rows: the pipeline casts them for the model and sends them as `feat.*` as they are
            self._windower = FeatureWindower(spec, grace_us=self._grace_us, max_open_windows=self._max_open,
                                             dtype=np.float64)
        elif spec != self._fed_spec:
            self._windower.set_spec(spec)
        self._fed_spec = spec
        for kind, readings in groups:
            if kind is Kind.TELEMETRY and len(readings):
                self._enqueue(*self._windower.feed(readings))
        late = self._windower.late_windows - self._late_seen
        if late:
            self._late_seen = self._windower.late_windows
            self._pipeline.count_late(late)

    def _enqueue(self, starts_us: np.ndarray, features: np.ndarray) -> None:
        if not len(starts_us):
            return
        assert self._fed_spec is not None
        self._queue.append(_Windows(self._fed_spec, starts_us, features))
        self._queued += len(starts_us)
        dropped = 0
        while self._queued > self._max_queued:  # full: the oldest windows go
            excess = self._queued - self._max_queued
            head = self._queue[0]
            if len(head) <= excess:
                self._queue.popleft()
                gone = len(head)
            else:
                self._queue[0] = head.split(excess)[1]
                gone = excess
            self._queued -= gone
            dropped += gone
        if dropped:
            self._pipeline.count_dropped(dropped)
        self._idle.clear()
        self._wake.set()

    def _take(self) -> _Windows:
        """Up to `max_batch_windows` windows of the oldest spec, from the front of the queue."""
        parts = [self._queue.popleft()]
        while self._queue and self._queue[0].spec == parts[0].spec and sum(map(len, parts)) < self._max_batch:
            parts.append(self._queue.popleft())
        batch = _Windows(parts[0].spec, np.concatenate([p.starts_us for p in parts]),
                         np.concatenate([p.features for p in parts]))
        if len(batch) > self._max_batch:
            batch, rest = batch.split(self._max_batch)
            self._queue.appendleft(rest)
        self._queued -= len(batch)
        return batch

    async def _predict_queued(self) -> None:
        async with self._busy:
            try:
                while self._queue:
                    batch = self._take()
                    readings = await asyncio.to_thread(
                        self._pipeline.predict, batch.starts_us, batch.features, spec=batch.spec
                    )
                    if readings is not None:
                        await self._sink.append(readings, kind=Kind.PREDICTION)
                        self.predicted_windows += len(batch)
            finally:
                if not self._queue:
                    self._idle.set()
