"""The event-time stream processor: epoch-aligned windows per key, watermarks, lateness, durable state.

    proc, position = StreamProcessor.open("stream.db", FeatureAggregate(spec), feature_windows(spec),
                                          max_out_of_orderness_us=5_000_000, allowed_lateness_us=60_000_000,
                                          idle_timeout_us=300_000_000)
    for version, readings, key_index, keys in lake_batches(after=position):   # the caller's input
        out = proc.process_many(keys, key_index, readings, now_us=now())
        sink(out.windows)            # revision 1: fired; update=True: revision 2, 3, ...
        dead_letter(out.late)        # too late: counted, never applied
        sink(proc.flush(now()).windows)   # idle keys
        proc.checkpoint(version)     # one transaction; restart resumes after `version`

Semantics (all times are event times in µs since the Unix epoch unless said otherwise)
-------------------------------------------------------------------------------------------

Windows. `Windows(size_us)` is tumbling, `Windows(size_us, slide_us)` sliding (`slide_us` divides
`size_us`). Windows are aligned to the epoch like protocol/features.py: tumbling windows are
`[k * size, (k + 1) * size)`, sliding ones `[k * slide, k * slide + size)`, so a row at `ts` is in
the `size / slide` windows whose start is a multiple of `slide` in `(ts - size, ts]`. Only windows
holding at least one row are ever emitted. Raw rows are kept per *pane* (`slide_us` of event time;
for tumbling windows the window itself), so a row of a sliding window is stored once.

Keys. Every row belongs to a key the caller chooses (`process(key, readings)` for one key, or
`process_many(keys, key_index, readings)` with a key per row): e.g. (tenant, device) or
(tenant, device, channel). Keys are independent: each has its own watermark, so one device's
backlog never fires, updates or rejects another's windows. Keys must be JSON values that survive a
round trip (str, int, float, bool, None, and tuples of those), since the state file stores them.

Watermark. Per key, `W = max event time seen for the key - max_out_of_orderness_us`; it never goes
back. `W` asserts "no more rows with ts < W are expected". A window `[start, end)` FIRES (is
emitted with `revision=1`, `update=False`) when its key's `W >= end`.

One call, one step. A call to `process`/`process_many` judges every row of the batch against the
key's watermark *before* the batch, then adds the accepted rows, then raises the watermark to
the batch's maximum, then emits: windows that reached the watermark fire, and already-fired windows
that took rows are emitted again as updates. A window is emitted at most once per call, with all
the batch's rows in it. So outputs depend on how the input is cut into batches (as any streaming
system's do), and on nothing else: replaying the same batches in the same order gives the same
outputs, which is what restart relies on (below).

Lateness. A window is CLOSED once `end <= W - allowed_lateness_us`: it will never be emitted again
and its state is evicted. A row is:

  - on time        its windows have not fired yet; it lands in them (within max_out_of_orderness
                   this is the normal case for out-of-order rows);
  - late, accepted a window containing it has fired but is not closed: the window is emitted
                   again with `update=True` and `revision` one higher (2, 3, ...), its aggregate
                   recomputed over all its rows;
  - too late       every window containing it is closed: the row is NOT added anywhere, the key's
                   `too_late` counter counts it, and it comes back in `StreamOutput.late` (one
                   `LateRows` per key, with the caller's channel names) to dead-letter or quarantine.
                   Window outputs are unchanged by it.

(For sliding windows a row whose earlier windows are closed but whose last window is not is
accepted; the closed windows are not re-emitted.)

Store-and-forward hazard: a device that was offline sends live data first, then its backlog. The
live data moves the key's watermark to "now", so backlog rows older than `allowed_lateness_us`
come back as too late. Either set `allowed_lateness_us` to the longest offline spell you want to
cover (memory: every open window of every key is held for that long), or recompute such windows
offline from the lake (the late rows say which).

Idle rule. A key whose device stops sending would hold its last window forever, since only its own
rows move its watermark. Two ways out, both the caller's:

  - `advance(key, watermark_us)`: raise a key's watermark explicitly (e.g. from a heartbeat or a
    health report that says the device's clock has moved on);
  - `flush(now_us)`: every key idle for `idle_timeout_us` of *processing time* (the `now_us` the
    caller passed with its last `process` call; keys never given a `now_us` are never idle) gets
    its watermark raised to the end of the last window holding its newest row, so every window
    with data fires. `flush()` with no `now_us` does so for every key (end of input).
    `close=True` raises it past `allowed_lateness_us` too, so the key's state is evicted.
  Rows arriving later for a flushed window are late (update or too late) like any other.

Aggregation. `aggregate(key, window_start_us, window_end_us, readings) -> object` is called for each
emission with the window's raw rows as a `protocol.Readings`, in arrival order (channels are the
processor's channel registry: every name seen so far, in first-seen order; a window's readings may
not use all of them). If the aggregate also has a `many(items)` method, it is called once per call
with the list of `(key, start, end, readings)` to emit and must return one result per item (the
FeatureSpec adapter in features.py does this to compute all windows in one vectorized pass).

Durable state and restart. With `StreamProcessor.open(path, ...)`, `checkpoint(position)` writes
every change since the previous checkpoint (key watermarks and counters, fired windows' revisions,
the raw rows that arrived, evictions, the channel registry, the counters and the caller's opaque
`position`) in ONE SQLite transaction; state.py has the layout. Reopening restores exactly that
state and returns `position`; the caller replays its input after it, in the same batches (e.g. one
batch per Delta version). A crash (or a dropped processor) between checkpoints loses the changes
since the last checkpoint, counters included, so the replay counts nothing twice.

Counters (`counters`): rows_in (every row given, too late ones included), windows_fired (first
emissions), windows_updated (re-emissions), too_late (rows refused), keys, and open_rows (raw rows
held). Per key: `key_stats(key)` (watermark, rows_in, too_late, open windows). Counters are part of
the checkpointed state.

Hazards:
  - `flush(now_us)` and `advance` are input too: they change state like a batch does. Call them
    right before `checkpoint` (as above) so they are inside the checkpointed state; a flush after
    the last checkpoint is lost in a crash and a replay with another `now_us` may flush otherwise.
  - Output is at least once: windows emitted after the last checkpoint are emitted again by the
    replay, with the same revision and value. Sinks must be idempotent on (key, start, revision).
  - The state file records the window and lateness parameters; opening it with others raises
    StreamConfigError (silently reinterpreting panes would corrupt windows). `idle_timeout_us`
    may change.
  - `aggregate` is not recorded: changing it between runs changes results after the restart.
  - Duplicate rows (same channel and ts) are separate rows, as in window_features: dedupe upstream.
  - Memory is every open pane's raw rows: keys x (size + max_out_of_orderness + allowed_lateness)
    of rows, plus one chunk per (key, pane, batch) until a checkpoint compacts them. Chunks are
    slices of the processor's own copy of each batch (never of the caller's arrays), so a batch's
    copy lives until its last pane is compacted or evicted; without a state file, nothing compacts.
  - Not thread-safe; one processor per state file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocol.readings import MAX_CHANNELS, Readings

from .errors import StreamConfigError, StreamError, StreamKeyError
from .state import StreamState

__all__ = ["LateRows", "StreamOutput", "StreamProcessor", "WindowResult", "Windows"]

_NO_WM = -(2**62)  # "no watermark yet": below every event time, far from int64 overflow
_NEVER = 2**62  # above every event time
_LITTLE = sys.byteorder == "little"  # chunk arrays are native int64/uint16/float64; the file is little-endian
Aggregate = Callable[[Any, int, int, Readings], Any]


@dataclass(frozen=True)
class Windows:
    """Epoch-aligned windows: tumbling (`slide_us` None or equal to `size_us`) or sliding."""

    size_us: int
    slide_us: int | None = None

    def __post_init__(self) -> None:
        slide = self.size_us if self.slide_us is None else self.slide_us
        for name, v in (("size_us", self.size_us), ("slide_us", slide)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise StreamConfigError(f"Windows.{name} is {v!r}; it must be an int number of µs > 0.")
        if self.size_us % slide:
            raise StreamConfigError(f"Windows.slide_us {slide} does not divide size_us {self.size_us}.")
        object.__setattr__(self, "slide_us", slide)

    @classmethod
    def tumbling(cls, size_us: int) -> "Windows":
        return cls(size_us)

    @classmethod
    def sliding(cls, size_us: int, slide_us: int) -> "Windows":
        return cls(size_us, slide_us)

    @property
    def is_tumbling(self) -> bool:
        return self.slide_us == self.size_us


@dataclass(frozen=True)
class WindowResult:
    """One emission of a window: `revision` 1 when it fires, 2, 3, ... for updates (`update=True`)."""

    key: Any
    start_us: int
    end_us: int
    revision: int
    update: bool
    rows: int
    value: Any


@dataclass(frozen=True)
class LateRows:
    """Rows of `key` that arrived after every window containing them closed (in the caller's channel names)."""

    key: Any
    readings: Readings


@dataclass
class StreamOutput:
    """What one call emitted: windows (by key in call order, then by start) and too-late rows."""

    windows: list[WindowResult] = field(default_factory=list)
    late: list[LateRows] = field(default_factory=list)

    def extend(self, other: "StreamOutput") -> None:
        self.windows.extend(other.windows)
        self.late.extend(other.late)


class _Pane:
    __slots__ = ("chunks", "persisted", "seq", "n")

    def __init__(self) -> None:
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (ts, channel, value)
        self.persisted = 0  # chunks[:persisted] are in the state file
        self.seq = 0  # next chunk seq in the state file
        self.n = 0


class _Key:
    __slots__ = ("id", "key", "json", "max_ts", "wm", "last_seen", "rows_in", "too_late",
                 "panes", "fired", "pending", "next_fire", "next_evict",
                 "dirty_panes", "dead_panes", "dirty_fired", "dead_fired")

    def __init__(self, id_: int, key: Any, key_json: str) -> None:
        self.id = id_
        self.key = key
        self.json = key_json
        self.max_ts: int | None = None
        self.wm = _NO_WM
        self.last_seen: int | None = None
        self.rows_in = 0
        self.too_late = 0
        self.panes: dict[int, _Pane] = {}  # pane index (ts // slide) -> raw rows
        self.fired: dict[int, int] = {}  # window start -> revision, until the window closes
        self.pending: set[int] = set()  # window starts with rows, not fired yet
        self.next_fire = _NEVER  # min end of pending windows: nothing fires below it
        self.next_evict = _NEVER  # min end over panes' last windows and fired windows: nothing closes below it
        self.dirty_panes: set[int] = set()
        self.dead_panes: set[int] = set()
        self.dirty_fired: set[int] = set()
        self.dead_fired: set[int] = set()


def _tuples(x: Any) -> Any:
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


class StreamProcessor:
    """Event-time windows per key over Readings; see the module docstring for the rules."""

    def __init__(
        self,
        aggregate: Aggregate,
        windows: Windows,
        *,
        max_out_of_orderness_us: int = 0,
        allowed_lateness_us: int = 0,
        idle_timeout_us: int | None = None,
        state: StreamState | None = None,
    ) -> None:
        if not isinstance(windows, Windows):
            raise StreamConfigError(f"windows is {windows!r}; it must be a Windows.")
        for name, v in (("max_out_of_orderness_us", max_out_of_orderness_us), ("allowed_lateness_us", allowed_lateness_us)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise StreamConfigError(f"{name} is {v!r}; it must be an int number of µs >= 0.")
        if idle_timeout_us is not None and (isinstance(idle_timeout_us, bool) or not isinstance(idle_timeout_us, int)
                                            or idle_timeout_us < 0):
            raise StreamConfigError(f"idle_timeout_us is {idle_timeout_us!r}; it must be None or an int >= 0.")
        self.aggregate = aggregate
        self.windows = windows
        self.max_out_of_orderness_us = max_out_of_orderness_us
        self.allowed_lateness_us = allowed_lateness_us
        self.idle_timeout_us = idle_timeout_us
        self._size = windows.size_us
        self._slide: int = windows.slide_us  # type: ignore[assignment]
        self._m = self._size // self._slide
        self._state = state
        self._closed = False
        self._position: int | None = None
        self._keys: dict[Any, _Key] = {}
        self._by_id: list[_Key] = []
        self._channels: list[str] = []
        self._chan_index: dict[str, int] = {}
        self._chan_tuple: tuple[str, ...] = ()
        self._counts = {"rows_in": 0, "windows_fired": 0, "windows_updated": 0, "too_late": 0}
        self._open_rows = 0
        self._dirty: dict[int, _Key] = {}
        self._channels_dirty = False

    # --- durable state ------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        aggregate: Aggregate,
        windows: Windows,
        *,
        max_out_of_orderness_us: int = 0,
        allowed_lateness_us: int = 0,
        idle_timeout_us: int | None = None,
    ) -> tuple["StreamProcessor", int | None]:
        """A processor restored from the state file at `path` (created if missing), and the input
        position of its last checkpoint (None: never checkpointed; replay from the beginning)."""
        state = StreamState(path)
        try:
            proc = cls(aggregate, windows, max_out_of_orderness_us=max_out_of_orderness_us,
                       allowed_lateness_us=allowed_lateness_us, idle_timeout_us=idle_timeout_us, state=state)
            proc._restore()
        except BaseException:
            state.close()
            raise
        return proc, proc._position

    def _config(self) -> dict[str, int]:
        return {"size_us": self._size, "slide_us": self._slide,
                "max_out_of_orderness_us": self.max_out_of_orderness_us, "allowed_lateness_us": self.allowed_lateness_us}

    def _restore(self) -> None:
        assert self._state is not None
        snap = self._state.load()
        if snap.config is None:
            return
        if snap.config != self._config():
            raise StreamConfigError(
                f"{self._state.path} was written with {snap.config}; this processor has {self._config()}. "
                "Open it with the same parameters, or start a new state file and replay.")
        self._position = snap.position
        self._counts.update({k: int(v) for k, v in snap.counters.items() if k in self._counts})
        for name in snap.channels:
            self._chan_index[name] = len(self._channels)
            self._channels.append(name)
        self._chan_tuple = tuple(self._channels)
        for id_, key_json, max_ts, wm, last_seen, rows_in, too_late in snap.keys:
            if id_ != len(self._by_id):
                raise StreamConfigError(f"{self._state.path}: key ids are not dense (found {id_}, expected {len(self._by_id)}).")
            k = _Key(id_, _tuples(json.loads(key_json)), key_json)
            k.max_ts, k.wm, k.last_seen, k.rows_in, k.too_late = max_ts, _NO_WM if wm is None else wm, last_seen, rows_in, too_late
            self._keys[k.key] = k
            self._by_id.append(k)
        for key_id, start, revision in snap.fired:
            self._by_id[key_id].fired[start] = revision
        for key_id, pane, seq, ts, ch, val in snap.chunks:
            k = self._by_id[key_id]
            pn = k.panes.get(pane)
            if pn is None:
                pn = k.panes[pane] = _Pane()
            pn.chunks.append((ts, ch, val))
            pn.persisted = len(pn.chunks)
            pn.seq = seq + 1
            pn.n += len(ts)
            self._open_rows += len(ts)
        slide, size, m = self._slide, self._size, self._m
        for k in self._by_id:  # pending: windows over a pane that the watermark has not reached
            for p in k.panes:
                for w in range((p - m + 1) * slide, p * slide + 1, slide):
                    if w + size > k.wm:
                        k.pending.add(w)
            self._thresholds(k)

    def _thresholds(self, k: _Key) -> None:
        size, slide = self._size, self._slide
        k.next_fire = min(k.pending, default=_NEVER - size) + size
        k.next_evict = min(min(k.panes) * slide if k.panes else _NEVER, min(k.fired, default=_NEVER)) + size

    def checkpoint(self, position: int) -> None:
        """Make everything since the last checkpoint durable, with `position`, in one transaction."""
        if isinstance(position, bool) or not isinstance(position, int):
            raise StreamConfigError(f"position is {position!r}; it must be an int.")
        if self._closed:
            raise StreamError("checkpoint after close(): the state file is closed; reopen it with StreamProcessor.open.")
        if self._state is not None:
            keys, fu, fd, pd, ci, compacted = [], [], [], [], [], []
            for k in self._dirty.values():
                keys.append((k.id, k.json, k.max_ts, None if k.wm == _NO_WM else k.wm, k.last_seen, k.rows_in, k.too_late))
                fd.extend((k.id, w) for w in k.dead_fired)
                fu.extend((k.id, w, k.fired[w]) for w in k.dirty_fired)
                pd.extend((k.id, p) for p in k.dead_panes)
                for p in k.dirty_panes:
                    pn = k.panes[p]
                    new = pn.chunks[pn.persisted:]
                    if not new:
                        continue
                    # One BLOB per column (bytes.join over the chunks' buffers: one C call each), and
                    # the same bytes, read back as arrays, replace the chunks in memory: compaction
                    # only (same rows, same order).
                    if _LITTLE:
                        blobs = (b"".join([c[0] for c in new]), b"".join([c[1] for c in new]),
                                 b"".join([c[2] for c in new]))
                    else:
                        blobs = (b"".join([c[0].astype("<i8") for c in new]), b"".join([c[1].astype("<u2") for c in new]),
                                 b"".join([c[2].astype("<f8") for c in new]))
                    if len(new) > 1:
                        pn.chunks[pn.persisted:] = [(np.frombuffer(blobs[0], "<i8"), np.frombuffer(blobs[1], "<u2"),
                                                     np.frombuffer(blobs[2], "<f8"))]
                    ci.append((k.id, p, pn.seq, *blobs))
                    compacted.append(pn)
            meta = {"config": self._config(), "position": position, "counters": self._counts}
            if self._channels_dirty:
                meta["channels"] = self._channels
            self._state.write(meta=meta, keys=keys, fired_upserts=fu, fired_deletes=fd, pane_deletes=pd, chunk_inserts=ci)
            for pn in compacted:
                pn.persisted = len(pn.chunks)
                pn.seq += 1
        for k in self._dirty.values():
            k.dirty_panes.clear()
            k.dead_panes.clear()
            k.dirty_fired.clear()
            k.dead_fired.clear()
        self._dirty.clear()
        self._channels_dirty = False
        self._position = position

    def close(self) -> None:
        """Close the state file (changes since the last checkpoint are dropped, as in a crash)."""
        if self._state is not None:
            self._state.close()
            self._state = None
            self._closed = True

    @property
    def position(self) -> int | None:
        """The position of the last checkpoint (or of the state file when opened)."""
        return self._position

    # --- counters -----------------------------------------------------------------------------
    @property
    def counters(self) -> dict[str, int]:
        """rows_in, windows_fired, windows_updated, too_late, keys, open_rows (raw rows held)."""
        return {**self._counts, "keys": len(self._keys), "open_rows": self._open_rows}

    def key_stats(self, key: Any) -> dict[str, Any] | None:
        k = self._keys.get(key)
        if k is None:
            return None
        return {"watermark_us": None if k.wm == _NO_WM else k.wm, "max_ts_us": k.max_ts, "last_seen_us": k.last_seen,
                "rows_in": k.rows_in, "too_late": k.too_late, "pending_windows": len(k.pending),
                "updatable_windows": len(k.fired), "open_rows": sum(p.n for p in k.panes.values())}

    def keys(self) -> list[Any]:
        return [k.key for k in self._by_id]

    # --- input --------------------------------------------------------------------------------
    def _key(self, key: Any) -> _Key:
        try:
            k = self._keys.get(key)
        except TypeError:
            raise StreamKeyError(f"Key {key!r} is not hashable: use str, int, float, bool, None or tuples of those.") from None
        if k is None:
            try:
                key_json = json.dumps(key, separators=(",", ":"), allow_nan=False)
                ok = _tuples(json.loads(key_json)) == key
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise StreamKeyError(f"Key {key!r} is not storable: use str, int, float, bool, None or tuples of those.")
            k = self._keys[key] = _Key(len(self._by_id), key, key_json)
            self._by_id.append(k)
            self._dirty[k.id] = k
        return k

    def _remap(self, readings: Readings) -> np.ndarray:
        codes = []
        for name in readings.channels:
            c = self._chan_index.get(name)
            if c is None:
                if len(self._channels) >= MAX_CHANNELS:
                    raise StreamConfigError(f"More than {MAX_CHANNELS} distinct channel names.")
                c = self._chan_index[name] = len(self._channels)
                self._channels.append(name)
                self._chan_tuple = tuple(self._channels)
                self._channels_dirty = True
            codes.append(c)
        ch = np.asarray(readings.channel, np.uint16)
        if codes == list(range(len(codes))):
            return ch
        return np.asarray(codes, np.uint16)[ch]

    def process(self, key: Any, readings: Readings, *, now_us: int | None = None) -> StreamOutput:
        """Add one key's readings; `now_us` (processing time) feeds the idle rule of `flush`."""
        return self._process([self._key(key)], None, readings, now_us)

    def process_many(self, keys: Sequence[Any], key_index: np.ndarray, readings: Readings, *,
                     now_us: int | None = None) -> StreamOutput:
        """Add readings of many keys at once: row i belongs to `keys[key_index[i]]` (keys distinct)."""
        ks = [self._key(k) for k in keys]
        if len({k.id for k in ks}) != len(ks):
            raise StreamKeyError("process_many: keys must be distinct.")
        kidx = np.asarray(key_index)
        if kidx.shape != (len(readings),) or (len(kidx) and not np.issubdtype(kidx.dtype, np.integer)):
            raise StreamKeyError(f"key_index must be an integer array of {len(readings)} entries, one per row.")
        if len(kidx) and (kidx.min() < 0 or kidx.max() >= len(ks)):
            raise StreamKeyError(f"key_index has entries outside [0, {len(ks)}).")
        if len(ks) == 1:
            return self._process(ks, None, readings, now_us)
        return self._process(ks, kidx.astype(np.int64, copy=False), readings, now_us)

    def _process(self, ks: list[_Key], kidx: np.ndarray | None, readings: Readings, now_us: int | None) -> StreamOutput:
        out = StreamOutput()
        nk = len(ks)
        if now_us is not None:
            for k in ks:
                k.last_seen = int(now_us)
                self._dirty[k.id] = k
        n = len(readings)
        if n == 0:
            return out
        size, slide, al = self._size, self._slide, self.allowed_lateness_us
        ch = self._remap(readings)
        ts = np.asarray(readings.ts_us, np.int64)
        val = np.asarray(readings.value, np.float64)
        pane = ts // slide
        # A row is too late when the last window containing it is closed at the old watermark.
        limit = np.fromiter((k.wm for k in ks), np.int64, nk) - al
        late = pane * slide + size <= (limit[0] if kidx is None else limit[kidx])
        nlate = int(np.count_nonzero(late))
        rows_in = [n] if kidx is None else np.bincount(kidx, minlength=nk).tolist()
        for k, r in zip(ks, rows_in):
            if r:
                k.rows_in += r
                self._dirty[k.id] = k
        self._counts["rows_in"] += n
        if nlate:
            self._counts["too_late"] += nlate
            li = np.flatnonzero(late)
            if kidx is None:
                ks[0].too_late += nlate
                out.late.append(LateRows(ks[0].key, readings.take(li)))
            else:
                lk = kidx[li]
                order = np.argsort(lk, kind="stable")
                li, lk = li[order], lk[order]
                cuts = np.flatnonzero(lk[1:] != lk[:-1]) + 1
                for idx in np.split(li, cuts):
                    k = ks[int(kidx[idx[0]])]
                    k.too_late += len(idx)
                    out.late.append(LateRows(k.key, readings.take(idx)))
            keep = ~late
            ts, ch, val, pane = ts[keep], ch[keep], val[keep], pane[keep]
            if kidx is not None:
                kidx = kidx[keep]
        m = len(ts)
        touched: dict[int, list[int]] = {}
        maxes: dict[int, int] = {}
        if m:
            # Group rows by (key, pane) with one stable sort (arrival order kept within a group).
            if kidx is None:
                code = pane
            else:
                pmin = int(pane.min())
                span = int(pane.max()) - pmin + 1
                code = kidx * span + (pane - pmin) if span * nk < 2**62 else None
            if code is None:
                order = np.lexsort((pane, kidx))
            elif m > 1 and bool((code[1:] < code[:-1]).any()):
                order = np.argsort(code, kind="stable")
            else:
                order = None
            if order is None and not nlate:  # own the rows: never keep views of the caller's arrays
                ts, ch, val = ts.copy(), ch.copy(), val.copy()
            if order is not None:
                ts, ch, val, pane = ts[order], ch[order], val[order], pane[order]
                if kidx is not None:
                    kidx = kidx[order]
                if code is not None:
                    code = code[order]
            if code is None:
                brk = (pane[1:] != pane[:-1]) | (kidx[1:] != kidx[:-1])  # type: ignore[index]
            else:
                brk = code[1:] != code[:-1]
            starts = np.r_[0, np.flatnonzero(brk) + 1]
            ends = np.r_[starts[1:], m].tolist()
            gpane = pane[starts].tolist()
            if kidx is None:
                maxes[0] = int(ts.max())
                gkey = [0] * len(starts)
            else:
                gk = kidx[starts]
                kstarts = starts[np.r_[True, gk[1:] != gk[:-1]]]
                for j, mx in zip(kidx[kstarts].tolist(), np.maximum.reduceat(ts, kstarts).tolist()):
                    maxes[j] = mx
                gkey = gk.tolist()
            for j, p, s, e in zip(gkey, gpane, starts.tolist(), ends):
                k = ks[j]
                pn = k.panes.get(p)
                if pn is None:
                    pn = k.panes[p] = _Pane()
                    if p * slide + size < k.next_evict:
                        k.next_evict = p * slide + size
                pn.chunks.append((ts[s:e], ch[s:e], val[s:e]))
                pn.n += e - s
                k.dirty_panes.add(p)
                touched.setdefault(j, []).append(p)
            self._open_rows += m
        emit: list[tuple[_Key, int, int, Readings]] = []
        for j, k in enumerate(ks):
            panes = touched.get(j)
            if panes is None:
                continue
            mx = maxes[j]
            if k.max_ts is None or mx > k.max_ts:
                k.max_ts = mx
            self._step(k, max(k.wm, k.max_ts - self.max_out_of_orderness_us), panes, emit)
        self._aggregate(emit, out)
        return out

    # --- watermarks ---------------------------------------------------------------------------
    def advance(self, key: Any, watermark_us: int) -> StreamOutput:
        """Raise `key`'s watermark to `watermark_us` (never lowers it) and emit what that fires."""
        k = self._key(key)
        out = StreamOutput()
        emit: list[tuple[_Key, int, int, Readings]] = []
        self._step(k, max(k.wm, int(watermark_us)), (), emit)
        self._aggregate(emit, out)
        return out

    def flush(self, now_us: int | None = None, *, close: bool = False) -> StreamOutput:
        """Fire every window with data of idle keys (all keys when `now_us` is None); see the idle rule.

        A key is idle when `last_seen_us + idle_timeout_us <= now_us` (processing time, as passed to
        `process`). Its watermark goes to the end of the last window holding its newest row, or, with
        `close=True`, `allowed_lateness_us` past that, which evicts all its windows."""
        if now_us is not None and self.idle_timeout_us is None:
            raise StreamConfigError("flush(now_us) needs idle_timeout_us; call flush() to flush every key.")
        out = StreamOutput()
        emit: list[tuple[_Key, int, int, Readings]] = []
        for k in self._by_id:
            if k.max_ts is None:
                continue
            if now_us is not None and (k.last_seen is None or k.last_seen + self.idle_timeout_us > now_us):  # type: ignore[operator]
                continue
            target = (k.max_ts // self._slide) * self._slide + self._size
            if close:
                target += self.allowed_lateness_us
            if target > k.wm:
                self._step(k, target, (), emit)
        self._aggregate(emit, out)
        return out

    def _step(self, k: _Key, wm_new: int, panes: Sequence[int], emit: list) -> None:
        """Mark windows of touched panes, raise the watermark, queue emissions, evict what closed."""
        size, slide, m, al = self._size, self._slide, self._m, self.allowed_lateness_us
        wm_old = k.wm
        closed_old = wm_old - al
        updates: list[int] = []
        fired, pending = k.fired, k.pending
        for p in panes:
            for w in ((p * slide,) if m == 1 else range((p - m + 1) * slide, p * slide + 1, slide)):
                if w + size <= closed_old:
                    continue
                if w in fired:
                    updates.append(w)
                elif w not in pending:
                    pending.add(w)
                    if w + size < k.next_fire:
                        k.next_fire = w + size
        k.wm = wm_new
        self._dirty[k.id] = k
        if wm_new >= k.next_fire:
            fire = [w for w in pending if w + size <= wm_new]
            pending.difference_update(fire)
            k.next_fire = min(pending, default=_NEVER - size) + size
        else:
            fire = []
        if fire or updates:
            emissions: dict[int, int] = {}
            for w in fire:
                emissions[w] = fired[w] = 1
                if w + size < k.next_evict:
                    k.next_evict = w + size
            for w in set(updates):
                emissions[w] = fired[w] = fired[w] + 1
            k.dirty_fired.update(emissions)
            self._counts["windows_fired"] += len(fire)
            self._counts["windows_updated"] += len(emissions) - len(fire)
            for w in sorted(emissions):
                emit.append((k, w, emissions[w], self._window(k, w)))
        closed = wm_new - al
        if closed >= k.next_evict:
            for p in [p for p in k.panes if p * slide + size <= closed]:
                self._open_rows -= k.panes.pop(p).n
                k.dead_panes.add(p)
                k.dirty_panes.discard(p)
            for w in [w for w in fired if w + size <= closed]:
                del fired[w]
                k.dead_fired.add(w)
                k.dirty_fired.discard(w)
            k.next_evict = min(min(k.panes) * slide if k.panes else _NEVER, min(fired, default=_NEVER)) + size

    def _window(self, k: _Key, start: int) -> Readings:
        p0 = start // self._slide
        chunks = [c for p in range(p0, p0 + self._m) if (pn := k.panes.get(p)) is not None for c in pn.chunks]
        if len(chunks) == 1:
            ts, ch, val = chunks[0]
        else:
            ts = np.concatenate([c[0] for c in chunks])
            ch = np.concatenate([c[1] for c in chunks])
            val = np.concatenate([c[2] for c in chunks])
        return Readings(self._chan_tuple, ch, ts, val)

    def _aggregate(self, emit: list[tuple[_Key, int, int, Readings]], out: StreamOutput) -> None:
        if not emit:
            return
        size = self._size
        items = [(k.key, w, w + size, r) for k, w, _, r in emit]
        many = getattr(self.aggregate, "many", None)
        if many is not None:
            values = list(many(items))
            if len(values) != len(items):
                raise StreamConfigError(f"aggregate.many returned {len(values)} results for {len(items)} windows.")
        else:
            values = [self.aggregate(*item) for item in items]
        for (k, w, rev, r), v in zip(emit, values):
            out.windows.append(WindowResult(k.key, w, w + size, rev, rev > 1, len(r), v))
