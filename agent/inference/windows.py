"""Feature windows on the device: telemetry in, as it arrives; feature rows of closed windows out.

Contract (`FeatureWindower`):

* **Who calls it.** `InferenceTap.append` (agent/inference/tap.py), on the event loop, with every
  chunk of telemetry an input appended to the buffer; `flush()` at shutdown. Not thread-safe: one
  owner. The work per call is numpy over the chunk and the windows it closes (window_features).
* **What comes out.** Rows for windows that have *closed*, with the features
  `protocol.features.window_features` computes over exactly that window's readings: the same
  function the hub runs offline over the same readings, so online and offline rows agree bit for
  bit. Window `k` is `[k*w, (k+1)*w)`; it closes when a spec-channel reading at or after
  `(k+1)*w + grace_us` has been fed (a later chunk, or the same one), or on `flush()`. A closed
  window the spec rejects (a channel with fewer than `min_samples` samples, a non-finite
  feature) gives no row: `feed` may return fewer rows than windows closed.
* **Order.** Chunks may cut the stream anywhere and rows inside a window may come in any order.
  A reading for a window that already closed is *late*: counted (`late_readings`,
  `late_windows`) and dropped, never an error. `grace_us` trades latency for fewer late drops.
* **Memory.** At most `max_open_windows` windows are held; when a reading opens one more, the
  oldest open window is closed early (`forced_windows`). Readings of channels outside the spec
  are not kept.
* **Restarts.** The windower is in memory; after a restart (or `set_spec`) the window of the
  first reading may have had readings before it that are gone, and features over part of a
  window are not the hub's features. So that window is dropped (`partial_windows`; its readings
  that come later count as late), unless the first reading lies exactly on the window's start.

Hazard: a reading stamped far in the future (a clock jump) closes every open window at once.
"""

from __future__ import annotations

import numpy as np

from protocol import Readings
from protocol.features import FeatureSpec, window_features

__all__ = ["FeatureWindower"]

_NO_ROWS = np.empty(0, np.int64)


