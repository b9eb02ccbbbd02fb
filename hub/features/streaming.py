"""The streaming path: new lake data → per-device windows → the online store, as windows close.

    stream = FeatureStream(data_dir, service, lake, max_out_of_orderness_us=..., ...)
    stream.step()        # one poll: every lake version appended since the last step
    stream.close()

Input. The lake's Delta log (`Lake.changes(since)`): each version an ingest commit appended is
one input batch, read from the files it added (nothing else is re-read). The position in the
stream is a lake version, so the hub processes that ingest (one or several) need not feed this
path: it runs in one hub process per data dir (`run_feature_stream` holds an flock), and sees
every process's appends in commit order.

Per registered view (its latest version, for views over a lake kind), a
`hub.streaming.StreamProcessor` keyed by (tenant, device) with tumbling windows of the view's
`window_us` and `FeatureAggregate(spec)` as the aggregate: `protocol.features.window_features`,
the function the device runs before inference and `materialize` runs in batch. A window that
fires or is updated (late rows within `allowed_lateness`) becomes one feature row, written with
`OnlineBackend.update` (the newer-wins rule makes replays harmless). Rows later than that are
counted (`too_late`, in `stats()`), and stay in the lake for the next materialization.

Times of a streamed row: `event_time` = window end; `available_at` = the processing time when the
row was emitted. That is later than, or equal to, when the hub had the readings (never a leak);
an update gets a later `available_at`, so it replaces the earlier revision in the online store.

State: `<data_dir>/streaming/<view>-<version>.db` (hub/streaming/state.py), checkpointed once per
step with the last lake version consumed; a restart replays from there. A view seen for the
first time starts at the lake's current version (its history is `materialize`'s job, not the
stream's), so adding a view never replays months of lake.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from hub.storage.lake import Lake
from hub.storage.store import try_lock
from hub.ticker import wait_or_stop
from hub.streaming import FeatureAggregate, StreamOutput, StreamProcessor, feature_windows
from protocol import Readings

from .definitions import FeatureView
from .offline import feature_schema
from .service import FeatureService

__all__ = ["FeatureStream", "run_feature_stream"]

log = logging.getLogger("edgeloop.hub.features.stream")


@dataclass
class _ViewStream:
    view: FeatureView
    proc: StreamProcessor
    position: int  # last lake version consumed


class FeatureStream:
    def __init__(self, data_dir: Path, service: FeatureService, lake: Lake, *, max_out_of_orderness_us: int,
                 allowed_lateness_us: int, idle_timeout_us: int | None, sinks: Sequence[Any] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.service = service
        self.lake = lake
        self._params = dict(max_out_of_orderness_us=max_out_of_orderness_us,
                            allowed_lateness_us=allowed_lateness_us, idle_timeout_us=idle_timeout_us)
        self._streams: dict[str, _ViewStream] = {}
        # Also told what the stream sees: windows(view, rows) per fired batch, change(files) per lake
        # version, step_done() after each step's checkpoint (the alert feed, hub/alerts/feed.py).
        self.sinks = tuple(sinks)
        self._sink_position: int | None = None
        self.counters = {"versions": 0, "rows": 0, "windows": 0, "updates": 0, "empty_windows": 0, "written": 0}

    def close(self) -> None:
        for s in self._streams.values():
            s.proc.close()
        self._streams.clear()

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "views": {name: {"version": s.view.version, "position": s.position, **s.proc.counters}
                      for name, s in self._streams.items()},
        }

    def _views(self) -> list[FeatureView]:
        return [r.view for r in self.service.registry.list()]

    def _stream(self, view: FeatureView) -> _ViewStream:
        current = self._streams.get(view.name)
        if current is not None and current.view.version == view.version:
            return current
        if current is not None:  # the view has a new version: its stream starts afresh
            current.proc.close()
        folder = self.data_dir / "streaming"
        folder.mkdir(parents=True, exist_ok=True)
        proc, position = StreamProcessor.open(
            folder / f"{view.name}-{view.version}.db", FeatureAggregate(view.spec), feature_windows(view.spec),
            **self._params,
        )
        if position is None:
            position = self.lake.version()
            proc.checkpoint(position)
        stream = self._streams[view.name] = _ViewStream(view, proc, position)
        return stream

    def step(self, now_us: int | None = None) -> dict[str, int]:
        """Consume every lake version appended since the last step, for every view; checkpoint.

        The change feed is read once per step and each version's files once per (source,
        channels): views over the same readings at other windows share the read."""
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        streams = [self._stream(view) for view in self._views()]
        if self._sink_position is None:  # the sinks start where the streams are
            self._sink_position = min((s.position for s in streams), default=self.lake.version())
        start = min([s.position for s in streams] + ([self._sink_position] if self.sinks else []),
                    default=self.lake.version())
        changes = self.lake.changes(start)
        for change in changes:
            reads: dict[tuple, tuple[Readings, list[tuple[str, str]], np.ndarray]] = {}
            for s in streams:
                if change.version <= s.position:
                    continue
                key = (s.view.source, s.view.spec.channels)
                if key not in reads:
                    reads[key] = self._read(change.files, s.view)
                readings, keys, key_index = reads[key]
                if len(readings):
                    self._write(s.view, s.proc.process_many(keys, key_index, readings, now_us=now_us), now_us)
                    self.counters["rows"] += len(readings)
                s.position = change.version
            if self.sinks and change.version > self._sink_position:  # the predictions it brought
                for sink in self.sinks:
                    sink.change(change.files)
                self._sink_position = change.version
        for s in streams:
            if self._params["idle_timeout_us"] is not None:  # devices gone quiet: close their windows
                self._write(s.view, s.proc.flush(now_us), now_us)
            s.proc.checkpoint(s.position)
        for sink in self.sinks:
            sink.step_done()
        self.counters["versions"] += len(changes)
        return {"versions": len(changes)}

    def _read(self, files: tuple[str, ...], view: FeatureView) -> tuple[Readings, list[tuple[str, str]], np.ndarray]:
        channels = list(view.spec.channels)
        with duckdb.connect() as con:
            got = con.sql(
                "SELECT tenant, device, channel, epoch_us(ts) AS ts, value FROM read_parquet(?)"
                " WHERE kind = ? AND list_contains(?, channel)",
                params=[list(files), view.source, channels],
            ).to_arrow_table()
        if got.num_rows == 0:
            return Readings.empty(), [], np.empty(0, np.int64)
        entity = np.char.add(np.char.add(np.asarray(got.column("tenant").to_pylist(), dtype=str), "\x1f"),
                             np.asarray(got.column("device").to_pylist(), dtype=str))
        uniq, key_index = np.unique(entity, return_inverse=True)
        keys = [tuple(k.split("\x1f", 1)) for k in uniq.tolist()]
        index = {c: i for i, c in enumerate(channels)}
        channel = np.fromiter((index[c] for c in got.column("channel").to_pylist()), np.uint16, got.num_rows)
        readings = Readings(tuple(channels), channel, got.column("ts").to_numpy().astype(np.int64),
                            got.column("value").to_numpy().astype(np.float64))
        return readings, keys, key_index

    def _write(self, view: FeatureView, out: StreamOutput, now_us: int) -> None:
        rows = [w for w in out.windows if w.value is not None]
        self.counters["windows"] += sum(not w.update for w in out.windows)
        self.counters["updates"] += sum(w.update for w in out.windows)
        self.counters["empty_windows"] += len(out.windows) - len(rows)
        if not rows:
            return
        schema = feature_schema(view)
        matrix = np.stack([w.value.values for w in rows])
        cols: dict[str, Any] = {
            "tenant": [w.key[0] for w in rows],
            "device": [w.key[1] for w in rows],
            "window_start": [w.start_us for w in rows],
            "event_time": [w.end_us for w in rows],
            "available_at": [now_us] * len(rows),
            "materialized_at": [now_us] * len(rows),
        }
        for j, name in enumerate(view.feature_names):
            cols[name] = matrix[:, j]
        table = pa.Table.from_pydict(cols, schema=schema)
        self.counters["written"] += self.service.online.update(view, table, now_us=now_us)["updated"]
        fired = [i for i, w in enumerate(rows) if not w.update]
        if self.sinks and fired:
            first = table.take(pa.array(fired))
            for sink in self.sinks:
                sink.windows(view, first)


async def run_feature_stream(data_dir: Path, service: FeatureService, lake: Lake, stop: asyncio.Event, *,
                             interval: timedelta, max_out_of_orderness: timedelta, allowed_lateness: timedelta,
                             idle_timeout: timedelta, sinks: Sequence[Any] = ()) -> None:
    """Poll the lake every `interval` while this process holds `<data_dir>/streaming.lock`."""
    fd: int | None = None
    stream: FeatureStream | None = None
    try:
        while True:
            if fd is None:
                fd = try_lock(Path(data_dir) / "streaming.lock")
            if fd is not None:
                if stream is None:
                    stream = FeatureStream(
                        data_dir, service, lake,
                        max_out_of_orderness_us=_us(max_out_of_orderness),
                        allowed_lateness_us=_us(allowed_lateness), idle_timeout_us=_us(idle_timeout), sinks=sinks,
                    )
                try:
                    await asyncio.to_thread(stream.step)
                except Exception as exc:  # noqa: BLE001 - the stream must not stop ingest; retry next poll
                    log.error("feature stream: step failed (%s: %s); retrying", type(exc).__name__, exc)
                    stream.close()
                    stream = None  # reopen from the last checkpoint
            if await wait_or_stop(stop, interval.total_seconds()):
                return
    finally:
        if stream is not None:
            stream.close()
        if fd is not None:
            os.close(fd)


def _us(d: timedelta) -> int:
    return int(d.total_seconds() * 1_000_000)
