"""FeatureSpec adapter: protocol.features.window_features as a stream aggregate, bit for bit.

    proc = StreamProcessor(FeatureAggregate(spec), feature_windows(spec), ...)

Each emitted window's value is a `WindowFeatures` (names, one float64 row, end), or None when
window_features keeps no row for it (a channel with fewer than `min_samples` finite samples, or a
non-finite feature); an update may turn None into features or back.

Why bit for bit: window_features computes every window from its own rows only, as offsets from
the window's own start (`ts - k * window_us`) and values sorted by (ts, value). The stream hands
the adapter exactly a window's rows, so calling window_features on them gives the row that
window_features gives for that window over any superset of readings. `many` computes all windows
of one call in one window_features pass: it moves window j's rows to `[j * window_us, (j + 1) *
window_us)` by subtracting a multiple of window_us, which leaves every offset, and so every
number, unchanged (band energies, where the spec has bands, depend on ts spacings only, which the
shift keeps too). tests/hub/streaming/test_features_adapter.py checks both against
window_features over the whole input; if the feature arithmetic ever uses absolute times, that
test fails rather than the features drifting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.features import FeatureSpec, window_features
from protocol.readings import Readings

from .engine import Windows
from .errors import StreamConfigError

__all__ = ["FeatureAggregate", "WindowFeatures", "feature_windows"]


@dataclass(frozen=True, eq=False)
class WindowFeatures:
    names: tuple[str, ...]
    values: np.ndarray  # float64 [n_features], one row of window_features' matrix
    end_us: int


def feature_windows(spec: FeatureSpec) -> Windows:
    """The windows the adapter needs: tumbling, `spec.window_us`."""
    return Windows(spec.window_us)


class FeatureAggregate:
    """`aggregate` for StreamProcessor: the window's features under `spec` (tumbling spec.window_us)."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec

    def _check(self, start: int, end: int) -> None:
        w = self.spec.window_us
        if end - start != w or start % w:
            raise StreamConfigError(
                f"FeatureAggregate needs tumbling windows of spec.window_us={w}; got [{start}, {end}).")

    def __call__(self, key: Any, start_us: int, end_us: int, readings: Readings) -> WindowFeatures | None:
        self._check(start_us, end_us)
        names, matrix, ends = window_features(readings, self.spec)
        if not len(ends):
            return None
        if len(ends) != 1 or int(ends[0]) != end_us:
            raise StreamConfigError(f"Window [{start_us}, {end_us}) holds rows outside it (features end at {ends.tolist()}).")
        return WindowFeatures(names, matrix[0], end_us)

    def many(self, items: Sequence[tuple[Any, int, int, Readings]]) -> list[WindowFeatures | None]:
        """All windows of one processor call in one window_features pass (same numbers as __call__)."""
        if len(items) < 2 or len({r.channels for *_, r in items}) != 1:
            return [self(*item) for item in items]
        w = self.spec.window_us
        parts_ts = []
        for j, (_, start, end, r) in enumerate(items):
            self._check(start, end)
            parts_ts.append(r.ts_us - (start - j * w))  # window j now covers [j*w, (j+1)*w)
        ts = np.concatenate(parts_ts)
        if len(ts) and (ts.min() < 0 or ts.max() >= len(items) * w):
            raise StreamConfigError("FeatureAggregate.many: a window holds rows outside it.")
        joined = Readings(items[0][3].channels, np.concatenate([r.channel for *_, r in items]), ts,
                          np.concatenate([r.value for *_, r in items]))
        names, matrix, ends = window_features(joined, self.spec)
        out: list[WindowFeatures | None] = [None] * len(items)
        for row, slot in enumerate((ends // w - 1).tolist()):
            out[slot] = WindowFeatures(names, matrix[row], items[slot][2])
        return out