class FeatureWindower:
    def __init__(
        self, spec: FeatureSpec, *, grace_us: int = 0, max_open_windows: int = 3, dtype: type = np.float32
    ) -> None:
        if isinstance(grace_us, bool) or not isinstance(grace_us, int) or grace_us < 0:
            raise ValueError(f"FeatureWindower grace_us is {grace_us!r}; it must be an int number of µs >= 0.")
        if isinstance(max_open_windows, bool) or not isinstance(max_open_windows, int) or max_open_windows < 1:
            raise ValueError(f"FeatureWindower max_open_windows is {max_open_windows!r}; it must be an int >= 1.")
        if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"FeatureWindower dtype is {dtype!r}; it must be float32 or float64.")
        self.grace_us = grace_us
        self.max_open_windows = max_open_windows
        self.dtype = np.dtype(dtype)  # of the feature rows out; float64 keeps window_features' exact values
        # Cumulative over the windower's life, across set_spec: the tap reports deltas.
        self.late_readings = 0  # readings dropped because their window had closed
        self.late_windows = 0  # closed windows that got late readings, once per feed that brought them
        self.forced_windows = 0  # windows closed early to keep within max_open_windows
        self.partial_windows = 0  # first windows after a reset, dropped as possibly incomplete
        self.set_spec(spec)

    @property
    def spec(self) -> FeatureSpec:
        return self._spec

    @property
    def open_windows(self) -> int:
        return len(self._open)

    def set_spec(self, spec: FeatureSpec) -> None:
        """Start over with `spec`: open windows are dropped unpredicted (their rows would not fit
        a model of another spec); the counters carry on."""
        if not isinstance(spec, FeatureSpec):
            raise TypeError(f"FeatureWindower needs a protocol.features.FeatureSpec; got {spec!r}.")
        self._spec = spec
        self._w = spec.window_us
        self._index = {name: i for i, name in enumerate(spec.channels)}
        # window id -> pieces of (spec channel index uint16, ts int64, value float64)
        self._open: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._closed_below: int | None = None  # windows below this id are closed; None: nothing seen yet
        self._watermark: int | None = None  # the largest spec-channel timestamp fed

    def feed(self, readings: Readings) -> tuple[np.ndarray, np.ndarray]:
        """Take a chunk; return (window starts µs int64 [n], features [n, k] of `dtype`, float32
        by default) of the windows it closed, ascending by start."""
        chan, ts, value = self._spec_rows(readings)
        if not len(ts):
            return self._close([])
        self._accept(chan, ts, value)  # lateness is judged against what closed before this chunk
        top = int(ts.max())
        self._watermark = top if self._watermark is None else max(self._watermark, top)
        # window k is closed once (k + 1) * w + grace <= watermark, i.e. k < bound
        bound = (self._watermark - self.grace_us) // self._w
        closing = [k for k in self._open if k < bound]
        surplus = len(self._open) - len(closing) - self.max_open_windows
        if surplus > 0:
            self.forced_windows += surplus
            closing += sorted(k for k in self._open if k >= bound)[:surplus]
        self._closed_below = max(self._closed_below or 0, bound)
        return self._close(closing)

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        """Close every open window now (shutdown, a model switch); same result as `feed`."""
        return self._close(list(self._open))

    # --- internals -------------------------------------------------------------------------------
    def _spec_rows(self, readings: Readings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        remap = np.array([self._index.get(name, -1) for name in readings.channels], np.int32)
        if not len(readings) or not (remap >= 0).any():
            return _NO_ROWS.astype(np.uint16), _NO_ROWS, np.empty(0, np.float64)
        chan = remap[readings.channel]
        keep = chan >= 0
        return (chan[keep].astype(np.uint16), np.asarray(readings.ts_us[keep], np.int64),
                np.asarray(readings.value[keep], np.float64))

    def _accept(self, chan: np.ndarray, ts: np.ndarray, value: np.ndarray) -> None:
        window = np.floor_divide(ts, self._w)
        if self._closed_below is None:  # the first readings since a reset
            first = int(ts.min())
            k0 = first // self._w
            self._closed_below = k0
            if first != k0 * self._w:  # readings of this window may have come before the reset
                self._closed_below = k0 + 1
                self.partial_windows += 1
                keep = window != k0
                chan, ts, value, window = chan[keep], ts[keep], value[keep], window[keep]
        late = window < self._closed_below
        if late.any():
            self.late_readings += int(late.sum())
            self.late_windows += len(np.unique(window[late]))
            keep = ~late
            chan, ts, value, window = chan[keep], ts[keep], value[keep], window[keep]
        if not len(window):
            return
        order = np.argsort(window, kind="stable")
        window, chan, ts, value = window[order], chan[order], ts[order], value[order]
        cuts = np.flatnonzero(np.r_[True, window[1:] != window[:-1]])
        for lo, hi in zip(cuts, np.r_[cuts[1:], len(window)]):
            self._open.setdefault(int(window[lo]), []).append((chan[lo:hi], ts[lo:hi], value[lo:hi]))

    def _close(self, windows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        k = len(self._spec.feature_names)
        if not windows:
            return _NO_ROWS, np.empty((0, k), self.dtype)
        pieces = [p for w in sorted(windows) for p in self._open.pop(w)]
        self._closed_below = max(self._closed_below or 0, max(windows) + 1)  # forced closes move it too
        # One window_features call over every closing window: features are per window, so this
        # is bit-identical to one call per window, and to the hub's call over all of its readings.
        readings = Readings(
            self._spec.channels,
            np.concatenate([c for c, _, _ in pieces]),
            np.concatenate([t for _, t, _ in pieces]),
            np.concatenate([v for _, _, v in pieces]),
        )
        _, matrix, ends = window_features(readings, self._spec)
        return ends - self._w, matrix.astype(self.dtype, copy=False)
