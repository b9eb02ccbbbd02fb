"""The stream's alert sink: closed windows and device predictions → detectors → alerts → NATS/webhook.

FeatureStream (hub/features/streaming.py) calls, from its worker thread, once per step:

    feed.windows(view, rows)     the windows of `view` that fired (feature rows, feature_schema)
    feed.change(files)           the files a lake version added: their `pred.class` rows
    feed.step_done()             after the step's checkpoint: the detectors' state is saved

Values: for the view named `view_name` (the condition view), each channel's `<channel>.mean` per
window feeds `DetectorBank.observe`; each prediction row feeds `observe_prediction` with its class
name. Updates of a window already fired (late rows) are not fed again: the detectors score a
window once. Alert events go to an asyncio queue that `publish_events` drains on the hub's loop.

Hazard: the detectors' state is saved once per step, the stream's checkpoint once per step too,
but not in one transaction: a crash between them replays that step's windows into detectors that
already saw them (counted as `stale` by the bank, not scored twice, when their window ends are not
newer than what the key last saw).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import duckdb
import pyarrow as pa

from .detectors import DetectorBank
from .notify import AlertPublisher
from .store import AlertEvent, AlertStore

log = logging.getLogger("edgeloop.hub.alerts")

STATE = "stream"


class AlertFeed:
    def __init__(self, store: AlertStore, *, view_name: str, classes: tuple[str, ...],
                 loop: asyncio.AbstractEventLoop | None = None, queue: asyncio.Queue | None = None) -> None:
        self.store = store
        self.view_name = view_name
        self.classes = classes
        self._loop = loop
        self._queue = queue
        state = store.load_detectors(STATE)
        self.bank = DetectorBank.from_state(state) if state else DetectorBank()
        self.counters = {"windows": 0, "predictions": 0, "findings": 0, "raised": 0, "suppressed": 0}

    def windows(self, view: Any, rows: pa.Table) -> None:
        if view.name != self.view_name or rows.num_rows == 0:
            return
        cols = {c: rows.column(f"{c}.mean").to_pylist() for c in view.spec.channels
                if f"{c}.mean" in rows.column_names}
        tenants, devices, ends = (rows.column(c).to_pylist() for c in ("tenant", "device", "event_time"))
        for i, (tenant, device, end) in enumerate(zip(tenants, devices, ends)):
            self.counters["windows"] += 1
            for channel, values in cols.items():
                for finding in self.bank.observe(tenant, device, channel, end, values[i]):
                    self._raise(finding)

    def change(self, files: tuple[str, ...]) -> None:
        with duckdb.connect() as con:
            got = con.execute(
                "SELECT tenant, device, epoch_us(ts), value FROM read_parquet(?)"
                " WHERE kind = 'prediction' AND channel = 'pred.class' ORDER BY tenant, device, ts",
                [list(files)],
            ).fetchall()
        for tenant, device, start, value in got:
            self.counters["predictions"] += 1
            c = int(value)
            name = self.classes[c] if 0 <= c < len(self.classes) else str(c)
            finding = self.bank.observe_prediction(tenant, device, start, name)
            if finding is not None:
                self._raise(finding)

    def step_done(self) -> None:
        self.store.save_detectors(STATE, self.bank.to_state())

    def _raise(self, finding: Any) -> None:
        self.counters["findings"] += 1
        event = self.store.raise_(finding, time.time_ns() // 1000)
        if event is None:
            self.counters["suppressed"] += 1
            return
        self.counters["raised"] += 1
        if self._loop is not None and self._queue is not None:
            self._loop.call_soon_threadsafe(put_event, self._queue, event)


def put_event(queue: asyncio.Queue, event: AlertEvent) -> None:
    try:
        queue.put_nowait(event)
    except asyncio.QueueFull:  # the publisher is stuck (NATS down, webhook slow): the store has the alert
        log.warning("alerts: event queue full; alert %s stays in the store but is not published", event.alert.id)


async def publish_events(queue: asyncio.Queue, publisher: AlertPublisher, stop: asyncio.Event) -> None:
    """Drain alert events into the publisher until `stop`."""
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while True:
            get = asyncio.ensure_future(queue.get())
            await asyncio.wait({get, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                return
            await publisher.publish(get.result())
    finally:
        stopped.cancel()
